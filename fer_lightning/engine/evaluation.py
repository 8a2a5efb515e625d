"""Re-evaluate a checkpoint: the same metrics.json and predictions.csv as training writes (``fer-eval``).

What is evaluated, and how it is kept honest:

* **Data settings.** By default those of the run that wrote the checkpoint (its ``config.yaml`` beside
  ``checkpoints/``), read as data only: the project's own data module (the run's ``_target_`` must be one of
  those of ``conf/data/``) takes the options its constructor accepts, and a run folder whose settings hold a
  ``_target_``, another Hydra key or an interpolation is refused. Every ``data.*`` override (``data.x=``,
  ``+data.x=``, ``++data.x=``, ``~data.x``) applies on top; ``data=<option>`` starts from that option instead.
* **Preprocessing.** The checkpoint's image size and face crop, unless set explicitly (then a warning).
* **Test images.** On the run's own data (same dataset fingerprint, or the same folder), the test images are the
  run's, read by file from its ``splits.csv``: no other split can be chosen there, so no image the run trained on
  is ever tested. If the files changed since the run, it is refused unless ``allow_changed_data=true`` (then the
  run's test images that are still there are evaluated). On other data, that data's own split is used.
  ``test_images=all`` tests every image of other data (a dataset that is only a test set); refused on the run's own.
* **Classes.** Data with other classes than the checkpoint's is a cross-dataset test: the classes both have are
  scored (:mod:`fer_lightning.engine.crossdata`); ``metrics.json`` records it under ``cross_dataset``.
* **Trainer.** ``cfg.trainer`` is instantiated with every override (``trainer=gpu``, ``trainer.precision=...``,
  ``+trainer.limit_test_batches=...``), without logger, callbacks or checkpoints; one process only.
* **Checkpoint.** Read once with ``weights_only=True``; nothing from it or from the run folder is instantiated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.splits import Split
from fer_lightning.engine.build import build
from fer_lightning.engine.checks import accepted_keys, check_target_node, check_values
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.crossdata import (
    TEST_IMAGES,
    ClassMapping,
    all_classes_accuracy,
    restrict_to_shared,
    score_shared,
    whole_dataset,
)
from fer_lightning.engine.outputs import metrics_of_test, write_test_outputs
from fer_lightning.errors import FERError
from fer_lightning.io.atomic import escape_surrogates
from fer_lightning.models import load_model
from fer_lightning.runs.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.runs.folder import CONFIG, RUN_INFO, SPLITS, RunFolder
from fer_lightning.runs.guard import check_output_dir
from fer_lightning.runs.legacy import DATA_MODULE, LEGACY_DATA_MODULES, RENAMED
from fer_lightning.runtime.registry import choose

log = logging.getLogger("fer_lightning.evaluate")

NOT_FROM_THE_RUN = ("features", "cache_dir")  # this machine's cache; the checkpoint's own features
SPLIT_OPTIONS = ("split", "test_size", "val_size", "train_size", "fold", "folds", "seed")


def known_data_targets() -> set[str]:
    """The ``_target_`` s a run's data settings may name: those of the project's data options
    (``conf/data/*.yaml``), the data module's full path, and what older runs recorded."""
    targets = {DATA_MODULE, "fer_lightning.data.datamodule.FERDataModule.from_options", *LEGACY_DATA_MODULES,
               *(old for old, new in RENAMED.items() if new == DATA_MODULE)}
    for f in sorted(Path(config_dir(), "data").glob("*.yaml")):
        target = OmegaConf.load(f).get("_target_")
        if target:
            targets.add(str(target))
    return targets


def _plain(value: Any, where: str, source: Path) -> None:
    """Refuse anything in a run's settings that Hydra would act on (a ``_target_`` and other ``_keys_``, an
    interpolation): they are read as data, never executed."""
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).startswith("_"):
                raise FERError(f"{source}: {where}.{k} is not a data setting; this run folder's settings are refused "
                               "(evaluate with data=<option> and data.* settings instead)")
            _plain(v, f"{where}.{k}", source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]", source)
    elif isinstance(value, str) and "${" in value:
        raise FERError(f"{source}: {where}={value!r} is an interpolation, not a setting; this run folder's settings "
                       "are refused (evaluate with data=<option> and data.* settings instead)")


def run_data_settings(run: RunFolder) -> dict[str, Any] | None:
    """The run's data settings from its ``config.yaml`` (see the module docstring), or None without one."""
    path = run / CONFIG
    if not path.is_file():
        return None
    try:
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("data")
    except Exception as e:
        raise FERError(f"{path}: not a readable run configuration ({e.__class__.__name__}: {e})") from e
    if not isinstance(node, dict):
        raise FERError(f"{path}: holds no data settings; evaluate with data=<option> and data.* settings")
    target = node.get("_target_")
    known = known_data_targets()
    if target not in known:
        raise FERError(f"{path}: data._target_={target!r} is not one of fer-lightning's data modules "
                       f"({', '.join(sorted(known))}); it is not used (evaluate with data=<option> instead)")
    settings: dict[str, Any] = {"_target_": DATA_MODULE, "_convert_": "all"}
    if target in LEGACY_DATA_MODULES:
        settings["source"] = node.get("source", LEGACY_DATA_MODULES[target])
    plain = {k: v for k, v in node.items() if k not in ("_target_", "_convert_") and k not in NOT_FROM_THE_RUN}
    if node.get("_convert_", "all") not in ("all", "none", "partial", "object"):
        raise FERError(f"{path}: data._convert_={node['_convert_']!r} is not a data setting; this run folder's "
                       "settings are refused (evaluate with data=<option> and data.* settings instead)")
    _plain(plain, "data", path)
    allowed = set(accepted_keys(get_object(DATA_MODULE), {**settings, **plain}) or ()) - set(NOT_FROM_THE_RUN)
    for k, v in plain.items():
        if k in allowed:
            settings[k] = v
        else:
            log.warning("%s: ignoring data.%s (not an option of the data module)", path, k)
    return settings


@dataclass
class RunRecord:
    """What a checkpoint's run folder says about the run, read as plain data."""

    folder: RunFolder
    dataset: str | None = None
    fingerprint: str | None = None
    root: str | None = None
    splits: dict[str, str] = field(default_factory=dict)  # file -> train | val | test | unused

    @classmethod
    def of(cls, ckpt_path: str) -> RunRecord:
        run = cls(RunFolder.of_checkpoint(ckpt_path))
        info = run.folder / RUN_INFO
        if info.is_file():
            record = run.folder.read_run_info()
            if record is None:
                log.warning("ignoring %s: not readable JSON", info)
            else:
                run.fingerprint, run.root = record.get("dataset_fingerprint"), record.get("dataset_root")
                run.dataset = record.get("dataset")
        run.splits = run.folder.read_splits(errors="replace")
        return run


def _data_overrides(overrides: list[str]) -> tuple[bool, list[Any]]:
    """(whether ``data=<option>`` was given, the parsed ``data.*`` overrides of any kind)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    group = any(o.key_or_group == "data" for o in parsed)
    return group, [o for o in parsed if o.key_or_group.startswith("data.")]


def _set_path(node: dict[str, Any], path: str, value: Any, delete: bool = False) -> None:
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if delete:
        node.pop(last, None)
    else:
        node[last] = value


def _checkpoint_preprocessing(record: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's preprocessing as data options (``image_size``, ``face_crop``, ``crop_margin``, ...); none for
    a checkpoint that records none (0.1.0)."""
    if not record.get("preprocessing"):
        return {}
    return Preprocessing.from_record(record).data_options()


def data_config(cfg: DictConfig, overrides: list[str], record: dict[str, Any], run: RunRecord) -> dict[str, Any]:
    """The data node to build (a plain dict with one of the project's ``_target_``s): the run's settings (or the
    chosen ``data=<option>``), the user's ``data.*`` overrides, the checkpoint's preprocessing."""
    group, mine = _data_overrides(overrides)
    settings = None if group or not cfg.use_run_config else run_data_settings(run.folder)
    composed = OmegaConf.to_container(cfg.data, resolve=True)
    if settings is None:
        node = dict(composed)
    else:
        node = settings
        for o in mine:  # Hydra applied them to cfg.data already: take its result for each key the user touched
            path = o.key_or_group[len("data."):]
            value = OmegaConf.select(cfg.data, path)
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            _set_path(node, path, value, delete=o.is_delete())
    touched = {o.key_or_group[len("data."):].split(".")[0] for o in mine}
    for k, v in _checkpoint_preprocessing(record).items():
        if k not in touched:
            node[k] = v
        elif node.get(k) != v:
            log.warning("data.%s=%s overrides the checkpoint's %s (it was trained with %s): the model sees images "
                        "prepared otherwise than in training", k, node.get(k), k, v)
    node["cache_dir"] = composed.get("cache_dir")
    node["features"] = None
    check_values(node, "data")
    check_target_node(node, "data")
    return node


def _same_data(dm: Any, run: RunRecord, prep_changed: bool) -> bool:
    """Whether ``dm`` holds the run's data: the same dataset fingerprint, or (same dataset name) the same folder or
    files named as the run's (a copy, perhaps edited). Another synthetic set (other generator settings) is other
    data; the run's own synthetic set at another image size is not."""
    if run.fingerprint is not None and dm.fingerprint == run.fingerprint:
        return True
    if not run.splits or dm.dataset_name != run.dataset:
        return False
    if dm.source.root is None and run.root is None and not prep_changed:
        return False
    if dm.source.root is not None and run.root is not None:
        if Path(dm.source.root).expanduser().resolve() == Path(run.root).expanduser().resolve():
            return True
    return any(escape_surrogates(n) in run.splits for n in dm.file_names())


def _warn_on_shared_names(dm: Any, run: RunRecord) -> None:
    """Other data (not the run's): say so when its files carry the names of images the run trained on."""
    seen = {f for f, s in run.splits.items() if s in ("train", "val")}
    shared = [n for n in (escape_surrogates(n) for n in dm.file_names()) if n in seen]
    if shared:
        log.warning("%d images of %s have the names of images the run trained on (e.g. %s): if they are the same "
                    "images, the results are not a test", len(shared), dm.dataset_name, shared[0])


def _runs_test_split(cfg: DictConfig, dm: Any, run: RunRecord, mine: list[Any], prep_changed: bool) -> None:
    """Restrict ``dm`` to the run's own split (from its splits.csv, by file), refusing what would leak."""
    moved = [o.key_or_group for o in mine if o.key_or_group[len("data."):].split(".")[0] in SPLIT_OPTIONS]
    if moved:
        raise FERError(f"{moved[0]}: this is the run's own data, whose test images are fixed by "
                       f"{run.folder / SPLITS}; another split would test images the run trained on")
    if not run.splits:
        log.warning("no splits.csv in %s: the test split cannot be checked against the run's training images",
                    run.folder.path)
        return
    names = [escape_surrogates(n) for n in dm.file_names()]
    index = {n: i for i, n in enumerate(names)}
    parts = {p: sorted(index[f] for f, s in run.splits.items() if s == p and f in index)
             for p in ("train", "val", "test")}
    missing = sorted(f for f, s in run.splits.items() if s == "test" and f not in index)
    changed = missing or len(index) != len(run.splits) or not all(f in run.splits for f in index)
    if not prep_changed and run.fingerprint is not None and dm.fingerprint != run.fingerprint:
        changed = True
    if changed and not cfg.get("allow_changed_data", False):
        detail = f"{len(missing)} of its test images are missing" if missing else "the files differ"
        raise FERError(f"the data changed since the run ({detail}; fingerprint {dm.fingerprint}, the run's "
                       f"{run.fingerprint}): restore it, or give allow_changed_data=true to evaluate the run's "
                       "test images that are still there")
    if changed:
        log.warning("the data changed since the run: evaluating the %d of its test images that are still there "
                    "(%d missing)", len(parts["test"]), len(missing))
    if prep_changed:
        log.warning("preprocessing overridden: the dataset fingerprint cannot be compared with the run's; the test "
                    "images are the run's, by file name")
    if not parts["test"]:
        raise FERError(f"none of the run's test images ({run.folder / SPLITS}) is in the data")
    dm.use_split(Split(*(np.asarray(parts[p], dtype=np.int64) for p in ("train", "val", "test"))))


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Test the checkpoint ``cfg.ckpt_path`` and write ``metrics.json`` / ``predictions.csv`` into
    ``cfg.paths.output_dir``; returns the metrics. ``overrides``: the command line's (Hydra's task overrides)."""
    if not cfg.ckpt_path:
        raise FERError("give ckpt_path=<a fer-lightning checkpoint>")
    out = Path(cfg.paths.output_dir)
    check_output_dir(out, training=False)
    overrides = list(overrides or [])
    ckpt = read_checkpoint(cfg.ckpt_path)  # the one read of the file (weights_only: no code in it runs)
    record = ckpt[FORMAT_KEY]
    run = RunRecord.of(cfg.ckpt_path)
    node = data_config(cfg, overrides, record, run)
    check_values(OmegaConf.to_container(cfg.trainer, resolve=True), "trainer")
    pl.seed_everything(int(node.get("seed", 0)), workers=True)
    model = load_model(ckpt)
    features = None
    if model.needs.handcrafted_blocks and model.extractor.source == "precomputed":
        features = model.extractor  # exactly the checkpoint's descriptor settings
    dm = build(OmegaConf.create({k: v for k, v in node.items() if k != "features"}), features=features)
    dm.prepare_data()
    _, mine = _data_overrides(overrides)
    prep = _checkpoint_preprocessing(record)
    prep_changed = any(node.get(k) != v for k, v in prep.items())
    same = _same_data(dm, run, prep_changed)
    if not same and run.splits:
        _warn_on_shared_names(dm, run)
    test_images = choose(cfg.get("test_images", "split"), TEST_IMAGES, "test_images")
    if test_images == "all":
        if same:
            raise FERError("test_images=all: this is the run's own data, whose training images would be tested; "
                           "evaluate on other data, or without test_images=all")
        whole_dataset(dm)
    dm.setup()
    if same:
        _runs_test_split(cfg, dm, run, mine, prep_changed)
    mapping = ClassMapping(tuple(record["class_names"]), tuple(dm.class_names))
    cross = None  # other data than the run's (another dataset, or other classes): what metrics.json records of it
    if not same or not mapping.identical:
        cross = restrict_to_shared(dm, mapping, run.dataset, test_images)
    # the composed trainer config with every override (trainer=gpu, trainer.precision=..., +trainer.limit_test_batches=
    # ...), less what evaluating has no use for: no logger, callbacks or checkpoints
    trainer: pl.Trainer = build(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out))
    if trainer.world_size > 1:
        raise FERError(f"evaluate runs in one process; trainer={cfg.trainer.get('strategy', 'ddp')} asks for "
                       f"{trainer.world_size}: use trainer=default or trainer=gpu")
    trainer.test(model, datamodule=dm, verbose=False)
    scored = model if mapping.identical else score_shared(model, mapping)
    metrics = metrics_of_test(scored, dm, dm.split_settings.seed, class_names=mapping.shared)
    metrics["checkpoint"] = str(Path(cfg.ckpt_path).expanduser().resolve())
    if cross is not None:
        metrics["cross_dataset"] = {**cross, "acc_all_classes": all_classes_accuracy(model)}
        if test_images == "all":
            metrics["split"] = "all"
    result = RunFolder(out)
    written = {"ckpt_path": metrics["checkpoint"], "data": node, "trainer": OmegaConf.to_container(cfg.trainer),
               "test_images": test_images, "cross_dataset": cross}
    result.write_config(OmegaConf.to_yaml(OmegaConf.create(written)))
    result.write_splits(dm.split_rows())
    write_test_outputs(result, scored, dm, metrics)
    log.info("%s checkpoint on %s (%s split): test acc %.4f on %d images; outputs in %s", model.model_name,
             dm.dataset_name, metrics["split"], metrics["test/acc"], metrics["n_test"], out)
    return metrics


