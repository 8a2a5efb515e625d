"""One-shot GPU check: everything that should run on a CUDA device, checked and measured in one command.

    uv run python bench/gpu.py --out gpu.json [--only STEP ...] [--skip STEP ...]
    uv run python bench/gpu.py --dry-run          # the same steps on the CPU with tiny sizes (what the tests run)

Steps, in order (each timed, with a time budget, and guarded: a failure prints its one line and the next step
runs; peak GPU memory is ``torch.cuda.max_memory_allocated`` reset per step, read from the child process for the
steps that run a command):

- ``tests``: the CUDA-marked tests (``pytest -m gpu``);
- ``features``: HOG+LBP images/s on the device, and its output equal to the CPU's (target >= 50,000 images/s);
- ``augment``: the training augmentation (kornia) images/s on the device;
- ``finetune``: deep fine-tuning (MobileNetV2 + head, forward, backward, Adam) images/s at 224 px: fp32,
  bf16-mixed, + channels_last, + torch.compile, at batch 128 and 256; warm steps, then timed steps (target
  >= 5,000 images/s with bf16 and channels_last);
- ``paper``: ``experiment=paper`` on the synthetic set end to end (``trainer=gpu``), with the handcrafted and hybrid
  stages' fit times;
- ``ddp``: ``trainer=ddp`` with one GPU (``experiment=smoke``);
- ``evaluate``, ``predict``: the commands on CUDA with a checkpoint trained on CUDA (paper's deep stage, else ddp's);
- ``export``: ONNX export of that checkpoint.

ImageNet weights are used when they are in torchvision's cache (``$TORCH_HOME``), else the backbone starts from
random init (said in the first line). Prints one markdown table at the end (it pastes into docs/scaling.md) and writes
the same rows as JSON (``--out``). On an H200 the steps took about 7 minutes in all (docs/scaling.md); each step's
budget is a cap for a step that hangs or crawls (10 minutes if every step ran to its cap).
``--fail-step NAME`` makes a step fail on purpose (the tests check that the next one still runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import features as feature_bench  # noqa: E402  (bench/features.py)
import loop as loop_bench  # noqa: E402  (bench/loop.py)
from hydra import compose, initialize_config_dir  # noqa: E402

from fer_lightning.data.augment import FaceAugment  # noqa: E402
from fer_lightning.engine.build import build  # noqa: E402
from fer_lightning.engine.configs import config_dir  # noqa: E402
from fer_lightning.features import HandcraftedFeatures  # noqa: E402
from fer_lightning.models.backbone import imagenet_weights_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FEATURES_TARGET, FINETUNE_TARGET = 50_000, 5_000
# Run a command's module in a child process and write its peak CUDA memory (bytes) to $FER_GPU_PEAK at exit.
CHILD = """import atexit, os, runpy, sys
def peak():
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with open(os.environ["FER_GPU_PEAK"], "w") as f:
            f.write(str(torch.cuda.max_memory_allocated()))
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


class StepFailed(Exception):
    """A step's one line of failure."""


@dataclass
class Row:
    step: str
    what: str
    result: str = ""
    seconds: float | None = None
    peak_mb: float | None = None
    target: str = ""
    status: str = "ok"
    numbers: dict = field(default_factory=dict)


@dataclass
class Context:
    dry: bool
    device: str
    work: Path  # this check's runs and files: a new folder per check
    cache: Path  # the synthetic set and the stores, shared by the checks that use one --work folder
    weights: str
    budget: float = 0.0
    started: float = 0.0
    checkpoint: Path | None = None  # a checkpoint trained on the device (for evaluate, predict, export)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def sync(self) -> None:
        loop_bench.sync(self.device)


# ---------------------------------------------------------------------------------------------- the steps
STEPS: dict[str, tuple[Callable[[Context], list[Row]], float, float]] = {}


def step(name: str, budget: float, dry_budget: float):
    """Register a step with its time budget in seconds (on the GPU, and in a dry run on a busy CPU)."""
    def register(fn: Callable[[Context], list[Row]]) -> Callable[[Context], list[Row]]:
        STEPS[name] = (fn, budget, dry_budget)
        return fn
    return register


def reset_peak(ctx: Context) -> None:
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(ctx: Context) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if ctx.device == "cuda" else None


