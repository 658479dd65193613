"""Small file helpers every script shares: whole-or-nothing writes, names that never replace a file, CSV, mean ± std.

One helper per job, so that every output of the project behaves the same way: a reader never sees half a file,
and an existing figure, table or config is never silently replaced.
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file in the same folder, then rename it to `path`: readers see the old
    file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folders_kept_only_on_success(folder: Path):
    """Around a download into `folder`: if the body raises, remove the folders it created that are still empty
    (`folder` and its missing parents), so that a mistyped --data_dir leaves no empty tree behind."""
    missing = [d for d in [folder, *folder.parents] if not d.exists()]    # deepest first
    try:
        yield
    except BaseException:
        for d in missing:
            with contextlib.suppress(OSError):   # not empty, or gone: leave it
                d.rmdir()
        raise


def write_new(path: Path, content: str | bytes) -> None:
    """Write a file whole, and never over an existing one (FileExistsError): os.link is atomic and refuses
    an existing name, where open(..., "x") would leave a half-written file behind on a crash."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(content) if isinstance(content, bytes) else tmp.write_text(content)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def already_written(contents: dict[Path, bytes]) -> bool:
    """Whether every one of these files exists with exactly this content (a figure drawn again is left as it is)."""
    return all(path.is_file() and path.read_bytes() == content for path, content in contents.items())


def free_stem(folder: Path, name: str, suffixes: list[str], overwrite: bool = False) -> Path:
    """folder/name, or the first of folder/name-2, name-3, ... for which no file name+suffix exists yet (all of
    `suffixes` at once, so that a figure and its CSV keep one name). With `overwrite`, folder/name itself."""
    for k in itertools.count(1):
        stem = folder / (name if k == 1 else f"{name}-{k}")
        if overwrite or not any(Path(f"{stem}{s}").exists() for s in suffixes):
            return stem


def csv_text(rows: list[list]) -> str:
    """Rows (the first one the header) as CSV text; None becomes an empty cell."""
    text = io.StringIO()
    csv.writer(text).writerows([["" if v is None else v for v in row] for row in rows])
    return text.getvalue()


def write_csv(path: Path, rows: list[list]) -> None:
    """Rows (the first one the header) as a CSV file, atomically; None becomes an empty cell."""
    write_atomic(path, lambda tmp: tmp.write_bytes(csv_text(rows).encode()))


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1, the usual '±' over seeds); no std from a single value."""
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def check_writable(folder: Path, flag: str) -> None:
    """Raise ValueError with a one-line reason when `folder` cannot hold a script's outputs: a file is in the way,
    or nothing can be created there. Scripts call it before any expensive work; it leaves nothing behind."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {folder}: {existing} is a file, not a folder; give a folder")
    try:   # create and remove a probe: os.access says yes to root even where writing fails
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as e:
        raise ValueError(f"{flag} {folder}: cannot write in {existing} ({e.strerror or e}); "
                         "give a folder you can write to")


def duration(seconds: float) -> str:
    """A time span as a person reads it: 42s, 7m05s, 3h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def time_left(seconds_done: list[float], n_left: int) -> str:
    """'about 3h02m left': the mean time of the units done so far, times the units left."""
    if not n_left:
        return "done"
    if not seconds_done:
        return "time left unknown"
    return f"about {duration(sum(seconds_done) / len(seconds_done) * n_left)} left"
