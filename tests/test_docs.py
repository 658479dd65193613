"""Every `python <script>.py ...` command in README.md and docs/*.md must work with today's scripts.

`python <script> ... --help` would prove little: argparse prints the help and exits 0 as soon as it meets
--help, without looking at the other flags, and it accepts any unambiguous prefix of an option name. So
each documented command is checked against the script's own parser, `build_parser()`:

- every option in the command is one of the parser's option strings, exactly (no prefix matching);
- every literal value converts with the option's type and is one of its choices, if it has choices;
  positional arguments likewise;
- the whole command parses, and the script's `check_args(args)`, where the script has one, accepts it.

Placeholders (`<exp_id>`, `exp_...`, `hp_<timestamp>`, `[--threads 1]`, a trailing `...`) are replaced
by a harmless value or expanded first; such values are only checked for parsing. Commands of other
programs (`python3 -m venv`, `python -m pytest`, `python ../shared/...`) are not ours and are skipped.
Each script's `--help` is also run once as a subprocess. Nothing is trained.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the project's scripts; each must be documented at least once
SCRIPTS = ["train_cifar.py", "train_real.py", "tune.py", "plot.py", "viz.py", "bench.py"]
PLACEHOLDER = "PLACEHOLDER"

# `python` or `python3` (not `.venv/bin/python`), then a script path; `-m module` does not match
COMMAND_START = re.compile(r"(?<![\w./$-])python3?\s+(?P<script>[\w./-]+\.py)(?=\s|$)")
FENCE = re.compile(r"(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "2>&1", "2>", "&>"}
NEGATIVE_NUMBER = re.compile(r"^-\d+(\.\d*)?([eE][-+]?\d+)?$|^-\.\d+$")


@dataclass(frozen=True)
class Command:
    file: str      # relative to the repository root
    line: int      # 1-based line where the command starts
    text: str      # the command as documented (continuation lines joined)
    script: str    # e.g. train_cifar.py

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def code_texts(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every code line (fenced or indented; backslash continuations joined) and every
    inline code span (which may wrap onto the next line) of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[tuple[int, str]] = []
    fence: str | None = None
    code: list[tuple[int, str]] = []     # code lines, in order
    prose: list[tuple[int, str]] = []    # everything else, in order
    for n, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is None:
            m = FENCE.match(stripped)
            if m:
                fence = m.group(1)
                continue
            # an indented code block line (4 spaces) that holds a command, or continues one
            if re.match(r" {4,}\S", line) and (COMMAND_START.search(line) or (code and code[-1][0] == n - 1
                                                                              and code[-1][1].endswith("\\"))):
                code.append((n, line.rstrip()))
            else:
                prose.append((n, line))
        elif re.fullmatch(re.escape(fence[0]) + "{%d,}" % len(fence), stripped):
            fence = None
        else:
            code.append((n, line.rstrip()))
    # code: join lines that end with a backslash to the next one
    i = 0
    while i < len(code):
        start, text = code[i]
        while text.endswith("\\") and i + 1 < len(code) and code[i + 1][0] == code[i][0] + 1:
            i += 1
            text = text[:-1] + " " + code[i][1].strip()
        out.append((start, text))
        i += 1
    # prose: inline code spans, within one paragraph (they may wrap)
    paragraph: list[tuple[int, str]] = []
    for n, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((n, line))
            continue
        if paragraph:
            text = "\n".join(l for _, l in paragraph)
            for m in INLINE_CODE.finditer(text):
                out.append((paragraph[0][0] + text[:m.start()].count("\n"), " ".join(m.group(2).split())))
        paragraph = []
    return sorted(out)


def documented_commands() -> list[Command]:
    commands = []
    for path in DOC_FILES:
        for line, text in code_texts(path):
            for m in COMMAND_START.finditer(text):
                if "/" in m.group("script"):        # ../shared/data/prepare_cifar10.py and the like: not ours
                    continue
                rest = text[m.start():]
                nxt = COMMAND_START.search(rest, m.end() - m.start())   # two commands in one span: cut
                commands.append(Command(str(path.relative_to(ROOT)), line,
                                        rest[:nxt.start() if nxt else None].strip(), m.group("script")))
    return commands


def arguments(command: Command) -> list[str]:
    """The command's arguments after the script, placeholders replaced, comments and shell syntax cut off."""
    text = command.text.split(command.script, 1)[1]
    text = re.sub(r"<[^<>\n]*>", PLACEHOLDER, text)                   # <exp_id>, hp_<timestamp>, <CE exp_id>
    text = re.sub(r"\b(exp|hp)_\.\.\.", rf"\1_{PLACEHOLDER}", text)  # exp_...
    text = re.sub(r"\[(\s*-[^\[\]]*)\]", r"\1", text)                 # optional flags: [--threads 1]
    tokens = shlex.split(text, comments=True)
    for i, token in enumerate(tokens):
        if token in SHELL_OPERATORS:
            tokens = tokens[:i]
            break
    return [t for t in tokens if t != "..."]                          # "<exp_id> <exp_id> ..."


def is_option(token: str) -> bool:
    return token.startswith("-") and token != "-" and not NEGATIVE_NUMBER.match(token)