def run_command(ctx: Context, module: str, *args: str) -> tuple[float, float | None, str]:
    """``python -m module args``: (seconds, peak MB, output). On the GPU in a child process stopped at the step's
    budget (its peak memory read from it); in a dry run in this process (the same code path, without paying for
    the imports again: a dry run is what the tests run). A non-zero exit is a :class:`StepFailed` with the
    command's last line."""
    if ctx.dry:
        return (*in_process(module, *args), None, "")
    peak_file = ctx.work / f"peak-{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}"
    env = {**os.environ, "FER_GPU_PEAK": str(peak_file), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-c", CHILD, module, *args], cwd=ctx.work, env=env,
                             capture_output=True, text=True, timeout=max(1.0, ctx.left()))
    except subprocess.TimeoutExpired:
        raise StepFailed(f"over its budget: stopped after {time.perf_counter() - start:.0f} s") from None
    seconds = time.perf_counter() - start
    peak = int(peak_file.read_text()) / 2**20 if peak_file.is_file() else None
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        raise StepFailed(f"exit {res.returncode}: {lines[-1] if lines else '(no output)'}")
    return seconds, peak, res.stderr + res.stdout


def in_process(module: str, *args: str) -> tuple[float]:
    """Run a command's ``__main__`` in this process with ``args`` as its command line: (seconds,)."""
    argv, start = sys.argv, time.perf_counter()
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise StepFailed(f"{module} exited with {e.code} (its line is above)") from None
    finally:
        sys.argv = argv
    return (time.perf_counter() - start,)


def deep_config(ctx: Context, size: int):
    """The training config of ``model=deep`` at ``size`` px (its augmentation and model sections)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=["model=deep", f"model.backbone.weights={ctx.weights}",
                                           f"data.image_size={size}", f"data.cache_dir={ctx.cache}"])


def train_options(ctx: Context) -> list[str]:
    """What every training command of the check shares: the cache, no logger or bars, and tiny sizes in a dry run."""
    options = [f"data.cache_dir={ctx.cache}", "logger=none", "trainer.enable_progress_bar=false",
               "trainer.enable_model_summary=false"]
    return options + (["data.image_size=32", "trainer.max_epochs=1"] if ctx.dry else [])


class _Tally:
    """A pytest plugin counting outcomes (a test skipped or failing in its setup counts once)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1


def gpu_test_files() -> list[Path]:
    """The test files that hold CUDA-marked tests: only these are collected on the GPU, so that a test file of an
    optional extra that a GPU machine's image lacks (selenium, litserve) cannot stop the collection."""
    return sorted(p for p in (REPO / "tests").glob("test_*.py") if "pytest.mark.gpu" in p.read_text())


@step("tests", 150, 120)
def cuda_tests(ctx: Context) -> list[Row]:
    """``pytest -m gpu`` on :func:`gpu_test_files`: in a child process on the GPU (a crash there leaves this check
    running); in a dry run in this process, on one test file (its imports are paid already)."""
    start = time.perf_counter()
    options = ["-m", "gpu", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml")]
    if ctx.dry:
        import pytest

        tally = _Tally()
        code = pytest.main([*options, str(REPO / "tests" / "test_precision.py")], plugins=[tally])
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally.counts.items())) or "no tests"
    else:  # -v: each test's line is written to tests.log as it ends, so a stopped run says where it was
        log = ctx.work / "tests.log"
        with log.open("w") as out:
            try:
                res = subprocess.run([sys.executable, "-m", "pytest", *options, "-v", "--durations=5",
                                      *map(str, gpu_test_files())], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                     text=True, timeout=max(1.0, ctx.left()))
            except subprocess.TimeoutExpired:
                lines = [ln for ln in log.read_text().splitlines() if "::" in ln]
                raise StepFailed("over its budget (pytest -m gpu stopped"
                                 + (f" after {lines[-1].split()[0]})" if lines else ")")) from None
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        code, summary = res.returncode, (lines[-1].strip("= ") if lines else "(no output)")
    if code not in (0, 5):  # 5: no test collected
        raise StepFailed(f"pytest -m gpu: {summary}")
    return [Row("tests", "pytest -m gpu", summary, time.perf_counter() - start)]


