"""Choose sigma on a noisy validation split, or run a whole paper table, as one Ray Tune sweep.

    python tune.py --dataset_name cifar10 --noise_mode sym --p 0.4 --lc_n_epoch -1 --val_size 0.1 --seed 123
    python tune.py --experiments configs/paper_cifar10.yaml
    python tune.py --resume hp_2026-01-31_12-00-00          # continue an interrupted sweep

Every trial is an ordinary training run (engine.run, the loop of train_cifar.py). A sweep folder
<out_dir>/hp/hp_<timestamp>/ holds
  sweep.yaml                 the sweep's settings (what --resume reads back)
  tune/                      Ray Tune's per-trial results (Tuner storage_path); written, never read back
  runs/<exp_id>/, configs/   one run folder per trial, as train_cifar.py writes them (TensorBoard logs included)
  sigma_search.md/.csv       sigma search: sigma vs last-epoch and best validation accuracy, and the best sigma
  table.md/.csv              --experiments: mean ± std over seeds of the test accuracy, laid out like the paper
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import deps  # noqa: F401  (first: a Python without the packages gets one line, not a traceback)

import ray
import ray.tune
import torch
import yaml

import cli
import cluster
import datasets
import engine
import experiments
import files
import methods
import runs
import sweeps
from models import make_model
from errors import DataError

DEFAULT_SIGMAS = [0.1, 0.2, 0.5, 1.0]                 # the paper's grid


def build_parser() -> cli.Parser:
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_cifar_args(p, human=True, given=True)     # CIFAR-10/100 with label noise, or a dataset's own labels
    cli.add_training_args(p, default_model="wrn-28-2", resumable=False)  # --resume here continues a sweep
    # the dataset's default network and, for clothing1m, the authors' recipe where not given (cli.check_image_args)
    p.set_defaults(model=None, **{k: None for k in cli.RECIPE_FLAGS})
    s = p.add_argument_group("sweep")
    cli.add_flag(s, "--sigmas", type=float, nargs="+", default=DEFAULT_SIGMAS, roles={cli.TUNE_ONLY},
                 help="the sigma grid of the search: SLN's, as in the paper, or that of --method (one that adds "
                      "SLN noise, e.g. Co-teaching-SLN); a reference trial at sigma 0, the method without SLN "
                      "noise, always runs beside it: never chosen, and the report says when it scores higher")
    s.add_argument("--val_size", type=float, default=0.1,     # the trials' own: their validation split
                   help="share of the noisy training set held out, with its noisy labels, to choose sigma on")
    cli.add_flag(s, "--experiments", type=Path, default=None, roles={cli.TUNE_ONLY},
                 help="YAML file of a grid of runs (variants, i.e. methods, x noise modes x seeds) to run instead of a "
                      "sigma search, e.g. configs/paper_cifar10.yaml; flags given here override the file's values")
    cli.add_flag(s, "--reuse_runs", type=Path, nargs="+", default=[], metavar="DIR", roles={cli.TUNE_ONLY},
                 help="folders of finished runs (e.g. committed results/<name>/runs) to take instead of training "
                      "again: a trial whose settings equal such a run's is reported from it (its small files are "
                      "copied into the sweep), so a sweep whose own folder was lost need not start over")
    cli.add_flag(s, "--resume", default=None, roles={cli.TUNE_ONLY},
                 help="continue an interrupted sweep with its saved settings: its folder, or its id (hp_...) "
                      "under <out_dir>/hp/; finished trials are not run again")
    cli.add_flag(s, "--dry_run", action="store_true", roles={cli.TUNE_ONLY},
                 help="check everything and print every trial (method, flags, seed, where it would run) and what "
                      "the sweep costs (trials x epochs x images), then stop: no Ray, no sweep folder, no training")
    cli.add_flag(s, "--bench", type=Path, default=None, metavar="JSON", roles={cli.TUNE_ONLY},
                 help="with --dry_run: the JSON that `python bench.py --json JSON` wrote on the machine that will "
                      "train, whose images/s (train_img_s of the sweep's --model) turn the cost into hours")
    r = p.add_argument_group("Ray")
    cli.add_flag(r, "--cpus_per_trial", type=float, default=1, roles={cli.TUNE_ONLY},
                 help="CPU cores reserved for each trial")
    cli.add_flag(r, "--gpus_per_trial", type=float, default=None, roles={cli.TUNE_ONLY},
                 help="GPUs per trial; fractions share a GPU (0.5: two trials per GPU). Default: 1 if the Ray "
                      "cluster has GPUs, else 0")
    cli.add_flag(r, "--address", default=None, roles={cli.TUNE_ONLY},
                 help="join a running Ray cluster (its head node's host:port, or auto), showing it the token of "
                      "Ray's authentication from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; "
                      "default: start Ray on this machine")
    return p


# what trial() adds to a trial's flags: its Tune config (by which a resumed sweep finds its run again) and Tune's id
TRIAL_KEYS = ("tune_config", "tune_trial_id")


def flags_of(role: str) -> list[str]:
    """tune.py's flags declared with `role` (cli.add_flag), in the order of their declaration."""
    return cli.flags_with(build_parser(), role)


