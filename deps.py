"""The packages the scripts need, checked before anything imports them: a Python without them (the system one,
when the project's venv is not active) gets one line saying which package is missing and how to get it, and
exit status 2, instead of a ModuleNotFoundError traceback.

Each script imports this module first; it uses the standard library only.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import sys
from pathlib import Path

# import name -> the name pip knows it by (requirements.txt pins the versions)
CORE = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "yaml": "PyYAML",
        "tensorboard": "tensorboard", "matplotlib": "matplotlib", "PIL": "pillow", "tqdm": "tqdm"}
EXTRA = {"tune.py": {"ray": "ray[tune]"}}     # what only some scripts need


def missing(packages: dict[str, str]) -> list[str]:
    """The pip names of the packages this Python cannot import."""
    return [pip for name, pip in packages.items() if importlib.util.find_spec(name) is None]


def message(script: str, absent: list[str]) -> str:
    typed = sys.argv[0] if sys.argv and sys.argv[0].endswith(script) else script     # the path as it was run
    here = Path(__file__).resolve().parent / ".venv"
    venv = shlex.quote(str(here) if os.path.relpath(here).startswith("..") else os.path.relpath(here))
    names = " and ".join(absent) if len(absent) < 3 else f"{', '.join(absent[:2])} and {len(absent) - 2} more"
    use = (f"run it with the project's venv (. {venv}/bin/activate, or {venv}/bin/python {shlex.quote(typed)})"
           if (here / "bin" / "python").exists() else "create the project's venv with make env, then run it with "
           f". .venv/bin/activate (or .venv/bin/python {shlex.quote(typed)})")
    return (f"error: {script} needs {names}, which {sys.executable} does not have; {use}, "
            "or pip install -r requirements.txt")


def check(script: str) -> None:
    absent = missing({**CORE, **EXTRA.get(script, {})})
    if absent:
        print(message(script, absent), file=sys.stderr)
        sys.exit(2)


def exit_on_sigterm() -> None:
    """From now until a run takes SIGTERM over (engine.run), SIGTERM ends the script with one line and exit status 143,
    as it does later, instead of no word and -15: it comes while Python imports torch or the data loads, before the
    run folder exists (a training script calls this right after importing this module)."""
    def stop(signum, frame):
        print("error: stopped by SIGTERM while starting, before the run folder was made; nothing of the run was "
              "written", file=sys.stderr, flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)


main = sys.modules.get("__main__")
check(Path(getattr(main, "__file__", None) or "python").name)