# a tolerance for the GPU's float32 sums against the CPU's (a different order of additions: about one unit in the
# last place; tests/test_features.py checks the same bound)
FEATURES_TOLERANCE = 1e-5


@step("features", 20, 60)
def handcrafted_features(ctx: Context) -> list[Row]:
    """HOG+LBP images/s on the device at batch 256 and 1024 (the larger batch amortises the kernel launches),
    and the largest difference from the CPU's result."""
    size, batches = (48, (16,)) if ctx.dry else (224, (256, 1024))
    kind = "mixed" if feature_bench.LONDON.is_dir() else "synthetic"
    rows = []
    for batch in batches:
        x, _ = feature_bench.inputs(batch, size, kind)
        cfg = {"hog": {"scales": [size]}, "lbp": {"scales": [size], "grid": [7, 7]}, "batch_size": batch}
        extractor = HandcraftedFeatures(**cfg)
        reference = extractor(x)  # the CPU's result
        xd = x.to(ctx.device)
        reset_peak(ctx)
        repeats = 2 if ctx.dry else 10
        seconds, out = feature_bench.timed(extractor, xd, repeats, ctx.sync)
        diff = max(float((out[k].cpu() - reference[k]).abs().max()) for k in reference)
        rate = batch / seconds
        same = "equal to the CPU's" if diff == 0 else f"max |diff| vs CPU {diff:.1e}"
        rows.append(Row("features", f"HOG+LBP, {batch} x {size} px ({kind} faces), on {ctx.device}",
                        f"{rate:,.0f} images/s; {same}", seconds * repeats, peak_mb(ctx),
                        f">= {FEATURES_TARGET:,} images/s", "ok" if diff <= FEATURES_TOLERANCE else "differs",
                        {"images_per_s": rate, "max_abs_diff_vs_cpu": diff}))
    return rows


@step("augment", 10, 30)
def augmentation(ctx: Context) -> list[Row]:
    size, batch = (32, 8) if ctx.dry else (224, 256)
    cfg = deep_config(ctx, size)
    augment = FaceAugment(**cfg.data.augment).to(ctx.device)
    x = torch.rand(batch, 1, size, size, device=ctx.device)
    reset_peak(ctx)
    repeats = 2 if ctx.dry else 20
    seconds, out = feature_bench.timed(augment, x, repeats, ctx.sync)
    assert out.device.type == ctx.device and out.shape == x.shape
    return [Row("augment", f"kornia augmentation (flip, rotation, zoom, brightness), {batch} x {size} px",
                f"{batch / seconds:,.0f} images/s on {ctx.device}", seconds * repeats, peak_mb(ctx),
                numbers={"images_per_s": batch / seconds})]


# name, bf16 autocast, channels_last, torch.compile
VARIANTS = (("fp32", False, False, False), ("bf16-mixed", True, False, False),
            ("bf16-mixed + channels_last", True, True, False),
            ("bf16-mixed + channels_last + compile", True, True, True))


