"""A tune.py sweep folder <out_dir>/hp/hp_<timestamp>/: its settings, its lock and its result tables, as tune.py
writes them and as tune.py --resume and plot.py --plot_type hp read them back.

    sweep.yaml              the sweep's settings (read_sweep checks them before --resume uses them)
    runs/<exp_id>/          one run folder per trial
    sigma_search.md/.csv    sigma search: validation accuracy per sigma, the best sigma (sigma_table; read_hp_table
                            reads it for plot.py)
    table.md/.csv           --experiments: the paper-layout table of the trials (experiments_table)

A damaged or missing file raises DataError; the scripts turn it into one line.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import itertools
import math
from pathlib import Path

import numpy as np
import yaml

import cli
import files
import methods
import runs
from errors import DataError
from tables import load_run, make_table, with_derived


def new_hp_dir(out_dir: Path) -> Path:
    """A new, empty sweep folder <out_dir>/hp/hp_<timestamp>/ (hp_<timestamp>_1, ... when one started the same
    second)."""
    root = out_dir.resolve() / "hp"
    root.mkdir(parents=True, exist_ok=True)
    stamp = f"hp_{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    for suffix in itertools.count():
        hp_dir = root / (stamp if suffix == 0 else f"{stamp}_{suffix}")
        try:
            hp_dir.mkdir()
            return hp_dir
        except FileExistsError:
            continue


def lock_sweep(hp_dir: Path, held: contextlib.ExitStack) -> None:
    """One driver per sweep folder: a second (a --resume typed while the sweep still runs) would start every
    unfinished trial again beside the live ones, and each would fail on its run's lock. DataError when another
    process holds it."""
    runs.lock_folder(hp_dir, held, f"sweep {hp_dir.name} is being run")


def sweep_problem(sweep, parser: argparse.ArgumentParser) -> str | None:
    """What makes a sweep.yaml unusable by --resume (a wrong shape, an unknown method, a flag of the wrong type),
    or None. tune.py writes every key checked here; the values of the flags are checked by its preflight. `parser`:
    tune.py's, whose flags but the tune-only ones are a sweep's base flags."""
    if not isinstance(sweep, dict):
        return f"it holds {type(sweep).__name__ if sweep is not None else 'nothing'}, not a mapping of settings"
    kind = sweep.get("kind")
    if kind not in ("sigma_search", "experiments"):
        return f"kind is {kind!r}, not sigma_search or experiments"
    base, grid, res = sweep.get("base"), sweep.get("grid"), sweep.get("resources")
    if not isinstance(base, dict) or not isinstance(grid, dict) or not isinstance(res, dict):
        return "base, grid and resources must each be a mapping"
    if not (runs.is_number(res.get("cpu")) and res["cpu"] > 0 and runs.is_number(res.get("gpu")) and res["gpu"] >= 0):
        return f"resources must give cpu > 0 and gpu >= 0, got {res}"
    wanted = {"sigma": runs.is_number} if kind == "sigma_search" else \
        {"variant": lambda v: v in methods.METHODS, "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
         "noise_mode": lambda v: v in cli.NOISE_MODES + cli.NOISE_LABELS}
    for key, valid in wanted.items():
        values = grid.get(key)
        if not isinstance(values, list) or not values or not all(valid(v) for v in values):
            return f"grid: {key} must be a non-empty list of {'numbers' if key == 'sigma' else key + 's'}, got {values!r}"
    if set(grid) != set(wanted):
        return f"grid must hold {', '.join(wanted)}, got {', '.join(map(str, grid))}"
    if not isinstance(sweep.get("reuse_runs", []), list) or not all(isinstance(f, str) for f in sweep.get("reuse_runs", [])):
        return "reuse_runs must be a list of folders"
    if kind == "experiments":
        sigma = sweep.get("sigma")
        if not isinstance(sigma, dict) or not all(m in sigma and (s is None or runs.is_number(s))
                                                  for m in grid["noise_mode"] for s in [sigma.get(m)]):
            return f"sigma must map every noise mode of the grid to a number, got {sigma!r}"
        if not isinstance(sweep.get("lc_n_epoch"), int) or sweep.get("axis", "noise_mode") not in ("noise_mode", "noise_label"):
            return "lc_n_epoch must be an integer and axis noise_mode or noise_label"
        if not isinstance(sweep.get("experiments_file"), str):
            return "experiments_file must be the path of the experiments file"
    # an --experiments sweep unsets val_size: its trials train on the full training set
    tune_only = cli.flags_with(parser, cli.TUNE_ONLY)
    flags = {k: v for k, v in base.items() if k not in tune_only and not (k == "val_size" and v is None)}
    problem = runs.flag_value_problem(parser, flags)
    return None if problem is None else f"base: {problem}"


def read_sweep(hp_dir: Path, parser: argparse.ArgumentParser) -> dict:
    """A sweep's sweep.yaml, read as plain YAML (yaml.safe_load: tags that would build Python objects are refused)
    and checked (sweep_problem, with tune.py's `parser`); DataError when it is damaged. Flags a newer tune.py added
    are filled with their defaults, as a reused run's are (tune.reusable_run)."""
    path = hp_dir / "sweep.yaml"
    again = "restore it from a copy, or start the sweep again"
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); {again}")
    except yaml.YAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise DataError(f"{path} is damaged: not plain YAML{where} ({getattr(e, 'problem', None) or e}); {again}")
    problem = sweep_problem(sweep, parser)
    if problem:
        raise DataError(f"{path} is damaged: {problem}; {again}")
    tune_only = cli.flags_with(parser, cli.TUNE_ONLY)
    defaults = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(parser.parse_args([])).items()
                if k not in tune_only}
    sweep["base"] = {**defaults, **sweep["base"]}
    return sweep


