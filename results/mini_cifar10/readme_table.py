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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
import files  # noqa: E402  (the repository's own helpers; this script lives two folders down)

README = HERE.parents[1] / "README.md"
BEGIN = "<!-- results-table: regenerated from results/mini_cifar10/table.csv by results/mini_cifar10/readme_table.py -->"
END = "<!-- end results-table -->"
METHODS = ("CE", "SLN", "SLN-MO", "SLN-MO-LC")
MODES = ("sym", "asym", "dependent")
SEEDS = 3
# The paper's CIFAR-10 table, 40 % noise, last epoch, mean ± std over 5 runs (Chen et al., ICLR 2021, Table 1).
PAPER = {"CE": ("53.16 ± 1.64", "72.72 ± 1.35", "72.33 ± 0.50"), "SLN": ("80.00 ± 0.61", "80.63 ± 0.61", "78.48 ± 0.28"),
         "SLN-MO": ("84.71 ± 0.43", "84.80 ± 0.27", "80.56 ± 0.16"),
         "SLN-MO-LC": ("87.00 ± 0.27", "87.85 ± 0.41", "81.76 ± 0.16")}


def cell(row: dict | None) -> str:
    if row is None:
        return "pending"
    n = int(row["n_seeds"])
    std = f" ± {float(row['last_std']):.2f}" if n > 1 else ""
    done = f"n={n}" if n >= SEEDS else f"n={n} of {SEEDS} so far"
    return f"{float(row['last_mean']):.2f}{std} ({done}; best {float(row['best_mean']):.2f})"


def block(table_csv: Path) -> str:
    rows = {(r["method"], r["noise"]): r for r in csv.DictReader(table_csv.open())}
    lines = [BEGIN,
             "| test accuracy (%), last epoch | mini sym (wrn-16-1, 2,000 images) | mini asym | mini dependent "
             "| paper sym (WRN-28-2, 50,000 images, 5 runs) | paper asym | paper dependent |",
             "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        mini = [cell(rows.get((method, mode))) for mode in MODES]
        lines.append(f"| {method} | {' | '.join(mini)} | {' | '.join(PAPER[method])} |")
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
