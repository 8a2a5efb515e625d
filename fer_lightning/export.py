"""The export command: a checkpoint of any model as one self-contained file, ONNX or a ``torch.export`` program.

    python -m fer_lightning.export ckpt_path=<run>/checkpoints/<best>.ckpt format=onnx output=fer.onnx
    fer-export ckpt_path=... format=pt2 output=fer.pt2

See :mod:`fer_lightning.deploy.exporters` (the formats) and :class:`fer_lightning.deploy.exported.ExportedModel`
(running an exported file). Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fer_lightning.deploy.exported import ExportedModel
from fer_lightning.deploy.exporters import export
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.startup import checkpoint_option, command, fail, start_command
from fer_lightning.errors import FERError

__all__ = ["ExportedModel", "export", "main"]


@command
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    start_command(cfg)
    try:
        if not cfg.ckpt_path:
            raise FERError("give ckpt_path=<a fer-lightning checkpoint> (and format=onnx|pt2, output=<file>)")
        checkpoint_option(cfg)
        fmt = cfg.format if isinstance(cfg.format, str) else list(cfg.format)
        dests = export(cfg.ckpt_path, fmt, cfg.output, cfg.input_dtype, bool(cfg.overwrite))
    except FERError as e:
        fail(e)
    for dest in dests.values():
        print(f"wrote {dest}")


if __name__ == "__main__":
    main()