TUNE_ONLY = set(flags_of(cli.TUNE_ONLY))
# a finished run may be reused whatever these were
NOT_TRAINING = set(flags_of(cli.NOT_TRAINING)) | set(TRIAL_KEYS)
PER_RUN = cli.per_run(build_parser())      # {flag: the experiments file's key that sets it per trial}


def changed_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """Flags whose value is not the default (to refuse flags that a mode would silently ignore)."""
    return {k for k, v in vars(args).items() if v != parser.get_default(k)}


# ----------------------------------------------------------------------------------------------------
# Planning a sweep: every check happens here, before anything is written

def trial_flags(config: dict, sweep: dict) -> dict:
    """The flags that one trial's Tune `config` sets on top of the sweep's base flags."""
    if sweep["kind"] == "sigma_search":
        method = sweep["base"].get("method")
        if method is not None and config["sigma"] == 0:     # the reference trial: the method without SLN noise
            return {"sigma": 0.0, "method": methods.without_sln(methods.get(method)).name}
        return {"sigma": config["sigma"]}
    m, mode = methods.get(config["variant"]), config["noise_mode"]
    # the grid's noise axis: CIFAR's noise modes, or CIFAR-N's label sets (sweep["axis"] "noise_label")
    axis = {"noise_mode": mode} if sweep.get("axis", "noise_mode") == "noise_mode" else {"noise_label": mode}
    flags = {**axis, "seed": config["seed"], "sigma": sweep["sigma"][mode] if m.sln else 0.0,
             "mo": m.mo, "lc_n_epoch": sweep["lc_n_epoch"] if m.lc else -1}
    if not m.by_flags:      # the paper's models keep the flags of the earlier commands (and of committed runs)
        flags["method"] = m.name
    own = {f.name for f in m.flags}
    # a method's own value in the experiments file is for that method's trials only
    return {**flags, **{name: None for name in methods.all_flags() if name not in own}}


def trial_args(sweep: dict, config: dict) -> argparse.Namespace:
    """One trial's flags, as a training script has them (paths as Path)."""
    args = argparse.Namespace(**{**sweep["base"], **trial_flags(config, sweep)})
    for name in ("data_dir", "out_dir", "weights"):
        if getattr(args, name, None) is not None:
            setattr(args, name, Path(getattr(args, name)))
    return args


def trial_configs(sweep: dict) -> list[dict]:
    """Every trial's Tune config, in the order they start: the grid's first key varies slowest (for a table:
    noise mode, then model, then seed, so that one noise mode's table is complete before the next begins)."""
    grid = sweep["grid"]
    keys = [k for k in ("noise_mode", "variant", "seed") if k in grid] + [k for k in grid if k not in ("noise_mode", "variant", "seed")]
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def base_flags(args: argparse.Namespace) -> dict:
    """The training flags shared by all trials, with absolute paths (Ray runs trials in other directories)."""
    return {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in TUNE_ONLY}


def preflight(sweep: dict) -> dict[tuple, dict[str, int]]:
    """Check every trial's flags, and load the data of each noise mode once here rather than fail in every
    trial (this also downloads missing files once, and makes custom noise once if asked). Returns, per (noise mode,
    noise label), the images a trial of it trains on and evaluates (train, test, val)."""
    loaded: dict[tuple, dict[str, int]] = {}
    for config in trial_configs(sweep):
        args = trial_args(sweep, config)
        where = (f"{sweep['experiments_file']}, experiment {' '.join(f'{k}={v}' for k, v in config.items())}: "
                 if sweep["kind"] == "experiments" else "")
        with cli.failing_in(where):
            cli.check_noise_args(args, args.dataset_name)
            cli.check_training_args(args)
            if not loaded:
                cli.pretrained_weights(args)     # fetched once here (torch.hub's cache), not in every trial
        if (args.noise_mode, args.noise_label) not in loaded:
            try:
                data, val = datasets.split_data(vars(args))
            except DataError as e:
                cli.fail(str(e))
            loaded[args.noise_mode, args.noise_label] = {"train": len(data.labels), "test": len(data.test_labels),
                                                         "val": 0 if val is None else len(val[1])}
    sweep["base"]["make_new_custom_noise"] = False   # made above; trials must not all rewrite the same file
    return loaded


