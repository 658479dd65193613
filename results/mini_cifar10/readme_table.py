"""Rewrites the Results table of README.md from results/mini_cifar10/table.csv (made by plot.py --table).

    python results/mini_cifar10/readme_table.py            # rewrite the block between the results-table markers
    python results/mini_cifar10/readme_table.py --check    # exit 1 if README.md does not show table.csv

The mini numbers stand next to the paper's full-scale ones (shared/SLN-REFERENCE.md, last epoch, 5 runs), so that
nobody reads one for the other. A cell the grid has not finished yet says how many seeds are in.
"""
import argparse
import csv
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
import files  # noqa: E402  (the repository's own helpers; this script lives two folders down)
import methods  # noqa: E402

README = HERE.parents[1] / "README.md"
BEGIN = "<!-- results-table: regenerated from results/mini_cifar10/table.csv by results/mini_cifar10/readme_table.py -->"
END = "<!-- end results-table -->"
# The grids behind the table: a cell is 'pending' where one of them plans the run and no seed is in yet, '–' where none does.
GRIDS = [HERE.parents[1] / "configs" / name
         for name in ("mini_cifar10.yaml", "mini_cifar10n.yaml", "mini_cifar10_baselines.yaml")]
COLUMNS = {"sym": "mini sym (wrn-16-1, 2,000 images)", "asym": "mini asym", "dependent": "mini dependent",
           "worst": "mini CIFAR-10N worst (human labels)"}
SEEDS = 3
# The paper's CIFAR-10 table, 40 % noise, last epoch, mean ± std over 5 runs (Chen et al., ICLR 2021, Table 1);
# shared/SLN-REFERENCE.md has no baseline's numbers, and the paper none on CIFAR-N (published a year later).
PAPER_COLUMNS = ("paper sym (WRN-28-2, 50,000 images, 5 runs)", "paper asym", "paper dependent")
PAPER = {"CE": ("53.16 ± 1.64", "72.72 ± 1.35", "72.33 ± 0.50"), "SLN": ("80.00 ± 0.61", "80.63 ± 0.61", "78.48 ± 0.28"),
         "SLN-MO": ("84.71 ± 0.43", "84.80 ± 0.27", "80.56 ± 0.16"),
         "SLN-MO-LC": ("87.00 ± 0.27", "87.85 ± 0.41", "81.76 ± 0.16")}


def planned() -> tuple[list[str], set[tuple[str, str]]]:
    """The methods of the grids and those read off their runs (CE-MO off CE's: Method.same_training_as), and the
    (method, noise) cells they plan. The order: the paper's models and CE-MO (methods.ORDER), then the grids'."""
    grids = [yaml.safe_load(path.read_text()) for path in GRIDS]
    cells = {(method, mode) for grid in grids for method in grid["variants"]
             for mode in grid.get("noise_modes", []) + grid.get("noise_labels", [])}
    names = list(dict.fromkeys(method for grid in grids for method in grid["variants"]))
    for m in methods.METHODS.values():
        if m.same_training_as in names:
            names.append(m.name)
            cells |= {(m.name, mode) for source, mode in list(cells) if source == m.same_training_as}
    return sorted(names, key=lambda n: methods.ORDER.index(n) if n in methods.ORDER else len(methods.ORDER)), cells


def cell(row: dict | None, planned: bool) -> str:
    if row is None:
        return "pending" if planned else "–"
    n = int(row["n_seeds"])
    std = f" ± {float(row['last_std']):.2f}" if n > 1 else ""
    done = f"n={n}" if n >= SEEDS else f"n={n} of {SEEDS} so far"
    return f"{float(row['last_mean']):.2f}{std} ({done}; best {float(row['best_mean']):.2f})"


def block(table_csv: Path) -> str:
    rows = {(r["method"], r["noise"]): r for r in csv.DictReader(table_csv.open())}
    methods, plan = planned()
    header = ["test accuracy (%), last epoch", *COLUMNS.values(), *PAPER_COLUMNS]
    lines = [BEGIN, "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        mini = [cell(rows.get((method, mode)), (method, mode) in plan) for mode in COLUMNS]
        lines.append(f"| {method} | {' | '.join(mini)} | {' | '.join(PAPER.get(method, ('–',) * 3))} |")
    return "\n".join(lines + [END])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", type=Path, default=HERE / "table.csv", help="plot.py --table's CSV")
    p.add_argument("--readme", type=Path, default=README, help="the README whose results block is rewritten")
    p.add_argument("--check", action="store_true", help="only check that the README shows the table; exit 1 if not")
    args = p.parse_args(argv)
    text = args.readme.read_text()
    start = text.find("<!-- results-table")
    stop = text.find(END)
    if start < 0 or stop < start:
        print(f"error: {args.readme} has no '<!-- results-table ... -->' ... '{END}' block; add one", file=sys.stderr)
        return 2
    new = text[:start] + block(args.table) + text[stop + len(END):]
    if args.check:
        return 0 if new == text else 1
    if new != text:
        files.write_atomic(args.readme, lambda tmp: tmp.write_text(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
