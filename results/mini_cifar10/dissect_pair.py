"""The two runs of the sample-dissection figure (CE next to SLN-MO-LC, sym noise, seed 1), with their weights.

    python results/mini_cifar10/dissect_pair.py GRID_RUNS_DIR WORK_DIR DATA_DIR   # prints: <pair folder> <CE id> <LC id>

plot.py's dissection needs a run's final weights, which are never committed. A grid run that has them (trained
in this session's sweep) is used as it is. One that lacks them (a committed run that the sweep reused, or one
trained in an earlier session whose work folder is gone) is trained again with train_cifar.py, with every
training flag of its config.yaml, into WORK_DIR/dissect/; a finished retrain there is reused. Both runs are
linked into WORK_DIR/dissect_pair/, the --runs_dir for plot.py --plot_type dissect_compare. A retrain is not
bit-identical to the grid run (training is not --deterministic), so its final accuracy is printed next to the
grid run's.
"""
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train_cifar  # noqa: E402  (the repository's own scripts; this one lives two folders down)
import experiments  # noqa: E402
import tune  # noqa: E402

PAIR = ("CE", "SLN-MO-LC")
WEIGHTS = ("model_final.pt", "ema_final.pt")
SKIP = tune.NOT_TRAINING | {"resume"}


def finished_with_weights(run: Path) -> bool:
    return all((run / name).is_file() for name in ("summary.json", *WEIGHTS))


def training_flags(config: dict) -> dict:
    """The train_cifar.py flags a run was trained with (paths, device and bookkeeping aside)."""
    defaults = vars(train_cifar.build_parser().parse_args([]))
    return {k: config[k] for k in defaults if k in config and k not in SKIP}


def grid_run(runs_dir: Path, variant: str) -> tuple[Path, dict]:
    for path in sorted(runs_dir.glob("*/config.yaml")):
        config = yaml.safe_load(path.read_text())
        if (config.get("variant"), config.get("noise_mode"), config.get("seed")) == (variant, "sym", 1):
            if (path.parent / "summary.json").is_file():
                return path.parent, config
    sys.exit(f"error: no finished {variant} run with sym noise and seed 1 in {runs_dir}; run the grid first")


def with_weights(run: Path, config: dict, work: Path, data_dir: Path) -> Path:
    if finished_with_weights(run):
        return run
    flags = training_flags(config)
    for path in sorted((work / "dissect" / "runs").glob("*/config.yaml")):
        if finished_with_weights(path.parent) and training_flags(yaml.safe_load(path.read_text())) == flags:
            return path.parent
    defaults = vars(train_cifar.build_parser().parse_args([]))
    argv = [a for k, v in flags.items() for a in experiments.flag_argv(k, v, defaults[k])]
    argv += ["--data_dir", str(data_dir), "--out_dir", str(work / "dissect")]
    print(f"{run.name} has no weights here: training it again: python train_cifar.py {' '.join(argv)}", file=sys.stderr)
    before = set((work / "dissect" / "runs").glob("*"))
    train_cifar.main(argv)
    (new,) = set((work / "dissect" / "runs").glob("*")) - before
    return new


def main(grid_runs: Path, work: Path, data_dir: Path) -> None:
    pair = work / "dissect_pair"
    pair.mkdir(parents=True, exist_ok=True)
    ids = []
    for variant in PAIR:
        run, config = grid_run(grid_runs, variant)
        used = with_weights(run, config, work, data_dir)
        if used != run:
            grid, again = (json.loads((r / "summary.json").read_text()) for r in (run, used))
            print(f"{variant}: retrained {used.name} for {run.name}: last test acc {again['last_test_acc']:.4f} "
                  f"(grid run {grid['last_test_acc']:.4f}), best {again['best_test_acc']:.4f} "
                  f"(grid run {grid['best_test_acc']:.4f})", file=sys.stderr)
        link = pair / used.name
        if not link.exists():
            link.symlink_to(used.resolve(), target_is_directory=True)
        ids.append(used.name)
    print(pair, *ids)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: " + __doc__.strip().split("\n\n")[1].strip())
    main(*map(Path, sys.argv[1:]))
