"""The temperature experiment of DESIGN.md, from nothing or from where it stopped: pilots, sigma searches, main runs.

    python results/temperature/run.py DATA_DIR             # everything that is not done yet, in order
    python results/temperature/run.py DATA_DIR --step pilots   # only the pilots (or: searches, grids)

Interrupted (Ctrl-C, SIGTERM, a reboot)? Run the same command again: a finished run is kept, a pilot that was cut
off continues from its checkpoint (train_cifar.py --resume), a sweep that was cut off continues (tune.py --resume).
The sweeps and checkpoints live in results/temperature/work/ (not committed); each finished run's small files
(config.yaml, metrics.csv, noise.json, summary.json) are copied to pilots/, search_runs/ and runs/ as it lands.
What is done is read from those committed files, so a fresh clone (no work/) goes on from where the committed
results end, run by run: a pilot in pilots/, a search trial (its sigma) in search_runs/, a main run (its variant and
seed) in runs/ is not run again, and a sweep started anew runs only what is missing. A sweep's finished runs are
copied as they land, not when it ends. `analyze.py` makes the tables and the figure from those files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / "work"

# DESIGN.md's levels: (lr, batch, planned epochs, EMA alpha); evaluation every planned_epochs / 20 epochs
LEVELS = {"hot": (0.02, 32, 100, 0.995), "warm": (0.02, 128, 400, 0.995), "cold": (0.01, 128, 800, 0.9975)}
PILOT_FACTOR = 1.5
SEEDS = [1, 2, 3]
# the sigma grid of each level's search, and 0, the reference, which tune.py adds; DESIGN.md, "Changes": over
# budget, the warm and cold searches drop the grid's largest value, as the budget rule says
SIGMAS = {"hot": ["0.05", "0.1", "0.2", "0.5", "1.0"], "warm": ["0.05", "0.1", "0.2", "0.5"],
          "cold": ["0.05", "0.1", "0.2", "0.5"]}
SMALL_FILES = ("config.yaml", "metrics.csv", "noise.json", "summary.json")
# DESIGN.md, "Changes": the pilots and the hot sigma search ran in bf16 autocast on a CPU with AVX512_BF16; every
# run after them, the 18 main runs of all three levels included, is float32, which any CPU runs
PRECISION = "fp32"


def common(data_dir: Path) -> list[str]:
    return ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--model", "wrn-16-1",
            "--train_subset", "2000", "--precision", PRECISION, "--channels_last", "--device", "cpu",
            "--data_dir", str(data_dir)]


def level_flags(level: str, epochs: int) -> list[str]:
    lr, batch, planned, alpha = LEVELS[level]
    return ["--lr", str(lr), "--batch_size", str(batch), "--ema_alpha", str(alpha), "--n_epochs", str(epochs),
            "--eval_every", str(planned // 20)]


def level_of(config: dict) -> str | None:
    """The level whose lr and batch size a run's config.yaml has."""
    for level, (lr, batch, _, _) in LEVELS.items():
        if config["lr"] == lr and config["batch_size"] == batch:
            return level
    return None


def finished(folder: Path) -> dict[str, list[Path]]:
    """The finished runs (summary.json) among folder's committed run files, by level."""
    found: dict[str, list[Path]] = {level: [] for level in LEVELS}
    for summary in sorted(folder.glob("exp_*/summary.json")):
        level = level_of(yaml.safe_load((summary.parent / "config.yaml").read_text()))
        if level is not None:
            found[level].append(summary.parent)
    return found


def run(cmd: list[str]) -> None:
    """Run a training command with one torch thread (tune.py gives each trial one per core, as here)."""
    print("+ " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if code:
        sys.exit(code)


def copy_small(run_dir: Path, dest: Path) -> None:
    """The run's small files into dest/<exp_id>/ (summary.json last: it marks the run finished)."""
    out = dest / run_dir.name
    out.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)


# ----------------------------------------------------------------------------------------------------
# Pilots

def pilot_runs() -> dict[str, Path]:
    """Each level's pilot run folder (in work/pilots/<level>/runs/), if it was started."""
    found = {}
    for level in LEVELS:
        folders = sorted((WORK / "pilots" / level / "runs").glob("exp_*"))
        if folders:
            found[level] = folders[-1]
    return found


