"""The layout docs/implementation.md ("The structure") describes, read from the code itself with `ast`: sizes, who
imports whom, who may end the process, and no history in the code."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train_cifar", "train_real", "tune", "viz", "plot", "bench"}
MODULES = sorted([*ROOT.glob("*.py"), *ROOT.glob("datasets/*.py"), *ROOT.glob("methods/*.py")])
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 900, 90


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported(path: Path) -> set[str]:
    """The top-level names of every project or library module that `path` imports, anywhere in it."""
    names = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_modules_are_found():
    names = {p.stem for p in MODULES}
    assert SCRIPTS | {"data", "models", "sln", "engine", "cli", "gpu_check", "timing", "__init__"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_900_lines_and_no_function_over_90(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree(path))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long, long


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_imports_a_script_and_the_loop_and_the_shared_modules_stay_below_the_cli(path):
    names = imported(path)
    assert not names & SCRIPTS - {path.stem}
    below = {"data": {"models", "cli", "engine"}, "models": {"data", "cli", "engine"}, "sln": {"cli", "engine"},
             "engine": {"cli"}, "noise": {"data", "cli"}, "errors": {"cli", "data", "engine"}}
    assert not names & below.get(path.stem, set()), path.stem


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_scripts_end_the_process(path):
    """Lower layers raise the project's own errors (errors.py); the scripts, through cli.fail and
    cli.exits_on_error, turn them into one line and an exit status. deps.py stops a Python without the packages;
    cluster.quiet_worker_exit is a Ray worker's SIGTERM handler, run in the worker's own process."""
    module = tree(path)
    allowed = [range(n.lineno, n.end_lineno + 1) for n in ast.walk(module)
               if isinstance(n, ast.FunctionDef) and (path.stem, n.name) == ("cluster", "quiet_worker_exit")]
    exits = [n.lineno for n in ast.walk(module) if isinstance(n, ast.Call)
             and ast.unparse(n.func) in ("sys.exit", "exit", "quit", "os._exit")
             and not any(n.lineno in r for r in allowed)]
    if path.stem not in SCRIPTS | {"cli", "deps"}:
        assert not exits, f"{path.name} ends the process at lines {exits}"


def test_no_code_or_doc_names_an_issue_number():
    """The code and the docs say what the code does, not the history of how it came to."""
    pattern = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)
    texts = [*MODULES, *ROOT.glob("tests/*.py"), ROOT / "README.md", *ROOT.glob("docs/*.md")]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in texts for n, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line) and p.name != "test_structure.py"]
    assert not found, found
