"""Load test of fer-serve on the loopback: N concurrent clients posting real face photos, batch 1 vs dynamic batching,
a checkpoint vs its ONNX file, the deep and the handcrafted model.

    uv run python bench/serve.py [--size 112] [--clients 1 8 32] [--seconds 8] [--rounds 4] [--max-batch 16]
                                 [--batch-timeout 0.02] [--models deep handcrafted] [--formats ckpt onnx]

Each model is trained for one epoch on the synthetic set (random-init MobileNetV2: weights do not change the speed)
at ``--size`` pixels and exported to ONNX by ``fer-export``'s code. For every model, format and batching setting a
``fer-serve`` process is started on a free 127.0.0.1 port (a model's four together); then, for each client count,
that many clients post the London-faces photos (../shared/data/london-faces-256, else the 12 test fixtures) one
after the other, to each server in turn, ``--rounds`` windows of ``--seconds / --rounds`` each, interleaved, so
that a load that varies during the run falls on every setting (bounded: at most 100000 requests a window). The
clients are cheap (one asyncio process, a keep-alive connection each, requests encoded beforehand), so that they
leave the cores to the server. Prints requests/s, p50/p95/p99 latency (seconds, as the clients see it), errors,
the server's CPU time per answered request (all its processes, from /proc, idle time included) and the batch sizes
it formed (from its /metrics); the last line is the dynamic-batching / batch-1 throughput ratio at the largest
client count for the deep checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fer_lightning.deploy.exporters import export  # noqa: E402
from fer_lightning.engine.configs import config_dir  # noqa: E402
from fer_lightning.engine.training import train  # noqa: E402
from tests.conftest import LONDON_FIXTURES  # noqa: E402
from tests.serving import london_photos, start, stop, wait_ready  # noqa: E402

MAX_REQUESTS = 100_000


def tiny_checkpoint(model: str, size: int, out: Path) -> Path:
    overrides = [f"model={model}", f"data.image_size={size}", "trainer.max_epochs=1", "logger=none",
                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                 f"data.cache_dir={out / 'cache'}", f"paths.output_dir={out / model}"]
    if model != "handcrafted":
        overrides.append("model.backbone.weights=none")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return Path(train(compose("train", overrides=overrides))["best_checkpoint"])


async def load(url: str, photos: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` concurrent clients posting photos for ``seconds``: throughput, latency percentiles, errors.

    Cheap clients, so that they leave the cores to the server: one asyncio process, a keep-alive connection per
    client, the requests encoded once beforehand, only the status line and ``content-length`` read back."""
    host, port = url.rsplit("/", 1)[1].split(":")
    requests = [b"POST /predict HTTP/1.1\r\nhost: %s\r\ncontent-type: image/jpeg\r\ncontent-length: %d\r\n\r\n"
                % (host.encode(), len(p)) + p for p in photos]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def one(k: int) -> None:
        nonlocal errors
        reader = writer = None
        i = k
        while time.perf_counter() < stop and len(latencies) + errors < MAX_REQUESTS:
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                ok = head.startswith(b"HTTP/1.1 200")
            except (OSError, asyncio.IncompleteReadError):  # a reset or refused connection: an error, not the end
                ok, writer = False, None
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
            i += clients
        if writer is not None:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(clients)))
    return {"seconds": time.perf_counter() - began, "latencies": latencies, "errors": errors}


def summary(windows: list[dict]) -> dict:
    """The windows of one setting together: requests/s over their total time, latency percentiles, errors."""
    latencies = [t for w in windows for t in w["latencies"]]
    p = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {"rps": len(latencies) / sum(w["seconds"] for w in windows), "p50": p[0], "p95": p[1], "p99": p[2],
            "errors": sum(w["errors"] for w in windows), "n": len(latencies)}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its descendants (Linux /proc; nan elsewhere)."""
    try:
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    except OSError:
        return float("nan")
    tree, todo = set(), [pid]
    while todo:
        tree.add(p := todo.pop())
        todo += [c for c, (parent, _) in stats.items() if parent == p and c not in tree]
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def batches(url: str) -> dict[int, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {int(line.split('"')[1]): float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("fer_serve_batches_total")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=4, help="windows per setting, interleaved (a load that varies "
                    "during the run is shared by the settings)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-timeout", type=float, default=0.02)
    ap.add_argument("--models", nargs="+", default=["deep", "handcrafted"])
    ap.add_argument("--formats", nargs="+", default=["ckpt", "onnx"])
    args = ap.parse_args()
    files = london_photos(40) or sorted(LONDON_FIXTURES.rglob("*.jpg"))
    photos = [f.read_bytes() for f in files]
    print(f"{len(photos)} photos ({files[0].parent.parent.name}), {args.size} px models, {args.seconds:g} s per "
          f"client count")
    settings = {"batch 1": ["max_batch_size=1"],
                "dynamic": [f"max_batch_size={args.max_batch}", f"batch_timeout={args.batch_timeout}"]}
    rps: dict[tuple[str, str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for model in args.models:
            ckpt = tiny_checkpoint(model, args.size, Path(tmp))
            paths = {"ckpt": ckpt}
            if "onnx" in args.formats:
                paths["onnx"] = export(ckpt, "onnx", Path(tmp) / f"{model}.onnx")["onnx"]
            servers = {}  # the model's servers start together (a loaded machine takes minutes to start each)
            try:
                for fmt in args.formats:
                    for setting, overrides in settings.items():
                        log = Path(tmp) / f"{model}-{fmt}-{setting.replace(' ', '')}.log"
                        servers[fmt, setting] = (*start(paths[fmt], *overrides, log=log), log)
                for proc, url, log in servers.values():
                    wait_ready(proc, url, log)
                for n in args.clients:  # side by side: the settings in turn, `--rounds` times, then the next count
                    seen = {key: ([], batches(url), cpu_seconds(proc.pid)) for key, (proc, url, _) in servers.items()}
                    for _ in range(args.rounds):
                        for key, (_, url, _) in servers.items():
                            seen[key][0].append(asyncio.run(load(url, photos, n, args.seconds / args.rounds)))
                    for (fmt, setting), (proc, url, _) in servers.items():
                        windows, before, cpu = seen[fmt, setting]
                        r = summary(windows)
                        cpu = (cpu_seconds(proc.pid) - cpu) / max(r["n"], 1) * 1000
                        formed = {s: round(c - before.get(s, 0)) for s, c in batches(url).items()}
                        formed = {s: c for s, c in formed.items() if c}
                        rps[model, fmt, setting, n] = r["rps"]
                        print(f"{model:11s} {fmt:4s} {setting:7s} {n:3d} clients: {r['rps']:7.1f} req/s, p50 "
                              f"{r['p50']:.3f} s, p95 {r['p95']:.3f} s, p99 {r['p99']:.3f} s, {r['errors']} "
                              f"errors, server CPU {cpu:.1f} ms/request, batches formed {formed}", flush=True)
            finally:
                for proc, _, _ in servers.values():
                    stop(proc)
    n, model, fmt = max(args.clients), args.models[0], args.formats[0]
    ratio = rps[model, fmt, "dynamic", n] / rps[model, fmt, "batch 1", n]
    print(f"dynamic batching / batch 1 throughput at {n} clients ({model}, {fmt}) ratio: {ratio:.1f}x")


if __name__ == "__main__":
    main()