def finetune_rate(ctx: Context, cfg, batch: int, bf16: bool, channels_last: bool, compiled: bool) -> float:
    """Images/s of training steps of ``model=deep`` (the whole backbone trained) on random batches."""
    model = build(cfg.model, class_names=[str(i) for i in range(7)]).to(ctx.device).train()
    model.channels_last = channels_last
    model.compile_backbone = (True if not ctx.dry else "eager") if compiled else False
    model.configure_model()  # the project's own speed options
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    size = int(cfg.data.image_size)
    x = torch.rand(batch, 1, size, size, device=ctx.device)
    y = torch.randint(0, 7, (batch,), device=ctx.device)
    autocast = (torch.autocast(ctx.device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())

    def train_step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    warm, steps = (1, 2) if ctx.dry else (3, 10)
    for _ in range(warm):
        train_step()
    ctx.sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step()
        ctx.sync()
        times.append(time.perf_counter() - start)
        if ctx.left() < 0:
            break
    return batch / statistics.median(times)


@step("finetune", 120, 90)
def finetuning(ctx: Context) -> list[Row]:
    size, batches = (32, (4,)) if ctx.dry else (224, (128, 256))
    cfg = deep_config(ctx, size)
    rows = []
    for batch in batches:
        for name, bf16, channels_last, compiled in VARIANTS:
            what = f"deep fine-tuning, {size} px, batch {batch}, {name}"
            if ctx.left() < 0:
                rows.append(Row("finetune", what, status="skipped: over the step's budget"))
                continue
            reset_peak(ctx)
            start = time.perf_counter()
            rate = finetune_rate(ctx, cfg, batch, bf16, channels_last, compiled)
            target = f">= {FINETUNE_TARGET:,} images/s" if bf16 and channels_last else ""
            rows.append(Row("finetune", what, f"{rate:,.0f} images/s", time.perf_counter() - start, peak_mb(ctx),
                            target, numbers={"images_per_s": rate}))
    return rows


def device_trainer(ctx: Context) -> str:
    return "trainer=cpu" if ctx.dry else "trainer=gpu"


@step("paper", 120, 240)
def paper(ctx: Context) -> list[Row]:
    out = ctx.work / "paper"
    seconds, peak, _ = run_command(ctx, "fer_lightning.train", "experiment=paper", device_trainer(ctx),
                                   f"pipeline.models.deep.backbone.weights={ctx.weights}", f"hydra.run.dir={out}",
                                   *train_options(ctx))
    summary = {stage: json.loads((out / stage / "metrics.json").read_text())
               for stage in ("deep", "hybrid", "handcrafted")}
    ctx.checkpoint = Path(summary["deep"]["best_checkpoint"])
    rows = [Row("paper", f"experiment=paper end to end ({device_trainer(ctx)})",
                ", ".join(f"{s} test/acc {m['test/acc']:.3f}" for s, m in summary.items()), seconds, peak)]
    for stage in ("handcrafted", "hybrid"):
        m = summary[stage]
        rows.append(Row("paper", f"{stage} stage (fit: features, {m['epochs']} epochs, validation)",
                        f"fit {m['fit_seconds']:.1f} s", m["fit_seconds"], None,
                        numbers={"fit_seconds": m["fit_seconds"]}))
    return rows


@step("ddp", 40, 120)
def ddp(ctx: Context) -> list[Row]:
    out = ctx.work / "ddp"
    trainer = ["trainer=ddp_cpu", "trainer.devices=1"] if ctx.dry else ["trainer=ddp", "trainer.devices=1"]
    seconds, peak, _ = run_command(ctx, "fer_lightning.train", "experiment=smoke", *trainer, f"hydra.run.dir={out}",
                                   *train_options(ctx))
    m = json.loads((out / "metrics.json").read_text())
    ctx.checkpoint = ctx.checkpoint or Path(m["best_checkpoint"])
    return [Row("ddp", f"{' '.join(trainer)}, experiment=smoke", f"test/acc {m['test/acc']:.3f}", seconds, peak)]


def trained_checkpoint(ctx: Context) -> Path:
    if ctx.checkpoint is None or not ctx.checkpoint.is_file():
        raise StepFailed("no checkpoint trained on the device (the paper and ddp steps failed or were skipped)")
    return ctx.checkpoint


@step("evaluate", 40, 60)
def evaluate(ctx: Context) -> list[Row]:
    accelerator = "cpu" if ctx.dry else "gpu"
    seconds, peak, _ = run_command(ctx, "fer_lightning.evaluate", f"ckpt_path={trained_checkpoint(ctx)}",
                                   f"trainer.accelerator={accelerator}", "trainer.enable_progress_bar=false",
                                   f"data.cache_dir={ctx.cache}", f"hydra.run.dir={ctx.work / 'eval'}")
    m = json.loads((ctx.work / "eval" / "metrics.json").read_text())
    return [Row("evaluate", f"fer-eval on {ctx.device}", f"test/acc {m['test/acc']:.3f}", seconds, peak)]


@step("predict", 40, 60)
def predict(ctx: Context) -> list[Row]:
    faces = next(ctx.cache.glob("synthetic-jaffe-*"), None)
    if faces is None:
        raise StepFailed("no synthetic set in the cache (the paper and ddp steps failed or were skipped)")
    output = ctx.work / "predictions.csv"
    seconds, peak, _ = run_command(ctx, "fer_lightning.predict", f"ckpt_path={trained_checkpoint(ctx)}",
                                   f"input={faces}", f"device={ctx.device}", f"output={output}")
    rows = output.read_text().splitlines()[1:]
    return [Row("predict", f"fer-predict on {ctx.device}, {len(rows)} image files", f"{len(rows)} predictions",
                seconds, peak)]


@step("export", 60, 90)
def export(ctx: Context) -> list[Row]:
    output = ctx.work / "model.onnx"
    seconds, peak, _ = run_command(ctx, "fer_lightning.export", f"ckpt_path={trained_checkpoint(ctx)}",
                                   "format=onnx", f"output={output}")
    return [Row("export", "fer-export format=onnx of the checkpoint trained on the device",
                f"{output.stat().st_size / 2**20:.1f} MB", seconds, peak)]


# ------------------------------------------------------------------------------------------- the driver
def run_step(ctx: Context, name: str, fail: str | None) -> list[Row]:
    """One step, guarded: its rows, or one row (and one printed line) saying why it failed."""
    fn, budget, dry_budget = STEPS[name]
    ctx.budget, ctx.started = (dry_budget if ctx.dry else budget), time.perf_counter()
    try:
        if name == fail:
            raise StepFailed("made to fail (--fail-step)")
        rows = fn(ctx)
    except Exception as e:  # one line, and the next step runs
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        line = message if isinstance(e, StepFailed) else f"{type(e).__name__}: {message}"
        print(f"step {name} failed: {line}", flush=True)
        return [Row(name, "", seconds=time.perf_counter() - ctx.started, status=f"failed: {line}"[:200])]
    for r in rows:
        print(f"step {name}: {r.what}: {r.result or r.status}", flush=True)
    return rows


def table(rows: list[Row]) -> str:
    """The rows as one markdown table."""
    lines = ["| step | what | result | target | seconds | peak GPU MB | status |", "| --- " * 7 + "|"]
    for r in rows:
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else ""
        peak = f"{r.peak_mb:,.0f}" if r.peak_mb is not None else "n/a"
        lines.append(f"| {r.step} | {r.what} | {r.result} | {r.target} | {seconds} | {peak} | {r.status} |")
    return "\n".join(lines)


@contextlib.contextmanager
def workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep).resolve()
    else:
        with tempfile.TemporaryDirectory(prefix="fer-gpu-") as tmp:
            yield Path(tmp)