# ----------------------------------------------------------------------------------------------------
# Result tables, read from the runs' metrics.csv

def metric_column(run_dir: Path, column: str) -> list[float]:
    """The values of one metrics.csv column, over the epochs that computed it (see --eval_every)."""
    return [row[column] for row in runs.read_metrics(run_dir / "metrics.csv") if row[column] is not None]


def sigma_table(hp_dir: Path, finished: dict[str, dict], sweep: dict) -> tuple[float, str]:
    """Write sigma_search.csv/.md: per sigma the validation accuracy at the last epoch and at the best
    epoch; the best sigma has the highest last-epoch validation accuracy (ties: the smaller sigma). A sigma of 0
    (the method without SLN noise: CE for SLN) is shown for reference and never chosen; where it scores as high
    as the chosen sigma or higher, a line says so."""
    rows = []
    for exp_id, config in finished.items():
        acc = metric_column(hp_dir / "runs" / exp_id, "val/acc")
        best = int(np.argmax(acc))
        rows.append([config["sigma"], round(100 * acc[-1], 4), round(100 * acc[best], 4), best + 1, exp_id])
    rows.sort(key=lambda r: r[0])
    best_sigma = max((r for r in rows if r[0] > 0), key=lambda r: (r[1], -r[0]))[0]
    files.write_csv(hp_dir / "sigma_search.csv",
                    [["sigma", "val_acc_last_pct", "val_acc_best_pct", "best_epoch", "exp_id"], *rows])
    b = sweep["base"]
    noise = (f"{b['noise_mode']} p={b['p']}" if b.get("noise_mode") else f"{b['noise_label']} labels"
             if b.get("noise_label") else "labels as given")
    m = methods.of({**b, "sigma": 1.0})          # the searched method: any sigma > 0 selects it from the base flags
    reference = methods.without_sln(m)
    lines = [f"Sigma search, {m.name}: {b['dataset_name']} {noise}, {b['model']}, {b['n_epochs']} epochs, "
             f"seed {b['seed']}; validation: {b['val_size']:.0%} of the noisy training set, noisy labels",
             "", "| sigma | val acc, last epoch (%) | val acc, best epoch (%) | best epoch | run |", "|---|---|---|---|---|"]
    lines += [f"| {s}{f' ({reference.name})' if s == 0 else ''} | {last:.2f} | {top:.2f} | {ep} | {exp_id} |"
              for s, last, top, ep, exp_id in rows]
    lines += ["", f"best sigma: {best_sigma} (highest last-epoch validation accuracy)"]
    zero = next((r for r in rows if r[0] == 0), None)
    chosen = next(r for r in rows if r[0] == best_sigma)
    if zero is not None and zero[1] >= chosen[1]:
        lines += ["", f"note: sigma 0 ({reference.name}, no SLN noise) scored {zero[1]:.2f} %, "
                      f"{'as high as' if zero[1] == chosen[1] else 'above'} the chosen sigma {best_sigma}'s "
                      f"{chosen[1]:.2f} %: on this split SLN noise did not help; sigma 0 is a reference, never "
                      "chosen (the grid's best is, as in the paper)"]
    text = "\n".join(lines) + "\n"
    files.write_atomic(hp_dir / "sigma_search.md", lambda tmp: tmp.write_text(text))
    return best_sigma, text


