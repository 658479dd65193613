"""Every figure the READMEs quote about the mini CIFAR-10 results, computed from the committed run files alone,
so that the prose cannot drift from the runs.

    python results/mini_cifar10/figures.py            # print each figure as the phrase the READMEs use
    python results/mini_cifar10/figures.py --check    # exit 1, naming them, if a README lacks one of the phrases

Each figure is a phrase, such as "10.7 core-hours", that must appear verbatim (up to line breaks) in README.md
(the main one), in results/mini_cifar10/README.md or in reproduce.sh's header; tests/test_docs.py runs the check. The table itself is readme_table.py's.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from files import mean_std  # noqa: E402  (the repository's own helpers; this script lives two folders down)

MAIN_README = HERE.parents[1] / "README.md"
README = HERE / "README.md"
REPRODUCE = HERE / "reproduce.sh"
MODES = ("sym", "asym", "dependent")    # the noise files' columns of the READMEs' table
HUMAN = "worst"                         # CIFAR-10N's label set (configs/mini_cifar10n.yaml), the human-noise column
PAPER_MODELS = ("CE", "SLN", "SLN-MO", "SLN-MO-LC")
BASELINES = ("GCE", "SCE", "Forward-T", "ELR", "Co-teaching", "Co-teaching-SLN")   # configs/mini_cifar10_baselines.yaml
LC_EPOCH = 80          # configs/mini_cifar10.yaml: label correction after this epoch


def load(folder: Path) -> list[dict]:
    """The finished runs under folder: config, metrics rows (floats, None for empty cells), summary."""
    found = []
    for run in sorted(folder.glob("*/summary.json")):
        rows = [{k: (float(v) if v != "" else None) for k, v in r.items()} for r in csv.DictReader(run.with_name("metrics.csv").open())]
        found.append({"id": run.parent.name, "config": yaml.safe_load(run.with_name("config.yaml").read_text()),
                      "metrics": rows, "summary": json.loads(run.read_text())})
    return found


def setting(run: dict) -> str:
    """The run's column: its noise mode, or for CIFAR-N its label set."""
    return run["config"]["noise_mode"] or run["config"].get("noise_label")


def pick(grid: list[dict], mode: str, variant: str) -> list[dict]:
    """A cell's runs, by seed."""
    return sorted((r for r in grid if setting(r) == mode and r["config"]["variant"] == variant),
                  key=lambda r: r["config"]["seed"])


def gap(a: list[dict], b: list[dict], key_b: str = "test/acc_reported") -> tuple[list[float], list[float], float, str]:
    """a's reported last accuracies, b's `key_b` ones (test/acc_ema: b's momentum network, reported or not), the gap
    of the means in points, and how the seeds order: "above" (every seed of a above every seed of b), "below" or
    "overlap"."""
    la, lb = [last(r) for r in a], [last(r, key_b) for r in b]
    points = 100 * (sum(la) / len(la) - sum(lb) / len(lb))
    return la, lb, points, "above" if min(la) > max(lb) else "below" if min(lb) > max(la) else "overlap"


def versus(a: list[dict], b: list[dict], name_a: str, name_b: str, key_b: str = "test/acc_reported") -> str:
    """'SLN-MO-LC 51.3 ± 2.9 % against GCE 47.2 ± 1.4 % (+4.1 points; every SLN-MO-LC seed above every GCE seed)'."""
    la, lb, points, how = gap(a, b, key_b)
    order = {"above": f"every {name_a} seed above every {name_b} seed", "overlap": "the seeds overlap",
             "below": f"every {name_b} seed above every {name_a} seed"}[how]
    return f"{name_a} {pct(la)} % against {name_b} {pct(lb)} % ({points:+.1f} points; {order})"


def gaps(a: list[dict], cells: dict[str, list[dict]], key_b: str = "test/acc_reported") -> str:
    """'GCE +4.0, ELR +2.4 (seeds overlap), Co-teaching -3.3 (every seed below) points': a's lead over each cell,
    the seeds' order named where a's seeds are not all above."""
    parts = []
    for name, b in cells.items():
        points, how = gap(a, b, key_b)[2:]
        parts.append(f"{name} {points:+.1f}" + {"above": "", "overlap": " (seeds overlap)", "below": " (every seed below)"}[how])
    return ", ".join(parts) + " points"


