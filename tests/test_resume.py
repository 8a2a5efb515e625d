"""Exact resume: a run killed (SIGKILL) or interrupted (Ctrl+C) mid-training and resumed from last.ckpt ends
bit-identical on the CPU to the run that was never interrupted; Ctrl+C prints the command that resumes it."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fer_lightning.engine.training import train
from fer_lightning.errors import FERError

from .conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow
VOLATILE = {"fit_seconds", "best_checkpoint"}
EXTRA = ["trainer.max_epochs=3", "callbacks.early_stopping=null", "logger=none",
         "callbacks.last_checkpoint.every_s=0"]  # last.ckpt every epoch: the kill lands after epoch 0 wrote it
SETTINGS = [*TINY, "model.backbone.weights=none", *EXTRA]


def start(out: Path, cache_dir: Path) -> subprocess.Popen:
    """The run in a subprocess, held at the start of epoch 1 (see :func:`wait_in_epoch_1`)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    gate = out.parent / f"{out.name}.gate"
    gate.mkdir(parents=True)
    return subprocess.Popen([sys.executable, "-m", "fer_lightning.train", *SETTINGS, f"data.cache_dir={cache_dir}",
                             f"hydra.run.dir={out}", "+callbacks.gate._target_=tests.gate.Gate",
                             f"+callbacks.gate.folder={gate}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """In the child: Ctrl+C's default action, even when the tests run where SIGINT is ignored (a background job,
    nohup), so that Python turns it into KeyboardInterrupt as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_in_epoch_1(proc: subprocess.Popen, out: Path, timeout: float = 1200) -> None:
    """Until the run has written ``last.ckpt`` at the end of epoch 0 and waits at the start of epoch 1 (held by
    ``tests.gate.Gate`` until the test creates ``release``), so a signal sent now lands mid-training."""
    waiting, deadline = out.parent / f"{out.name}.gate" / "waiting", time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if waiting.exists():
            assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
            return
        time.sleep(0.05)
    raise AssertionError("the run did not reach epoch 1 in time")


def release(out: Path) -> None:
    (out.parent / f"{out.name}.gate" / "release").touch()


def same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ma.items() if k not in VOLATILE} == {k: v for k, v in mb.items() if k not in VOLATILE}
    assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
    sa, sb = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    from hydra import compose, initialize_config_dir

    from fer_lightning.engine.configs import config_dir

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*SETTINGS, f"data.cache_dir={cache_dir}", f"paths.output_dir={out}"])
    train(cfg)
    return out


def test_epoch_seeds_depend_on_seed_epoch_and_rank_only():
    from fer_lightning.runtime.seeding import epoch_seed

    seeds = {epoch_seed(s, e, r) for s in (0, 1) for e in range(3) for r in (0, 1)}
    assert len(seeds) == 12 and epoch_seed(0, 2) == epoch_seed(0, 2, 0)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, cache_dir, make_cfg, uninterrupted):
    out = tmp_path / "killed"
    proc = start(out, cache_dir)
    wait_in_epoch_1(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "metrics.json").exists()  # killed mid-training
    with pytest.raises(FERError, match="interrupted run: resume it with ckpt_path="):
        train(make_cfg(*EXTRA, out=out))  # a new run may not start over its checkpoints
    train(make_cfg(*EXTRA, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", out=out))
    same_run(uninterrupted, out)
    info = json.loads((out / "run_info.json").read_text())
    # what changed on resume is recorded: only the test's gate, which the in-process resume leaves out
    assert len(info["resumed"]) == 1 and all(k.startswith("callbacks/gate") for k in info["resumed"][0]["changed"])


def test_ctrl_c_prints_the_resume_command_which_resumes_exactly(tmp_path, cache_dir, uninterrupted):
    out = tmp_path / "interrupted"
    proc = start(out, cache_dir)
    wait_in_epoch_1(proc, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    release(out)  # the resumed run (the same command, gate included) goes through
    hints = [line for line in err.splitlines() if line.startswith("fer-lightning: training was interrupted")]
    assert len(hints) == 1, err[-3000:]
    command = shlex.split(hints[0].split("resume it with: ", 1)[1])
    assert command[:3] == ["python", "-m", "fer_lightning.train"]
    assert f"ckpt_path={out.resolve() / 'checkpoints' / 'last.ckpt'}" in command
    assert f"hydra.run.dir={out.resolve()}" in command and f"data.cache_dir={cache_dir}" in command
    res = run_cli(*command[2:], cwd=tmp_path, env={"PYTHONPATH": str(REPO)})  # tests.gate importable
    assert res.returncode == 0, res.stderr[-3000:]
    same_run(uninterrupted, out)
