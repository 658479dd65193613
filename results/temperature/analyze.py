"""The temperature experiment's tables and figure (DESIGN.md), from the committed run files alone.

    python results/temperature/analyze.py            # write pilots.md, table.md/.csv and temperature.png
    python results/temperature/analyze.py --check    # exit 1 if a committed file differs from what the runs give

pilots.md: per level, CE's memorisation (train/acc_noisy: agreement with the wrong labels, on the training set as
trained) at the planned last epoch and at the pilot's end, against the hot level's, and the epochs the criterion
chose. table.md/.csv: per level, the last-epoch test accuracy of CE, CE-MO (CE's momentum network), SLN and SLN-MO
(SLN's momentum network), mean ± std over the paired seeds, and the paired differences SLN - CE and
SLN-MO - CE-MO (mean ± std, seeds ahead). temperature.png: the four networks' accuracy against lr/batch.
Levels, runs or seeds not finished yet are left out and said so.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from files import mean_std  # noqa: E402
from run import LEVELS, level_of  # noqa: E402
from tables import Run, load_run  # noqa: E402

NETWORKS = {"CE": ("CE", "test/acc"), "CE-MO": ("CE", "test/acc_ema"), "SLN": ("SLN", "test/acc"),
            "SLN-MO": ("SLN", "test/acc_ema")}
PAIRS = (("SLN", "CE"), ("SLN-MO", "CE-MO"), ("SLN-MO", "CE"), ("CE-MO", "CE"))


def load(folder: Path) -> list[Run]:
    """The finished runs under folder, read as plot.py reads them."""
    return [load_run(summary.parent) for summary in sorted(folder.glob("*/summary.json"))]


def last(run: Run, column: str) -> float:
    return run.last_and_best(column)[0]


def pct(values: list[float], sign: str = "") -> str:
    mean, std = mean_std(values)
    return f"{mean:{sign}.1f}" if std is None else f"{mean:{sign}.1f} ± {std:.1f}"


def pilots_md() -> str:
    runs = {level_of(r.config): r for r in load(HERE / "pilots")}
    lines = ["# Pilots: how far CE memorises at each level (CE, seed 0, the full 2,000-image subset)", "",
             "`train/acc_noisy`: the share of wrongly labelled training images whose wrong label CE predicts, on the "
             "batches as trained. Training-set metrics only; test accuracy is shown, never used to choose.", "",
             "| level | planned epochs | pilot epochs | acc_noisy at planned (%) | at pilot's end (%) | CE test acc: best "
             "(epoch), last (%) |", "|---|---|---|---|---|---|"]
    for level, (_, _, planned, _) in LEVELS.items():
        run = runs.get(level)
        if run is None:
            lines.append(f"| {level} | {planned} | not finished | | | |")
            continue
        noisy, test, epochs = (run.metrics[k] for k in ("train/acc_noisy", "test/acc", "epoch"))
        tests = [(float(a), int(e)) for a, e in zip(test, epochs) if not np.isnan(a)]
        best = max(tests)
        lines.append(f"| {level} | {planned} | {len(noisy)} | {100 * noisy[planned - 1]:.1f} | {100 * noisy[-1]:.1f} | "
                     f"{100 * best[0]:.1f} ({best[1]}), {100 * tests[-1][0]:.1f} |")
    if (HERE / "epochs.json").is_file():
        chosen = json.loads((HERE / "epochs.json").read_text())
        lines += ["", "Chosen epochs (run.py, DESIGN.md's criterion: at least the hot pilot's acc_noisy at its planned "
                  "epoch): " + ", ".join(f"{k} {v['epochs']}" + ("" if v["criterion_met"] else " (criterion not met)")
                                         for k, v in chosen.items())]
    return "\n".join(lines) + "\n"


def table() -> tuple[str, list[list], dict]:
    by, precisions = {}, {}      # (level, method) -> {seed: run}; precision -> runs
    for run in load(HERE / "runs"):
        c = run.config
        by.setdefault((level_of(c), c["variant"]), {})[c["seed"]] = run
        precisions[c.get("precision")] = precisions.get(c.get("precision"), 0) + 1
    header = ["level", "lr", "batch_size", "lr_per_batch", "network", "n_seeds", "seeds", "last_mean", "last_std"]
    rows, points, lines = [header], {}, [
        "# Test accuracy at the last epoch (%), mean ± std over paired seeds", "",
        "Precision of the main runs: " + (", ".join(f"{k} ({n} runs)" for k, n in sorted(precisions.items(), key=str))
                                          or "none finished yet")
        + (" -- MORE THAN ONE: cells compare across precisions" if len(precisions) > 1 else ""), "",
        "| level (lr/batch) | CE | CE-MO | SLN | SLN-MO | SLN - CE | SLN-MO - CE-MO |", "|---|---|---|---|---|---|---|"]
    for level, (lr, batch, _, _) in LEVELS.items():
        seeds = sorted(set(by.get((level, "CE"), {})) & set(by.get((level, "SLN"), {})))
        if not seeds:
            lines.append(f"| {level} ({lr / batch:.3g}) | not finished | | | | | |")
            continue
        acc = {name: [last(by[(level, variant)][s], column) for s in seeds]
               for name, (variant, column) in NETWORKS.items()}
        points[level] = (lr / batch, acc, seeds)
        for name, values in acc.items():
            mean, std = mean_std(values)
            rows.append([level, lr, batch, lr / batch, name, len(seeds), " ".join(map(str, seeds)), round(mean, 4),
                         "" if std is None else round(std, 4)])
        diffs = []
        for a, b in PAIRS[:2]:
            d = [x - y for x, y in zip(acc[a], acc[b])]
            diffs.append(f"{pct(d, '+')} ({sum(v > 0 for v in d)} of {len(d)} ahead)")
        lines.append(f"| {level} ({lr / batch:.3g}) | " + " | ".join(pct(acc[n]) for n in NETWORKS) + " | "
                     + " | ".join(diffs) + " |")
    return "\n".join(lines) + "\n", rows, points


def figure(points: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    styles = {"CE": ("#7f7f7f", "-"), "CE-MO": ("#000000", "--"), "SLN": ("#1f77b4", "-"), "SLN-MO": ("#ff7f0e", "--")}
    for name, (colour, ls) in styles.items():
        xs = sorted(points, key=lambda k: points[k][0])
        ax.plot([points[k][0] for k in xs], [mean_std(points[k][1][name])[0] for k in xs], ls, color=colour,
                marker="o", label=name)
        for k in xs:    # each seed, so that pairs can be followed
            ax.scatter([points[k][0]] * len(points[k][1][name]), points[k][1][name], color=colour, s=12, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("SGD temperature lr / batch size (log; the paper: 7.8e-6)")
    ax.set_ylabel("test accuracy at the last epoch (%)")
    ax.set_title("The four networks against the SGD temperature\n"
                 "CIFAR-10 sym 0.4, 2,000 images, wrn-16-1, float32 (line: mean; dots: seeds 1-3)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def outputs() -> dict[str, bytes]:
    md, rows, points = table()
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    out = {"pilots.md": pilots_md().encode(), "table.md": md.encode(), "table.csv": buf.getvalue().encode()}
    return out, points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a committed file differs from what the runs give")
    args = p.parse_args()
    out, points = outputs()
    if args.check:
        stale = [name for name, data in out.items() if not (HERE / name).is_file() or (HERE / name).read_bytes() != data]
        for name in stale:
            print(f"results/temperature/{name} is not what the committed runs give; run analyze.py")
        sys.exit(1 if stale else 0)
    for name, data in out.items():
        (HERE / name).write_bytes(data)
        print(f"wrote results/temperature/{name}")
    if points:
        figure(points).savefig(HERE / "temperature.png", dpi=130)
        print("wrote results/temperature/temperature.png")


if __name__ == "__main__":
    main()
