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


@contextmanager
def serving(model: str | Path, *overrides: str, log: Path, start_timeout: float = 240) -> Iterator[str]:
    """``fer-serve ckpt_path=model`` running until the block ends; yields its base URL once ``/health`` is OK."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fer_lightning.serve", f"ckpt_path={model}", f"port={port}", *overrides],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fer-serve exited ({proc.returncode}): {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fer-serve did not start in {start_timeout} s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()  # SIGTERM: LitServe's graceful shutdown of its workers
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        try:  # whatever of the group outlived the server
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
