"""Every figure the READMEs quote about the mini CIFAR-10 results, computed from the committed run files alone,
so that the prose cannot drift from the runs.

    python results/mini_cifar10/figures.py            # print each figure as the phrase the READMEs use
    python results/mini_cifar10/figures.py --check    # exit 1, naming them, if a README lacks one of the phrases

Each figure is a phrase, such as "10.7 core-hours", that must appear verbatim (up to line breaks) in README.md
(the main one), in results/mini_cifar10/README.md or in reproduce.sh's header; tests/test_docs.py runs the check. The table itself is readme_table.py's.
A comparison of two cells pairs their runs by seed (a seed fixes the subset, the noisy labels and the initialisation in
every cell): the mean ± std of the per-seed differences and how many seeds lie on its side, never a gap of means alone.
"""
import argparse
import csv
import dataclasses
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
REPORTED, EMA = "test/acc_reported", "test/acc_ema"   # a run's reported network; its momentum (EMA) network, which
# every run keeps: CE's is CE-MO's number (methods/sln_models.py), a baseline's is written "GCE+EMA"


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


def paired(a: list[dict], b: list[dict], key_a: str = REPORTED, key_b: str = REPORTED) -> list[float]:
    """a minus b per seed, in points, at the last epoch: a's `key_a` network against b's `key_b` one (test/acc_ema:
    the momentum network, reported or not). A seed decides the subset, the noisy labels and the initialisation, the
    same in every cell, so two cells' runs pair up by seed; ValueError where the cells' seeds differ."""
    if [r["config"]["seed"] for r in a] != [r["config"]["seed"] for r in b]:
        raise ValueError(f"cells of seeds {[r['config']['seed'] for r in a]} and {[r['config']['seed'] for r in b]} "
                         "do not pair")
    return [100 * (last(x, key_a) - last(y, key_b)) for x, y in zip(a, b)]


def sides(diffs: list[float]) -> tuple[str, str, str]:
    """('+6.8 ± 2.3', '3 of 3', 'ahead'): the mean ± std of paired differences, how many seeds lie on the mean's
    side (named 'behind' where the mean is negative) and, where some are tied, how many."""
    mean, std = mean_std(diffs)
    ahead = mean >= 0
    side = sum(d > 0 if ahead else d < 0 for d in diffs)
    tied = sum(d == 0 for d in diffs)
    return (f"{mean:+.1f}" + ("" if std is None else f" ± {std:.1f}"), f"{side} of {len(diffs)}",
            ("ahead" if ahead else "behind") + (f", {tied} tied" if tied else ""))


def agree(diffs: list[float]) -> str:
    """'+6.8 ± 2.3 points, 3 of 3 seeds ahead'."""
    value, count, side = sides(diffs)
    return f"{value} points, {count} seeds {side}"


def step(diffs: list[float]) -> str:
    """'+6.8 ± 2.3 points (3 of 3 seeds ahead)'."""
    value, count, side = sides(diffs)
    return f"{value} points ({count} seeds {side})"


def brief(diffs: list[float]) -> str:
    """'+6.8 ± 2.3 (3 of 3)', the seeds counted on the mean's side (the main README's short form)."""
    value, count, side = sides(diffs)
    return f"{value} ({count}{side[side.find(','):] if ',' in side else ''})"


def versus(a: list[dict], b: list[dict], name_a: str, name_b: str, key_a: str = REPORTED, key_b: str = REPORTED) -> str:
    """'SLN-MO-LC 51.3 ± 2.9 % against CE-MO 44.4 ± 0.7 % (paired by seed: +6.8 ± 2.3 points, 3 of 3 seeds ahead)'."""
    la, lb = [last(r, key_a) for r in a], [last(r, key_b) for r in b]
    return f"{name_a} {pct(la)} % against {name_b} {pct(lb)} % (paired by seed: {agree(paired(a, b, key_a, key_b))})"


def gaps(a: list[dict], cells: dict[str, list[dict]], key_b: str = REPORTED) -> str:
    """'GCE +4.0 ± 4.1 (3 of 3), ELR -2.4 ± 2.5 (3 of 3) points': a minus each cell, paired by seed."""
    return ", ".join(f"{name} {brief(paired(a, b, key_b=key_b))}" for name, b in cells.items()) + " points"