def pilots(data_dir: Path, levels: list[str]) -> None:
    for level in levels:
        planned = LEVELS[level][2]
        out = WORK / "pilots" / level
        if finished(HERE / "pilots")[level]:
            continue
        started = pilot_runs().get(level)
        if started is not None and (started / "summary.json").is_file():
            copy_small(started, HERE / "pilots")
            continue
        py = [sys.executable, "train_cifar.py"]
        if started is not None and any((started / n).is_file() for n in ("checkpoint.pt", "checkpoint.prev.pt")):
            run(py + ["--resume", started.name, "--out_dir", str(out), "--data_dir", str(data_dir)])
        else:
            if started is not None:        # cut off before its first checkpoint: nothing of value in it
                shutil.rmtree(started)
            run(py + common(data_dir) + level_flags(level, int(planned * PILOT_FACTOR))
                + ["--sigma", "0", "--lc_n_epoch", "-1", "--seed", "0", "--out_dir", str(out)])
        copy_small(pilot_runs()[level], HERE / "pilots")


def memorisation(run_dir: Path) -> list[float]:
    """train/acc_noisy per epoch (agreement with the wrong labels, on the batches as trained)."""
    import csv
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["train/acc_noisy"]) for r in csv.DictReader(f)]


def chosen_epochs() -> dict[str, dict]:
    """DESIGN.md's criterion, per level: the planned epochs if the pilot's CE agrees with as many wrong labels there
    as the hot pilot at its planned last epoch; otherwise the first multiple of the evaluation spacing that does;
    1.5x the planned epochs if none does."""
    found = {level: runs[-1] for level, runs in finished(HERE / "pilots").items() if runs}
    if set(found) != set(LEVELS):
        sys.exit("the pilots are not all finished; run the pilots step first")
    target = memorisation(found["hot"])[LEVELS["hot"][2] - 1]
    out = {}
    for level, (_, _, planned, _) in LEVELS.items():
        acc = memorisation(found[level])
        spacing = planned // 20
        candidates = [e for e in range(planned, len(acc) + 1, spacing)]
        met = next((e for e in candidates if acc[e - 1] >= target), None)
        out[level] = {"planned": planned, "epochs": met or len(acc), "criterion_met": met is not None,
                      "acc_noisy_at_planned": acc[planned - 1], "hot_target": target, "pilot": found[level].name}
    return out


# ----------------------------------------------------------------------------------------------------
# Sweeps

def sweep_folder(kind: str, level: str) -> Path | None:
    """The sweep folder of this kind (sigma_search or experiments) and level, if one was started."""
    for folder in sorted((WORK / level).glob("hp/hp_*")):
        sweep = yaml.safe_load((folder / "sweep.yaml").read_text()) if (folder / "sweep.yaml").is_file() else None
        if sweep and sweep.get("kind") == kind:
            return folder
    return None


def search_key(config: dict):
    return float(config["sigma"])


def main_key(config: dict):
    return config["variant"], int(config["seed"])


def committed(dest: Path, level: str, key) -> dict:
    """The level's finished runs in dest (committed), by key: a search trial by its sigma, a main run by its variant
    and seed."""
    return {key(yaml.safe_load((d / "config.yaml").read_text())): d for d in finished(dest)[level]}


def copy_new(folder: Path, dest: Path, level: str, key) -> None:
    """The sweep's finished runs into dest, but for a key that dest holds already from another run (a sweep started
    anew after its folder was lost runs the reference trial again)."""
    have = committed(dest, level, key)
    for run_dir in sorted((folder / "runs").glob("exp_*")):
        if (run_dir / "summary.json").is_file():
            k = key(yaml.safe_load((run_dir / "config.yaml").read_text()))
            if k not in have or have[k].name == run_dir.name:
                copy_small(run_dir, dest)


def sweep(kind: str, level: str, flags: list[str], dest: Path, key) -> None:
    """tune.py on `flags` (or --resume of the level's sweep of this kind when its folder is there), copying each
    finished run into dest every minute while it runs."""
    folder = sweep_folder(kind, level)
    cmd = [sys.executable, "tune.py", *(["--resume", str(folder)] if folder else
                                        [*flags, "--cpus_per_trial", "1", "--out_dir", str(WORK / level)])]
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    while True:
        ended = proc.poll() is not None
        if not ended:
            time.sleep(60)
        folder = sweep_folder(kind, level)
        if folder is not None:
            copy_new(folder, dest, level, key)
        if ended:
            break
    if proc.returncode:
        sys.exit(proc.returncode)


