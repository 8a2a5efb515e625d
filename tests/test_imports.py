"""The package as a library: declared dependencies, public API, version, and imports without side effects."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement

import fer_lightning

from .conftest import REPO

PACKAGE = REPO / "fer_lightning"
# modules that exist for one optional extra: the package imports them only inside a function, after checking the
# extra is installed (runtime.optional.require), so their module-level imports belong to the extra
EXTRA_MODULES = {"deploy/serving.py": "serve"}


def _imported(tree: ast.AST, in_functions: bool) -> set[str]:
    found = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not in_functions:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        found |= _imported(node, in_functions)
    return found


def third_party_imports(in_functions: bool = True) -> set[str]:
    """Every module the package imports that is neither ours nor stdlib: at any depth, inside functions too, or
    (``in_functions=False``) only those imported when a module is imported."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if not in_functions and path.relative_to(PACKAGE).as_posix() in EXTRA_MODULES:
            continue  # imported only when its extra is there: all its imports count as an optional feature's
        found |= _imported(ast.parse(path.read_text()), in_functions)
    return {m for m in found if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "fer_lightning"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_every_imported_distribution_is_declared():
    """What a module imports when it is imported is a required dependency; what a function imports when an optional
    feature runs (onnxruntime for export, av for video, facenet-pytorch for alignment) is required or in an extra."""
    declared = {Requirement(r).name.lower() for r in project()["dependencies"]}
    optional = {Requirement(r).name.lower() for reqs in project()["optional-dependencies"].values() for r in reqs}
    dists = metadata.packages_distributions()

    def undeclared(tops: set[str], allowed: set[str]) -> dict:
        return {top: dists.get(top) for top in tops if not {d.lower() for d in dists.get(top, [])} & allowed}

    eager = {m.split(".")[0] for m in third_party_imports(in_functions=False)}
    lazy = {m.split(".")[0] for m in third_party_imports()}
    assert {"torch", "scipy", "omegaconf", "matplotlib", "pytorch_lightning"} <= eager  # the scan sees them
    assert {"onnxruntime", "av", "facenet_pytorch"} <= lazy - eager
    missing = undeclared(eager, declared)
    assert not missing, f"imported by a module but not declared in [project] dependencies: {missing}"
    missing = undeclared(lazy, declared | optional)
    assert not missing, f"imported but declared neither in [project] dependencies nor in an extra: {missing}"
    assert not declared & optional, "a dependency is both required and optional"


def test_modules_of_an_extra_are_imported_only_inside_functions():
    """A module of an extra (deploy/serving.py: litserve) imported at module level anywhere would make every
    command need the extra."""
    names = {"fer_lightning." + m.removesuffix(".py").replace("/", ".") for m in EXTRA_MODULES}
    eager = set()
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() not in EXTRA_MODULES:
            eager |= _imported(ast.parse(path.read_text()), in_functions=False)
    assert not names & eager
    assert all((PACKAGE / m).exists() for m in EXTRA_MODULES)


def test_version_is_the_installed_distributions():
    assert fer_lightning.__version__ == metadata.version("fer-lightning") == project()["version"]


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("fer_lightning.models", {"DeepFER", "HandcraftedFER", "HybridFER", "FERClassifier", "load_model"}),
        ("fer_lightning.data", {"JAFFEDataModule", "FolderDataModule"}),
        ("fer_lightning.features", {"HandcraftedFeatures", "hog", "lbp_codes", "lbp_histograms"}),
    ],
)
def test_public_api(module, names):
    mod = importlib.import_module(module)
    assert names <= set(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    assert set(mod.__all__) <= set(dir(mod))


def test_models_are_exported_classes():
    from fer_lightning import models
    from fer_lightning.models.deep import DeepFER

    assert models.DeepFER is DeepFER
    classes = {c.__name__ for c in models.model_classes().values()}
    assert {"DeepFER", "HandcraftedFER", "HybridFER"} <= classes <= set(models.__all__)  # every model is exported
    with pytest.raises(AttributeError):
        models.NoSuchModel  # noqa: B018


# Imports every third-party module the package uses (their own import-time effects are theirs), takes a
# snapshot of process-wide state, imports every fer_lightning module, and reports what changed.
SIDE_EFFECTS = r"""
import importlib, json, logging, os, pkgutil, sys, warnings
import matplotlib, torch

for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError:  # `from x import function` scanned as a module name
        importlib.import_module(name.rsplit(".", 1)[0])

def state():
    root = logging.getLogger()
    return {"filters": [repr(f) for f in warnings.filters], "backend": matplotlib.get_backend(),
            "matmul": torch.get_float32_matmul_precision(), "root_handlers": [repr(h) for h in root.handlers],
            "root_level": root.level, "environ": dict(os.environ), "default_dtype": str(torch.get_default_dtype())}

before = state()
import fer_lightning
modules = sorted(m.name for m in pkgutil.walk_packages(fer_lightning.__path__, "fer_lightning."))
for m in modules:
    importlib.import_module(m)
after = state()
print(json.dumps({"modules": modules, "changed": {k: [before[k], after[k]] for k in before if before[k] != after[k]}}))
"""


@pytest.mark.slow
def test_importing_any_module_changes_no_global_state():
    # a backend that no module would pick: matplotlib.use("Agg") at import would show
    env = {**os.environ, "MPLBACKEND": "svg"}
    res = subprocess.run([sys.executable, "-c", SIDE_EFFECTS, json.dumps(sorted(third_party_imports()))],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"fer_lightning.train", "fer_lightning.reporting.figures", "fer_lightning.report",
            "fer_lightning.models.hybrid",
            "fer_lightning.engine.startup"} <= set(out["modules"])
    assert out["changed"] == {}
