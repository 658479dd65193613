"""CIFAR-N (Wei et al., "Learning with Noisy Labels Revisited: A Study Using Real-World Human Annotations", ICLR
2022): the CIFAR-10 and CIFAR-100 training images with the labels people gave them.

The label files are fetched from the authors' repository on first use and checked (SHA-256); the images and the
clean labels are CIFAR's, from data.py. Each label set is returned as a data.NoisyData, so the training loop treats
it like CIFAR with synthetic noise.
"""
from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import (CIFAR, ArrayUnpickler, NoisyData, cifar_class_names, cifar_files_official, data_dir_hint,
                  download_file, file_digest, load_array_pickle, load_cifar)
from datasets import Dataset
from errors import DataError

@dataclass(frozen=True)
class CifarNSpec:
    """One CIFAR-N label file: which CIFAR it re-labels, its checksum and its label sets."""

    base: str                          # the CIFAR whose training images were re-annotated
    file: str
    sha256: str
    label_keys: dict[str, str]         # --noise_label -> array name in the file
    published: dict[str, float]        # noise rates published by Wei et al. (ICLR 2022), to 0.1 %


CIFARN_URL = "https://raw.githubusercontent.com/UCSC-REAL/cifar-10-100n/main/data/{file}"
CIFARN = {
    "cifar10n": CifarNSpec(
        "cifar10", "CIFAR-10_human.pt", "873e69c39cb9b5e97fb6bae2d60bb59b38a5cbc31d2b868f7903dcb2b9dd2310",
        {"aggre": "aggre_label", "worst": "worse_label", "random1": "random_label1", "random2": "random_label2",
         "random3": "random_label3"},
        {"aggre": 0.090, "worst": 0.402, "random1": 0.172, "random2": 0.181, "random3": 0.176}),
    "cifar100n": CifarNSpec(
        "cifar100", "CIFAR-100_human.pt", "bd2d80409754d420292d622e15e25248ba21e37d27429efac49c8da723f44394",
        {"noisy": "noisy_label"}, {"noisy": 0.402}),
}


def cifarn_label_file(root: Path, name: str, download: bool = True) -> Path:
    """`<root>/cifar-n/<file>`, fetched from the CIFAR-N authors' repository on first use and always
    checked against its SHA-256."""
    spec = CIFARN[name]
    path = root / "cifar-n" / spec.file
    url = CIFARN_URL.format(file=spec.file)
    fix = f"download {url} to {path}, or {data_dir_hint()}"
    if not path.is_file():
        if not download:
            raise DataError(f"CIFAR-N label file {path} is missing; {fix}")
        download_file(url, path, f"the {name} human labels", fix, sha256=spec.sha256)
    got = file_digest(path)
    if got != spec.sha256:
        raise DataError(f"{path} fails its SHA-256 check (got {got[:12]}…, expected {spec.sha256[:12]}…); "
                        f"delete it and {fix}")
    return path


def read_cifarn_labels(path: Path) -> dict:
    """The dict of label arrays in a CIFAR-N `*_human.pt` file, without running any pickled code.

    The published files are torch.save zip archives whose `<name>/data.pkl` is an ordinary pickle of
    numpy arrays (no tensors), so that pickle is read with the restricted `ArrayUnpickler`; a plain
    pickle of the same dict is read the same way. Anything else (tensors, other objects) is refused.
    """
    if not zipfile.is_zipfile(path):
        table = load_array_pickle(path)
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                pickles = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if len(pickles) != 1:
                    raise DataError(f"{path} is a zip archive without exactly one data.pkl; it is not a CIFAR-N "
                                    "label file: delete it and download it again")
                raw = zf.read(pickles[0])
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is truncated or corrupt ({e}); delete it and download it again")
        try:
            table = ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
        except ArrayUnpickler.ERRORS as e:
            raise DataError(f"{path} is not a plain-array pickle ({type(e).__name__}: {e}); delete it and download it "
                            "again") from None
    if not isinstance(table, dict):
        raise DataError(f"{path} holds a {type(table).__name__}, not a dict of label arrays; delete it and download it again")
    return table


