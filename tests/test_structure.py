"""The package's shape, read from its own imports: layers that only import downwards, no import cycles, a top level that
holds only the commands, and no module too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "fer_lightning"
COMMANDS = {"train", "evaluate", "predict", "report", "export", "serve"}
# lower number = lower layer; a module may import its own layer and the layers below it (errors: everyone)
LAYERS = {
    "errors": 0,
    "runtime": 1,
    "io": 2,
    "runs": 3, "features": 3,
    "data": 4,
    "models": 5,
    "reporting": 6, "deploy": 6,
    "engine": 7,
    "commands": 8,
}
# siblings on one floor that stay apart
APART = {frozenset({"runs", "features"}), frozenset({"reporting", "deploy"})}
MAX_LINES = 350
MAX_TOP_LEVEL = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """``fer_lightning.engine.training`` -> ``engine``; a top-level command -> ``commands``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "errors"  # the package face imports errors only (checked below)
    if parts[1] in COMMANDS:
        return "commands"
    return parts[1]


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, at_module_level)`` of every fer_lightning import in a file (functions included)."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names if a.name.startswith("fer_lightning"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0 \
                    and child.module.startswith("fer_lightning"):
                if child.module == "fer_lightning":  # from fer_lightning import x: the submodule x, or the face
                    found.extend((f"fer_lightning.{a.name}", child.lineno, top) for a in child.names)
                else:
                    found.append((child.module, child.lineno, top))
            visit(child, inner)

    visit(tree, True)
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(target: str, known: dict[str, Path]) -> str:
    """The module an import names (``from fer_lightning.data import X``: the package ``fer_lightning.data``)."""
    while target not in known and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def test_every_import_goes_down_the_layers():
    known = modules()
    wrong = []
    for name, path in known.items():
        here = layer_of(name)
        assert here in LAYERS, f"{name} is in no layer; add its folder to LAYERS"
        for target, line, _ in imports(path):
            there = layer_of(resolve(target, known))
            if LAYERS[there] > LAYERS[here] or frozenset({here, there}) in APART or (
                    there == "commands" and here != "commands" and name != "fer_lightning"):
                wrong.append(f"{path.relative_to(REPO)}:{line} ({here}) imports {target} ({there})")
    assert not wrong, "imports that run up the layers:\n" + "\n".join(wrong)


def test_data_features_and_models_never_import_the_engine_reporting_deploy_or_a_command():
    known = modules()
    for name, path in known.items():
        if layer_of(name) in ("data", "features", "models"):
            for target, line, _ in imports(path):
                assert layer_of(resolve(target, known)) not in ("engine", "reporting", "deploy", "commands"), (
                    f"{path.relative_to(REPO)}:{line} imports {target}")


def test_no_import_cycles():
    """Between modules, counting the imports made when a module is imported."""
    known = modules()
    graph = {name: {resolve(t, known) for t, _, top in imports(path) if top} - {name} for name, path in known.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith("fer_lightning.") and nxt in known and not nxt.startswith(node + "."):
                if node.startswith(nxt + ".") and nxt in graph:  # a module importing its own package's face
                    continue
                if state.get(nxt) == 1:
                    pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
                if nxt not in state:
                    visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(known):
        if name not in state:
            visit(name)


def test_the_top_level_holds_the_commands_only():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert set(top) <= COMMANDS | {"__init__", "errors"} and len(top) <= MAX_TOP_LEVEL, top
    assert {layer_of(resolve(t, modules())) for t, _, _ in imports(PACKAGE / "__init__.py")} <= {"errors"}


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines()))
            > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
