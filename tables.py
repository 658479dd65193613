"""The paper-layout results table from run folders, shared by plot.py --table and tune.py --experiments.

Runs that differ only in their seed (and in bookkeeping: ids, paths, devices) are repetitions of one experiment
and share a cell; a cell is the mean ± sample std over seeds of the reported network's test accuracy at the last
and at the best evaluated epoch. Tables are split by every other setting, rows are the paper's models and columns
the noise modes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import methods
from files import mean_std
from errors import DataError
from runs import read_metrics as read_metric_rows, read_run_config

VARIANT_ORDER = list(methods.METHODS)     # the paper's models in its order, then the baselines
COLUMN_ORDER = ["sym", "asym", "dependent", "openset"]
# Which network's test accuracy a table or compare figure shows (plot.py --network): the one each method reports, the
# trained network, or the momentum (EMA) network, which every method keeps and only SLN-MO and SLN-MO-LC report
ACCURACY_COLUMN = {"reported": "test/acc_reported", "net": "test/acc", "ema": "test/acc_ema"}
NETWORK_TEXT = {"reported": "the reported network (the EMA network for SLN-MO and SLN-MO-LC)",
                "net": "the trained network (for every method, also SLN-MO and SLN-MO-LC; Co-teaching's first)",
                "ema": "the momentum (EMA) network of every method, whether the method reports it or not"}


# ----------------------------------------------------------------------------------------------------
# Reading runs

@dataclass
class Run:
    exp_id: str
    folder: Path
    config: dict
    metrics: dict[str, np.ndarray]  # column -> one value per epoch, NaN where the run recorded none
    summary: dict | None            # None while the run is unfinished
    derived_from: str = ""          # another method's numbers read off a run of this method (with_derived), not a run
    # of its own: the method the run trained (its summary.json speaks of that method's reported network)

    @property
    def derived(self) -> bool:
        return bool(self.derived_from)

    def last_and_best(self, column: str = "test/acc_reported") -> tuple[float, float]:
        """(value at the last epoch, best value over epochs) of an accuracy column, in percent."""
        if column not in self.metrics:
            raise DataError(f"{self.folder / 'metrics.csv'} has no {column} column; it was not written by engine.py")
        acc = 100 * self.metrics[column]
        acc = acc[~np.isnan(acc)]   # epochs without a test evaluation (--eval_every) stay empty
        if not len(acc):
            raise DataError(f"{self.folder / 'metrics.csv'} has no {column} value in any epoch")
        return float(acc[-1]), float(acc.max())

    def at_best_val(self, column: str = "test/acc_reported") -> float | None:
        """The test accuracy (%) at the first epoch of best val/acc among the tested ones (engine.py's
        test_acc_at_best_val, the authors' Clothing1M number); None for a run without a validation set."""
        if "val/acc" not in self.metrics or column not in self.metrics:
            return None
        val, test = self.metrics["val/acc"], self.metrics[column]
        tested = np.flatnonzero(~np.isnan(val) & ~np.isnan(test))
        return None if not len(tested) else float(100 * test[tested[np.argmax(val[tested])]])


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """metrics.csv as float columns; empty cells (metrics a run could not compute) become NaN."""
    try:
        rows = read_metric_rows(path)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); is this a run folder of engine.py?")
    except ValueError as e:
        raise DataError(f"{path} holds something that is not a number ({e}); it was not written by engine.py")
    if not rows:
        return {}
    return {k: np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=float) for k in rows[0]}


def load_run(folder: Path) -> Run:
    config = read_run_config(folder)
    try:
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read run {folder}: {str(e).splitlines()[0]}")
    metrics_path = folder / "metrics.csv"
    if summary is None and not metrics_path.is_file():
        return Run(folder.name, folder, config, {}, None)   # started, but not one epoch done: skipped by tables
    return Run(folder.name, folder, config, read_metrics(metrics_path), summary)


SOURCE_REPORTED = "source/test/acc_reported"    # a derived row's copy of what its run reported


def with_derived(runs: list[Run]) -> list[Run]:
    """`runs`, and for each run of a method that another declares it trains as (`Method.same_training_as`: CE for
    CE-MO), that method's view of it: the same run, labelled as that method and reporting its network. Every run
    keeps both networks' test accuracy, so a CE run's momentum network is CE-MO's number at no extra cost."""
    out = list(runs)
    for m in methods.METHODS.values():
        if not m.same_training_as:
            continue
        column = ACCURACY_COLUMN[m.reported]
        for run in runs:
            if run.derived or run.config.get("variant") != m.same_training_as or column not in run.metrics:
                continue
            config = {**run.config, "variant": m.name, "method": m.name, "mo": m.mo}
            # val/acc is the run's reported network's (tune.py's split, Clothing1M's clean set): not this view's
            metrics = {**{k: v for k, v in run.metrics.items() if k != "val/acc"},
                       "test/acc_reported": run.metrics[column], SOURCE_REPORTED: run.metrics.get("test/acc_reported")}
            out.append(replace(run, config=config, metrics=metrics, derived_from=m.same_training_as))
    return out


