"""A DDP rank that dies does not hang the others (trainer=ddp_cpu, 2 processes): the job ends soon with one line
naming the lost rank, a non-zero exit code, and the last finished epoch's ``last.ckpt``, from which a resume
completes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fer_lightning.engine import ddp as distributed
from fer_lightning.errors import FERError

from .conftest import REPO

RUN = ["model=deep", "model.backbone.weights=none", "trainer=ddp_cpu", "logger=none", "data.image_size=32",
       "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "callbacks.training_pictures=null",
       "callbacks.early_stopping=null", "+callbacks.marker._target_=tests.ddp_marker.StallRank"]


@pytest.mark.slow
def test_killed_rank_ends_the_job_with_one_line_and_a_resumable_checkpoint(tmp_path, cache_dir):
    out, stall = tmp_path / "run", tmp_path / "stall"
    stall.mkdir()
    args = [*RUN, f"data.cache_dir={cache_dir}", f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "FER_TEST_STALL_DIR": str(stall)}
    job = subprocess.Popen([sys.executable, "-m", "fer_lightning.train", *args, "trainer.max_epochs=3"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        marker = stall / "rank1.pid"
        deadline = time.monotonic() + 300
        while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"rank 1 never reached epoch 1: {job.poll()}"
        time.sleep(0.5)  # the pid is written before the wait starts
        rank1 = int(marker.read_text())
        assert rank1 != job.pid
        killed = time.monotonic()
        os.kill(rank1, signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)  # raises TimeoutExpired when the job hangs
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    took = time.monotonic() - killed
    errors = [line for line in stderr.splitlines() if line.startswith("fer-lightning: error:")]
    assert job.returncode != 0 and took < 120
    assert len(errors) == 1, stderr[-3000:]
    assert f"the DDP process of rank 1 (pid {rank1}) died (killed by SIGKILL)" in errors[0], errors[0]
    assert "resume it with:" in errors[0] and "last.ckpt" in errors[0]
    assert "Traceback" not in stderr, stderr[-3000:]

    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["epoch"] == 0  # epoch 0 finished, 1 lost
    env.pop("FER_TEST_STALL_DIR")
    res = subprocess.run([sys.executable, "-m", "fer_lightning.train", *args, "trainer.max_epochs=2",
                          f"ckpt_path={last}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["stop_reason"] == "max_epochs", metrics


def killed_child() -> distributed._Launch:
    """A launch whose one child process (rank 1) was killed."""
    launch = distributed._Launch()
    launch.procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
    launch.procs[0].kill()
    distributed._LAUNCHES.append(launch)
    return launch


def test_a_failed_collective_after_a_lost_rank_is_one_line_naming_it():
    launch = killed_child()
    with pytest.raises(FERError, match=r"^the DDP process of rank 1 \(pid \d+\) died \(killed by SIGKILL\); the job "
                                       r"stopped") as e:
        with distributed.job_processes():
            raise RuntimeError("[gloo] Connection closed by peer")  # what the collective raises
    assert isinstance(e.value.__cause__, RuntimeError) and not distributed._LAUNCHES
    assert launch.procs[0].returncode == -signal.SIGKILL


def test_ctrl_c_stays_ctrl_c():
    killed_child()  # Lightning ends the children itself on Ctrl+C: that is no lost rank
    with pytest.raises(KeyboardInterrupt):
        with distributed.job_processes():
            raise KeyboardInterrupt
    assert not distributed._LAUNCHES


WATCHDOG = """
import subprocess, sys, time
from fer_lightning.engine.ddp import _Observer
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
child.kill()
_Observer([child], period=0.1, grace=0.5).start()
time.sleep(120)  # a process stuck in a collective that waits for the dead one
"""


@pytest.mark.slow
def test_the_watchdog_ends_a_process_stuck_after_a_lost_rank():
    res = subprocess.run([sys.executable, "-c", WATCHDOG], capture_output=True, text=True, timeout=600)
    assert res.returncode == 1  # not 0: the process did not sleep its 120 s to the end
    assert res.stderr.strip().splitlines()[-1].startswith(
        "fer-lightning: error: the DDP process of rank 1 (pid "), res.stderr[-2000:]
    assert "died (killed by SIGKILL); the job stopped" in res.stderr