def plan_sigma_search(parser: cli.Parser, args: argparse.Namespace) -> dict:
    changed = changed_flags(parser, args)
    if "sigma" in changed:
        cli.fail("--sigma is what the search varies; give its grid with --sigmas")
    m = search_method(args)
    if any(not 0 <= s < math.inf for s in args.sigmas) or len(set(args.sigmas)) != len(args.sigmas) or not any(s > 0 for s in args.sigmas):
        cli.fail(f"--sigmas must be distinct values >= 0 with at least one > 0 (a reference trial at 0, without "
                 f"SLN noise, runs beside them and is never chosen), got {args.sigmas}")
    if methods.without_sln(m) is None:
        cli.fail(f"the sigma search runs a reference trial of {m.name} without SLN noise at sigma 0, and no "
                 f"declared method is that; declare it in methods/ first")
    args.sigmas = [*args.sigmas, 0.0] if 0 not in args.sigmas else args.sigmas   # the reference: does SLN help at all?
    if not 0 < args.val_size < 1:
        cli.fail(f"--val_size must be a share in (0, 1), got {args.val_size}")
    return {"kind": "sigma_search", "base": base_flags(args), "grid": {"sigma": sorted(args.sigmas)}}


def search_method(args: argparse.Namespace) -> methods.Method:
    """The method whose sigma the search varies: SLN, as in the paper, or --method, one that adds SLN noise and
    corrects no labels (e.g. Co-teaching-SLN). Recorded canonically: SLN as the flags that select it (no --method,
    as the sweeps made before --method existed), any other by its declared name."""
    if args.lc_n_epoch != -1:
        cli.fail("the sigma search trains without label correction; use --lc_n_epoch -1")
    if args.method is None:
        if args.mo:
            cli.fail("--mo: the sigma search trains SLN, as the paper does; for SLN+MO's own search use --method SLN-MO")
        return methods.get("SLN")
    try:
        m = methods.get(args.method)
    except ValueError as e:
        cli.fail(f"--method: {e}")
    searchable = [n for n, x in methods.METHODS.items() if x.sln and not x.lc]
    if m.name not in searchable:
        cli.fail(f"--method {m.name}: the sigma search varies the sigma of a method that adds SLN noise and corrects "
                 f"no labels; choose from {', '.join(searchable)} (SLN, the paper's, is the default)")
    args.method = None if m.name == "SLN" else m.name
    args.mo = m.mo if m.by_flags else False        # SLN-MO is selected by its flags too
    return m


def plan_experiments(parser: cli.Parser, args: argparse.Namespace, argv: list[str]) -> tuple[dict, argparse.Namespace]:
    """Settings of an --experiments sweep: defaults, then the file's values, then the flags given here."""
    for name in (*PER_RUN, "sigmas", "val_size"):
        if name in changed_flags(parser, args):
            cli.fail(f"--{name} is set per run by {args.experiments} (variants, noise_modes, seeds, sigma); drop it")
    grid, file_argv = experiments.read_experiments(args.experiments)
    strict = build_parser()
    strict.exit_on_error = False      # a bad value in the file is reported against the file, not the command line
    try:
        strict.parse_args(file_argv)
    except argparse.ArgumentError as e:
        cli.fail(f"{args.experiments}: {e}".replace("argument --", ""))
    args = parser.parse_args(file_argv + argv)        # the command line comes last, so it wins
    for name in methods.all_flags():                   # a method's own flag is for that method's trials only
        if getattr(args, name) is not None and not set(methods.owners(name)) & set(grid["variants"]):
            cli.fail(f"{args.experiments}: {name} is a flag of {' and '.join(methods.owners(name))}, which variants "
                     f"({', '.join(grid['variants'])}) does not list, so no trial would use it; add "
                     f"{methods.owners(name)[0]} to variants, or drop {name}")
    if args.dataset_name not in cli.CIFAR and args.dataset_name not in cli.CIFARN:
        cli.fail(f"{args.experiments}: a grid runs over CIFAR's noise modes or CIFAR-N's label sets; {args.dataset_name} "
                 f"has one set of labels: search its sigma with tune.py --dataset_name {args.dataset_name} (no "
                 "--experiments), then train each method with train_real.py")
    cli.check_image_args(args)
    if "openset" in grid["noise_modes"] and args.dataset_name != "cifar10":
        cli.fail(f"{args.experiments}: open-set noise exists for CIFAR-10 only; remove openset from noise_modes")
    human = args.dataset_name in cli.CIFARN
    if human != (grid["axis"] == "noise_label"):
        cli.fail(f"{args.experiments}: " + (f"{args.dataset_name} has human labels: give noise_labels instead of "
                                            "noise_modes" if human else f"noise_labels are CIFAR-N's; {args.dataset_name} "
                                            "takes noise_modes"))
    if human:         # human labels: no noise mode or rate in the trials' configs (the grid sets --noise_label)
        args.noise_mode = args.p = args.sym_variant = args.asym_variant = None
    sigma = grid["sigma"] or {m: cli.default_sigma(args.dataset_name, None if human else m) for m in grid["noise_modes"]}
    for m in grid["noise_modes"]:
        if sigma.get(m) is None and any(methods.get(v).sln for v in grid["variants"]):
            cli.fail(f"{args.experiments}: sigma has no value for {m}; add it, e.g. sigma: {{{m}: 0.5}}")
    correcting = [v for v in grid["variants"] if methods.get(v).lc]
    if correcting and not 0 < args.lc_n_epoch < args.n_epochs:
        cli.fail(f"{args.experiments}: {', '.join(correcting)} needs lc_n_epoch {cli.epochs_before_the_last(args.n_epochs)} "
                 f"(the paper: 250 of 300 epochs), got lc_n_epoch {args.lc_n_epoch} with n_epochs {args.n_epochs}")
    args.val_size = None                               # tables are test accuracy on the full training set
    file = args.experiments.resolve()
    sweep = {"kind": "experiments", "base": base_flags(args), "experiments_file": str(file),
             "experiments_yaml": file.read_text(),
             "grid": {"variant": grid["variants"], "noise_mode": grid["noise_modes"], "seed": grid["seeds"]},
             "sigma": {m: sigma.get(m) for m in grid["noise_modes"]}, "lc_n_epoch": args.lc_n_epoch,
             "axis": grid["axis"]}
    return sweep, args