def pct(values: list[float], digits: int = 1) -> str:
    """'35.0 ± 1.8' from fractions."""
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.{digits}f} (one seed)" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def column(run: dict, key: str) -> list[float]:
    return [r[key] for r in run["metrics"] if r.get(key) is not None]


def last(run: dict, key: str = REPORTED) -> float:
    return column(run, key)[-1]


def hours(runs: list[dict]) -> float:
    return sum(r["summary"]["seconds"] for r in runs) / 3600


def search_line(label: str, trials: list[dict], reference: str = "") -> str:
    """A sigma search's last-epoch validation accuracy per sigma; `reference` names the sigma-0 trial's method."""
    trials = sorted(trials, key=lambda r: r["config"]["sigma"])
    return f"{label} search, last-epoch validation accuracy: " + ", ".join(
        f"σ={r['config']['sigma']:g}{f' ({reference})' if reference and r['config']['sigma'] == 0 else ''} "
        f"{100 * last(r, 'val/acc'):.1f} %" for r in trials)


def zero_note(label: str, trials: list[dict], reference: str) -> str:
    """Where a sigma search's sigma 0 (the method without SLN noise) scored as high as the chosen sigma or higher on
    validation (tune.py's choice, sweeps.sigma_table: the highest last-epoch accuracy of sigma > 0, ties to the
    smaller sigma), a phrase that says so; "" where it did not."""
    val = {r["config"]["sigma"]: 100 * last(r, "val/acc") for r in trials}
    chosen = max((s for s in val if s > 0), key=lambda s: (val[s], -s))
    if 0 not in val or val[0] < val[chosen]:
        return ""
    return (f"{label} search: σ=0 ({reference}) scored {val[0]:.1f} %, {'as high as' if val[0] == val[chosen] else 'above'}"
            f" the chosen σ={chosen:g}'s {val[chosen]:.1f} %")


def commit(run: dict) -> str:
    return run["config"]["code"]["git_commit"][:7]


@dataclasses.dataclass
class Phrases:
    """Phrases that the READMEs must hold, in the order they are printed."""
    main: list[str] = dataclasses.field(default_factory=list)      # README.md (the main one)
    detail: list[str] = dataclasses.field(default_factory=list)    # results/mini_cifar10/README.md
    script: list[str] = dataclasses.field(default_factory=list)    # reproduce.sh's header


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
    parts = [time_phrases(grid, search, probes, dissect),
             order_phrases(table, columns, grid),
             coincide_phrases(table, columns),
             momentum_phrases(table, columns),
             best_epoch_phrases(table, columns),
             memorisation_phrases(table, columns),
             search_phrases(search),
             probe_phrases(probes),
             dissection_phrases(dissect, grid),
             repeatability_phrases(table, columns),
             human_phrases(human, human_search),
             lc_against_ce_phrases(table, columns, baselines),
             baseline_phrases(grid, baselines),
             coteaching_search_phrases(coteaching_search),
             dirty_phrases(runs + searches + probes + dissect)]
    return {MAIN_README: [p for part in parts for p in part.main], README: [p for part in parts for p in part.detail],
            REPRODUCE: [p for part in parts for p in part.script]}


def time_phrases(grid: list[dict], search: list[dict], probes: list[dict], dissect: list[dict]) -> Phrases:
    """The time: the runs' own seconds (each run had one core; two ran at a time)."""
    out = Phrases()
    core_hours = hours(grid) + hours(search)
    out.main.append(f"{core_hours:.1f} core-hours")
    out.main.append(f"{core_hours + hours(probes) + hours(dissect):.1f} with the probes and the dissection run")
    out.main.append(f"{core_hours / 2:.1f} h on the 2 cores")
    out.script.append(f"About {core_hours / 2:.1f} hours for sym, asym and dependent on a 2-core CPU")
    for mode in MODES:
        s = [r for r in search if r["config"]["noise_mode"] == mode]
        g = [r for r in grid if r["config"]["noise_mode"] == mode]
        out.detail.append(f"`{mode}` sigma search {60 * hours(s):.1f} core-minutes ({30 * hours(s):.1f} min on the 2 cores)")
        out.detail.append(f"`{mode}` grid {hours(g):.1f} core-hours ({hours(g) / 2:.1f} h on the 2 cores)")
    minutes = sorted(r["summary"]["seconds"] / 60 for r in grid)
    out.detail.append(f"a grid run took {minutes[0]:.0f}-{minutes[-1]:.0f} min on one core")
    return out


