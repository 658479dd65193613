"""The datasets, each declared once: its name, loader, classes, default network and sigma, splits, whether its clean
labels are known, and what train_real.py's --help says of it.

A dataset is a `Dataset`. Each module of this package that declares `DATASETS` is a dataset family (cifar.py,
cifar_n.py, animal10n.py, clothing1m.py, folder.py): its loader and its entries. images.py (where batches come from,
the shared image helpers) and augment.py (the on-device augmentation) declare none. Every run's data is built through
`dataset_from_config` (training, plot.py, viz.py, tune.py); cli.py takes the default sigma from here, and
train_real.py its dataset choices, default networks, help text and example commands. Adding a dataset is one new
module here (a loader that returns a data.NoisyData, docs/real-world-data.md, and its entry), its tests and its row
in docs/real-world-data.md.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable

import numpy as np

from data import NoisyData
from datasets.images import default_workers
from errors import DataError

# Default DataLoader workers: one per core, at most the authors' 16 (noise_clothing1m_train.py).
MAX_DEFAULT_WORKERS = 16

PAPER = "the paper's value"     # a default sigma's source: the reference README


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
    # What train_real.py says of it: in --help, its part of the --dataset_name help ("" where a sibling's part covers
    # it), the flags of its example command ("": none), a note after its default network and a clause on its other
    # defaults; once it is loaded, the line `summary(data, flags)`.
    help: str = ""
    example: str = ""
    model_note: str = ""
    defaults_note: str = ""
    summary: Callable[[NoisyData, dict], str] | None = None
    # What train_real.py and tune.py fill in where a flag is not given: this dataset's own recipe (its authors'; keys
    # from cli.RECIPE_FLAGS and image_size), else the shared defaults; whether --image_size and
    # --allow_unshared_classes apply; whether a network with ImageNet weights starts from them by default.
    recipe: dict = dataclasses.field(default_factory=dict)
    image_size: bool = False
    unshared_classes: bool = False
    pretrained: bool = False


def _discover() -> dict[str, Dataset]:
    found: dict[str, Dataset] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        for dataset in getattr(importlib.import_module(f"{__name__}.{info.name}"), "DATASETS", []):
            if dataset.name in found:
                raise RuntimeError(f"dataset {dataset.name} is declared twice (datasets/{info.name}.py)")
            found[dataset.name] = dataset
    # train_cifar.py's (the CIFARs with their label noise) first, then train_real.py's, each in module order
    return {d.name: d for d in sorted(found.values(), key=lambda d: d.script)}


DATASETS: dict[str, Dataset] = _discover()


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


def dataset_from_config(config: dict) -> NoisyData:
    """The full dataset (before subsets) that a run's flags describe, by its declaration: CIFAR-10/100 with its label
    noise, CIFAR-N, Animal-10N, Clothing1M or the user's own folder. `config` is a run's config.yaml or vars(args);
    noise is read from its files, never made anew unless the config asks for it (make_new_custom_noise). Raises
    DataError."""
    return get(config["dataset_name"]).load(config)


def split_data(config: dict) -> tuple[NoisyData, tuple[np.ndarray, np.ndarray] | None]:
    """What a run trained on: the dataset of its config with its subsets, and, for a tune.py sigma-search run
    (val_size set), without its validation split, which is returned too (else None). Raises DataError."""
    data = dataset_from_config(config).subset(config.get("train_subset"), config.get("test_subset"), config["seed"])
    if not config.get("val_size"):
        return data, None
    return data.split_validation(config["val_size"], config["seed"])