def find_sweep(parser: cli.Parser, args: argparse.Namespace) -> Path:
    extra = changed_flags(parser, args) - {"resume", "address", "out_dir"}
    if extra:
        cli.fail(f"--resume continues a sweep with its saved settings; drop {', '.join('--' + k for k in sorted(extra))}")
    hp_dir = Path(args.resume)
    if not hp_dir.is_dir():
        hp_dir = args.out_dir / "hp" / args.resume
    hp_dir = hp_dir.resolve()
    if not (hp_dir / "sweep.yaml").is_file():
        cli.fail(f"--resume {args.resume}: no sweep there (no {hp_dir / 'sweep.yaml'}); give the "
                 "folder of a sweep, or its id hp_... under <out_dir>/hp/")
    return hp_dir


# ----------------------------------------------------------------------------------------------------
# --dry_run: the plan, nothing started

def read_bench(path: Path, model: str) -> tuple[float, str]:
    """The training images/s of `model` in a bench.py --json file, and where it was measured; one line if it has none."""
    try:
        bench = json.loads(path.read_text())
        rate = float(bench["train_img_s"][model])
    except OSError as e:
        cli.fail(f"cannot read --bench {path} ({e.strerror}); give the JSON that `python bench.py --json FILE` wrote")
    except (ValueError, TypeError):
        cli.fail(f"--bench {path} is not the JSON of `python bench.py --json FILE`")
    except KeyError:
        measured = ", ".join(bench.get("train_img_s", {}) or ["none"]) if isinstance(bench, dict) else "none"
        cli.fail(f"--bench {path} has no training rate of {model} (it measured: {measured}); measure it with "
                 f"python bench.py --models {model} --json FILE")
    threads = bench.get("threads")
    return rate, f"bench.py on {bench.get('device', '?')}" + (f", {plural(threads, 'thread')}" if threads else "")


def flags_text(flags: dict) -> str:
    """Flags as they would be typed: --noise_mode sym --sigma 0.5 --mo (None and False left out)."""
    words = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        words += [f"--{key}"] + ([] if value is True else [" ".join(map(str, value)) if isinstance(value, list) else str(value)])
    return " ".join(words)