def order_phrases(table: list[dict], columns: tuple[str, ...], grid: list[dict]) -> Phrases:
    """Claim 1: the order of the four models at the last epoch."""
    out = Phrases()
    lasts = {m: {v: [last(r) for r in pick(table, m, v)] for v in PAPER_MODELS} for m in columns}
    means = {m: {v: pct(lasts[m][v]) for v in PAPER_MODELS} for m in columns}
    # each step of the chain paired by seed (the reported networks, as in the paper's table)
    steps = (("SLN", "CE"), ("SLN-MO", "SLN"), ("SLN-MO-LC", "SLN-MO"))
    for mode in columns:
        ordered = [sum(lasts[mode][v]) / len(lasts[mode][v]) for v in PAPER_MODELS]
        holds = ordered[0] < ordered[1] < ordered[2] <= ordered[3]    # the claimed order: written as a chain
        diffs = {(a, b): paired(pick(table, mode, a), pick(table, mode, b)) for a, b in steps}
        every = all(d > 0 for d in diffs["SLN", "CE"] + diffs["SLN-MO", "SLN"]) and \
            all(d >= 0 for d in diffs["SLN-MO-LC", "SLN-MO"])                 # each step on each seed, as in the chain
        if holds and every:
            out.main.append(" < ".join(means[mode][v] for v in ("CE", "SLN", "SLN-MO")) + f" ≤ {means[mode]['SLN-MO-LC']} "
                            f"%, each step on all {len(lasts[mode]['CE'])} seeds")
        else:
            out.main.append(f"`{mode}`, paired by seed: SLN minus CE {brief(diffs['SLN', 'CE'])}, SLN-MO minus CE "
                            f"{brief(paired(pick(table, mode, 'SLN-MO'), pick(table, mode, 'CE')))}, SLN-MO-LC minus SLN-MO "
                            f"{brief(diffs['SLN-MO-LC', 'SLN-MO'])} points")
        out.detail.append(f"`{mode}`, paired by seed: " + ", ".join(f"{a} minus {b} {step(ds)}" for (a, b), ds in diffs.items()))
    seeds = {v: ", ".join(f"{100 * last(r):.1f}" for r in pick(grid, "asym", v)) for v in ("CE", "SLN")}
    out.detail.append(f"`asym` SLN's seeds end at {seeds['SLN']} %, CE's at {seeds['CE']} %")
    return out


