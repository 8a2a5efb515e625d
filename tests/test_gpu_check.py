"""bench/gpu.py, the one-shot GPU check: its ``--dry-run`` (the same steps on the CPU, tiny sizes) runs every step
and prints a row for each; a step that fails prints one line and the next step still runs."""

import importlib.util
import json
import os
import platform
import subprocess
import sys

import pytest

from .conftest import REPO

SCRIPT = REPO / "bench" / "gpu.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_failing_step_prints_one_line_and_the_next_runs(tmp_path, capsys):
    gpu = gpu_check()
    out = tmp_path / "gpu.json"
    code = gpu.main(["--dry-run", "--only", "features", "augment", "--fail-step", "features", "--out", str(out),
                     "--work", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert code == 1  # a step failed
    assert [ln for ln in printed.splitlines() if "failed" in ln and ln.startswith("step ")] == [
        "step features failed: made to fail (--fail-step)"]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["step"], r["status"]) for r in rows] == [
        ("features", "failed: made to fail (--fail-step)"), ("augment", "ok")]
    assert rows[1]["numbers"]["images_per_s"] > 0
    table = [ln for ln in printed.splitlines() if ln.startswith("| ")]
    assert len(table) == 2 + len(rows) and table[-1].startswith("| augment | kornia augmentation")


def test_only_and_skip_select_steps(tmp_path, capsys):
    gpu = gpu_check()
    assert gpu.main(["--dry-run", "--skip", *[s for s in gpu.STEPS if s != "augment"],
                     "--work", str(tmp_path)]) == 0
    assert [ln.split(":")[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")] == [
        "step augment"]


@pytest.mark.slow
def test_dry_run_prints_a_row_for_every_step(tmp_path):
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(tmp_path / "w")],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    steps = ["tests", "features", "augment", "finetune", "paper", "ddp", "evaluate", "predict", "export"]
    assert [r["step"] for r in rows if r["step"] not in {x["step"] for x in rows[: rows.index(r)]}] == steps
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert len([r for r in rows if r["step"] == "finetune"]) == 4  # fp32, bf16, + channels_last, + compile
    features = next(r for r in rows if r["step"] == "features")
    assert features["numbers"]["max_abs_diff_vs_cpu"] == 0
    assert [r["what"].split(" (")[0] for r in rows if r["step"] == "paper"] == [
        "experiment=paper end to end", "handcrafted stage", "hybrid stage"]
    printed = res.stdout.splitlines()
    header = printed.index("| step | what | result | target | seconds | peak GPU MB | status |")
    table = [ln for ln in printed[header:] if ln.startswith("| ")]  # (the paper run prints its own table above)
    assert len(table) == 2 + len(rows) and all(ln.count(" | ") == 6 for ln in table)


def test_the_gpu_step_collects_every_cuda_marked_test():
    """On a GPU machine the tests step collects only :func:`gpu_test_files` (an image without selenium or litserve
    must not stop the collection): no CUDA-marked test of the suite may be left out of them."""
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                          str(REPO / "tests")], cwd=REPO, capture_output=True, text=True, timeout=300)
    collected = {ln.split("::")[0] for ln in res.stdout.splitlines() if "::" in ln}
    assert collected, res.stdout[-2000:] + res.stderr[-2000:]
    selected = {str(p.relative_to(REPO)) for p in gpu_check().gpu_test_files()}
    assert collected == selected
    assert "tests/test_serve_page.py" not in selected


def test_a_second_check_in_one_work_folder_gets_its_own_run_folders(tmp_path):
    """A run folder that holds a finished run is never written over (fer-train refuses it): a second check with the
    same ``--work`` (a warm GPU machine) runs in ``check-2``, beside the shared cache."""
    gpu = gpu_check()
    first, second = gpu.check_folder(tmp_path), gpu.check_folder(tmp_path)
    assert (first.name, second.name) == ("check-1", "check-2") and first.is_dir() and second.is_dir()
    (tmp_path / "check-x").mkdir()
    assert gpu.check_folder(tmp_path).name == "check-3"


def gpu_kit():
    spec = importlib.util.spec_from_file_location("bench_gpu_kit", REPO / "bench" / "gpu_kit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_kit_takes_its_versions_from_the_lock_and_names_a_package_it_lacks():
    kit = gpu_kit()
    versions = kit.locked_versions(REPO / "uv.lock", kit.MISSING)
    assert set(versions) == set(kit.MISSING) and all(v[0].isdigit() for v in versions.values())
    with pytest.raises(SystemExit, match="pins no not-a-package"):
        kit.locked_versions(REPO / "uv.lock", ("kornia", "not-a-package"))


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the kit is packed for x86-64 Linux GPU machines")
def test_the_gpu_kit_runs_the_check_with_its_own_packages(tmp_path):
    """bench/gpu_kit.py packs kornia and hydra for a GPU image that lacks them (here: for this Python), and its
    run.sh runs bench/gpu.py with them first on the path; without an ImageNet file it says the check is random init."""
    kit = tmp_path / "kit"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_kit.py"), "--out", str(kit), "--python", version,
                          "--torch-home", str(tmp_path / "no-torch-home")], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "random init" in res.stderr and not (kit / "torch-home").exists()
    probe = subprocess.run([sys.executable, "-c", "import kornia, hydra; print(kornia.__file__, hydra.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(kit / "site")}, capture_output=True, text=True)
    assert probe.stdout.split() and all(p.startswith(str(kit / "site")) for p in probe.stdout.split()), probe
    run = subprocess.run(["bash", str(kit / "run.sh"), "--dry-run", "--only", "augment", "--work", str(tmp_path / "w")],
                         cwd=REPO, env={**os.environ, "FER_GPU_PYTHON": sys.executable}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "| augment | kornia augmentation" in run.stdout
