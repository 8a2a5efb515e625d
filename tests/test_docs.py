"""The documentation stays true to the code: the site builds with ``mkdocs build --strict``, the README stays a short
front page whose links resolve, every documented command parses as its command's configuration, and the examples
run (python blocks, and bash blocks marked ``<!-- test: run -->``).

Markers (an HTML comment on the line just before a fenced block): ``<!-- no-test -->`` (neither run nor parsed),
``<!-- file: path -->`` (written to that file before the blocks after it run), ``<!-- test: run -->`` (a bash block
whose lines run in a subprocess), ``<!-- test: slow -->`` (the page's examples are a slow test). See
docs/development.md.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from fer_lightning.engine.configs import config_dir

from .conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = [README, *PAGES]
README_MAX_LINES = 300

# console script -> module of fer_lightning; module -> Hydra config name (report is not a Hydra command)
SCRIPTS = {"fer-train": "train", "fer-eval": "evaluate", "fer-predict": "predict", "fer-report": "report",
           "fer-export": "export", "fer-serve": "serve"}
CONFIG_NAMES = {"train": "train", "evaluate": "eval", "predict": "predict", "export": "export", "serve": "serve"}
REPORT_OPTIONS = {"report.output", "report.match"}
# Hydra's command-line flags that take a value
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd",
                     "--package", "-p", "--info", "-i", "--resolve"}
HELP_FLAGS = {"--help", "-h", "--hydra-help"}
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")


# ----------------------------------------------------------------------------------------------- reading pages
@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, text, the marker on the line before it, and where it starts."""

    lang: str
    text: str
    marker: str | None
    where: str


def blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)\s*", lines[i])
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{path.name}:{i + 1}: a code block that is never closed"
        marker = re.fullmatch(r"<!--\s*(.+?)\s*-->", lines[i - 1].strip()) if i else None
        found.append(Block(fence[1], "\n".join(lines[i + 1 : end]) + "\n", marker[1] if marker else None,
                           f"{path.relative_to(REPO)}:{i + 1}"))
        i = end + 1
    return found