def coincide_phrases(table: list[dict], columns: tuple[str, ...]) -> Phrases:
    """Do SLN-MO and SLN-MO-LC share their curve until label correction starts? (only if they are the same run)"""
    out = Phrases()
    for mode in columns:
        same = [a["config"]["seed"] for a, b in zip(pick(table, mode, "SLN-MO"), pick(table, mode, "SLN-MO-LC"))
                if column(a, "test/acc_ema")[:LC_EPOCH // 5] == column(b, "test/acc_ema")[:LC_EPOCH // 5]]
        out.detail.append(f"`{mode}`: SLN-MO and SLN-MO-LC coincide until epoch {LC_EPOCH} for seeds "
                          f"{', '.join(map(str, same)) or 'none'}")
    return out


def momentum_phrases(table: list[dict], columns: tuple[str, ...]) -> Phrases:
    """The momentum-model control: every run keeps an EMA network, CE's too (CE-MO), so SLN-MO's lead over CE splits
    into what the weight average gives CE and what SLN adds to it; both momentum networks, so of the same kind."""
    out = Phrases()
    for key, name in ((REPORTED, "CE"), (EMA, "CE-MO")):
        out.main.append(f"SLN-MO minus {name}: " + ", ".join(
            f"`{mode}` {brief(paired(pick(table, mode, 'SLN-MO'), pick(table, mode, 'CE'), key_b=key))}"
            for mode in columns) + " points")
    for mode in columns:
        mo, ce = pick(table, mode, "SLN-MO"), pick(table, mode, "CE")
        out.detail.append(f"`{mode}`: " + versus(mo, ce, "SLN-MO", "CE-MO", key_b=EMA))
        out.detail.append(f"`{mode}`: CE-MO minus CE {step(paired(ce, ce, EMA))} of SLN-MO's {step(paired(mo, ce))}")
    return out


def best_epoch_phrases(table: list[dict], columns: tuple[str, ...]) -> Phrases:
    """Claim 2: CE's best epoch against its last."""
    out = Phrases()
    for mode in columns:
        ce = pick(table, mode, "CE")
        best = [max(column(r, "test/acc_reported")) for r in ce]
        drop = 100 * (sum(best) - sum(last(r) for r in ce)) / len(ce)
        epochs = sorted(r["summary"]["best_epoch"] for r in ce)
        out.main.append(f"`{mode}` CE: best {pct(best)} % (epochs {epochs[0]}-{epochs[-1]}), {drop:.1f} points above its last")
    return out


def memorisation_phrases(table: list[dict], columns: tuple[str, ...]) -> Phrases:
    """Memorisation: CE's agreement with the given labels against each subset's own share of right labels."""
    out = Phrases()
    for mode in columns:
        ce = pick(table, mode, "CE")
        agreeing = [100 * last(r, "train/acc") for r in ce]
        right = [100 * (1 - r["config"]["noise"]["noise_rate"]) for r in ce]
        below = [str(r["config"]["seed"]) for r, a, s in zip(ce, agreeing, right) if a <= s]
        phrase = f"`{mode}` CE agrees with {sum(agreeing) / 3:.1f} % of the given labels, {sum(right) / 3:.2f} % are right"
        out.detail.append(phrase + (f" (not so for seed {', '.join(below)}: "
                                    + ", ".join(f"{a:.1f} vs {s:.1f} %" for r, a, s in zip(ce, agreeing, right)
                                                if str(r["config"]["seed"]) in below) + ")" if below else ""))
        noisy = [column(r, "train/loss_noisy") for r in ce]
        clean = [column(r, "train/loss_clean")[-1] for r in ce]
        out.detail.append(f"`{mode}` CE's loss on the wrong labels {sum(n[0] for n in noisy) / 3:.2f} -> "
                          f"{sum(n[-1] for n in noisy) / 3:.2f} (right labels {sum(clean) / 3:.2f})")
        end = {v: mean_std([column(r, "train/loss_noisy")[-1] for r in pick(table, mode, v)])[0]
               for v in ("SLN", "SLN-MO", "SLN-MO-LC")}
        out.detail.append(f"`{mode}` SLN ends at {end['SLN']:.2f}, SLN-MO at {end['SLN-MO']:.2f}, SLN-MO-LC at "
                          f"{end['SLN-MO-LC']:.2f}")
    return out


def search_phrases(search: list[dict]) -> Phrases:
    """The sigma searches: validation accuracy (noisy labels) at the last epoch per sigma."""
    out = Phrases()
    for mode in MODES:
        out.detail.append(search_line(f"`{mode}`", [r for r in search if r["config"]["noise_mode"] == mode]))
        if note := zero_note(f"`{mode}` SLN", [r for r in search if r["config"]["noise_mode"] == mode], "CE"):
            out.main.append(note)
            out.detail.append(note)
    ce = next(r for r in search if r["config"]["noise_mode"] == "sym" and r["config"]["sigma"] == 0)
    val = column(ce, "val/acc")
    out.detail.append(f"`sym` CE search run: validation accuracy {100 * max(val):.1f} % at epoch "
                      f"{val.index(max(val)) + 1}, {100 * val[-1]:.1f} % at {len(val)}")
    return out


def probe_phrases(probes: list[dict]) -> Phrases:
    """The probes that chose lr and batch size."""
    out = Phrases()
    for r in sorted(probes, key=lambda r: r["config"]["lr"]):
        noisy = column(r, "train/loss_noisy")
        out.detail.append(f"lr {r['config']['lr']:g}, batch {r['config']['batch_size']}: loss on the wrong labels "
                          f"{noisy[0]:.2f} -> {noisy[-1]:.2f} (right labels {column(r, 'train/loss_clean')[-1]:.2f}), "
                          f"agreeing with {100 * last(r, 'train/acc'):.1f} % of the given labels")
    return out


def dissection_phrases(dissect: list[dict], grid: list[dict]) -> Phrases:
    """The dissection's CE run, trained again for its weights, against the grid's."""
    out = Phrases()
    (again,) = dissect
    twin = next(r for r in pick(grid, "sym", "CE") if r["config"]["seed"] == again["config"]["seed"])
    out.detail.append(f"last test accuracy {100 * again['summary']['last_test_acc']:.2f} % (grid run "
                      f"{100 * twin['summary']['last_test_acc']:.2f} %), best {100 * again['summary']['best_test_acc']:.2f} % "
                      f"({100 * twin['summary']['best_test_acc']:.2f} %)")
    out.detail.append(f"the dissection's CE run (commit `{commit(again)}`) and the grid's (`{commit(twin)}`): epoch-1 "
                      f"training loss {column(again, 'train/loss')[0]:.5f} vs {column(twin, 'train/loss')[0]:.5f}")
    return out


def repeatability_phrases(table: list[dict], columns: tuple[str, ...]) -> Phrases:
    """Repeatability: SLN and SLN-MO train alike (only the reported network differs), so a seed's two runs are a
    repeat of one training; are they identical where one commit made both, and where two did?"""
    out = Phrases()
    pairs = [(a, b) for mode in columns for a, b in zip(pick(table, mode, "SLN"), pick(table, mode, "SLN-MO"))]
    one = [column(a, "train/loss") == column(b, "train/loss") for a, b in pairs if commit(a) == commit(b)]
    two = [(commit(a), commit(b), column(a, "train/loss")[0] != column(b, "train/loss")[0],
            column(a, "train/loss") == column(b, "train/loss")) for a, b in pairs if commit(a) != commit(b)]
    differ = dict.fromkeys((a, b) for a, b, first, _ in two if first)     # the pairs of commits, in order, once each
    alike = dict.fromkeys((a, b) for a, b, _, same in two if same)
    n_differ, n_alike = sum(t[2] for t in two), sum(t[3] for t in two)
    out.detail.append(f"of the {len(pairs)} pairs of SLN and SLN-MO runs of one setting and seed, the {len(one)} made at "
                      f"one commit are identical in training loss at every epoch in {sum(one)}; of the {len(two)} made at "
                      f"two commits, {n_differ} differ from epoch 1 on ({', '.join(f'`{a}` and `{b}`' for a, b in differ)})"
                      f" and {n_alike} {'is' if n_alike == 1 else 'are'} identical "
                      f"({', '.join(f'`{a}` and `{b}`' for a, b in alike) or 'none'})")
    return out


def human_phrases(human: list[dict], human_search: list[dict]) -> Phrases:
    """Human noise (CIFAR-10N worst): its time and its sigma search."""
    out = Phrases()
    if human_search:
        out.detail.append(search_line(f"`{HUMAN}`", human_search))
        if note := zero_note(f"`{HUMAN}` SLN", human_search, "CE"):
            out.main.append(note)
            out.detail.append(note)
        out.detail.append(f"`{HUMAN}` sigma search {60 * hours(human_search):.1f} core-minutes")
    if human:
        out.main.append(f"CIFAR-10N's sigma search and its {len(human)} runs took {hours(human) + hours(human_search):.1f} "
                        f"core-hours")
    return out


def lc_against_ce_phrases(table: list[dict], columns: tuple[str, ...], baselines: list[dict]) -> Phrases:
    """SLN-MO-LC against CE where no baseline ran: CE's trained network (the paper's comparison), then CE-MO."""
    out = Phrases()
    for mode in [m for m in columns if not any(setting(r) == m for r in baselines)]:
        lc, ce = pick(table, mode, "SLN-MO-LC"), pick(table, mode, "CE")
        out.main.append(f"`{mode}`: SLN-MO-LC minus CE {brief(paired(lc, ce))}, minus CE-MO {brief(paired(lc, ce, key_b=EMA))} "
                        "points")
        out.detail.append(f"`{mode}`: " + versus(lc, ce, "SLN-MO-LC", "CE"))
        out.detail.append(f"`{mode}`: " + versus(lc, ce, "SLN-MO-LC", "CE-MO", key_b=EMA))
    return out


def baseline_phrases(grid: list[dict], baselines: list[dict]) -> Phrases:
    """The baselines: their time, SLN-MO-LC against each (their momentum networks, which they keep but do not report,
    then their reported networks, as the paper compares), Co-teaching with and without SLN."""
    out = Phrases()
    if baselines:
        out.main.append(f"the {len(baselines)} baseline runs took {hours(baselines):.1f} core-hours")
        out.script.append(f"about {hours(baselines) / 2:.1f} more for the baselines")
        spans = {b: sorted(r["summary"]["seconds"] / 60 for r in baselines if r["config"]["variant"] == b) for b in BASELINES}
        out.detail.append("a baseline run took " + ", ".join(f"{m[0]:.0f}-{m[-1]:.0f} min ({b})" for b, m in spans.items() if m))
        versus_ce_mo, with_sln, below_ce = [], [], []
        for mode in sorted({setting(r) for r in baselines}, key=MODES.index):
            lc = pick(grid, mode, "SLN-MO-LC")
            cells = {b: runs_b for b in BASELINES if (runs_b := pick(baselines, mode, b))}
            ce = pick(grid, mode, "CE")
            # network against network of the same kind: SLN-MO-LC's momentum network against each baseline's and CE's
            out.main.append(f"`{mode}`, SLN-MO-LC minus each baseline's momentum network: " + gaps(lc, cells, EMA))
            versus_ce_mo.append(f"`{mode}` {brief(paired(lc, ce, key_b=EMA))}")
            out.detail.append(f"`{mode}`: " + versus(lc, ce, "SLN-MO-LC", "CE-MO", key_b=EMA))
            # the paper's way, each method's reported network: SLN-MO-LC's momentum network, the baselines' trained ones
            out.detail.append(f"`{mode}`, SLN-MO-LC's momentum network minus each baseline's trained one: " + gaps(lc, cells))
            diffs = {b: paired(lc, runs_b) for b, runs_b in cells.items()}
            ahead = [b for b, d in diffs.items() if sum(d) > 0]
            mixed = [f"{b} ({sides(d)[1]})" for b, d in diffs.items() if b in ahead and min(d) <= 0]
            out.main.append(f"`{mode}`: ahead of {len(ahead)} of the {len(cells)} on the mean, "
                            + (f"on every seed but against {' and '.join(mixed)}" if mixed else "on every seed"))
            # trained network against trained network: which baselines end below plain CE
            below = {b: paired(runs_b, ce) for b, runs_b in cells.items() if sum(paired(runs_b, ce)) < 0}
            below_ce.append(f"{len(below)} of the {len(cells)} on `{mode}`")
            out.detail.append(f"below plain CE on `{mode}`: " + (", ".join(f"{b} {step(d)}" for b, d in below.items())
                                                                  if below else "none"))
            for b, runs_b in cells.items():
                out.detail.append(f"`{mode}`: " + versus(lc, runs_b, "SLN-MO-LC", f"{b}+EMA", key_b=EMA))
                out.detail.append(f"`{mode}`: " + versus(lc, runs_b, "SLN-MO-LC (momentum network)", f"{b} (trained network)"))
            if "Co-teaching-SLN" in cells and "Co-teaching" in cells:
                with_sln.append(f"`{mode}` {brief(paired(cells['Co-teaching-SLN'], cells['Co-teaching']))}")
                out.detail.append(f"`{mode}`: " + versus(cells["Co-teaching-SLN"], cells["Co-teaching"], "Co-teaching-SLN",
                                                         "Co-teaching"))

        out.main.append("SLN-MO-LC minus CE-MO: " + ", ".join(versus_ce_mo) + " points")
        out.main.append("below plain CE (trained networks): " + ", ".join(below_ce))
        if with_sln:
            out.main.append("Co-teaching-SLN minus Co-teaching: " + ", ".join(with_sln) + " points")
    return out


def coteaching_search_phrases(coteaching_search: list[dict]) -> Phrases:
    """Co-teaching-SLN's own sigma search (tune.py --method): its sigma-0 trials are plain Co-teaching."""
    out = Phrases()
    for mode in sorted({setting(r) for r in coteaching_search}, key=MODES.index):
        trials = [r for r in coteaching_search if setting(r) == mode]
        out.detail.append(search_line(f"`{mode}` Co-teaching-SLN", trials, "Co-teaching"))
        if note := zero_note(f"`{mode}` Co-teaching-SLN", trials, "Co-teaching"):
            out.main.append(note)
            out.detail.append(note)
        out.detail.append(f"`{mode}` Co-teaching-SLN sigma search {60 * hours(trials):.1f} core-minutes")
    return out


def dirty_phrases(everything: list[dict]) -> Phrases:
    """Runs made from a tree with uncommitted changes: counted over every committed run, and each named."""
    out = Phrases()
    dirty = [r for r in everything if r["config"]["code"]["git_dirty"]]
    out.detail.append(f"{len(dirty)} of the {len(everything)} committed runs record `git_dirty: true`")
    out.detail += [f"`{r['id']}`" for r in dirty]
    return out


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
