"""CIFAR-10 and CIFAR-100 with the paper's or generated label noise (train_cifar.py): their loader is data.py's."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from data import NoisyData, load_cifar_noisy
from datasets import PAPER, Dataset


def _load(name: str) -> Callable[[dict], NoisyData]:
    def load(c: dict) -> NoisyData:
        return load_cifar_noisy(name, Path(c["data_dir"]), c["noise_mode"], c["p"], c["seed"], c.get("custom_noise", False),
                                c.get("make_new_custom_noise", False), c.get("sym_variant"), c.get("asym_variant"))
    return load


SPLITS = "50,000 training and 10,000 test images, with the paper's or generated label noise"
# default sigma: the reference README's, per noise mode
DATASETS = [
    Dataset("cifar10", _load("cifar10"), "train_cifar.py", 10, "wrn-28-2",
            {"sym": 1.0, "asym": 0.5, "dependent": 0.5, "openset": 0.5}, PAPER, "yes", SPLITS),
    Dataset("cifar100", _load("cifar100"), "train_cifar.py", 100, "wrn-28-2",
            {"sym": 0.2, "asym": 0.2, "dependent": 0.1}, PAPER, "yes", SPLITS),
]