def dry_run(sweep: dict, images: dict[tuple, dict[str, int]], args: argparse.Namespace) -> list[str]:
    """The sweep's plan as lines: every trial with its method, flags and seed, where it would run, and what it costs
    (trials x epochs x training images; with --bench, the time that bench.py's rate gives)."""
    base, configs = sweep["base"], trial_configs(sweep)
    defaults = build_parser().parse_args([])
    per_trial_keys = {k for c in configs for k, v in trial_flags(c, sweep).items() if v is not None}
    shared = {k: v for k, v in base.items() if k not in ("data_dir", "out_dir") and getattr(defaults, k, None) != v
              and k not in PER_RUN and k not in per_trial_keys}
    what = f"{args.experiments}" if sweep["kind"] == "experiments" else "sigma search"
    lines = [f"dry run of {what}: {plural(len(configs), 'trial')}; nothing is started",
             f"every trial: {flags_text(shared) or '(the defaults)'} --data_dir {base['data_dir']}"]
    rows, total, per_trial = [], 0, []
    for n, config in enumerate(configs, 1):
        flags = {k: v for k, v in trial_flags(config, sweep).items() if v is not None}
        args_t = argparse.Namespace(**{**base, **flags})
        method = methods.of(args_t).name
        seed = flags.pop("seed", base["seed"])
        flags.pop("method", None)
        counts = images[args_t.noise_mode, args_t.noise_label]
        total += counts["train"] * base["n_epochs"]
        per_trial.append(counts)
        rows.append([str(n), method, flags_text(flags), str(seed), f"{counts['train']:,}"])
    widths = [max(len(r[i]) for r in rows + [["#", "method", "flags", "seed", "images"]]) for i in range(5)]
    for row in [["#", "method", "flags", "seed", "images"], *rows]:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    cpus = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        gpus = plural(args.gpus_per_trial, "GPU")
    elif args.address:
        gpus = "1 GPU where the Ray cluster has GPUs, else none"
    else:
        gpus = "1 GPU" if torch.cuda.device_count() else "no GPU"
    ray_where = f"the Ray cluster at --address {args.address}" if args.address else (
        f"a Ray of its own on this machine ({plural(cluster.local_cpus(), 'CPU')}, {plural(torch.cuda.device_count(), 'GPU')})")
    lines.append(f"where: {ray_where}; each trial reserves {plural(cpus, 'CPU')} and {gpus}, trains on --device "
                 f"{base['device']}, and writes its run folder to {Path(base['out_dir']) / 'hp' / 'hp_<timestamp>' / 'runs'}/")
    evaluated = {c["test"] for c in per_trial}, {c["val"] for c in per_trial}
    every = base.get("eval_every") or 1
    lines.append(f"cost: {plural(len(configs), 'trial')} x {plural(base['n_epochs'], 'epoch')} x "
                 + (f"{per_trial[0]['train']:,} images" if len({c['train'] for c in per_trial}) == 1 else
                    "their images") + f" = {total:,} training images"
                 + f"; evaluation: {'/'.join(f'{t:,}' for t in sorted(evaluated[0]))} test images every "
                 + (f"{every} epochs" if every > 1 else "epoch")
                 + ("" if evaluated[1] == {0} else
                    f" and {'/'.join(f'{v:,}' for v in sorted(evaluated[1]))} validation images every epoch"))
    if args.bench is None:
        lines.append(f"time: give --bench JSON (from `python bench.py --models {base['model']} --json JSON` on the "
                     "machine that will train) for an estimate")
    else:
        rate, where = read_bench(args.bench, base["model"])
        at_once = max(1, min(len(configs), int(cluster.local_cpus() // cpus))) if not args.address else 1
        lines.append(f"time: at {rate:,.0f} training images/s ({where}, {args.bench}), about "
                     f"{files.duration(total / rate)} of training one trial at a time"
                     + (f", about {files.duration(total / rate / at_once)} with {at_once} at once on this machine's CPUs"
                        if at_once > 1 and args.gpus_per_trial in (None, 0) and not torch.cuda.device_count() else "")
                     + "; evaluation and start-up come on top")
    return lines


# ----------------------------------------------------------------------------------------------------
# The trials on Ray (cluster.py starts or joins it): their resources, their run folders, the sweep's run

class TuneAdvice(logging.Filter):
    """Drops Ray Tune's own words on a stop: "Stop signal received ..." and "Resume experiment with:
    Tuner.restore(...)", which contradict the one way to continue a sweep here, `python tune.py --resume ...`,
    that the driver prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Stop signal received") or "Resume experiment with" in text)


def resources(cpus: float, gpus: float | None) -> dict:
    """Per-trial resources, checked against what the cluster has (else Tune would wait forever)."""
    have = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if have.get("GPU", 0) > 0 else 0.0
    if cpus > have.get("CPU", 0):
        cli.fail(f"--cpus_per_trial {cpus:g} but the Ray cluster has {plural(have.get('CPU', 0), 'CPU')}; ask for fewer")
    if gpus > 1 and gpus != int(gpus):
        cli.fail(f"--gpus_per_trial {gpus:g}: Ray shares a GPU by fractions below 1 (e.g. 0.25: four trials on one "
                 "GPU) or gives whole GPUs (1, 2, ...); choose one of those")
    if 0 < gpus < 1 and not have.get("GPU", 0):
        cli.fail(f"--gpus_per_trial {gpus:g} shares a GPU between trials, but the Ray cluster has no GPU; use "
                 "--gpus_per_trial 0 to train on CPUs")
    if gpus > have.get("GPU", 0):
        cli.fail(f"--gpus_per_trial {gpus:g} but the Ray cluster has {plural(have.get('GPU', 0), 'GPU')}; "
                    "use --gpus_per_trial 0 to train on CPUs")
    return {"cpu": cpus, "gpu": gpus}


def check_trial_device(base: dict, gpus: float, resumed: bool) -> None:
    """A trial given no GPU trains on the CPU (Ray hides the GPUs from it): refuse here, in one line, what every
    trial would refuse on its own (--device cuda, bf16), rather than start a sweep whose trials all fail."""
    if gpus > 0:
        return
    bf16 = (base.get("precision") == "bf16" or base.get("amp")) and not engine.cpu_bf16_units()
    asked = (f"--device {base['device']}" if str(base.get("device")).startswith("cuda") else
             "--precision bf16 (--amp)" if bf16 else None)
    needs = "a GPU" if asked and asked.startswith("--device") else "a GPU or a CPU with bf16 instructions"
    if asked:
        cli.fail(f"this sweep was started with {asked}, which needs {needs}, and its trials get none here; resume it "
                 "where the Ray cluster has GPUs, or start a new sweep without it" if resumed else
                 f"{asked} needs {needs}, but the trials get none (--gpus_per_trial 0, or no GPU in the Ray "
                 "cluster; no bf16 instructions in this CPU); drop it to train on CPUs")


def runs_of_trial(folder: Path, config: dict) -> list[tuple[Path, dict]]:
    """(run folder, its saved config) of every run in `folder` whose config.yaml holds this trial's Tune config."""
    found = []
    for path in sorted(Path(folder).glob("*/config.yaml")):
        try:
            saved = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(saved, dict) and saved.get("tune_config") == config:
            found.append((path.parent, saved))
    return found


def earlier_runs(runs_dir: Path, config: dict) -> tuple[Path | None, Path | None]:
    """(a finished run of this trial, the newest unfinished one that has a checkpoint) in the sweep's runs/.

    A run belongs to a trial when its config.yaml holds the trial's Tune config: this is what makes a resumed
    sweep exact even when Tune's own state, written only now and then, still lists a finished trial as running.
    """
    finished, unfinished = None, []
    for run, _ in runs_of_trial(runs_dir, config):
        if (run / "summary.json").is_file():
            finished = run
        elif any((run / n).is_file() for n in ("checkpoint.pt", "checkpoint.prev.pt")):
            unfinished.append(run)
    return finished, (unfinished[-1] if unfinished else None)


def reusable_run(folders: list[str], config: dict, args: argparse.Namespace) -> Path | None:
    """A finished run in `folders` that trained exactly this trial: the same Tune config and, flag for flag,
    the same training settings (paths, devices and ids aside)."""
    wanted = {k: v for k, v in vars(args).items() if k not in NOT_TRAINING}
    # a flag added after a run was made is absent from its config: it trained with that flag's default
    defaults = cli.training_defaults()
    for folder in folders:
        for run, saved in runs_of_trial(Path(folder), config):
            if (run / "summary.json").is_file() and all(saved.get(k, defaults.get(k)) == v for k, v in wanted.items()):
                return run
    return None


def adopt(run: Path, runs_dir: Path) -> Path:
    """Copy a reused run's small files into this sweep's runs/ (summary.json last: it marks the run finished)."""
    dest = runs_dir / run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "metrics.csv", "noise.json", "summary.json"):
        if (run / name).is_file():
            files.write_atomic(dest / name, lambda tmp, name=name: tmp.write_bytes((run / name).read_bytes()))
    return dest


def trial(config: dict, sweep: dict) -> None:
    """One Ray Tune trial: an ordinary training run whose flags are the sweep's base plus `config["trial"]`.
    Reports every epoch's metrics row, then the run's id and summary. A trial that finished before (in an
    interrupted sweep) is not trained again; one that was cut off continues from its last checkpoint."""
    config = config["trial"]
    args = trial_args(sweep, config)
    args.tune_config = config                                       # saved in config.yaml: finds the run again
    args.tune_trial_id = ray.tune.get_context().get_trial_id()
    method = cli.check_method(args)                                 # the method's own flags, filled in (preflight checked them)
    if args.device == "auto" and sweep["resources"]["gpu"] == 0:
        args.device = "cpu"                                         # Ray gave this trial no GPU
    done, cut_off = earlier_runs(args.out_dir / "runs", config)
    if done is None and cut_off is None:
        reused = reusable_run(sweep.get("reuse_runs", []), config, args)
        done = None if reused is None else adopt(reused, args.out_dir / "runs")
    if done is not None:
        summary = json.loads((done / "summary.json").read_text())
        ray.tune.report({"exp_id": done.name, **summary})
        return
    # one CPU thread per reserved core: more would fight the other trials for the same cores
    torch.set_num_threads(max(1, int(sweep["resources"]["cpu"])))
    data, val = datasets.split_data(vars(args))
    if cut_off is not None:
        saved = runs.read_run_config(cut_off)
        args.tune_trial_id = saved.get("tune_trial_id")            # the config on disk stays as it was
    if args.workers is None:      # image files decoded by DataLoader workers (clothing1m): the trial's own cores
        args.workers = max(0, int(sweep["resources"]["cpu"]) - 1)
    backbone = cli.pretrained_weights(args)
    # a run that cannot go on says why on the trial's stderr, as a script does, and exits: Tune marks the trial failed
    with cli.exits_on_error():
        exp_id, summary = engine.run(args, method, data, lambda c: make_model(args.model, c, backbone), "tune.py",
                                     on_epoch=lambda row: ray.tune.report({k: v for k, v in row.items() if v is not None}),
                                     val=val, resume_id=None if cut_off is None else cut_off.name,
                                     hparams=cli.hparams())
    ray.tune.report({"exp_id": exp_id, **summary})


class SweepProgress:
    """While a sweep runs, a line each time trials finish: how many are done and left, and an estimate of the time
    the sweep has left (the time since this driver started, per trial it trained, times the trials left; trials
    finished before, or reused, count as done but not toward the rate). Read from the run folders, so it holds
    for a resumed sweep too."""

    def __init__(self, hp_dir: Path, total: int, every: float = 2.0):
        self.runs, self.total, self.every = hp_dir / "runs", total, every
        self.stop = threading.Event()

    def finished(self) -> set[Path]:
        return {p.parent for p in self.runs.glob("*/summary.json")}

    def line(self, done: int, trained: int, elapsed: float) -> str:
        left = self.total - done
        if not left:
            eta = "all done"
        elif trained:
            eta = f"about {files.duration(elapsed / trained * left)} left"
        else:
            eta = "time left known once a trial has finished"
        return f"sweep: {done} of {self.total} trials done, {left} left; {eta}"

    def watch(self) -> None:
        seen, trained = self.finished(), 0
        print(self.line(len(seen), 0, 0.0), flush=True)
        while True:
            stopping = self.stop.wait(self.every)     # a last look once the sweep has ended
            now = self.finished()
            if now - seen:
                # a run trained here has weights; a reused (adopted) run has its small files only
                trained += sum((run / "model_final.pt").is_file() for run in now - seen)
                seen = now
                print(self.line(min(len(now), self.total), trained, time.time() - self.start), flush=True)
            if stopping:
                return

    def __enter__(self):
        self.start = time.time()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


class forward_sigterm:
    """While Tune runs, SIGTERM (kill, timeout, a job scheduler) stops the sweep as Ctrl-C does: Tune saves its
    state, and the driver says how to continue and exits 143. Tune's own SIGINT handler does the stopping.

    A signal to the process group (`timeout`) misses a local Ray's processes (see ray_in_own_session), but one to
    every process of a job (Slurm) or a cluster's own stop reaches Ray: with Ray gone, Tune would wait a minute for
    it and die with a traceback. So if the stop has not ended after `grace` seconds, the driver says the same and
    exits 143 itself; every run keeps its last checkpoint, so --resume continues as after any stop."""

    def __init__(self, stopped_message: Callable[[], str], again: str, grace: float = 30.0):
        self.stopped_message, self.again, self.grace = stopped_message, again, grace

    def __enter__(self):
        self.received = False
        self.old = signal.signal(signal.SIGTERM, self.handle)
        return self

    def deadline(self) -> None:
        # said at once: a scheduler that signals every process of the job (Slurm) stops Ray too, which can end the
        # driver before it says more
        print(f"SIGTERM: stopping the sweep; {self.again}", file=sys.stderr, flush=True)
        time.sleep(self.grace)
        print(f"error: {self.stopped_message()}", file=sys.stderr, flush=True)
        node = getattr(ray._private.worker, "_global_node", None)    # a local Ray of ours, if it still runs
        with contextlib.suppress(Exception):
            if node is not None and node.head:
                node.kill_all_processes(check_alive=False, allow_graceful=False)
        os._exit(143)

    def handle(self, signum, frame):
        if not self.received:
            threading.Thread(target=self.deadline, daemon=True).start()
        self.received = True
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.old)


def fit(hp_dir: Path, sweep: dict) -> dict[str, dict]:
    """Run (or continue) the sweep; return {exp_id: Tune config} of the trials that finished."""
    trainable = ray.tune.with_resources(ray.tune.with_parameters(trial, sweep=sweep), sweep["resources"])
    # every run writes its own TensorBoard log (runs/<exp_id>/): Tune's copy under its storage would only add a
    # second, misleading "tensorboard --logdir" hint; its CSV and JSON result files are kept
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    # A resumed sweep is a fresh Tuner over the same trials, never Tuner.restore: that unpickles tune/tuner.pkl and
    # Tune's experiment state, so a crafted sweep folder would run its own code here. Nothing of Tune's state is
    # needed: a trial finds its own run folder by its config (earlier_runs), so a finished trial reports that run
    # without training, and a cut-off one continues from its checksummed checkpoint (torch.load, weights_only).
    # All trials need the same resources, so a finished trial's process can take the next one: this saves
    # starting Python, torch and Ray again for every trial (each run seeds itself, see engine.run).
    # One grid over the planned trials keeps their order (Tune orders a product of grids its own way).
    tuner = ray.tune.Tuner(trainable, param_space={"trial": ray.tune.grid_search(trial_configs(sweep))},
                           tune_config=ray.tune.TuneConfig(reuse_actors=True),
                           run_config=ray.tune.RunConfig(name="tune", storage_path=str(hp_dir),
                                                         callbacks=[CSVLoggerCallback(), JsonLoggerCallback()]))
    total = len(trial_configs(sweep))
    again = f"continue the sweep with: python tune.py --resume {shlex.quote(str(hp_dir))}"
    term = forward_sigterm(lambda: f"stopped by SIGTERM: {len(list((hp_dir / 'runs').glob('*/summary.json')))} of "
                                   f"{total} trials finished; {again}", again)
    advice, tune_log = TuneAdvice(), logging.getLogger("ray.tune.tune")
    tune_log.addFilter(advice)
    try:
        with term, SweepProgress(hp_dir, total):
            results = tuner.fit()
    except KeyboardInterrupt:    # before Tune's own handler was in place, or a second Ctrl-C
        what, code = ("stopped by SIGTERM", 143) if term.received else ("interrupted", 130)
        state = (hp_dir / "tune").is_dir()
        cli.fail(f"{what} {'while Tune was stopping' if state else 'before the first trial started'}; "
                 + (again if state else f"start it again, after deleting {hp_dir}"), code=code)
    finally:
        tune_log.removeFilter(advice)
    finished = {r.metrics["exp_id"]: r.config["trial"] for r in results
                if r.error is None and "exp_id" in (r.metrics or {})}
    if term.received:
        cli.fail(f"stopped by SIGTERM: {len(finished)} of {total} trials finished; {again}", code=143)
    if len(finished) < total:
        failed = [str(r.path) for r in results if r.error is not None]
        cli.fail(f"{len(finished)} of {total} trials finished" + (f" ({len(failed)} failed: see {', '.join(failed)})"
                    if failed else "") + f"; {again}", code=1)
    return finished


# ----------------------------------------------------------------------------------------------------

def plural(n: float, noun: str) -> str:
    """'1 CPU', '2 CPUs', '0.5 GPUs'."""
    return f"{n:g} {noun}{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> Path | None:
    """Run or resume a sweep; return its folder (None for --dry_run, which makes none)."""
    argv = sys.argv[1:] if argv is None else argv
    with contextlib.ExitStack() as held:      # the sweep folder's lock, held until the sweep ends
        with cli.exits_on_error():
            return run_sweep(argv, held)


def run_sweep(argv: list[str], held: contextlib.ExitStack) -> Path | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cpus_per_trial <= 0:
        cli.fail(f"--cpus_per_trial must be > 0, got {args.cpus_per_trial:g}")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        cli.fail(f"--gpus_per_trial must be >= 0, got {args.gpus_per_trial:g}")
    cli.check_out_dir(args.out_dir)
    if args.resume:
        hp_dir = find_sweep(parser, args)
        sweeps.lock_sweep(hp_dir, held)              # first: nothing below may touch a sweep in use
        sweep = sweeps.read_sweep(hp_dir, parser)
        sweep["base"]["out_dir"] = str(hp_dir)       # the folder may have moved since
        preflight(sweep)                             # sweep.yaml may have been edited: every trial's flags again
    else:
        cli.check_noise_args(args, args.dataset_name)
        cli.check_image_args(args)
        for folder in args.reuse_runs:
            if not folder.is_dir():
                cli.fail(f"--reuse_runs {folder}: no such folder; give folders that hold finished run folders")
        if args.experiments:
            sweep, args = plan_experiments(parser, args, argv)
        else:
            sweep = plan_sigma_search(parser, args)
        sweep["reuse_runs"] = [str(folder.resolve()) for folder in args.reuse_runs]
        if args.bench is not None and not args.dry_run:
            cli.fail("--bench is for --dry_run (the time a sweep would take); add --dry_run or drop --bench")
        if args.bench is not None:
            read_bench(args.bench, sweep["base"]["model"])      # a bad file is said before the data is loaded
        images = preflight(sweep)
        if args.dry_run:
            print("\n".join(dry_run(sweep, images, args)))
            return None
    if not ray.is_initialized():
        cluster.start_ray(args.address)
    if args.resume:
        resources(sweep["resources"]["cpu"], sweep["resources"]["gpu"])
    else:
        sweep["resources"] = resources(args.cpus_per_trial, args.gpus_per_trial)
    check_trial_device(sweep["base"], sweep["resources"]["gpu"], resumed=bool(args.resume))
    if not args.resume:
        hp_dir = sweeps.new_hp_dir(args.out_dir)
        sweeps.lock_sweep(hp_dir, held)
        sweep["base"]["out_dir"] = str(hp_dir)
        sweep.update(command=["python", "tune.py", *argv], code=runs.code_version(),
                     versions={**runs.library_versions(), "ray": ray.__version__},
                     started=datetime.datetime.now().isoformat(timespec="seconds"))
        runs.save_config(hp_dir / "sweep.yaml", sweep)
    print(f"sweep {hp_dir.name}: {plural(len(trial_configs(sweep)), 'trial')}, each with "
          f"{plural(sweep['resources']['cpu'], 'CPU')} and {plural(sweep['resources']['gpu'], 'GPU')}; outputs in {hp_dir} (tensorboard --logdir {shlex.quote(str(hp_dir / 'runs'))})", flush=True)
    finished = fit(hp_dir, sweep)
    if sweep["kind"] == "sigma_search":
        _, text = sweeps.sigma_table(hp_dir, finished, sweep)
        print(f"\n{text}(table in {hp_dir / 'sigma_search.md'} and sigma_search.csv)")
    else:
        text = sweeps.experiments_table(hp_dir, finished)
        print(f"\n{text}(table in {hp_dir / 'table.md'} and table.csv)")
    return hp_dir


if __name__ == "__main__":
    main()
