"""DDP on the CPU (trainer=ddp_cpu: 2 processes, gloo): every image counted once, results equal to one process,
one run dir per Hydra job, rank 0 alone writes; and the distributed helpers on their own."""

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from fer_lightning.data.dataset import lone_last_batch
from fer_lightning.engine import ddp as distributed
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.ddp import end_job, job_command
from fer_lightning.evaluate import evaluate
from fer_lightning.features.tables import block_store, blocks_of
from fer_lightning.io.lock import one_at_a_time
from fer_lightning.models.backbone import imagenet_weights_file
from fer_lightning.runs.checkpoints import read_checkpoint
from fer_lightning.runtime.collectives import unique_by_index
from fer_lightning.runtime.ranks import is_global_zero, process_rank

from .conftest import run_cli
from .test_evaluate import SCALARS, eval_cfg

STAGES = ("deep", "hybrid", "handcrafted")


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# A random-init MobileNetV2 gives every image the same probabilities (to float noise), which leaves AUROC to
# rounding; the ImageNet start gives each image its own, as in real use.
IMAGENET = imagenet_weights_file().is_file()


@pytest.fixture(scope="module")
def ddp_paper(tmp_path_factory, cache_dir):
    """experiment=paper (deep, hybrid on its backbone, handcrafted) as a Hydra multirun of one job, 2 processes."""
    cwd = tmp_path_factory.mktemp("ddp")
    res = run_cli(
        "fer_lightning.train", "-m", "experiment=paper", "trainer=ddp_cpu", "logger=none", "data.image_size=64",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        f"pipeline.models.deep.backbone.weights={'imagenet' if IMAGENET else 'none'}",
        f"data.cache_dir={cache_dir}", cwd=cwd,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return cwd, res



@pytest.mark.slow
def test_one_run_dir_per_job_written_by_rank_zero(ddp_paper):
    cwd, res = ddp_paper
    jobs = [p for p in (cwd / "outputs").rglob("*") if p.is_dir() and (p / "summary.json").is_file()]
    assert [j.name for j in jobs] == ["0_paper_fold0_seed0"]  # the job's dir: no sweep or run dir per process
    job = jobs[0]
    assert sorted(p.relative_to(cwd / "outputs").as_posix() for p in (cwd / "outputs").rglob("metrics.json")) == [
        f"{job.relative_to(cwd / 'outputs').as_posix()}/{s}/metrics.json" for s in sorted(STAGES)
    ]
    assert [p.parent for p in (cwd / "outputs").rglob(".hydra")] == [job]  # the child process wrote none
    log = (job / "paper.log").read_text()
    assert "DDP: starting 1 more process(es)" in log and "hydra.run.dir=" in log
    assert "fer_lightning.train -m " not in log and "--multirun" not in log  # the job, not the sweep
    for line in log.splitlines():  # the other process reports warnings at most, marked with its rank
        assert "[rank 1]" not in line or "[WARNING]" in line or "[ERROR]" in line, line
    for stage in STAGES:
        info = json.loads((job / stage / "run_info.json").read_text())
        assert "hydra.output_subdir=null" not in info["command"]  # written by rank 0, not the child
        ckpts = sorted(p.name for p in (job / stage / "checkpoints").iterdir())
        fitted = [c for c in ckpts if c.startswith("fitted-") and c.endswith(".pt")]  # one per run, by rank 0
        assert [c for c in ckpts if c not in fitted] == ["epoch_000.ckpt", "last.ckpt"]
        assert len(fitted) == (0 if stage == "deep" else 1), (stage, ckpts)


@pytest.mark.slow
def test_each_image_counted_once(ddp_paper):
    cwd, _ = ddp_paper
    job = next((cwd / "outputs").rglob("0_paper_fold0_seed0"))
    for stage in STAGES:
        m = json.loads((job / stage / "metrics.json").read_text())
        rows = read_csv(job / stage / "predictions.csv")
        test_files = [r["file"] for r in read_csv(job / stage / "splits.csv") if r["split"] == "test"]
        # 57 test images over 2 processes: the sampler pads to 2 x 29, the duplicate must not count
        assert m["n_test"] == 57 and sum(map(sum, m["confusion_matrix"])) == 57
        assert sorted(r["file"] for r in rows) == sorted(test_files) and len(rows) == 57
        hits = sum(r["true"] == r["predicted"] for r in rows)
        assert abs(m["test/acc"] - hits / 57) < 1e-6
        # 23 val images (padded to 24): accuracy is a multiple of 1/23
        assert abs(m["val/acc"] * 23 - round(m["val/acc"] * 23)) < 1e-4, m["val/acc"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_equal_one(ddp_paper, tmp_path, cache_dir, stage):
    """Test metrics of the 2-process run = evaluating its checkpoint in this one process."""
    cwd, _ = ddp_paper
    if stage != "handcrafted" and not IMAGENET:
        pytest.skip("needs the ImageNet MobileNetV2 file: random-init outputs tie, so AUROC is left to rounding")
    job = next((cwd / "outputs").rglob("0_paper_fold0_seed0"))
    m = json.loads((job / stage / "metrics.json").read_text())
    e = evaluate(eval_cfg(tmp_path, cache_dir, m["best_checkpoint"]))
    for k in SCALARS + [k for k in m if k.startswith("test/acc_")]:
        assert abs(e[k] - m[k]) <= 1e-6, k
    assert e["confusion_matrix"] == m["confusion_matrix"]
    ours = [r[:4] for r in csv.reader(open(tmp_path / "eval" / "predictions.csv"))]
    theirs = [r[:4] for r in csv.reader(open(job / stage / "predictions.csv"))]
    assert ours == theirs


@pytest.mark.slow
def test_fitted_statistics_same_on_every_rank_and_once_in_checkpoint(ddp_paper, make_cfg):
    cwd, _ = ddp_paper
    job = next((cwd / "outputs").rglob("0_paper_fold0_seed0"))
    assert (job / "paper.log").read_text().count("z-score/PCA statistics identical on all 2 processes") == 2
    ckpt = read_checkpoint(job / "handcrafted" / "checkpoints" / "last.ckpt")  # fitted layers from their file
    fitted = {k: v for k, v in ckpt["state_dict"].items() if ".zscore." in k or ".pca." in k}
    assert fitted and not any(k.startswith("module.") for k in ckpt["state_dict"])
    # the same statistics as one process fits on the same training split
    from hydra.utils import instantiate

    cfg = make_cfg("model=handcrafted")
    dm = instantiate(cfg.data, features=cfg.features)
    dm.setup()
    model = instantiate(cfg.model, class_names=list(dm.class_names))
    model.fusion.fit(model.train_blocks(dm.model_data(), dm.split.train))
    for k, v in model.state_dict().items():
        if k in fitted and v.is_floating_point():
            assert torch.allclose(v, fitted[k], atol=1e-5), k


@pytest.mark.slow
def test_gather_and_agree_across_two_processes(tmp_path):
    """gather_outputs (uneven shares, a padded repeat) and agree_on_fitted (different fits) with real gloo."""
    from . import ddp_worker

    port = 29500 + os.getpid() % 1000
    torch.multiprocessing.spawn(ddp_worker.work, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):
        assert r["gathered"]["index"].tolist() == [0, 1, 2, 4]  # each image once, by index
        # index 4 keeps rank 0's row (the first process's), not the padded repeat
        assert r["gathered"]["logits"].tolist() == [[0.0, 1.0], [3.0, 0.0], [2.0, 2.0], [1.0, 0.0]]
    assert r0["before"] != r1["before"] and r0["after"] == r1["after"] == r0["before"]


# ----------------------------------------------------------------------------------- helpers, one process
def test_unique_by_index_keeps_first_row():
    out = unique_by_index({"index": torch.tensor([3, 1, 3, 0]), "v": torch.tensor([10, 11, 12, 13])})
    assert out["index"].tolist() == [0, 1, 3] and out["v"].tolist() == [13, 11, 10]


def test_ranks_from_the_environment(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert process_rank() == 0 and is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # a child of Lightning's launcher
    assert process_rank() == 1 and not is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # first process of the second node
    assert not is_global_zero()
    monkeypatch.setenv("RANK", "0")  # torchrun
    assert is_global_zero()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert process_rank() == 3


def test_child_command_runs_this_job_in_its_dir(tmp_path):
    """In a multirun, the child of job 1 gets job 1's overrides and dir, not the sweep (``-m a=0,1``)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["data.seed=1", "trainer=ddp_cpu"], return_hydra_config=True)
    job_dir = tmp_path / "multi runs" / "1_deep_paper_fold0_seed1"
    cfg.hydra.runtime.output_dir = str(job_dir)
    cfg.hydra.job.config_name = "train"
    cfg.hydra.overrides.hydra = ["hydra.mode=MULTIRUN", "hydra/launcher=basic", "hydra.verbose=true"]
    HydraConfig.instance().set_config(cfg)
    try:
        command = job_command("fer_lightning.train")
    finally:
        HydraConfig.instance().cfg = None
    assert command == [
        sys.executable, "-m", "fer_lightning.train", "--config-name", "train", "data.seed=1", "trainer=ddp_cpu",
        "hydra.verbose=true", f"hydra.run.dir='{job_dir}'", "hydra.output_subdir=null",
    ]


def test_end_job_waits_and_restores_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("MASTER_PORT", "1234")
    launch = distributed._Launch()
    launch.procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])]
    distributed._LAUNCHES.append(launch)
    os.environ.update({"LOCAL_RANK": "0", "MASTER_PORT": "5678", "WORLD_SIZE": "2"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    end_job()
    assert launch.procs[0].returncode == 0  # waited for
    assert "LOCAL_RANK" not in os.environ and os.environ["MASTER_PORT"] == "1234" and "WORLD_SIZE" not in os.environ
    assert torch.get_num_threads() == threads and not distributed._LAUNCHES


def test_cache_built_once_by_processes_sharing_it(tmp_path):
    """One process builds a cache entry, the others wait for it and read it (here: two threads, two locks)."""
    calls = []

    def compute(start, stop):
        calls.append(1)
        time.sleep(0.3)
        return {"x": torch.ones(stop - start, 2)}

    def worker(out):
        with one_at_a_time(tmp_path):
            out.append(blocks_of(block_store("t", {"k": 1}, {"x": 2}, 3, tmp_path, compute)))

    results: list = []
    threads = [threading.Thread(target=worker, args=(results,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and all(torch.equal(r["x"], torch.ones(3, 2)) for r in results)


def test_lone_last_batch():
    assert not lone_last_batch(130, 16)  # one process: 8 x 16 + 2
    assert lone_last_batch(130, 16, world_size=2)  # 65 each: 4 x 16 + 1 would break BatchNorm
    assert not lone_last_batch(57, 16, world_size=2)