def experiments_table(hp_dir: Path, finished: dict[str, dict]) -> str:
    """Write table.md/.csv: the paper-layout table of the finished trials, the very one that
    `plot.py --table --runs_dir <sweep>/runs` makes from the same runs (tables.make_table)."""
    markdown, rows = make_table(with_derived([load_run(hp_dir / "runs" / exp_id) for exp_id in finished]))
    files.write_atomic(hp_dir / "table.md", lambda tmp: tmp.write_text(markdown))
    files.write_csv(hp_dir / "table.csv", rows)
    return markdown


# ----------------------------------------------------------------------------------------------------
# The sigma table read back, for plot.py --plot_type hp

HP_SIGMA_COLUMNS = ("sigma", "config/sigma")


def _hp_columns(header: list[str]) -> tuple[str | None, str | None, str | None]:
    """(sigma, last, best) column names of a sigma table, tolerant of naming: the accuracy columns are the
    ones whose names contain 'val', 'acc' and 'last' or 'best'."""
    low = {h: h.lower() for h in header}
    sigma = next((h for h in header if low[h] in HP_SIGMA_COLUMNS), None)
    last = next((h for h in header if all(w in low[h] for w in ("val", "acc", "last"))), None)
    best = next((h for h in header if all(w in low[h] for w in ("val", "acc", "best"))), None)
    return sigma, last, best


def read_hp_table(hp_dir: Path) -> tuple[Path, dict[float, tuple[list[float], list[float]]]]:
    """The sigma table of a tune.py sweep folder: {sigma: (last-epoch val acc %, best-epoch val acc %)}, one entry
    per trial. Reads the first CSV in the folder (sigma_search.csv first) with a sigma column ('sigma' or
    'config/sigma') and a last-epoch validation accuracy column (e.g. last_val_acc, val_acc_last_pct); the
    best-epoch column is optional. Accuracies may be fractions or percent (a name with 'pct' or '%', or any value
    above 1, means percent)."""
    csvs = sorted(hp_dir.glob("*.csv"), key=lambda p: (p.name != "sigma_search.csv", p.name))
    seen = []
    for path in csvs:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        header = list(rows[0]) if rows else []
        sigma, last, best = _hp_columns(header)
        seen.append(f"{path.name} ({','.join(header) or 'empty'})")
        if not (sigma and last):
            continue
        try:
            table = {c: [float(r[c]) for r in rows] for c in (sigma, last, best) if c}
        except (TypeError, ValueError):
            raise DataError(f"{path} has a non-number in {sigma}/{last}/{best}; is the sweep finished?")

        def percent(c: str) -> list[float]:
            scale = 1 if ("pct" in c.lower() or "%" in c or max(table[c]) > 1) else 100
            return [scale * v for v in table[c]]
        out: dict[float, tuple[list[float], list[float]]] = {}
        lasts, bests = percent(last), (percent(best) if best else [math.nan] * len(rows))
        for s, lv, bv in zip(table[sigma], lasts, bests):
            out.setdefault(s, ([], []))[0].append(lv)
            out[s][1].append(bv)
        return path, out
    raise DataError(f"{hp_dir} has no sigma table: expected a CSV with columns sigma,last_val_acc[,best_val_acc] "
                    f"(tune.py writes it when the sweep ends); found: {'; '.join(seen) or 'no CSV file'}")


def hp_folder(text: Path, runs_dir: Path) -> Path:
    """--hp_dir as a path, or a bare sweep id hp_<timestamp> looked up in hp/ beside the runs folder."""
    for candidate in (text, runs_dir.parent / "hp" / text):
        if candidate.is_dir():
            return candidate
    raise DataError(f"--hp_dir {text}: no such folder (nor {runs_dir.parent / 'hp' / text}); give a tune.py sweep "
                    "folder hp/hp_<timestamp>/")


def sweep_names(folders: list[Path]) -> list[str]:
    """A legend name per sweep folder: its noise setting from sweep.yaml ('sym p=0.4') where that tells the sweeps
    apart, else the folder's name."""
    def setting(folder: Path) -> str | None:
        try:
            base = yaml.safe_load((folder / "sweep.yaml").read_text())["base"]
            if base.get("noise_label"):         # CIFAR-N: a label set, no noise mode or rate
                return f"{base['dataset_name']} {base['noise_label']} labels"
            return f"{base['noise_mode']} p={base['p']:g}"
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            return None
    names = [setting(f) for f in folders]
    return names if None not in names and len(set(names)) == len(names) else [f.name for f in folders]
