"""Reading run folders written by fer-lightning 0.1.x: the ``_target_`` paths their ``config.yaml`` records.

The 0.2 layout moved modules (``fer_lightning.callbacks`` -> ``fer_lightning.engine.callbacks``, ...) and the data
module's config face (``fer_lightning.data.FERDataModule`` -> ``fer_lightning.data.FERDataModule.from_options``).
Checkpoints record no module paths and load as they are; a run folder's settings are read through
:func:`renamed_targets`. Dated shim: remove in 0.3 (June 2027), with :data:`RENAMED`.

Examples:
    >>> from omegaconf import OmegaConf
    >>> old = OmegaConf.create({"callbacks": {"x": {"_target_": "fer_lightning.resume.ExactResume", "seed": 0}}})
    >>> renamed_targets(old).callbacks.x._target_
    'fer_lightning.engine.resume.ExactResume'
    >>> moved("fer_lightning.callbacks.LastCheckpoint")
    'fer_lightning.engine.callbacks.LastCheckpoint'
"""

from __future__ import annotations

from typing import Any

DATA_MODULE = "fer_lightning.data.FERDataModule.from_options"

# 0.1.x _target_ -> 0.2 _target_
RENAMED: dict[str, str] = {
    "fer_lightning.data.FERDataModule": DATA_MODULE,
    "fer_lightning.data.datamodule.FERDataModule": DATA_MODULE,
    "fer_lightning.callbacks.LastCheckpoint": "fer_lightning.engine.callbacks.LastCheckpoint",
    "fer_lightning.callbacks.TrainingPictures": "fer_lightning.engine.callbacks.TrainingPictures",
    "fer_lightning.resume.ExactResume": "fer_lightning.engine.resume.ExactResume",
    "fer_lightning.distributed.HydraDDPStrategy": "fer_lightning.engine.ddp.HydraDDPStrategy",
    "fer_lightning.run_dirs.RunDirGuard": "fer_lightning.runs.guard.RunDirGuard",
}
# data modules of runs made before the one data module (0.1.0): their factories and the source each means
LEGACY_DATA_MODULES: dict[str, str] = {
    "fer_lightning.data.JAFFEDataModule": "jaffe",
    "fer_lightning.data.datamodule.JAFFEDataModule": "jaffe",
    "fer_lightning.data.FolderDataModule": "folder",
    "fer_lightning.data.datamodule.FolderDataModule": "folder",
}


def moved(target: str) -> str | None:
    """The 0.2 spelling of a 0.1.x ``_target_`` that moved (None when it did not)."""
    return RENAMED.get(target)


def renamed_targets(cfg: Any) -> Any:
    """A copy of an OmegaConf config with every moved ``_target_`` given its 0.2 spelling."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (RENAMED.get(v, v) if k == "_target_" and isinstance(v, str) else walk(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.create(walk(OmegaConf.to_container(cfg, resolve=False)))
    return walk(cfg)
