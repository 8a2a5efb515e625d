"""Trainings side by side (``pipeline.workers``): the order the graph allows, failures and dead workers in one
line, options checked, and a real pipeline giving the same numbers and weights in two workers as in one process
with the same number of threads."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fer_lightning.engine.parallel import Unit, check_workers, run_units
from fer_lightning.errors import FERError

from .conftest import REPO, TINY, run_cli


def _fake_train(cfg):
    """A training that sleeps, logs, records when it ran, and fails or dies when told to (run in a worker)."""
    logging.getLogger("fer_lightning.fake").info("fake training %s", cfg.key)
    start = time.time()
    if cfg.get("fail"):
        raise FERError(f"model.fake={cfg.key}: refused")
    if cfg.get("die"):
        os._exit(3)
    if cfg.get("meet"):  # wait for the training named there to be running too (side by side, or never)
        Path(cfg.out, f"{cfg.key}.running").touch()
        deadline = time.monotonic() + 120
        while not Path(cfg.out, f"{cfg.meet}.running").exists():
            assert time.monotonic() < deadline, f"{cfg.key} never ran beside {cfg.meet}"
            time.sleep(0.05)
    time.sleep(cfg.sleep)
    Path(cfg.out, f"{cfg.key}.json").write_text(json.dumps({"start": start, "end": time.time()}))
    return {"key": cfg.key, "threads": torch.get_num_threads(), "pid": os.getpid()}


def _unit(key, out, after=(), sleep=0.1, length=0.0, **extra):
    cfg = OmegaConf.create({"key": key, "out": str(out), "sleep": sleep, **extra})
    return Unit(key, tuple(after), lambda results: cfg, f"fake {key}", length)


def test_trainings_run_side_by_side_each_after_what_it_needs(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    units = [_unit("b", tmp_path, sleep=0.2, meet="a"), _unit("a", tmp_path, sleep=1.0, length=1.0, meet="b"),
             _unit("c", tmp_path, after=["a"], sleep=0.2), _unit("d", tmp_path, after=["b", "c"], sleep=0.1)]
    results = run_units(units, _fake_train, workers=2, threads=1)
    assert list(results) == ["b", "a", "c", "d"]  # the pipeline's order
    times = {k: json.loads((tmp_path / f"{k}.json").read_text()) for k in results}
    assert times["a"]["start"] < times["b"]["end"] and times["b"]["start"] < times["a"]["end"]  # side by side
    assert times["c"]["start"] >= times["a"]["end"]
    assert times["d"]["start"] >= max(times["b"]["end"], times["c"]["end"])
    assert all(r["threads"] == 1 and r["pid"] != os.getpid() for r in results.values())
    assert len({r["pid"] for r in results.values()}) == 2  # two workers, each training several
    said = [r.getMessage() for r in caplog.records]
    assert "pipeline: 4 trainings, 2 at a time in worker processes, 1 CPU thread(s) each" in said
    assert all(f"fake training {k}" in said for k in "abcd")  # the workers' lines reach the job's log
    assert sum(m.startswith("pipeline: a finished in ") for m in said) == 1
    # the longest was started first though listed second
    assert said.index("pipeline: fake a") < said.index("pipeline: fake b")


def test_one_worker_trains_in_this_process_in_order(tmp_path):
    units = [_unit("x", tmp_path), _unit("y", tmp_path, after=["x"])]
    results = run_units(units, _fake_train, workers=1)
    assert [r["pid"] for r in results.values()] == [os.getpid()] * 2


def test_a_failing_or_dying_worker_stops_the_job_in_one_line(tmp_path):
    units = [_unit("slow", tmp_path, sleep=0.5), _unit("bad", tmp_path, fail=True),
             _unit("never", tmp_path, after=["bad"])]
    with pytest.raises(FERError, match=r"^model.fake=bad: refused$"):
        run_units(units, _fake_train, workers=2, threads=1)
    assert not (tmp_path / "never.json").exists()
    with pytest.raises(FERError, match=r"a worker process died \(exit code 3\) while .*dies.* trained; the finished "
                                       r"trainings are kept: run the same command again to resume the others"):
        run_units([_unit("ok", tmp_path), _unit("dies", tmp_path, die=True)], _fake_train, workers=2, threads=1)


def test_workers_and_threads_are_checked():
    plain = OmegaConf.create({"devices": 1, "strategy": "auto"})
    assert check_workers(None, None, plain) == (1, None)
    assert check_workers(2, "3", plain) == (2, 3)
    for workers, threads, match in ((0, None, "pipeline.workers=0: give a whole number >= 1"),
                                    ("two", None, "pipeline.workers=two"), (True, None, "pipeline.workers=True"),
                                    (2, -1, "pipeline.threads=-1: give a whole number >= 1")):
        with pytest.raises(FERError, match=match):
            check_workers(workers, threads, plain)
    ddp = OmegaConf.create({"devices": 2, "strategy": {"_target_": "fer_lightning.engine.ddp.HydraDDPStrategy"}})
    with pytest.raises(FERError, match="pipeline.workers=2 runs trainings side by side, each on one device; "
                                       "trainer.devices=2"):
        check_workers(2, None, ddp)
    assert check_workers(1, None, ddp) == (1, None)


REDUCED = ["deep", "handcrafted_converged", "hybrid_oof", "hybrid_e2e", "late_fusion"]


def _ablation_args(out: Path, cache: Path, *extra: str) -> list[str]:
    drop = [f"~pipeline.models.{s}" for s in ("handcrafted", "hybrid", "handcrafted_linear", "hybrid_converged",
                                               "hybrid_linear", "hybrid_block", "hybrid_perblock",
                                               "handcrafted_augmented", "hybrid_augmented", "late_fusion_augmented")]
    return ["fer_lightning.train", *TINY, "experiment=fusion_ablation", "trainer.max_epochs=3",
            "pipeline.models.deep.backbone.weights=none", "pipeline.models.hybrid_oof.backbone.oof_folds=2",
            f"data.cache_dir={cache}", f"hydra.run.dir={out}", "progress.mode=lines", *drop, *extra]


def _interrupted(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    """The reduced ablation interrupted as Ctrl-C does (SIGINT to its process group) once its first training has
    finished (the deep stage is still training then: its split is the larger)."""
    proc = subprocess.Popen([sys.executable, "-m", *_ablation_args(out, cache, *extra)], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log, deadline = out / "ablation.log", time.monotonic() + 300
    while not (log.is_file() and re.search(r"pipeline: \S+ finished in", log.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it could be interrupted"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_two_workers_give_the_numbers_and_weights_of_one_process(tmp_path):
    """The reduced ablation (a fine-tuning, its two out-of-fold runs, heads, end-to-end fusion, late fusion) as
    ``fer-train``: in one process on one thread, then in two workers of one thread each: the same summary and
    bit-identical weights in every stage; the workers' lines are in the job's log. Interrupted by Ctrl-C in two
    workers, then run again: the same summary and weights."""
    one = run_cli(*_ablation_args(tmp_path / "one", tmp_path / "cache1"), env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    workers = ("pipeline.workers=2", "pipeline.threads=1")
    two = run_cli(*_ablation_args(tmp_path / "two", tmp_path / "cache2", *workers))
    assert two.returncode == 0, two.stderr[-3000:]
    stopped = _interrupted(tmp_path / "three", tmp_path / "cache3", *workers)
    assert stopped.returncode == 2 and stopped.stderr.strip().splitlines()[-1] == (
        "fer-lightning: error: pipeline: interrupted; the finished trainings are kept and the interrupted ones go on "
        f"from their last.ckpt: run the same command with hydra.run.dir={tmp_path / 'three'}")
    assert not (tmp_path / "three" / "summary.csv").exists()
    again = run_cli(*_ablation_args(tmp_path / "three", tmp_path / "cache3", *workers))
    assert again.returncode == 0, again.stderr[-3000:]

    def rows(out: Path) -> list[dict[str, str]]:
        with open(out / "summary.csv") as f:
            return list(csv.DictReader(f))

    assert [r["model"] for r in rows(tmp_path / "one")] == REDUCED
    assert rows(tmp_path / "one") == rows(tmp_path / "two") == rows(tmp_path / "three")
    ckpts = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.ckpt") if p.name != "last.ckpt")
    assert any("deep_oof2/fold1" in str(p) for p in ckpts) and any("hybrid_e2e" in str(p) for p in ckpts)
    for run in ("two", "three"):
        assert ckpts == sorted(p.relative_to(tmp_path / run) for p in (tmp_path / run).rglob("*.ckpt")
                               if p.name != "last.ckpt")
        for rel in ckpts:
            a, b = (torch.load(tmp_path / d / rel, map_location="cpu", weights_only=False)["state_dict"]
                    for d in ("one", run))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (run, rel)
    log = (tmp_path / "two" / "ablation.log").read_text()
    assert "pipeline: 7 trainings, 2 at a time in worker processes, 1 CPU thread(s) each" in log
    assert log.count("training stopped:") == 6 and "pipeline: deep on inner fold 2 of 2" in log
    assert "pipeline: deep finished in " in log
    assert "resuming it from" in (tmp_path / "three" / "ablation.log").read_text()


def test_the_ablation_plans_each_training_after_what_it_needs(tmp_path):
    from hydra import compose, initialize_config_dir

    from fer_lightning.engine.configs import config_dir
    from fer_lightning.engine.pipeline import _plan, _units

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=fusion_ablation", f"paths.output_dir={tmp_path}"])
    units = {u.key: u for u in _units(cfg, _plan(cfg), tmp_path)}
    oof = ("deep_oof3/fold0", "deep_oof3/fold1", "deep_oof3/fold2")
    assert list(units)[:10] == ["deep", "handcrafted", "hybrid", "handcrafted_converged", "handcrafted_linear",
                                "hybrid_converged", "hybrid_linear", "hybrid_block", "hybrid_perblock", *oof[:1]]
    assert len(units) == 18 and {k: u.length for k, u in units.items() if u.length} == {
        "deep": 1.0, **{k: 2 / 3 for k in oof}, "hybrid_e2e": 1.0}
    assert units["hybrid_oof"].after == ("deep", *oof) and units["hybrid"].after == ("deep",)
    assert units["late_fusion"].after == ("deep", "handcrafted_converged") and units["handcrafted"].after == ()
    assert all(units[k].after == () for k in oof)
    fold = units["deep_oof3/fold2"].config({})
    assert (fold.data.inner_folds, fold.data.inner_fold, fold.paths.output_dir) == (3, 2, str(tmp_path / oof[2]))
    results = {k: {"best_checkpoint": f"/runs/{k}.ckpt"} for k in ("deep", *oof)}
    stage = units["hybrid_oof"].config(results)
    assert stage.model.backbone.checkpoint == "/runs/deep.ckpt"
    assert list(stage.model.backbone.oof_checkpoints) == [f"/runs/{k}.ckpt" for k in oof]


@pytest.mark.slow
def test_the_workers_bench_runs_and_on_one_thread_both_jobs_agree():
    res = subprocess.run([sys.executable, str(REPO / "bench" / "workers.py"), "--dry-run"], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert "summary.csv: the same" in lines
    assert re.fullmatch(r"pipeline.workers=2 against one at a time ratio: \d+\.\dx", lines[-1])
