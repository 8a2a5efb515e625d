"""A fer-serve server in a subprocess on a free loopback port, for the server and page tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
LONDON = REPO.parent / "shared" / "data" / "london-faces-256"  # beside the clone (CI) or the worktree
if not LONDON.is_dir():
    LONDON = Path("/work/shared/data/london-faces-256")


def london_photos(n: int) -> list[Path]:
    """The first ``n`` photos of the London faces (both classes, alternating); empty when the set is absent."""
    if not LONDON.is_dir():
        return []
    happy, neutral = (sorted((LONDON / c).glob("*.jpg")) for c in ("happiness", "neutral"))
    mixed = [p for pair in zip(happy, neutral, strict=False) for p in pair]
    return mixed[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str | Path, *overrides: str, log: Path) -> tuple[subprocess.Popen, str]:
    """``fer-serve ckpt_path=model`` started in its own session on a free port: the process and its base URL."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fer_lightning.serve", f"ckpt_path={model}", f"port={port}", *overrides],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 900) -> None:
    """Until ``/health`` answers OK (a loaded 2-core machine may take minutes to start the workers)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"fer-serve exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"fer-serve did not start in {timeout} s: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (LitServe's graceful shutdown of its workers), then whatever of its session outlived it."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def serving(model: str | Path, *overrides: str, log: Path) -> Iterator[str]:
    """``fer-serve ckpt_path=model`` running until the block ends; yields its base URL once ``/health`` is OK."""
    proc, url = start(model, *overrides, log=log)
    try:
        wait_ready(proc, url, log)
        yield url
    finally:
        stop(proc)