def _cifarn_array(table: dict, key: str, path: Path, n: int, num_classes: int) -> np.ndarray:
    if key not in table:
        raise DataError(f"{path} has no '{key}' labels (it has: {', '.join(map(str, table))}); "
                        "delete it and download it again")
    labels = np.asarray(table[key])
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"'{key}' in {path} is not {n} integer labels in [0, {num_classes}); "
                        "the file belongs to another dataset or is damaged")
    return labels.astype(np.int64)


def load_cifar_n(name: str, root: Path, noise_label: str) -> NoisyData:
    """CIFAR-10N / CIFAR-100N (Wei et al., ICLR 2022): CIFAR training images with human labels.

    `noise_label` picks the label set (cifar10n: aggre, worst, random1..3; cifar100n: noisy). The file's
    clean labels must equal the CIFAR training labels (same image order). `info` records the realised
    noise rate of every label set in the file, measured on the full training set.
    """
    spec = CIFARN[name]
    if noise_label not in spec.label_keys:
        raise DataError(f"{name} has no '{noise_label}' labels; use --noise_label {' | '.join(spec.label_keys)}")
    base = CIFAR[spec.base]
    x, y, tx, ty = load_cifar(spec.base, root)
    path = cifarn_label_file(root, name)
    table = read_cifarn_labels(path)
    clean = _cifarn_array(table, "clean_label", path, len(y), base.num_classes)
    if not np.array_equal(clean, y):
        raise DataError(f"the clean labels in {path} do not match the training set in {root / base.folder}: the "
                        "images are in a different order than torchvision's; re-download the dataset")
    rates = {label: float(np.mean(_cifarn_array(table, key, path, len(y), base.num_classes) != clean))
             for label, key in spec.label_keys.items() if key in table}
    noisy = _cifarn_array(table, spec.label_keys[noise_label], path, len(y), base.num_classes)
    is_noisy = noisy != clean
    rate, published = float(is_noisy.mean()), spec.published[noise_label]
    info = {"noise_label": noise_label, "label_key": spec.label_keys[noise_label], "label_file": str(path),
            "realised_noise_rate": rate, "published_noise_rate": published,
            # published rates are given to 0.1 %: agreement means within half of that last digit
            "matches_published": abs(rate - published) <= 0.0005,
            "realised_noise_rates": rates, "n_full": len(y), "noise_rate": rate,
            "official_files": cifar_files_official(spec.base, root)}
    return NoisyData(name, x, noisy, clean, is_noisy, tx, ty, base.num_classes, cifar_class_names(spec.base, root),
                     base.mean, base.std, info=info)


def summary(data: NoisyData, config: dict) -> str:
    """The line train_real.py prints once the labels are loaded: their realised noise rate against the published one."""
    info = data.info
    return (f"{config['dataset_name']} '{config['noise_label']}' labels: realised noise rate "
            f"{info['realised_noise_rate']:.2%} on all {info['n_full']:,} training images; published "
            f"{info['published_noise_rate']:.1%}{'' if info['matches_published'] else ' (DIFFERENT: check the label file)'}")


def _entry(name: str, sigma: float, **said) -> Dataset:
    spec = CIFARN[name]
    return Dataset(name, lambda c: load_cifar_n(name, Path(c["data_dir"]), c["noise_label"]), "train_real.py",
                   CIFAR[spec.base].num_classes, "wrn-28-2", {None: sigma}, "this project's default", "yes",
                   f"{spec.base}'s images with the human labels of <data_dir>/cifar-n/{spec.file}", summary=summary,
                   **said)


# wrn-28-2: the reference's CIFAR network. The paper has no CIFAR-N runs; human noise is instance-dependent, so the
# default sigma is the paper's for instance-dependent noise on the same images.
DATASETS = [
    _entry("cifar10n", 0.5, help="cifar10n / cifar100n: CIFAR images with the human labels of "
                                 "<data_dir>/cifar-n/CIFAR-10_human.pt / CIFAR-100_human.pt",
           example="--dataset_name cifar10n --noise_label worst --sigma 0.5 --mo --lc_n_epoch 250 --seed 123"),
    _entry("cifar100n", 0.1),
]