def chosen_sigma(level: str) -> float:
    path = HERE / f"sigma_search_{level}.md"
    text = path.read_text() if path.is_file() else ""
    for line in text.splitlines():
        if line.startswith("best sigma: "):
            return float(line.split()[2])
    sys.exit(f"the {level} sigma search has not finished; run the searches step first")


def search_tables(level: str) -> None:
    """sigma_search_<level>.md/.csv from the level's committed search trials, as tune.py writes them for a sweep."""
    sys.path.insert(0, str(ROOT))
    import sweeps
    trials = committed(HERE / "search_runs", level, search_key)
    if set(trials) != {0.0, *map(float, SIGMAS[level])}:
        sys.exit(f"the {level} search lacks the trials of sigma "
                 f"{sorted({0.0, *map(float, SIGMAS[level])} - set(trials))}; run the searches step again")
    with tempfile.TemporaryDirectory() as tmp:
        hp_dir = Path(tmp)
        (hp_dir / "runs").mkdir()
        configs = {}
        for run_dir in trials.values():
            (hp_dir / "runs" / run_dir.name).symlink_to(run_dir.resolve(), target_is_directory=True)
            configs[run_dir.name] = yaml.safe_load((run_dir / "config.yaml").read_text())
        sweeps.sigma_table(hp_dir, configs, {"base": next(iter(configs.values()))})
        for suffix in ("md", "csv"):
            shutil.copyfile(hp_dir / f"sigma_search.{suffix}", HERE / f"sigma_search_{level}.{suffix}")


def search(data_dir: Path, level: str) -> None:
    """The level's sigma search: the grid's sigmas and the reference (0) not committed yet, then its tables."""
    epochs = chosen_epochs()
    (HERE / "epochs.json").write_text(json.dumps(epochs, indent=1) + "\n")
    if (HERE / f"sigma_search_{level}.csv").is_file():
        return
    have = committed(HERE / "search_runs", level, search_key)
    missing = [s for s in SIGMAS[level] if float(s) not in have]
    if missing or 0.0 not in have:
        flags = common(data_dir) + level_flags(level, epochs[level]["epochs"]) + [
            "--lc_n_epoch", "-1", "--seed", "0", "--val_size", "0.1", "--sigmas", *(missing or SIGMAS[level][:1])]
        sweep("sigma_search", level, flags, HERE / "search_runs", search_key)
    search_tables(level)


def grid(data_dir: Path, level: str) -> None:
    """The level's main runs (CE and SLN at its chosen sigma, every seed) not committed yet."""
    have = committed(HERE / "runs", level, main_key)
    seeds = [s for s in SEEDS if not {("CE", s), ("SLN", s)} <= set(have)]
    if not seeds:
        return
    epochs = json.loads((HERE / "epochs.json").read_text())
    spec = {"variants": ["CE", "SLN"], "noise_modes": ["sym"], "seeds": SEEDS, "sigma": {"sym": chosen_sigma(level)}}
    (HERE / f"grid_{level}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    path = WORK / level / f"grid_{level}_seeds_{'_'.join(map(str, seeds))}.yaml"    # the seeds still missing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**spec, "seeds": seeds}, sort_keys=False))
    flags = ["--experiments", str(path)] + common(data_dir) + level_flags(level, epochs[level]["epochs"])
    sweep("experiments", level, flags, HERE / "runs", main_key)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", type=Path, help="holds cifar-10-batches-py/ and cifar10/label_noisy/sym0.4.csv")
    p.add_argument("--step", choices=["pilots", "searches", "grids"], default=None,
                   help="only this step (default: every step not done yet: the pilots, then level by level, hottest "
                        "first, its sigma search and its main runs)")
    p.add_argument("--pilot_levels", nargs="+", choices=list(LEVELS), default=list(LEVELS),
                   help="the levels whose pilots this process trains (e.g. one process per core)")
    args = p.parse_args(argv)
    data_dir = args.data_dir.resolve()
    if args.step in (None, "pilots"):
        pilots(data_dir, args.pilot_levels)
    for level in LEVELS:
        if args.step in (None, "searches"):
            search(data_dir, level)
        if args.step in (None, "grids"):
            grid(data_dir, level)


if __name__ == "__main__":
    main()
