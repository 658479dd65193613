"""An experiments file of tune.py --experiments (configs/paper_cifar10.yaml, ...): a grid of runs and the training
flags that all its runs share, read and checked.

    variants: [CE, SLN, SLN-MO, SLN-MO-LC]         # the grid: methods (table rows),
    noise_modes: [sym, asym, dependent, openset]   # noise modes (columns; CIFAR-N: noise_labels, its label sets),
    seeds: [1, 2, 3, 4, 5]                         # seeds,
    sigma: {sym: 1.0, asym: 0.5, ...}              # and the sigma of each noise mode
    lc_n_epoch: 250                                # every other key: a training flag, for every run
    n_epochs: 300

The grid's keys are those of the flags that a grid sets per trial (cli.add_flag's grid_key); the other keys are the
training flags that an experiments file may set (file_flags). A bad file raises DataError with one line that names it.
"""
from __future__ import annotations

from pathlib import Path

import yaml

import cli
import methods
from errors import DataError


def training_parser() -> cli.Parser:
    """The training flags of a sweep's trials: train_cifar.py's dataset, noise and training flags, CIFAR-N's labels."""
    p = cli.Parser()
    cli.add_cifar_args(p, human=True)
    cli.add_training_args(p, default_model="wrn-28-2", resumable=False)
    return p


def grid_keys() -> list[str]:
    """The grid's keys (noise_labels: CIFAR-N's, instead of noise_modes), each the grid_key of the flags it sets per
    trial."""
    return list(dict.fromkeys(cli.per_run(training_parser()).values()))


def file_flags() -> dict:
    """The training flags an experiments file may set, with their defaults: every training flag but those the grid
    sets per trial and those declared NOT_IN_FILES (this machine's paths, one-off actions)."""
    return {a.dest: a.default for a in cli.declared(training_parser())
            if not getattr(a, "grid_key", None) and cli.NOT_IN_FILES not in getattr(a, "roles", ())}


def flag_argv(key: str, value, default) -> list[str]:
    """A file's value as command-line arguments. A boolean flag that defaults to True is an --x/--no-x pair
    (argparse.BooleanOptionalAction); one that defaults to False is an on-switch."""
    if isinstance(default, bool):
        return [f"--{key}"] if value else ([f"--no-{key}"] if default else [])
    return [f"--{key}", str(value)]


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: the plain loader keeps the
    last value without a word, so a file that says `lr: 0.02` and, further down, `lr: 0.2` would train with 0.2."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                    "keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_experiments(path: Path) -> tuple[dict, list[str]]:
    """The grid part of an experiments file, and its flag part as command-line arguments. Raises DataError."""
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)
    except OSError as e:
        raise DataError(f"cannot read --experiments {path}: {e.strerror}")
    except yaml.constructor.ConstructorError as e:     # a key given twice (UniqueKeyLoader)
        raise DataError(f"{path}: {e.problem}")
    except yaml.YAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise DataError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}")
    if not isinstance(raw, dict):
        raise DataError(f"{path} must be a mapping of keys to values (see configs/paper_cifar10.yaml)")
    flags, keys = file_flags(), grid_keys()
    for key in raw:
        if key not in keys and key not in flags:
            raise DataError(f"{path}: unknown key {key!r}; known keys: {', '.join(keys + list(flags))}")
    axis = "noise_labels" if "noise_labels" in raw else "noise_modes"
    if "noise_labels" in raw and "noise_modes" in raw:
        raise DataError(f"{path}: give noise_modes (CIFAR's label noise) or noise_labels (CIFAR-N's label sets), not both")
    for key, allowed in (("variants", list(methods.METHODS)),
                         (axis, cli.NOISE_MODES if axis == "noise_modes" else cli.NOISE_LABELS)):
        values = raw.get(key)
        if isinstance(values, list):      # names in any case, as the command line takes them (cli.canonical_name)
            values = raw[key] = [cli.canonical_name(v, allowed) if isinstance(v, str) else v for v in values]
        if not isinstance(values, list) or not values or len(set(map(str, values))) != len(values):
            raise DataError(f"{path}: {key} must be a non-empty list without repeats, from {', '.join(allowed)}")
        for v in values:
            if v not in allowed:
                raise DataError(f"{path}: {key}: unknown {v!r}; choose from {', '.join(allowed)}")
    seeds = raw.get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds)):
        raise DataError(f"{path}: seeds must be a non-empty list of distinct integers, e.g. [1, 2, 3, 4, 5]")
    sigma = raw.get("sigma")
    if isinstance(sigma, dict):
        sigma = {cli.canonical_name(k, raw[axis]) if isinstance(k, str) else k: v for k, v in sigma.items()}
    if sigma is not None:
        if not isinstance(sigma, dict) or not all(m in raw[axis] for m in sigma):
            raise DataError(f"{path}: sigma must map the {axis} to sigma, e.g. {{sym: 1.0, asym: 0.5}}")
        for m, s in sigma.items():
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0:
                raise DataError(f"{path}: sigma for {m} must be a number > 0, got {s!r}")
    argv = []
    for key, default in flags.items():
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise DataError(f"{path}: {key} must be true or false, got {value!r}")
        if not isinstance(default, bool) and (isinstance(value, (bool, list, dict)) or value is None):
            raise DataError(f"{path}: {key} must be a single value, got {value!r}")
        argv += flag_argv(key, value, default)
    grid = {"variants": raw["variants"], "noise_modes": raw[axis], "seeds": seeds, "sigma": sigma,
            "axis": axis[:-1]}
    return grid, argv