def disagreement(run: Run) -> str | None:
    """What keeps a finished run from being reported as whole, or None: its metrics.csv must hold one readable row
    for each of the epochs its summary.json counts (a damaged row is skipped when read, see runs.read_metrics), and
    its last reported test accuracy must be the one summary.json recorded (each where summary.json records it)."""
    summary = run.summary or {}
    epochs = summary.get("epochs", "absent")
    have = [int(e) for e in run.metrics.get("epoch", [])]
    if epochs != "absent" and (not isinstance(epochs, int) or have != list(range(1, epochs + 1))):
        missing = sorted(set(range(1, epochs + 1)) - set(have)) if isinstance(epochs, int) else []
        return (f"its metrics.csv has {len(have)} readable epoch rows but its summary.json counts {epochs} epochs"
                + (f" (epoch {', '.join(map(str, missing[:5]))} missing or damaged)" if missing else ""))
    # a derived row (CE-MO of a CE run) is checked against what the run itself reported
    recorded, column = summary.get("last_test_acc"), run.metrics.get(SOURCE_REPORTED if run.derived else "test/acc_reported")
    if recorded is not None and column is not None:
        tested = column[~np.isnan(column)]
        if not len(tested) or float(tested[-1]) != float(recorded):
            return (f"its summary.json's last_test_acc {recorded} is not its metrics.csv's last test/acc_reported "
                    f"{float(tested[-1]) if len(tested) else None}")
    return None


def whole_runs(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """The finished runs whose files agree, and a note for each one left out, naming it and what is wrong."""
    kept, notes = [], []
    for run in runs:
        problem = disagreement(run)
        if problem:
            notes.append(f"run {run.exp_id} is left out: {problem}")
        else:
            kept.append(run)
    return kept, notes


def of_network(runs: list[Run], network: str) -> list[Run]:
    """The runs that a table or figure of `network` shows: a derived row only where each method's reported network
    is shown (for another network it would repeat its run's own row)."""
    return runs if network == "reported" else [r for r in runs if not r.derived]


def run_ids(runs_dir: Path) -> list[str]:
    """Names of the run folders (those with a config.yaml) in runs_dir."""
    return sorted(d.name for d in runs_dir.iterdir() if (d / "config.yaml").is_file())


# ----------------------------------------------------------------------------------------------------
# Grouping runs into the paper's tables

# Config entries that say where or how a run was made, not what was trained: runs that differ only in these
# and in the seed are repetitions of one experiment.
NOT_SETTINGS = {"exp_id", "seed", "data_dir", "out_dir", "device", "device_used", "deterministic", "eval_batch_size",
                "eval_every", "tune_trial_id", "tune_config", "resume", "amp", "precision", "channels_last", "compile", "variant_id",
                "make_new_custom_noise", "code", "versions", "runtime", "host", "noise", "n_train", "n_test", "dataset",
                "workers", "weights", "method"}   # method: the variant says it (runs before --method lack it)
# which method, with its settings (a method's own flags are absent from other methods' configs)
ROW_KEYS = ["variant", "sigma", "mo", "lc_n_epoch", "ema_alpha", "lc_augment", *methods.all_flags()]
COLUMN_KEYS = ["noise_mode", "noise_label"]   # the first one present: CIFAR's noise_mode, CIFAR-N's noise_label
HEADLINE_KEYS = ["dataset_name", "model", "p", "custom_noise", "n_epochs", "train_subset", "test_subset"]


def settings(config: dict) -> dict:
    """What a run trained, from its config: bookkeeping keys and nested records dropped, and a key set to None
    (tune.py's val_size of a table run, train_cifar.py's resume) counted as absent. bf16 runs are a setting of
    their own (8 mantissa bits change the numbers); fp32 and tf32 pool, as they did before --precision existed."""
    found = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
             if k not in NOT_SETTINGS and not isinstance(v, dict) and v is not None}
    if config.get("precision") == "bf16" or config.get("amp"):
        found["precision"] = "bf16"
    return found


