"""Pack what ``bench/gpu.py`` needs on a GPU machine that cannot download anything (a cluster node, a lent machine
with its own PyTorch image), so that its minutes go to measuring.

    uv run python bench/gpu_kit.py --out .gpu-kit           # here, with the package registry reachable
    # copy the checkout with .gpu-kit to the GPU machine, then there, in the checkout:
    bash .gpu-kit/run.sh --out gpu.json                     # runs gpu.py with the kit on its path

The kit holds: the packages such an image usually lacks (kornia, kornia-rs, hydra-core, omegaconf and
antlr4-python3-runtime by default, at the versions of ``uv.lock``), installed here for the GPU machine's Python on
x86-64 Linux (``uv pip install --target --python-platform --python-version --no-deps``) into ``site/``, so nothing
is installed there and none of the image's own packages (its torch, its Lightning) changes; the ImageNet
MobileNetV2 file from ``$TORCH_HOME`` (without it the check runs from random init and says so); and ``run.sh``,
which puts ``site/`` on ``PYTHONPATH``, points ``TORCH_HOME`` at the kit and runs ``bench/gpu.py`` with its
arguments. About 40 MB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MISSING = ("kornia", "kornia-rs", "hydra-core", "omegaconf", "antlr4-python3-runtime")
RUN = """#!/usr/bin/env bash
# Made by bench/gpu_kit.py: run bench/gpu.py on this machine with the kit's packages and ImageNet file.
# Usage, from the checkout: bash {kit}/run.sh [bench/gpu.py's arguments]
set -euo pipefail
kit="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$kit/site:$PWD${{PYTHONPATH:+:$PYTHONPATH}}" PYTHONUNBUFFERED=1
if [ -d "$kit/torch-home" ]; then export TORCH_HOME="$kit/torch-home"; fi
exec "${{FER_GPU_PYTHON:-python3}}" bench/gpu.py "$@"
"""


def locked_versions(lock: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The versions ``uv.lock`` pins for ``names``; one clear error for a name it does not hold.

    Examples:
        >>> import tempfile
        >>> lock = Path(tempfile.mkdtemp()) / "uv.lock"
        >>> _ = lock.write_text('[[package]]\\nname = "kornia"\\nversion = "0.9.0"\\n')
        >>> locked_versions(lock, ("kornia",))
        {'kornia': '0.9.0'}
    """
    packages = {p["name"]: p["version"] for p in tomllib.loads(lock.read_text())["package"] if "version" in p}
    unknown = [n for n in names if n not in packages]
    if unknown:
        raise SystemExit(f"{lock} pins no {', '.join(unknown)}: name packages the project depends on")
    return {n: packages[n] for n in names}


def install(versions: dict[str, str], python: str, site: Path) -> None:
    """``versions`` installed into ``site`` for ``python`` on x86-64 Linux, without their dependencies (the GPU image
    has those): uv picks the wheels for that platform and builds a pure-Python source archive here."""
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is not on PATH: install it (pip install uv) to pack the kit")
    cmd = [uv, "pip", "install", "-q", "--no-deps", "--target", str(site), "--python-platform",
           "x86_64-manylinux_2_28", "--python-version", python, "--python", sys.executable,
           *[f"{n}=={v}" for n, v in versions.items()]]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()
        raise SystemExit(f"could not install {', '.join(versions)} for Python {python}: {last[-1] if last else ''}")


def imagenet_file(torch_home: Path) -> Path | None:
    found = sorted((torch_home / "hub" / "checkpoints").glob("mobilenet_v2-*.pth"))
    return found[0] if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".gpu-kit", help="the kit's folder (default .gpu-kit, ignored by git)")
    ap.add_argument("--python", default="3.12", help="the GPU machine's Python version (default 3.12)")
    ap.add_argument("--packages", nargs="+", default=list(MISSING),
                    help="what the GPU image lacks (as uv.lock names them)")
    ap.add_argument("--torch-home", default=None, help="where the ImageNet file is (default: $TORCH_HOME or torch's)")
    args = ap.parse_args(argv)

    out = Path(args.out)
    site = out / "site"
    if site.exists():
        shutil.rmtree(site)
    versions = locked_versions(REPO / "uv.lock", tuple(args.packages))
    install(versions, args.python, site)
    print("packages: " + ", ".join(f"{n}=={v}" for n, v in versions.items()) + f" (Python {args.python})")
    import torch

    torch_home = Path(args.torch_home) if args.torch_home else Path(torch.hub.get_dir()).parent
    weights = imagenet_file(torch_home)
    if weights is not None:
        target = out / "torch-home" / "hub" / "checkpoints" / weights.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, target)
        print(f"ImageNet weights: {weights.name}")
    else:
        print(f"no ImageNet file under {torch_home}: the check will run from random init", file=sys.stderr)
    (out / "run.sh").write_text(RUN.format(kit=out))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"kit: {out} ({size:.1f} MB); on the GPU machine, from the checkout: bash {out}/run.sh --out gpu.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