def check_folder(root: Path) -> Path:
    """A new folder in ``root`` for this check's runs (a run folder that holds a finished run is never written
    over, so a second check with the same ``--work`` gets its own): ``check-1``, ``check-2``, ..."""
    n = 1 + max((int(p.name[6:]) for p in root.glob("check-*") if p.name[6:].isdigit()), default=0)
    folder = root / f"check-{n}"
    folder.mkdir()
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny sizes")
    ap.add_argument("--only", nargs="+", choices=list(STEPS), help="these steps alone")
    ap.add_argument("--skip", nargs="+", choices=list(STEPS), default=[], help="all steps but these")
    ap.add_argument("--out", help="write the rows as JSON to this file")
    ap.add_argument("--work", help="keep the cache and each check's runs (check-1, check-2, ...) in this folder "
                    "(default: a temporary one)")
    ap.add_argument("--fail-step", choices=list(STEPS), help="make this step fail (to test the guard)")
    args = ap.parse_args(argv)

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device here: use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    weights = "imagenet" if imagenet_weights_file().is_file() else "none"
    name = "dry run on the CPU" if args.dry_run else torch.cuda.get_device_name()
    print(f"fer-lightning GPU check: {name}; torch {torch.__version__}, {os.cpu_count()} CPUs; backbone: "
          + ("ImageNet weights" if weights == "imagenet" else
             f"random init (no ImageNet file at {imagenet_weights_file()}; set TORCH_HOME)"), flush=True)
    names = [n for n in (args.only or STEPS) if n not in args.skip]
    rows: list[Row] = []
    start = time.perf_counter()
    with workdir(args.work) as root:
        ctx = Context(args.dry_run, device, check_folder(root), root / "cache", weights)
        for step_name in names:
            rows += run_step(ctx, step_name, args.fail_step)
    total = time.perf_counter() - start
    print()
    print(table(rows))
    print(f"\ntotal {total:.0f} s ({'dry run' if args.dry_run else name})")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "dry_run": args.dry_run, "weights": weights,
                                              "total_seconds": total, "rows": [asdict(r) for r in rows]}, indent=1))
    return 1 if any(r.status.startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