def shell_lines(text: str) -> list[str]:
    """The command lines of a bash block: continuation lines joined, comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def tokens(line: str) -> list[str]:
    """A shell line split as the shell would, with shell substitutions (``$(date ...)``, ``${SLURM_JOB_ID}``) made
    plain values and placeholders that stand for whole arguments (``<the run's overrides>``) dropped."""
    line = re.sub(r"\$\([^)]*\)", "X", line)
    line = re.sub(r"\$\{[A-Z_][A-Z0-9_]*\}|\$[A-Z_][A-Z0-9_]*", "X", line)  # upper case: the shell's, not Hydra's
    line = re.sub(r"(?:(?<=\s)|^)<[^<>]*>(?=\s|$)", " ", line)
    return shlex.split(line, comments=True)


def command_of(line: str) -> tuple[str, list[str]] | None:
    """``(module, arguments)`` of a line that runs a fer-lightning command (``fer-train ...``, ``python -m
    fer_lightning.train ...``, with or without ``uv run``, ``srun``, ``torchrun``); None for any other line."""
    words = tokens(line)
    ends = [i for i, w in enumerate(words) if re.fullmatch(r"\d?>>?\S*|<|&&?|\|\|?|;", w)]
    words = words[: ends[0]] if ends else words  # the command ends at a redirection, `&`, `|` or `;`
    for i, word in enumerate(words):
        if word in SCRIPTS:
            return SCRIPTS[word], words[i + 1 :]
        if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("fer_lightning."):
            return words[i + 1].split(".", 1)[1], words[i + 2 :]
    return None


def documented_commands() -> list[tuple[str, str]]:
    """``(where, line)`` of every command line in the bash blocks of the README and the pages."""
    return [(block.where, line) for path in MARKDOWN for block in blocks(path)
            if block.lang in ("bash", "sh", "shell") and block.marker != "no-test"
            for line in shell_lines(block.text) if command_of(line) is not None]


COMMANDS = documented_commands()


# ----------------------------------------------------------------------------------------------- the site
def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site"),
                           "-f", str(REPO / "mkdocs.yml")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert (tmp_path / "site" / "extending" / "index.html").is_file()


def test_the_readme_is_a_short_front_page():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; keep it to {README_MAX_LINES} and move text into docs/"


def heading_ids(path: Path) -> set[str]:
    """The anchors of a page's headings, as MkDocs makes them (Python-Markdown's toc slugify)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slugify(re.sub(r"[`*]", "", m[1]), "-") for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_readme_links_resolve_and_reach_every_page():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    linked = set()
    for target in targets:
        if re.match(r"[a-z]+:", target):  # https: ...
            continue
        file, _, anchor = target.partition("#")
        path = (REPO / file) if file else README
        assert path.exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_ids(path), f"README.md links to {target}: no such heading in {file}"
        linked.add(path.resolve())
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert not missing, f"README.md does not link to the pages {missing}"


def test_the_architecture_page_names_every_module():
    """The layout tree of docs/architecture.md names every module of the package in its folder, and nothing else: a
    module added, moved or renamed without the page fails here."""
    page = DOCS / "architecture.md"
    tree = next(b.text for b in blocks(page) if b.lang == "text" and b.text.startswith("fer_lightning/"))
    named, folders = set(), []  # (folder, module) pairs; folders: the open folders by indentation
    for line in tree.splitlines():
        if line.startswith("conf/"):
            break
        indent = len(line) - len(line.lstrip())
        words = line.split()
        folders = [(i, f) for i, f in folders if i < indent]
        if words and words[0].endswith("/"):
            folders.append((indent, words[0]))
            continue
        where = "".join(f for _, f in folders)
        for word in words:
            if not word.endswith(".py"):
                break
            named.add(where + word)
    actual = {p.relative_to(REPO).as_posix() for p in (REPO / "fer_lightning").rglob("*.py") if p.name != "__init__.py"}
    assert named == actual, (f"modules missing from docs/architecture.md: {sorted(actual - named)}; "
                             f"named there but not in the package: {sorted(named - actual)}")


# ----------------------------------------------------------------------------------------------- commands
def test_the_docs_document_commands_of_every_kind():
    """The parser finds the commands (so the checks below cannot pass by finding none)."""
    found = {command_of(line)[0] for _, line in COMMANDS}
    assert found == {"train", "evaluate", "predict", "report", "export", "serve"}, found
    assert len(COMMANDS) > 40


def first_of_sweeps(overrides: list[str], multirun: bool, where: str) -> list[str]:
    """Each sweep (``a,b,c``, ``range(10)``) replaced by its first value; a sweep without ``-m`` is an error."""
    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            out.append(override.input_line)
            continue
        assert multirun, f"{where}: {override.input_line} is a sweep, but the line has no -m"
        out.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
    return out


def hydra_arguments(args: list[str]) -> tuple[list[str], bool, str | None]:
    """``(overrides, multirun, config name)`` of a Hydra command's arguments."""
    overrides, multirun, name, skip = [], False, None, False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("--config-name", "-cn"):
            name, skip = args[i + 1], True
        elif arg in HYDRA_VALUE_FLAGS:
            skip = True
        elif arg.startswith("-"):
            continue
        else:
            overrides.append(PLACEHOLDER.sub("PLACEHOLDER", arg))
    return overrides, multirun, name


def check_report_line(args: list[str], where: str) -> None:
    for arg in args:
        if arg.startswith("report."):
            key, _, value = arg.partition("=")
            assert key in REPORT_OPTIONS and value, f"{where}: {arg} is not an option of fer-report"
            if key == "report.match":
                from fer_lightning.runs.survey import MATCHES

                assert value in MATCHES, f"{where}: report.match={value}: choose one of {MATCHES}"
        else:
            assert not arg.startswith("-") or arg in HELP_FLAGS, f"{where}: fer-report takes no flag {arg}"


def compose_line(module: str, args: list[str], where: str, tmp_path: Path):
    overrides, multirun, name = hydra_arguments(args)
    overrides = first_of_sweeps(overrides, multirun, where)
    if module == "train":  # resolvable without a Hydra run (the run dir) and outside the user's cache
        overrides += [f"paths.output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"]
    return compose(name or CONFIG_NAMES[module], overrides=overrides)


@pytest.mark.slow
def test_documented_commands_parse_as_their_configuration(tmp_path):
    """Every documented command line composes with its overrides: an override, config group or option that no longer
    exists fails here. ``fer-report`` lines use only its options. (Slow only for its number of lines: Hydra composes
    each in about a quarter of a second on 2 CPU cores.)"""
    failures = []
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for where, line in COMMANDS:
            module, args = command_of(line)
            if HELP_FLAGS & set(args):
                continue  # run for real below
            try:
                if module == "report":
                    check_report_line(args, where)
                else:
                    compose_line(module, args, where, tmp_path)
            except Exception as e:  # collect them all: one failing line should not hide the others
                failures.append(f"{where}: {line}\n    {e.__class__.__name__}: {str(e).splitlines()[0]}")
    assert not failures, "documented commands that no longer parse:\n" + "\n".join(failures)


@pytest.mark.slow
def test_documented_training_lines_pass_the_option_checks(tmp_path):
    """Beyond composing: the names, types and ranges ``fer-train`` checks before it builds anything
    (``fer_lightning.engine.checks``); slow only for importing the classes the configs name."""
    from omegaconf import OmegaConf

    from fer_lightning.engine.checks import check_config
    from fer_lightning.engine.startup import job_gpu

    OmegaConf.register_new_resolver("job_gpu", job_gpu, replace=True)
    failures = []
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for where, line in COMMANDS:
            module, args = command_of(line)
            if module != "train" or HELP_FLAGS & set(args):
                continue
            try:
                check_config(compose_line(module, args, where, tmp_path))
            except Exception as e:
                failures.append(f"{where}: {line}\n    {e.__class__.__name__}: {str(e).splitlines()[0]}")
    assert not failures, "documented training lines that fail the option checks:\n" + "\n".join(failures)


def subprocess_argv(line: str) -> list[str]:
    """A documented line as this interpreter runs it: ``uv run`` dropped, console scripts as ``python -m``."""
    words = tokens(line)
    while words and words[0] in ("uv", "run"):
        words.pop(0)
    if words[0] in SCRIPTS:
        return [sys.executable, "-m", f"fer_lightning.{SCRIPTS[words[0]]}", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise AssertionError(f"do not know how to run: {line}")


def run_line(line: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FER_LIGHTNING_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(subprocess_argv(line), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{line}\nexit code {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


HELP_LINES = [(where, line) for where, line in COMMANDS if HELP_FLAGS & set(command_of(line)[1])]


@pytest.mark.slow
@pytest.mark.parametrize(("where", "line"), HELP_LINES, ids=[where for where, _ in HELP_LINES])
def test_documented_help_runs(where, line, tmp_path, cache_dir):
    done = run_line(line, tmp_path, cache_dir)
    assert done.stdout.strip(), f"{where}: {line} printed nothing"


def test_help_lines_are_documented():
    assert {command_of(line)[0] for _, line in HELP_LINES} >= {"train", "report"}


# ----------------------------------------------------------------------------------------------- examples
def example_pages() -> list:
    params = []
    for page in PAGES:
        found = [b for b in blocks(page) if b.marker != "no-test" and (b.lang == "python" or b.marker == "test: run")]
        if not found:
            continue
        slow = any(b.marker in ("test: slow", "test: run") for b in blocks(page))
        params.append(pytest.param(page, id=page.stem, marks=[pytest.mark.slow] if slow else []))
    return params


def registries() -> list:
    """Every registry of the package that is imported, to undo what an example registers."""
    from fer_lightning.runtime.registry import Registry

    return [value for name, module in list(sys.modules.items()) if name.startswith("fer_lightning")
            for value in list(vars(module).values()) if isinstance(value, Registry)]


@pytest.mark.parametrize("page", example_pages())
def test_page_examples_run(page, tmp_path, cache_dir, monkeypatch):
    """The page's blocks in order, in an empty folder: files written, python blocks executed (each on its own), bash
    blocks marked ``test: run`` run line by line in a subprocess."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FER_LIGHTNING_CACHE", str(cache_dir))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = {id(r): (r, dict(r._entries)) for r in registries()}
    try:
        for block in blocks(page):
            if block.marker == "no-test":
                continue
            if block.marker and block.marker.startswith("file:"):
                dest = tmp_path / block.marker.split(":", 1)[1].strip()
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(block.text, encoding="utf-8")
            elif block.lang == "python":
                exec(compile(block.text, block.where, "exec"), {"__name__": "__main__"})
            elif block.marker == "test: run":
                for line in shell_lines(block.text):
                    run_line(line, tmp_path, cache_dir)
    finally:
        for registry, entries in before.values():  # what the examples registered goes again
            registry._entries.clear()
            registry._entries.update(entries)
        for name, module in list(sys.modules.items()):  # and so do the modules they wrote
            if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]


def test_python_blocks_pass_ruff(tmp_path):
    """The code a reader copies is held to the project's lint rules (``pyproject.toml``), its own modules sorted as
    local imports."""
    local = []
    for page in MARKDOWN:
        for n, block in enumerate(blocks(page)):
            if block.lang != "python":
                continue
            if block.marker and block.marker.startswith("file:"):
                name = Path(block.marker.split(":", 1)[1].strip()).name
                local.append(Path(name).stem)
            else:
                name = f"{page.stem.replace('-', '_')}_block{n}.py"
            (tmp_path / name).write_text(block.text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
         "--config", "lint.isort.known-first-party=['fer_lightning']",
         "--config", f"lint.isort.known-local-folder={sorted(local)!r}", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def test_every_documented_run_block_runs_commands_this_test_knows():
    for page in MARKDOWN:
        for block in blocks(page):
            if block.marker == "test: run":
                assert block.lang == "bash", block.where
                for line in shell_lines(block.text):
                    subprocess_argv(line)