def check_value(name: str, action: argparse.Action, value: str) -> list[str]:
    if PLACEHOLDER in value:
        return []
    converted = value
    if callable(action.type):
        try:
            converted = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            return [f"{name}: {value!r} is not a valid {getattr(action.type, '__name__', action.type)} ({e})"]
    if action.choices is not None and converted not in action.choices:
        return [f"{name}: {value!r} is not one of the choices {', '.join(map(str, action.choices))}"]
    return []


def check_flags(parser: argparse.ArgumentParser, script: str, tokens: list[str]) -> list[str]:
    """Exact option names, literal values against types and choices, positionals against choices."""
    problems: list[str] = []
    options = parser._option_string_actions
    positionals = [a for a in parser._actions if not a.option_strings]
    n_positional = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not is_option(token):
            if n_positional >= len(positionals):
                problems.append(f"unexpected argument {token!r}: {script} takes no further positional argument")
            else:
                action = positionals[n_positional]
                problems += check_value(action.dest, action, token)
                n_positional += 1
            continue
        flag, has_value, inline_value = token.partition("=")
        action = options.get(flag)
        if action is None:
            near = difflib.get_close_matches(flag, list(options), n=1)
            problems.append(f"{flag} is not an option of {script}" + (f" (did you mean {near[0]}?)" if near else ""))
            while i < len(tokens) and not is_option(tokens[i]):   # its values, if any
                i += 1
            continue
        if has_value:
            values = [inline_value]
        else:
            nargs = action.nargs
            if nargs == 0:
                wanted = 0
            elif nargs is None:
                wanted = 1
            elif isinstance(nargs, int):
                wanted = nargs
            elif nargs == "?":
                wanted = 1 if i < len(tokens) and not is_option(tokens[i]) else 0
            else:   # "+", "*", REMAINDER: every value up to the next option
                wanted = next((j for j in range(i, len(tokens)) if is_option(tokens[j])), len(tokens)) - i
            values = tokens[i:i + wanted]
            i += wanted
            if len(values) < wanted or (nargs == "+" and not values):
                problems.append(f"{flag} needs a value")
        for value in values:
            problems += check_value(flag, action, value)
    return problems


def parse_and_check(module, parser: argparse.ArgumentParser, tokens: list[str]) -> list[str]:
    """The whole command through the parser, then through the script's own check_args, if it has one."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(tokens)
            if "-h" in tokens or "--help" in tokens:
                return []
            check = getattr(module, "check_args", None)
            if check is not None:
                check(args)
    except SystemExit as e:
        if e.code not in (0, None):
            return [f"refused (exit {e.code}): {(err.getvalue() or out.getvalue()).strip()}"]
    return []


COMMANDS = documented_commands()


def command_id(command: Command, seen: dict[str, int] = {}) -> str:  # noqa: B006 (ids only need to be unique)
    base = f"{command.file}:{command.line}:{command.script}"
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base}#{seen[base]}"


def test_every_script_is_documented():
    documented = {c.script for c in COMMANDS}
    assert set(SCRIPTS) <= documented, f"no documented command for {sorted(set(SCRIPTS) - documented)}"


@pytest.mark.parametrize("command", COMMANDS, ids=[command_id(c) for c in COMMANDS])
def test_documented_command(command: Command):
    if not (ROOT / command.script).is_file():
        pytest.fail(f"{command}\n  {command.script} does not exist in {ROOT}", pytrace=False)
    module = importlib.import_module(command.script[:-3])
    parser = module.build_parser()
    tokens = arguments(command)
    problems = check_flags(parser, command.script, tokens)
    if not problems:
        problems = parse_and_check(module, parser, tokens)
    if problems:
        pytest.fail(f"{command}\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def help_runs():
    """`python <script> --help` for every script, started together (each one imports torch)."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    procs = {s: subprocess.Popen([sys.executable, s, "--help"], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in SCRIPTS}
    results = {}
    try:
        for script, proc in procs.items():
            out, err = proc.communicate(timeout=600)
            results[script] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, help_runs):
    returncode, out, err = help_runs[script]
    assert returncode == 0, f"python {script} --help exited {returncode}:\n{err[-2000:]}"
    assert out.startswith("usage:") and f"{script}" in out.splitlines()[0], out[:500]


def test_readme_is_a_front_page_with_a_map_of_every_module():
    """At most 300 lines; its sections in the agreed order; one row of the repository map per Python
    module at the top level; a link to every page in docs/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    headings = [h.strip() for h in re.findall(r"^## (.+)$", text, re.M)]
    assert headings == ["Documentation", "Results", "The four models", "The earlier re-implementation's commands",
                        "Repository map"], headings
    map_section = text.split("## Repository map", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|", map_section, re.M)
    modules = sorted(p.name for p in ROOT.glob("*.py"))
    assert [m for m in modules if m not in rows] == []
    assert len(rows) == len(set(rows))
    docs_section = text.split("## Documentation", 1)[1]
    assert [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in docs_section] == []


def test_the_results_figures_quoted_are_the_runs_own():
    """Every figure README.md and results/mini_cifar10/README.md quote about the mini results is what
    results/mini_cifar10/figures.py computes from the committed runs (they had drifted once)."""
    spec = importlib.util.spec_from_file_location("figures", ROOT / "results" / "mini_cifar10" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    found = figures.figures()
    assert sum(len(v) for v in found.values()) > 20
    assert figures.missing(found) == []
