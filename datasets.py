"""The datasets, each declared once: its name, loader, classes, default network and sigma, splits and whether its
clean labels are known.

cli.py builds every run's data through `load` (training, plot.py, viz.py, tune.py), takes the default sigma from
here, and train_real.py its dataset choices and default networks. Adding a dataset means one loader module and one
entry below (docs/real-world-data.md says what a loader returns: data.NoisyData).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from clothing_data import load_clothing1m
from data import CIFAR, NoisyData, load_cifar_noisy
from folder_data import load_folder
from errors import DataError
from real_data import CIFARN, load_animal10n, load_cifar_n
from sources import default_workers

# Default DataLoader workers: one per core, at most the authors' 16 (noise_clothing1m_train.py).
MAX_DEFAULT_WORKERS = 16


def workers(config: dict) -> int:
    """--workers of a run's flags or config, or the default (one per core, at most MAX_DEFAULT_WORKERS)."""
    given = config.get("workers")
    return default_workers(MAX_DEFAULT_WORKERS) if given is None else given


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str                    # --dataset_name
    load: Callable[[dict], NoisyData]    # a run's flags or config -> the whole dataset (before subsets); DataError
    script: str                  # the training script that takes it
    num_classes: int | None      # None: read from the data (the user's own folder)
    default_model: str
    # sigma when --sigma is not given, by noise mode (CIFAR) or under None (one label set)
    default_sigma: dict[str | None, float]
    sigma_source: str            # where those values come from, for the line that says one was used
    clean_labels: str            # "yes", "no" or "optional" (a folder's CSV may have a clean_label column)
    splits: str                  # what it holds, for --help and docs
    rebuildable: bool = True     # plot.py can rebuild its training set from the run's config (pred_probs, dissect)


def _cifar(name: str) -> Callable[[dict], NoisyData]:
    def load(c: dict) -> NoisyData:
        return load_cifar_noisy(name, Path(c["data_dir"]), c["noise_mode"], c["p"], c["seed"], c.get("custom_noise", False),
                                c.get("make_new_custom_noise", False), c.get("sym_variant"), c.get("asym_variant"))
    return load


def _cifar_n(name: str) -> Callable[[dict], NoisyData]:
    return lambda c: load_cifar_n(name, Path(c["data_dir"]), c["noise_label"])


PAPER = "the paper's value"
# CIFAR: the reference README's sigma per noise mode. CIFAR-N: the paper has no CIFAR-N runs; human noise is
# instance-dependent, so it takes the paper's sigma for instance-dependent noise on the same images. Animal-10N:
# 0.5, the value of the earlier re-implementation's commands; the user's own images the same. Clothing1M: 0.2,
# the authors' README command.
DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("cifar10", _cifar("cifar10"), "train_cifar.py", 10, "wrn-28-2",
            {"sym": 1.0, "asym": 0.5, "dependent": 0.5, "openset": 0.5}, PAPER, "yes",
            "50,000 training and 10,000 test images, with the paper's or generated label noise"),
    Dataset("cifar100", _cifar("cifar100"), "train_cifar.py", 100, "wrn-28-2",
            {"sym": 0.2, "asym": 0.2, "dependent": 0.1}, PAPER, "yes",
            "50,000 training and 10,000 test images, with the paper's or generated label noise"),
    Dataset("animal-10n", lambda c: load_animal10n(Path(c["data_dir"])), "train_real.py", 10, "vgg19-bn",
            {None: 0.5}, "this project's default", "no",
            "50,000 training and 5,000 test images of <data_dir>/animal-10n/, human label noise", rebuildable=False),
    *[Dataset(name, _cifar_n(name), "train_real.py", CIFAR[spec.base].num_classes, "wrn-28-2",
              {None: 0.5 if spec.base == "cifar10" else 0.1}, "this project's default", "yes",
              f"{spec.base}'s images with the human labels of <data_dir>/cifar-n/{spec.file}")
      for name, spec in CIFARN.items()],
    Dataset("clothing1m", lambda c: load_clothing1m(Path(c["data_dir"]), c["image_size"], workers(c)), "train_real.py",
            14, "resnet50", {None: 0.2}, "the authors' README command", "no",
            "1M noisy training images, clean validation and test sets of <data_dir>/clothing1m/", rebuildable=False),
    Dataset("folder", lambda c: load_folder(Path(c["data_dir"]), c.get("image_size"), bool(c.get("allow_unshared_classes"))), "train_real.py", None,
            "wrn-28-2", {None: 0.5}, "this project's default", "optional",
            "your own images in --data_dir: train/<class>/ and test/<class>/, or train.csv and test.csv"),
]}


def get(name: str) -> Dataset:
    """The dataset called `name`, or DataError listing them."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def of_script(script: str) -> list[str]:
    return [n for n, d in DATASETS.items() if d.script == script]


def default_sigma(name: str, noise_mode: str | None = None) -> float | None:
    """The default sigma of a dataset (and, for CIFAR, its noise mode); None where there is none."""
    d = DATASETS.get(name)
    if d is None:
        return None
    return d.default_sigma.get(noise_mode if None not in d.default_sigma else None)