def one_run_per_seed(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """The runs to pool, at most one per experiment and seed: where a seed has several finished runs of the same
    settings (a rerun, a demo run twice), the newest by its id's start time; and one note per seed so treated,
    naming the runs left out. The mean ± std over n seeds then counts n distinct seeds."""
    by_seed: dict[tuple, list[Run]] = {}
    for run in runs:
        key = (tuple(sorted(settings(run.config).items(), key=str)), str(run.config.get("seed")))
        by_seed.setdefault(key, []).append(run)
    kept, notes = [], []
    for (_, seed), same in by_seed.items():
        same.sort(key=lambda r: r.exp_id)
        kept.append(same[-1])
        if len(same) > 1:
            notes.append(f"seed {seed} of {same[-1].config.get('variant', '?')} "
                         f"({column_of(same[-1].config)}) has {len(same)} runs: the newest, {same[-1].exp_id}, is "
                         f"used; left out: {', '.join(r.exp_id for r in same[:-1])}")
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(kept, key=lambda r: order[id(r)]), notes


def column_of(config: dict) -> str:
    return next((str(config[k]) for k in COLUMN_KEYS if config.get(k) is not None), "-")


@dataclass
class Cell:
    """The runs of one experiment (all settings equal but the seed), placed in a table."""
    table: tuple        # sorted (key, value) pairs that a whole table shares
    row: tuple          # values of ROW_KEYS
    column: str
    runs: list[Run]

    @property
    def variant(self) -> str:
        return str(self.row[0])


def group_cells(runs: list[Run]) -> list[Cell]:
    cells: dict[tuple, Cell] = {}
    for run in runs:
        s = settings(run.config)
        column_key = next((k for k in COLUMN_KEYS if k in s), None)
        table = tuple(sorted((k, v) for k, v in s.items() if k not in ROW_KEYS and k != column_key))
        row = tuple(s.get(k) for k in ROW_KEYS)
        key = (table, row, column_of(run.config))
        cells.setdefault(key, Cell(table, row, key[2], [])).runs.append(run)
    for cell in cells.values():   # the same table whatever order the runs came in (plot.py or tune.py)
        cell.runs.sort(key=lambda r: (str(r.config.get("seed")), r.exp_id))
    return list(cells.values())


def _row_key_name(i: int) -> str:
    return "σ" if ROW_KEYS[i] == "sigma" else ROW_KEYS[i]


def row_labels(cells: list[Cell]) -> dict[tuple, str]:
    """Row names in one table, by row settings: the variant, plus the row settings that tell two runs of that
    variant apart within one column. A setting that changes only from column to column, like the paper's
    sigma per noise mode, does not make a new row."""
    labels = {}
    for variant in {c.variant for c in cells}:
        mine = [c for c in cells if c.variant == variant]
        differ = [i for i in range(1, len(ROW_KEYS))
                  if any(len({c.row[i] for c in mine if c.column == col}) > 1 for col in {c.column for c in mine})]
        for c in mine:
            extra = ", ".join(f"{_row_key_name(i)}={c.row[i]}" for i in differ)
            labels[c.row] = f"{variant} ({extra})" if extra else variant
    return labels


def per_column_notes(cells: list[Cell], labels: dict[tuple, str], cols: list[str]) -> list[str]:
    """For each table row whose settings change from column to column, a line saying how; and sigma's, per column,
    for every row that adds SLN noise (a setting the row label leaves out)."""
    notes = []
    for label in sorted(set(labels.values()), key=lambda v: (order_key(v.split(" ")[0], VARIANT_ORDER), v)):
        mine = {c.column: c.row for c in cells if labels[c.row] == label}
        for i in range(1, len(ROW_KEYS)):
            values = {row[i] for row in mine.values()}
            if len(values) > 1 or (ROW_KEYS[i] == "sigma" and any(values) and "σ=" not in label):
                notes.append(f"{label}: {_row_key_name(i)} = "
                             + ", ".join(f"{mine[col][i]} ({col})" for col in cols if col in mine))
    return notes


def order_key(value: str, order: list[str]) -> tuple:
    return (order.index(value) if value in order else len(order), value)


def fmt(mean: float, std: float | None, n: int) -> str:
    return f"{mean:.2f}{'' if std is None else f' ± {std:.2f}'} (n={n})"


def headline(t: dict, extra: list[str]) -> str:
    """A table's title: its dataset, network, noise rate, epochs and subsets, plus the `extra` settings."""
    parts = [str(t[k]) for k in ("dataset_name", "model") if k in t]
    parts += [f"p={t['p']}"] if "p" in t else []
    parts += ["custom noise"] if t.get("custom_noise") else []
    parts += [f"{t['n_epochs']} epochs"] if "n_epochs" in t else []
    parts += [f"{k}={t[k]}" for k in ("train_subset", "test_subset") if t.get(k) is not None]
    return ", ".join(parts + [f"{k}={t.get(k)}" for k in extra if k not in HEADLINE_KEYS])


def make_table(runs: list[Run], network: str = "reported") -> tuple[str, list[list]]:
    """The paper's tables from runs: one per setting, rows the methods (CE, SLN, SLN-MO, SLN-MO-LC), columns the
    noise modes, cells the mean ± std over seeds of the test accuracy of `network` (ACCURACY_COLUMN: by default
    the one each method reports) at the last and the best epoch.
    Runs with a validation set (Clothing1M) also get the test accuracy at their best validation epoch.
    A seed with several runs of one experiment counts once (one_run_per_seed); a note names the runs left out.
    Returns (Markdown, CSV rows with a header row)."""
    column = ACCURACY_COLUMN[network]
    runs, repeated = one_run_per_seed(of_network(runs, network))
    cells = group_cells(runs)
    with_val = any(r.at_best_val(column) is not None for r in runs)
    tables = sorted({c.table for c in cells}, key=lambda t: headline(dict(t), []))
    all_keys = sorted({k for t in tables for k, _ in t})
    # settings that differ between tables go into each table's title; the others are said once
    varying = [k for k in all_keys if len({dict(t).get(k) for t in tables}) > 1]
    common = {k: v for k, v in tables[0] if k not in varying and k not in HEADLINE_KEYS and v is not None}
    lines = [f"Test accuracy (%) of {NETWORK_TEXT[network]}, mean ± sample std (ddof=1) over n seeds.", "",
             "Other settings, the same in every table: " + ", ".join(f"{k}={v}" for k, v in common.items())]
    lines += [""] + [f"Note: {n}." for n in repeated] if repeated else []
    # the row settings of the paper's models always; a method's own flags where a run has them
    row_cols = [i for i, k in enumerate(ROW_KEYS) if i > 0 and (k not in methods.all_flags()
                                                                 or any(c.row[i] is not None for c in cells))]
    csv_rows: list[list] = [all_keys + ["method", "variant", "noise", *(ROW_KEYS[i] for i in row_cols), "n_seeds", "seeds",
                                        "last_mean", "last_std", "best_mean", "best_std",
                                        *(["at_best_val_mean", "at_best_val_std"] if with_val else []), "exp_ids"]]
    for table in tables:
        t, t_cells = dict(table), [c for c in cells if c.table == table]
        labels = row_labels(t_cells)
        rows = sorted(set(labels.values()), key=lambda v: (order_key(v.split(" ")[0], VARIANT_ORDER), v))
        cols = sorted({c.column for c in t_cells}, key=lambda v: order_key(v, COLUMN_ORDER))
        stats = {}
        for cell in sorted(t_cells, key=lambda c: (rows.index(labels[c.row]), cols.index(c.column))):
            accs = [r.last_and_best(column) for r in cell.runs]
            last, best = mean_std([a[0] for a in accs]), mean_std([a[1] for a in accs])
            at_val = [r.at_best_val(column) for r in cell.runs]
            at_val = mean_std(at_val) if None not in at_val else (None, None)
            stats[(labels[cell.row], cell.column)] = (last, best, at_val, len(accs))
            csv_rows.append([t.get(k) for k in all_keys] + [labels[cell.row], cell.variant, cell.column,
                            *(cell.row[i] for i in row_cols), len(accs), " ".join(str(r.config.get("seed")) for r in cell.runs),
                            *(None if v is None else round(v, 4)
                              for v in (*last, *best, *(at_val if with_val else ()))),
                            " ".join(r.exp_id for r in cell.runs)])
        notes = per_column_notes(t_cells, labels, cols)
        blocks = [(0, "last epoch (the paper's number)"), (1, "best epoch")]
        if with_val:
            blocks.append((2, "epoch of best validation accuracy (the authors' Clothing1M number)"))
        for which, what in blocks:
            lines += ["", f"### {headline(t, varying)}: {what}", "", "| method | " + " | ".join(cols) + " |",
                      "|---" * (len(cols) + 1) + "|"]
            for row in rows:
                text = [fmt(*stats[(row, col)][which], stats[(row, col)][3])
                        if (row, col) in stats and stats[(row, col)][which][0] is not None else "–" for col in cols]
                lines.append(f"| {row} | " + " | ".join(text) + " |")
            lines += [""] + notes if notes else []
    return "\n".join(lines) + "\n", [[("" if v is None else v) for v in r] for r in csv_rows]


def one_table(runs: list[Run]) -> tuple[list[Cell], dict]:
    """The cells of runs that make up a single paper table, and the settings they share; an error naming the
    settings that differ when the runs belong to several tables."""
    cells = group_cells(runs)
    tables = {c.table for c in cells}
    if len(tables) > 1:
        differ = sorted(k for k in {k for t in tables for k, _ in t} if len({dict(t).get(k) for t in tables}) > 1)
        raise DataError(f"the runs belong to {len(tables)} different tables (they differ in {', '.join(differ)}); "
                        "choose one with --filter, e.g. --filter " + ",".join(f"{k}=..." for k in differ[:2]))
    return cells, dict(next(iter(tables)))