def pct(values: list[float], digits: int = 1) -> str:
    """'35.0 ± 1.8' from fractions."""
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.{digits}f} (one seed)" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def column(run: dict, key: str) -> list[float]:
    return [r[key] for r in run["metrics"] if r.get(key) is not None]


def last(run: dict, key: str = "test/acc_reported") -> float:
    return column(run, key)[-1]


def hours(runs: list[dict]) -> float:
    return sum(r["summary"]["seconds"] for r in runs) / 3600


def search_line(label: str, trials: list[dict], reference: str = "") -> str:
    """A sigma search's last-epoch validation accuracy per sigma; `reference` names the sigma-0 trial's method."""
    trials = sorted(trials, key=lambda r: r["config"]["sigma"])
    return f"{label} search, last-epoch validation accuracy: " + ", ".join(
        f"σ={r['config']['sigma']:g}{f' ({reference})' if reference and r['config']['sigma'] == 0 else ''} "
        f"{100 * last(r, 'val/acc'):.1f} %" for r in trials)


def figures(root: Path = HERE) -> dict[str, list[str]]:
    """{README path: the phrases it must hold}, from the run folders under root."""
    runs, searches = load(root / "runs"), load(root / "search_runs")
    grid = [r for r in runs if setting(r) in MODES and r["config"]["variant"] in PAPER_MODELS]
    search = [r for r in searches if setting(r) in MODES and r["config"]["variant"] in ("CE", "SLN")]
    # Co-teaching-SLN's own sigma search (tune.py --method): its sigma-0 trials are plain Co-teaching
    coteaching_search = [r for r in searches if r["config"]["variant"] in ("Co-teaching", "Co-teaching-SLN")]
    human = [r for r in runs if setting(r) == HUMAN]
    human_search = [r for r in searches if setting(r) == HUMAN]
    baselines = [r for r in runs if r["config"]["variant"] in BASELINES]
    table = grid + human                        # the paper's four models, on the noise files and on human noise
    columns = MODES + ((HUMAN,) if human else ())
    probes, dissect = load(root / "probes"), load(root / "dissect_runs")
    main, detail = [], []

    # time: the runs' own seconds (each run had one core; two ran at a time)
    core_hours = hours(grid) + hours(search)
    main.append(f"{core_hours:.1f} core-hours")
    main.append(f"{core_hours + hours(probes) + hours(dissect):.1f} with the probes and the dissection run")
    main.append(f"{core_hours / 2:.1f} h on the 2 cores")
    script = [f"About {core_hours / 2:.1f} hours for sym, asym and dependent on a 2-core CPU"]
    for mode in MODES:
        s = [r for r in search if r["config"]["noise_mode"] == mode]
        g = [r for r in grid if r["config"]["noise_mode"] == mode]
        detail.append(f"`{mode}` sigma search {60 * hours(s):.1f} core-minutes ({30 * hours(s):.1f} min on the 2 cores)")
        detail.append(f"`{mode}` grid {hours(g):.1f} core-hours ({hours(g) / 2:.1f} h on the 2 cores)")
    minutes = sorted(r["summary"]["seconds"] / 60 for r in grid)
    detail.append(f"a grid run took {minutes[0]:.0f}-{minutes[-1]:.0f} min on one core")

    # claim 1: the order of the four models at the last epoch
    lasts = {m: {v: [last(r) for r in pick(table, m, v)] for v in PAPER_MODELS} for m in columns}
    means = {m: {v: pct(lasts[m][v]) for v in PAPER_MODELS} for m in columns}
    for mode in columns:
        ordered = [sum(lasts[mode][v]) / len(lasts[mode][v]) for v in PAPER_MODELS]
        holds = ordered[0] < ordered[1] < ordered[2] <= ordered[3]    # the claimed order: written as a chain
        main.append(" < ".join(means[mode][v] for v in ("CE", "SLN", "SLN-MO")) + f" ≤ {means[mode]['SLN-MO-LC']} %"
                    if holds else f"SLN-MO {means[mode]['SLN-MO']} %, SLN-MO-LC {means[mode]['SLN-MO-LC']} %, "
                    f"CE {means[mode]['CE']} %, SLN {means[mode]['SLN']} %")
    seeds = {v: ", ".join(f"{100 * last(r):.1f}" for r in pick(grid, "asym", v)) for v in ("CE", "SLN")}
    detail.append(f"`asym` SLN's seeds end at {seeds['SLN']} %, CE's at {seeds['CE']} %")

    # do SLN-MO and SLN-MO-LC share their curve until label correction starts? (only if they are the same run)
    for mode in columns:
        same = [a["config"]["seed"] for a, b in zip(pick(table, mode, "SLN-MO"), pick(table, mode, "SLN-MO-LC"))
                if column(a, "test/acc_ema")[:LC_EPOCH // 5] == column(b, "test/acc_ema")[:LC_EPOCH // 5]]
        detail.append(f"`{mode}`: SLN-MO and SLN-MO-LC coincide until epoch {LC_EPOCH} for seeds "
                      f"{', '.join(map(str, same)) or 'none'}")

    # the momentum-model control: every run keeps an EMA network, CE's too, so SLN-MO's lead over CE splits into what
    # the weight average gives CE ("CE+EMA") and what SLN adds to it
    for mode in columns:
        detail.append(f"`{mode}`: " + versus(pick(table, mode, "SLN-MO"), pick(table, mode, "CE"), "SLN-MO", "CE+EMA",
                                             "test/acc_ema"))

    # claim 2: CE's best epoch against its last
    for mode in columns:
        ce = pick(table, mode, "CE")
        best = [max(column(r, "test/acc_reported")) for r in ce]
        drop = 100 * (sum(best) - sum(last(r) for r in ce)) / len(ce)
        epochs = sorted(r["summary"]["best_epoch"] for r in ce)
        main.append(f"`{mode}` CE: best {pct(best)} % (epochs {epochs[0]}-{epochs[-1]}), {drop:.1f} points above its last")

    # memorisation: CE's agreement with the given labels against each subset's own share of right labels
    for mode in columns:
        ce = pick(table, mode, "CE")
        agree = [100 * last(r, "train/acc") for r in ce]
        right = [100 * (1 - r["config"]["noise"]["noise_rate"]) for r in ce]
        below = [str(r["config"]["seed"]) for r, a, s in zip(ce, agree, right) if a <= s]
        phrase = f"`{mode}` CE agrees with {sum(agree) / 3:.1f} % of the given labels, {sum(right) / 3:.2f} % are right"
        detail.append(phrase + (f" (not so for seed {', '.join(below)}: "
                                + ", ".join(f"{a:.1f} vs {s:.1f} %" for r, a, s in zip(ce, agree, right)
                                            if str(r["config"]["seed"]) in below) + ")" if below else ""))
        noisy = [column(r, "train/loss_noisy") for r in ce]
        clean = [column(r, "train/loss_clean")[-1] for r in ce]
        detail.append(f"`{mode}` CE's loss on the wrong labels {sum(n[0] for n in noisy) / 3:.2f} -> "
                      f"{sum(n[-1] for n in noisy) / 3:.2f} (right labels {sum(clean) / 3:.2f})")
        held = [column(r, "train/loss_noisy")[-1] for v in ("SLN", "SLN-MO") for r in pick(table, mode, v)]
        lc = [column(r, "train/loss_noisy")[-1] for r in pick(table, mode, "SLN-MO-LC")]
        detail.append(f"`{mode}` SLN and SLN-MO end at {sum(held) / len(held):.2f}, SLN-MO-LC at {sum(lc) / 3:.2f}")
    # the sigma searches: validation accuracy (noisy labels) at the last epoch per sigma
    for mode in MODES:
        detail.append(search_line(f"`{mode}`", [r for r in search if r["config"]["noise_mode"] == mode]))
    ce = next(r for r in search if r["config"]["noise_mode"] == "sym" and r["config"]["sigma"] == 0)
    val = column(ce, "val/acc")
    detail.append(f"`sym` CE search run: validation accuracy {100 * max(val):.1f} % at epoch "
                  f"{val.index(max(val)) + 1}, {100 * val[-1]:.1f} % at {len(val)}")

    # the probes that chose lr and batch size
    for r in sorted(probes, key=lambda r: r["config"]["lr"]):
        noisy = column(r, "train/loss_noisy")
        detail.append(f"lr {r['config']['lr']:g}, batch {r['config']['batch_size']}: loss on the wrong labels "
                      f"{noisy[0]:.2f} -> {noisy[-1]:.2f} (right labels {column(r, 'train/loss_clean')[-1]:.2f}), "
                      f"agreeing with {100 * last(r, 'train/acc'):.1f} % of the given labels")

    # the dissection's CE run, trained again for its weights, against the grid's
    (again,) = dissect
    twin = next(r for r in pick(grid, "sym", "CE") if r["config"]["seed"] == again["config"]["seed"])
    detail.append(f"last test accuracy {100 * again['summary']['last_test_acc']:.2f} % (grid run "
                  f"{100 * twin['summary']['last_test_acc']:.2f} %), best {100 * again['summary']['best_test_acc']:.2f} % "
                  f"({100 * twin['summary']['best_test_acc']:.2f} %)")

    # human noise (CIFAR-10N worst): its time, its sigma search, SLN-MO-LC against CE
    if human_search:
        detail.append(search_line(f"`{HUMAN}`", human_search))
        detail.append(f"`{HUMAN}` sigma search {60 * hours(human_search):.1f} core-minutes")
    if human:
        main.append(f"CIFAR-10N's sigma search and its {len(human)} runs took {hours(human) + hours(human_search):.1f} "
                    f"core-hours")
        main.append(versus(pick(human, HUMAN, "SLN-MO-LC"), pick(human, HUMAN, "CE"), "SLN-MO-LC", "CE"))
    # the baselines: their time, SLN-MO-LC against each (their reported networks, then their momentum networks,
    # which they keep but do not report), Co-teaching with and without SLN
    if baselines:
        main.append(f"the {len(baselines)} baseline runs took {hours(baselines):.1f} core-hours")
        script.append(f"about {hours(baselines) / 2:.1f} more for the baselines")
        spans = {b: sorted(r["summary"]["seconds"] / 60 for r in baselines if r["config"]["variant"] == b) for b in BASELINES}
        detail.append("a baseline run took " + ", ".join(f"{m[0]:.0f}-{m[-1]:.0f} min ({b})" for b, m in spans.items() if m))
        for mode in sorted({setting(r) for r in baselines}, key=MODES.index):
            lc = pick(grid, mode, "SLN-MO-LC")
            cells = {b: runs_b for b in BASELINES if (runs_b := pick(baselines, mode, b))}
            main.append(f"`{mode}`, SLN-MO-LC minus each baseline: " + gaps(lc, cells))
            ce = pick(grid, mode, "CE")
            below = [b for b, runs_b in cells.items() if gap(ce, runs_b)[2] > 0]
            main.append(f"below plain CE on `{mode}`: {', '.join(below) or 'none'}")
            ema = [gap(lc, b, "test/acc_ema")[2] for b in cells.values()]
            main.append(f"`{mode}`, {min(ema):+.1f} to {max(ema):+.1f} points")
            detail.append(f"`{mode}`, SLN-MO-LC minus each baseline's momentum network: " + gaps(lc, cells, "test/acc_ema"))
            for b, runs_b in cells.items():
                detail.append(f"`{mode}`: " + versus(lc, runs_b, "SLN-MO-LC", b))
                detail.append(f"`{mode}`: " + versus(lc, runs_b, "SLN-MO-LC", f"{b}+EMA", "test/acc_ema"))
            if "Co-teaching-SLN" in cells and "Co-teaching" in cells:
                main.append(f"`{mode}`: " + versus(cells["Co-teaching-SLN"], cells["Co-teaching"], "Co-teaching-SLN",
                                                   "Co-teaching"))

    for mode in sorted({setting(r) for r in coteaching_search}, key=MODES.index):
        trials = [r for r in coteaching_search if setting(r) == mode]
        detail.append(search_line(f"`{mode}` Co-teaching-SLN", trials, "Co-teaching"))
        detail.append(f"`{mode}` Co-teaching-SLN sigma search {60 * hours(trials):.1f} core-minutes")

    # runs made from a tree with uncommitted changes: each is named
    for r in grid + search + human + human_search + baselines + coteaching_search + probes + dissect:
        if r["config"]["code"]["git_dirty"]:
            detail.append(f"`{r['id']}`")
    return {MAIN_README: main, README: detail, REPRODUCE: script}


def missing(found: dict[Path, list[str]]) -> list[str]:
    return [f"{path.relative_to(HERE.parents[1])}: {phrase}" for path, phrases in found.items()
            for phrase in phrases if phrase not in " ".join(path.read_text().split())]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a README lacks one of the phrases")
    args = p.parse_args()
    found = figures()
    if args.check:
        absent = missing(found)
        for line in absent:
            print(f"missing from {line}")
        sys.exit(1 if absent else 0)
    for path, phrases in found.items():
        print(f"{path.relative_to(HERE.parents[1])}:")
        for phrase in phrases:
            print(f"  {phrase}")


if __name__ == "__main__":
    main()
