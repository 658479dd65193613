"""Datasets, label noise and the on-device input pipeline.

Datasets are plain arrays: images as uint8 (N, 3, H, W), labels as int64. Noise is decided here by
pure functions or read from files, never inside a dataset object. The training pipeline keeps the
whole training set on the training device and crops, flips and normalises whole batches there.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class DataError(Exception):
    """A problem with the user's data or flags; the scripts print its message on one line and exit."""


# ----------------------------------------------------------------------------------------------------
# CIFAR on disk

@dataclass(frozen=True)
class CifarSpec:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    url: str
    archive_md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR = {
    "cifar10": CifarSpec(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": CifarSpec(
        "cifar-100-python", ("train",), ("test",), "fine_labels", 100,
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
        (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# how a user points the scripts (or make) at a data root that already holds the files
DATA_DIR_HINT = "pass the --data_dir that holds it (with make: make demo DATA_DIR=<folder>)"


def default_data_dir() -> Path:
    """`$SLN_DATA_DIR` if set, else `data/` (relative to the current directory)."""
    return Path(os.environ.get("SLN_DATA_DIR", "data"))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: downloaded pickles can run no code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def load_array_pickle(path: Path):
    """Read a pickle that may hold only plain containers and numpy arrays (CIFAR batches, CIFAR-N labels)."""
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path} is truncated or not a plain-array pickle ({e}); delete it and download it again")


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str, num_classes: int):
    images, labels = [], []
    for name in files:
        batch = load_array_pickle(folder / name)
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            raise DataError(f"{folder / name} is not a CIFAR batch (no 'data'/'{label_key}' entries); "
                            "delete the folder and download it again")
        images.append(np.asarray(batch["data"]))
        labels.append(np.asarray(batch[label_key]))
    x, y = np.concatenate(images), np.concatenate(labels)
    # Re-encoded copies (shared/data/prepare_cifar10.py) fail the official md5 sums, so check content instead.
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataError(f"images in {folder} have shape {x.shape} and dtype {x.dtype}; expected (N, 3072) uint8")
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"labels in {folder} are not {len(x)} integers in [0, {num_classes})")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _download(url: str, dest: Path, what: str, fix: str, md5: str | None = None, sha256: str | None = None) -> None:
    """Fetch `url` to `dest` atomically, verifying the checksum before the file appears."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {what} from {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            shutil.copyfileobj(r, tmp)
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"cannot download {what} ({e}); {fix}")
    tmp_path = Path(tmp.name)
    got = file_digest(tmp_path, "md5" if md5 else "sha256")
    if got != (md5 or sha256):
        tmp_path.unlink()
        raise DataError(f"download of {what} from {url} failed its checksum ({got}); {fix}")
    os.replace(tmp_path, dest)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_cifar(name: str, root: Path, download: bool = True):
    """(train_images, train_labels, test_images, test_labels) of CIFAR-10/100 under `root`.

    Reads the standard python layout (`cifar-10-batches-py/`, `cifar-100-python/`); downloads and
    checks the official archive when it is missing.
    """
    spec = CIFAR[name]
    folder = root / spec.folder
    if not all((folder / f).is_file() for f in spec.train_files + spec.test_files):
        archive = root / Path(spec.url).name
        fix = f"download {spec.url} and extract it so that {folder}/ exists, or {DATA_DIR_HINT}"
        if not download:
            raise DataError(f"{name} not found in {folder}; {fix}")
        from torchvision.datasets.utils import download_and_extract_archive
        try:  # torchvision checks the archive's md5 before extracting it
            download_and_extract_archive(spec.url, str(root), filename=archive.name, md5=spec.archive_md5)
        except (OSError, RuntimeError, tarfile.TarError) as e:
            raise DataError(f"cannot get {name} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); {fix}")
    train = _read_batches(folder, spec.train_files, spec.label_key, spec.num_classes)
    test = _read_batches(folder, spec.test_files, spec.label_key, spec.num_classes)
    return (*train, *test)


def cifar_files_official(name: str, root: Path) -> bool:
    """Whether the CIFAR files under `root` are byte for byte those of the official archive (torchvision's
    md5 list); a re-encoded copy, such as the offline JPEG copy, is not."""
    import torchvision.datasets as tvd
    listed = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    folder = root / CIFAR[name].folder
    return all((folder / f).is_file() and file_digest(folder / f, "md5") == md5
               for f, md5 in listed.train_list + listed.test_list)


def cifar_class_names(name: str, root: Path) -> list[str]:
    if name == "cifar10":
        return CIFAR10_CLASSES
    meta = root / CIFAR[name].folder / "meta"
    if meta.is_file():
        names = load_array_pickle(meta).get("fine_label_names")
        if names and len(names) == 100:
            return [str(n) for n in names]
    return [str(i) for i in range(100)]


# ----------------------------------------------------------------------------------------------------
# Label files: the paper's noise (and custom noise, same format)

PAPER_NOISE_URL = "https://raw.githubusercontent.com/chenpf1025/SLN/master/data/{folder}/label_noisy/{mode}{p}.csv"
PAPER_NOISE_SHA256 = {
    ("cifar10", "sym", 0.4): "96c1bb492340f32681142d5cb2b0003c005227235e923b27ef86d2c11ab083d0",
    ("cifar10", "asym", 0.4): "eae3112b2e876f1ed375d2456b7d9b135b3b0f0c9e5c1a2d1b81417307d7d64c",
    ("cifar10", "dependent", 0.4): "e56e57cd7ec402ead6cd65f6f64ca436c7d3e5cf4bdf174eb8a1efa1daa90dad",
    ("cifar100", "sym", 0.4): "e074d1181c8b297dd1e888a70bc8a959c26769c08fb4fadff58460f901d5f5fc",
    ("cifar100", "asym", 0.4): "a1fbcb8217b5c7dc68cc1f101d2034c634fce5e2b9f6ac34daadc5ca9826bd3c",
    ("cifar100", "dependent", 0.4): "f5d3e4506550be0532344138d6f0fc82ac32472cf669acee43b8f190b8d260d7",
}


def noise_dir(root: Path, dataset: str) -> Path:
    return root / dataset / "label_noisy"


def paper_noise_file(root: Path, dataset: str, mode: str, p: float, download: bool = True) -> Path:
    """Path of the authors' noisy-label CSV, fetched on first use and always checked against its SHA-256."""
    key = (dataset, mode, p)
    if key not in PAPER_NOISE_SHA256:
        have = ", ".join(f"{m} p={q}" for d, m, q in PAPER_NOISE_SHA256 if d == dataset) or "none"
        raise DataError(f"the paper has no {mode} noise file at p={p} for {dataset} (it has: {have}); "
                        "add --custom_noise to generate such noise")
    path = noise_dir(root, dataset) / f"{mode}{p}.csv"
    url = PAPER_NOISE_URL.format(folder=dataset.upper(), mode=mode, p=p)
    fix = f"download {url} to {path}, or {DATA_DIR_HINT}"
    if not path.is_file():
        if not download:
            raise DataError(f"paper noise file {path} is missing; {fix}")
        _download(url, path, f"the paper's {dataset} {mode}{p} labels", fix, sha256=PAPER_NOISE_SHA256[key])
    got = file_digest(path)
    if got != PAPER_NOISE_SHA256[key]:
        raise DataError(f"{path} fails its SHA-256 check (got {got[:12]}…, expected "
                        f"{PAPER_NOISE_SHA256[key][:12]}…); delete it and {fix}")
    return path


def read_label_csv(path: Path, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) labels from a `label,label_noisy` CSV with one row per training image."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read label file {path}: {e}")
    if not rows or [c.strip() for c in rows[0][:2]] != ["label", "label_noisy"]:
        raise DataError(f"{path} must start with the header 'label,label_noisy'")
    body = rows[1:]
    if len(body) != n:
        raise DataError(f"{path} has {len(body)} rows but the training set has {n} images; "
                        "it belongs to another dataset or is truncated")
    try:
        table = np.array([[int(r[0]), int(r[1])] for r in body], dtype=np.int64)
    except (ValueError, IndexError):
        bad = next(i for i, r in enumerate(body) if len(r) < 2 or not all(c.strip().lstrip("-").isdigit() for c in r[:2]))
        raise DataError(f"{path} row {bad + 2} is not two integer labels: {','.join(body[bad])!r}")
    if table.min() < 0 or table.max() >= num_classes:
        raise DataError(f"{path} holds labels outside [0, {num_classes})")
    return table[:, 0], table[:, 1]


# ----------------------------------------------------------------------------------------------------
# Noise that is not a label file

def openset_indices(n: int, n_source: int, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Open-set noise (reference `dataset.py`): which round(p*n) of the n training images are replaced,
    and by which of the n_source CIFAR-100 training images. Both drawn without replacement, seeded
    (the reference leaves this unseeded)."""
    rng = np.random.default_rng(seed)
    k = int(round(p * n))
    if k > n_source:
        raise DataError(f"open-set noise p={p} replaces {k} images but CIFAR-100 has only {n_source}; lower --p")
    return np.sort(rng.choice(n, k, replace=False)), rng.choice(n_source, k, replace=False)


# ----------------------------------------------------------------------------------------------------
# Generated ("custom") label noise: pure, seeded, vectorised generators for any rate 0 <= p < 1

SYM_VARIANTS = {
    "other": "a flipped label goes to a uniformly drawn other class, never the true one (as in the paper's files)",
    "any": "a chosen label is redrawn uniformly over all classes and may keep the true one (DivideMix-style)",
}
ASYM_VARIANTS = {
    "paper": "the paper's rule: CIFAR-10 truck->automobile, bird->airplane, cat<->dog, deer->horse; "
             "CIFAR-100 class i -> i+1 mod 100",
    "superclass": "CIFAR-100 only: each class -> the next class of its superclass, circularly",
    "blocks": "CIFAR-100 only: the superclass rule as much public code implements it, on blocks of 5 "
              "consecutive class indices (which are not the real superclasses)",
}
# Source -> destination classes of CIFAR-10 asymmetric noise (Patrini et al., CVPR 2017; the SLN paper's file).
CIFAR10_ASYM = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
# Superclass (coarse label) of each CIFAR-100 fine class, in fine-label order; the same as the
# 'coarse_labels' of the official pickles, used when those are missing.
CIFAR100_COARSE = (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
                   6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
                   5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
                   10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
                   16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)
DEPENDENT_RATE_STD = 0.1   # Xia et al.'s default spread of the per-image flip rates


def check_rate(p: float) -> None:
    if not 0 <= p < 1:
        raise DataError(f"noise rate p={p} is outside [0, 1); pass e.g. --p 0.4")


def sym_noise(labels: np.ndarray, num_classes: int, p: float, seed: int, variant: str = "other") -> np.ndarray:
    """Symmetric noise: exactly round(p*n) labels, chosen uniformly without replacement, are redrawn.

    variant "other": the new label is uniform over the C-1 *other* classes, so it never keeps the true
    class and exactly round(p*n) labels are wrong. The SLN paper's sym files behave like this (their
    flipped labels never equal the true class); Co-teaching (Han et al., NeurIPS 2018) also flips only to
    other classes, but each label independently with probability p.
    variant "any": the new label is uniform over all C classes and keeps the true class with probability
    1/C, so about p*(C-1)/C of the labels end up wrong (DivideMix, Li et al., ICLR 2020, and code derived
    from it).
    """
    check_rate(p)
    if variant not in SYM_VARIANTS:
        raise DataError(f"unknown symmetric-noise variant {variant!r}; use one of {', '.join(SYM_VARIANTS)}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), int(round(p * len(labels))), replace=False)
    noisy = labels.copy()
    if variant == "other":
        # adding 1..C-1 modulo C reaches every other class exactly once: uniform, never the true class
        noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, len(chosen))) % num_classes
    else:
        noisy[chosen] = rng.integers(0, num_classes, len(chosen))
    return noisy


def asym_destinations(dataset: str, num_classes: int, variant: str = "paper",
                      coarse: np.ndarray | None = None) -> np.ndarray:
    """dest[c]: the class that flipped labels of class c become, or -1 where class c is never flipped.

    "paper": CIFAR-10's map (CIFAR10_ASYM), otherwise class i -> i+1 mod C (the SLN paper's CIFAR-100
    file). "superclass": the rule described by Patrini et al. (CVPR 2017), each class goes to the next
    class (by fine-label index) of its own superclass, circularly; `coarse[c]` is class c's superclass.
    "blocks": the same on blocks of 5 consecutive indices, as the noisify_cifar100_asymmetric code that
    Co-teaching and many later repositories share does (CIFAR-100's indices are alphabetical, so these
    blocks are not superclasses).
    """
    if variant == "paper":
        if dataset == "cifar10":
            dest = np.full(num_classes, -1, dtype=np.int64)
            dest[list(CIFAR10_ASYM)] = list(CIFAR10_ASYM.values())
            return dest
        return (np.arange(num_classes) + 1) % num_classes
    if variant == "blocks":
        variant, coarse = "superclass", np.arange(num_classes) // 5
    if variant == "superclass":
        if coarse is None or len(coarse) != num_classes:
            raise DataError(f"the superclass rule needs the superclass of each of the {num_classes} classes "
                            "(CIFAR-100 only); use --asym_variant paper")
        dest = np.empty(num_classes, dtype=np.int64)
        for group in np.unique(coarse):
            members = np.flatnonzero(coarse == group)
            dest[members] = np.roll(members, -1)
        return dest
    raise DataError(f"unknown asymmetric-noise variant {variant!r}; use one of {', '.join(ASYM_VARIANTS)}")


def asym_noise(labels: np.ndarray, dest: np.ndarray, p: float, seed: int) -> np.ndarray:
    """Asymmetric (class-conditional) noise: in every class c with dest[c] >= 0, exactly round(p*n_c) of
    its n_c labels, chosen uniformly, become dest[c]; so each label of such a class flips with probability p."""
    check_rate(p)
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    for c in np.flatnonzero(dest >= 0):
        members = np.flatnonzero(labels == c)
        noisy[rng.choice(members, int(round(p * len(members))), replace=False)] = dest[c]
    return noisy


def dependent_rate_std(p: float) -> float:
    """Spread of the per-image flip rates: Xia et al.'s 0.1, narrowed near p = 0 and p = 1 so that cutting
    the normal to [0, 1] (at >= 4 std) does not move its mean away from p (0.1 for 0.4 <= p <= 0.6)."""
    return min(DEPENDENT_RATE_STD, p / 4, (1 - p) / 4)


def dependent_noise(images: np.ndarray, labels: np.ndarray, num_classes: int, p: float, seed: int) -> np.ndarray:
    """Instance-dependent noise with the generator of Xia et al., "Part-dependent label noise: towards
    instance-dependent label noise", NeurIPS 2020 (its instance-dependent baseline); needs no trained network.

    1. each image i gets a flip rate q_i ~ N(p, s^2) cut to [0, 1] (s = dependent_rate_std(p));
    2. each class c gets a random projection W_c ~ N(0, 1) of shape (pixels, C);
    3. the flattened, standardised image x_i scores the classes as x_i W_{y_i}; its true class is
       excluded and a softmax turns the scores into destination probabilities;
    4. with probability q_i the label becomes a class drawn from those probabilities, else it is kept.
    So the realised rate is mean(q) ~ p, a flipped label never keeps its class, and where it goes depends
    on the image. `images`: uint8, one row (any shape) per label.
    """
    check_rate(p)
    rng = np.random.default_rng(seed)
    n = len(labels)
    s = dependent_rate_std(p)
    q = rng.normal(p, s, n)
    outside = (q < 0) | (q > 1)
    while outside.any():                     # resample until every rate lies in [0, 1] (truncated normal)
        q[outside] = rng.normal(p, s, int(outside.sum()))
        outside = (q < 0) | (q > 1)
    flat = images.reshape(n, -1)
    # one scalar mean and std over all pixels, from the 256-bin histogram (exact, no float copy of the set)
    hist = np.bincount(flat.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256.0)
    mean = (hist * values).sum() / hist.sum()
    std = np.sqrt((hist * (values - mean) ** 2).sum() / hist.sum()) or 1.0
    probs = np.zeros((n, num_classes))
    for c in range(num_classes):
        w = rng.standard_normal((flat.shape[1], num_classes))   # drawn for every class, present or not
        members = np.flatnonzero(labels == c)
        scores = ((flat[members] - mean) / std) @ w
        scores[:, c] = -np.inf
        scores -= scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        probs[members] = e / e.sum(axis=1, keepdims=True)
    flip = rng.random(n) < q
    cumulative = probs.cumsum(axis=1)
    # inverse-CDF draw; scaling u by the row total keeps rounding from ever reaching past the last class
    u = rng.random(n) * cumulative[:, -1]
    dest = (u[:, None] >= cumulative).sum(axis=1)
    return np.where(flip, dest, labels)


def cifar100_coarse(root: Path) -> tuple[np.ndarray, str]:
    """Superclass of each CIFAR-100 fine class, from the `train` pickle's 'coarse_labels' when present,
    else the built-in table; and where it came from."""
    path = root / CIFAR["cifar100"].folder / "train"
    if path.is_file():
        batch = load_array_pickle(path)
        if isinstance(batch, dict) and "coarse_labels" in batch and "fine_labels" in batch:
            fine, coarse = np.asarray(batch["fine_labels"]), np.asarray(batch["coarse_labels"])
            table = np.full(100, -1, dtype=np.int64)
            table[fine] = coarse
            if (table >= 0).all() and np.array_equal(table[fine], coarse):
                return table, "coarse_labels of cifar-100-python/train"
    return np.array(CIFAR100_COARSE, dtype=np.int64), "data.CIFAR100_COARSE"


def generate_noise(dataset: str, mode: str, p: float, seed: int, labels: np.ndarray, num_classes: int,
                   images: np.ndarray | None = None, n_source: int | None = None, sym_variant: str = "other",
                   asym_variant: str = "paper", coarse: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Noisy labels for one noise setting, plus (open-set only) per image the index of the CIFAR-100 training
    image that replaces it (-1 = kept), plus a description of the generator for the metadata file."""
    check_rate(p)
    meta: dict = {"dataset": dataset, "noise_mode": mode, "p": p, "seed": seed, "n": len(labels),
                  "num_classes": num_classes}
    source = None
    if mode == "sym":
        noisy = sym_noise(labels, num_classes, p, seed, sym_variant)
        meta.update(generator="data.sym_noise", variant=sym_variant, description=SYM_VARIANTS[sym_variant])
    elif mode == "asym":
        dest = asym_destinations(dataset, num_classes, asym_variant, coarse)
        noisy = asym_noise(labels, dest, p, seed)
        meta.update(generator="data.asym_noise", variant=asym_variant, description=ASYM_VARIANTS[asym_variant],
                    destinations=dest.tolist())
    elif mode == "dependent":
        if images is None or len(images) != len(labels):
            raise DataError("instance-dependent noise needs the training images, one per label")
        noisy = dependent_noise(images, labels, num_classes, p, seed)
        meta.update(generator="data.dependent_noise", variant="xia2020", rate_std=dependent_rate_std(p),
                    description="instance-dependent noise of Xia et al., NeurIPS 2020 (part-dependent label "
                                "noise paper): per-image flip rate ~ truncated normal around p, destination "
                                "from a per-class random projection of the image")
    elif mode == "openset":
        if n_source is None:
            raise DataError("open-set noise needs the number of CIFAR-100 training images to draw from")
        replaced, picked = openset_indices(len(labels), n_source, p, seed)
        source = np.full(len(labels), -1, dtype=np.int64)
        source[replaced] = picked
        noisy = labels.copy()
        meta.update(generator="data.openset_indices", variant="cifar100-images", n_source=n_source,
                    description="round(p*n) images replaced by distinct random CIFAR-100 training images; "
                                "labels kept")
    else:
        raise DataError(f"unknown noise mode {mode!r}; use sym, asym, dependent or openset")
    wrong = noisy != labels if source is None else source >= 0
    meta["realised_rate"] = float(wrong.mean())
    return noisy, source, meta


def noise_rules(mode: str, p: float, num_classes: int, meta: dict) -> list[tuple[int, str, float, str]]:
    """The rule behind generated noise, one row per source class: (source class, destination classes
    (space-separated), probability that a label of that class ends up in them, how)."""
    everyone = np.arange(num_classes)
    rows = []
    for c in range(num_classes):
        others = " ".join(map(str, everyone[everyone != c]))
        if mode == "sym" and meta["variant"] == "other":
            rows.append((c, others, p, "exactly round(p*n) labels of the set flipped, uniform over other classes"))
        elif mode == "sym":
            rows.append((c, " ".join(map(str, everyone)), p,
                         "exactly round(p*n) labels of the set redrawn uniformly over all classes (may keep c)"))
        elif mode == "asym" and meta["destinations"][c] >= 0:
            rows.append((c, str(meta["destinations"][c]), p, "exactly round(p*n_c) labels of the class flipped"))
        elif mode == "dependent":
            rows.append((c, others, p, f"per image: rate ~ truncated N(p, {meta['rate_std']:g}^2) on [0, 1], "
                                       "destination by a random projection of the image"))
        elif mode == "openset":
            rows.append((c, str(c), p, "image replaced by a CIFAR-100 training image (cifar100_index); label kept"))
    return rows


# ----------------------------------------------------------------------------------------------------
# Noise report: rate, per-class rates and the transition matrix of any noise in use

def noise_report(clean: np.ndarray, given: np.ndarray, num_classes: int,
                 replaced: np.ndarray | None = None) -> dict:
    """Overall and per-class noise rate and the class-to-class transition counts (rows: true class,
    columns: given label). A sample is noisy when its given label differs from the true class, or, for
    open-set noise (`replaced` given), when its image was replaced."""
    wrong = given != clean if replaced is None else replaced
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (clean, given), 1)
    per_class = np.bincount(clean, minlength=num_classes)
    per_class_wrong = np.bincount(clean[wrong], minlength=num_classes)
    return {"n": int(len(clean)), "num_classes": num_classes,
            "noise_rate": float(wrong.mean()) if len(clean) else 0.0,
            "noisy_means": "given label differs from the true class" if replaced is None
            else "image replaced by a CIFAR-100 image (label kept)",
            "per_class_count": per_class.tolist(),
            "per_class_noise_rate": [float(w / c) if c else 0.0 for w, c in zip(per_class_wrong, per_class)],
            "transition_counts": counts.tolist()}


def format_noise_report(report: dict, class_names: list[str], title: str = "") -> str:
    """A few lines for the console; the full matrix only for up to 10 classes."""
    c = report["num_classes"]
    names = class_names if len(class_names) == c else [str(i) for i in range(c)]
    rates = np.array(report["per_class_noise_rate"])
    counts = np.array(report["transition_counts"])
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    lines = [f"noise{' (' + title + ')' if title else ''}: {report['noise_rate']:.2%} of {report['n']} training "
             f"images noisy ({report['noisy_means']})"]
    off = rows * ~np.eye(c, dtype=bool)
    if c <= 10:
        lines.append("  per true class: " + ", ".join(f"{n} {r:.1%}" for n, r in zip(names, rates)))
        if not off.any():
            lines.append("  no label differs from its true class")
            return "\n".join(lines)
        lines.append("  transitions, % of each true class (rows) given each label (columns):")
        short = [n[:6] for n in names]
        lines.append("  " + " " * 8 + "".join(f"{s:>7}" for s in short))
        for name, row in zip(short, rows):
            lines.append(f"  {name:>8}" + "".join(f"{100 * v:7.1f}" for v in row))
    else:
        order = np.argsort(rates, kind="stable")
        lines.append(f"  per true class: min {rates.min():.1%} ({names[order[0]]}), median {np.median(rates):.1%}, "
                     f"max {rates.max():.1%} ({names[order[-1]]})")
        used = int((off > 0).sum())
        top = np.argsort(-off, axis=None, kind="stable")[:5]
        pairs = [f"{names[i]}->{names[j]} {off[i, j]:.1%}" for i, j in zip(*np.unravel_index(top, off.shape))
                 if off[i, j] > 0]
        lines.append(f"  {used} of {c * (c - 1)} off-diagonal transitions occur; largest: "
                     + (", ".join(pairs) or "none"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Custom noise files: <data_dir>/<dataset>/label_noisy/<mode><p>_custom.csv and companions

def custom_noise_paths(root: Path, dataset: str, mode: str, p: float) -> dict[str, Path]:
    folder, stem = noise_dir(root, dataset), f"{mode}{p}"
    return {"labels": folder / f"{stem}_custom.csv", "rules": folder / f"{stem}_noise_rules.csv",
            "meta": folder / f"{stem}_custom.json", "report": folder / f"{stem}_custom_report.json"}


def _json_bytes(obj) -> bytes:
    """Stable, diff-friendly JSON: sorted keys, one key per line, flat lists on one line (matrix rows each)."""
    def fmt(v, indent: str) -> str:
        inner = indent + "  "
        if isinstance(v, dict):
            items = [f"{inner}{json.dumps(k)}: {fmt(v[k], inner)}" for k in sorted(v)]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
        if isinstance(v, list) and v and isinstance(v[0], list):
            return "[\n" + ",\n".join(inner + fmt(x, inner) for x in v) + "\n" + indent + "]"
        return json.dumps(v)
    return (fmt(obj, "") + "\n").encode()


def _label_csv_bytes(clean: np.ndarray, noisy: np.ndarray, source: np.ndarray | None) -> bytes:
    columns = [clean, noisy] + ([source] if source is not None else [])
    header = "label,label_noisy" + (",cifar100_index" if source is not None else "")
    body = [",".join(map(str, row)) for row in zip(*(col.tolist() for col in columns))]
    return ("\n".join([header, *body]) + "\n").encode()


def _rules_csv_bytes(rows: list[tuple[int, str, float, str]]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["source_class", "destination_classes", "probability", "rule"])
    w.writerows(rows)
    return out.getvalue().encode()


def _write_bytes(path: Path, content: bytes) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_noise_files(files: dict[Path, bytes]) -> list[str]:
    """Write a set of noise files. Files already holding exactly these bytes are left alone; a file with
    other content is never replaced silently: it is renamed to `<name>.old-<hash>.<ext>` first (hash of
    its own content), and the returned messages say so."""
    messages = []
    for path, content in files.items():
        if path.is_file():
            old = path.read_bytes()
            if old == content:
                continue
            tag = hashlib.sha256(old).hexdigest()[:8]
            aside = path.with_name(f"{path.stem}.old-{tag}{path.suffix}")
            if aside.is_file() and aside.read_bytes() == old:
                path.unlink()          # the same old content is already kept under that name
            else:
                os.replace(path, aside)
            messages.append(f"kept the previous {path.name} (different content) aside as {aside.name}")
        _write_bytes(path, content)
    return messages


def _read_openset_column(path: Path, n: int, n_source: int) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows[0]) < 3 or rows[0][2].strip() != "cifar100_index":
        raise DataError(f"{path} has no cifar100_index column, so it does not say which images open-set noise "
                        "replaces; regenerate it with --make_new_custom_noise")
    try:
        source = np.array([int(r[2]) for r in rows[1:n + 1]], dtype=np.int64)
    except (ValueError, IndexError):
        raise DataError(f"{path}: cifar100_index must be an integer in every row (-1 = image kept)")
    if source.min(initial=-1) < -1 or source.max(initial=-1) >= n_source:
        raise DataError(f"{path}: cifar100_index outside [-1, {n_source}) (there are {n_source} CIFAR-100 images)")
    return source


def check_noise_options(dataset: str, mode: str, p: float, custom: bool, sym_variant: str | None,
                        asym_variant: str | None) -> None:
    """Refuse contradictory noise options before anything is loaded or written."""
    check_rate(p)
    if mode == "openset" and dataset != "cifar10":
        raise DataError("open-set noise exists for CIFAR-10 only (it inserts CIFAR-100 images); "
                        "use --dataset_name cifar10 or another --noise_mode")
    if not custom and (sym_variant or asym_variant):
        raise DataError("--sym_variant/--asym_variant choose how custom noise is generated; add --custom_noise")
    if sym_variant is not None and mode != "sym":
        raise DataError(f"--sym_variant applies to --noise_mode sym, not {mode}; drop it")
    if asym_variant is not None and mode != "asym":
        raise DataError(f"--asym_variant applies to --noise_mode asym, not {mode}; drop it")
    if asym_variant in ("superclass", "blocks") and dataset != "cifar100":
        raise DataError(f"--asym_variant {asym_variant} exists for CIFAR-100 only; use --asym_variant paper")


def load_custom_noise(root: Path, dataset: str, mode: str, p: float, seed: int, labels: np.ndarray,
                      num_classes: int, images: np.ndarray | None = None, n_source: int | None = None,
                      make_new: bool = False, sym_variant: str | None = None, asym_variant: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None, dict, Path]:
    """Read `<mode><p>_custom.csv`, or generate it (with its rules, metadata and report) when it is missing
    or `make_new` is set. Returns (noisy labels, CIFAR-100 index per image or None, metadata, csv path).

    An existing file is used exactly as it is; flags that contradict its recorded generator are an error.
    """
    check_noise_options(dataset, mode, p, True, sym_variant, asym_variant)
    paths = custom_noise_paths(root, dataset, mode, p)
    csv_path = paths["labels"]
    if csv_path.is_file() and not make_new:
        clean, noisy = read_label_csv(csv_path, len(labels), num_classes)
        if not np.array_equal(clean, labels):
            raise DataError(f"the clean labels in {csv_path} do not match the training set; it was made for other "
                            "data: regenerate it with --make_new_custom_noise")
        source = _read_openset_column(csv_path, len(labels), n_source or 0) if mode == "openset" else None
        if source is not None and not np.array_equal(noisy, clean):
            raise DataError(f"{csv_path}: open-set noise keeps labels, but label_noisy differs from label")
        try:
            meta = json.loads(paths["meta"].read_text()) if paths["meta"].is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read {paths['meta']} ({e}); delete it (the labels file alone is enough) "
                            "or regenerate everything with --make_new_custom_noise")
        wanted = sym_variant or asym_variant
        if wanted is not None and meta.get("variant") != wanted:
            raise DataError(f"{csv_path} was generated with variant {meta.get('variant', 'unknown')!r}, not "
                            f"{wanted!r}; add --make_new_custom_noise to regenerate it (the current files are "
                            "kept aside)")
        if meta.get("labels_sha256") != file_digest(csv_path):
            print(f"note: {csv_path} is not the file its metadata describes (edited by hand?); "
                  "using its labels as they are")
            meta = {**meta, "edited": True}
        elif meta.get("seed") != seed:
            print(f"note: using {csv_path} as it is (generated with seed {meta.get('seed')}); --seed {seed} does "
                  "not change it, --make_new_custom_noise regenerates it with this seed")
        return noisy, source, meta, csv_path

    coarse, coarse_from = (cifar100_coarse(root) if asym_variant == "superclass" else (None, None))
    noisy, source, meta = generate_noise(dataset, mode, p, seed, labels, num_classes, images, n_source,
                                         sym_variant or "other", asym_variant or "paper", coarse)
    if coarse_from:
        meta["superclasses_from"] = coarse_from
    labels_bytes = _label_csv_bytes(labels, noisy, source)
    meta["labels_sha256"] = hashlib.sha256(labels_bytes).hexdigest()
    meta["files"] = {k: v.name for k, v in paths.items()}
    files = {csv_path: labels_bytes,
             paths["rules"]: _rules_csv_bytes(noise_rules(mode, p, num_classes, meta)),
             paths["meta"]: _json_bytes(meta),
             paths["report"]: _json_bytes(noise_report(labels, noisy, num_classes,
                                                        None if source is None else source >= 0))}
    why = "--make_new_custom_noise" if csv_path.is_file() else "it is missing"
    print(f"generating {csv_path} ({why}): {mode} noise p={p}, seed {seed}, {meta['generator']} "
          f"({meta['variant']}), {meta['realised_rate']:.2%} noisy")
    if all(path.is_file() and path.read_bytes() == content for path, content in files.items()):
        print("unchanged: the files already hold exactly these labels (same seed, same generator)")
    for message in save_noise_files(files):
        print(message)
    return noisy, source, meta, csv_path


# ----------------------------------------------------------------------------------------------------
# A noisy training set, and subsets of it

@dataclass
class NoisyData:
    """Training images with their given (noisy) labels and, where known, the clean ones; plus the test set."""

    name: str
    images: np.ndarray            # uint8 (N, 3, H, W)
    labels: np.ndarray            # int64 (N,) labels used for training
    clean_labels: np.ndarray | None
    is_noisy: np.ndarray | None   # bool (N,): the label (or, for open-set noise, the image) is wrong
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 4                  # zero padding of the random crop
    flip: bool = True             # random horizontal flips (not for digits or text)
    info: dict = field(default_factory=dict)  # noise description saved with the run

    def noise_rate(self) -> float | None:
        return None if self.is_noisy is None else float(self.is_noisy.mean())

    def subset(self, train_n: int | None, test_n: int | None, seed: int) -> "NoisyData":
        """A stratified, seeded subset of the training and/or test set (for quick experiments)."""
        out = NoisyData(**{**self.__dict__, "info": dict(self.info)})
        if train_n:
            idx = stratified_indices(self.labels, train_n, seed)
            out.images, out.labels = self.images[idx], self.labels[idx]
            out.clean_labels = None if self.clean_labels is None else self.clean_labels[idx]
            out.is_noisy = None if self.is_noisy is None else self.is_noisy[idx]
            out.info["train_indices"] = idx.tolist()
            out.info["noise_rate"] = out.noise_rate()
            if "report" in out.info and out.clean_labels is not None:
                replaced = out.is_noisy if out.info.get("noise_mode") == "openset" else None
                out.info["report"] = noise_report(out.clean_labels, out.labels, out.num_classes, replaced)
        if test_n:
            idx = stratified_indices(self.test_labels, test_n, seed)
            out.test_images, out.test_labels = self.test_images[idx], self.test_labels[idx]
        return out

    def split_validation(self, val_size: float, seed: int) -> tuple["NoisyData", tuple[np.ndarray, np.ndarray]]:
        """(training set without the validation images, (validation images, their *noisy* labels)).

        The paper picks sigma on a held-out share of the noisy training set, labelled with the noisy
        labels (only those are known in practice); the split is stratified by noisy label and seeded.
        """
        n_val = int(round(val_size * len(self.labels)))
        if not 0 < n_val < len(self.labels):
            raise DataError(f"a validation share of {val_size} leaves {n_val} of {len(self.labels)} training images "
                            "for validation; use a --val_size that keeps at least one image on each side")
        val = stratified_indices(self.labels, n_val, seed)
        keep = np.setdiff1d(np.arange(len(self.labels)), val)
        out = NoisyData(**{**self.__dict__, "info": dict(self.info)})
        out.images, out.labels = self.images[keep], self.labels[keep]
        out.clean_labels = None if self.clean_labels is None else self.clean_labels[keep]
        out.is_noisy = None if self.is_noisy is None else self.is_noisy[keep]
        # indices into the full training set, so that the run records exactly which images it saw
        original = np.asarray(self.info.get("train_indices", np.arange(len(self.labels))))
        out.info.update(train_indices=original[keep].tolist(), val_indices=original[val].tolist(),
                        noise_rate=out.noise_rate(),
                        val_noise_rate=None if self.is_noisy is None else float(self.is_noisy[val].mean()))
        return out, (self.images[val], self.labels[val])


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices drawn without replacement so that every class keeps its share (sorted)."""
    if not 0 < n <= len(labels):
        raise DataError(f"a subset of {n} samples is impossible from {len(labels)}; use 1..{len(labels)}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * n / len(labels)).astype(int)
    # hand the remaining samples to the classes with the largest fractional parts
    rest = n - quota.sum()
    quota[np.argsort(-(counts * n / len(labels) - quota), kind="stable")[:rest]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def load_cifar_noisy(dataset: str, root: Path, noise_mode: str, p: float, seed: int,
                     custom_noise: bool = False, make_new_custom_noise: bool = False,
                     sym_variant: str | None = None, asym_variant: str | None = None) -> NoisyData:
    """CIFAR-10/100 with the requested training-label noise, ready for training.

    Paper noise comes from the authors' files; custom noise from `<mode><p>_custom.csv`, generated when
    missing (see `load_custom_noise`). Open-set noise without --custom_noise is drawn in memory from `seed`.
    info["report"] is the noise report, also saved as `<noise file>_report.json` beside a noise file.
    """
    spec = CIFAR[dataset]
    check_noise_options(dataset, noise_mode, p, custom_noise, sym_variant, asym_variant)
    x, y, tx, ty = load_cifar(dataset, root)
    x100 = load_cifar("cifar100", root)[0] if noise_mode == "openset" else None
    info: dict = {"noise_mode": noise_mode, "p": p, "custom_noise": custom_noise,
                  "official_files": cifar_files_official(dataset, root)}
    path = None
    if custom_noise:
        noisy, source, meta, path = load_custom_noise(root, dataset, noise_mode, p, seed, y, spec.num_classes, x,
                                                 None if x100 is None else len(x100), make_new_custom_noise,
                                                 sym_variant, asym_variant)
        info.update(noise_file=str(path), noise_file_sha256=file_digest(path), noise_seed=meta.get("seed"),
                    noise_generator=meta.get("generator"), noise_variant=meta.get("variant"),
                    noise_file_edited=bool(meta.get("edited")))
        if noise_mode == "openset":
            replaced = np.flatnonzero(source >= 0)
            source = source[replaced]
    elif noise_mode == "openset":
        replaced, source = openset_indices(len(x), len(x100), p, seed)
        noisy = y
    else:
        path = paper_noise_file(root, dataset, noise_mode, p)
        clean, noisy = read_label_csv(path, len(y), spec.num_classes)
        if not np.array_equal(clean, y):
            raise DataError(f"the clean labels in {path} do not match the training set in {root / spec.folder}: "
                            "the images are in a different order than torchvision's; re-download the dataset")
        info["noise_file"] = str(path)
    clean = y
    if noise_mode == "openset":
        x = x.copy()
        x[replaced] = x100[source]
        is_noisy = np.zeros(len(y), dtype=bool)
        is_noisy[replaced] = True
        info.update(openset_replaced=replaced.tolist(), openset_source=source.tolist(),
                    seed=info.get("noise_seed", seed))
    else:
        is_noisy = clean != noisy
    data = NoisyData(dataset, x, noisy, clean, is_noisy, tx, ty, spec.num_classes,
                     cifar_class_names(dataset, root), spec.mean, spec.std, info=info)
    data.info["noise_rate"] = data.noise_rate()
    data.info["report"] = noise_report(clean, noisy, spec.num_classes, is_noisy if noise_mode == "openset" else None)
    if path is not None:
        save_report_beside(path, data.info["report"])
    return data


def save_report_beside(noise_file: Path, report: dict) -> None:
    """Keep `<noise file stem>_report.json` next to a noise file. It is derived from the labels alone, so
    rewriting it when it is out of date loses nothing; a read-only data folder only costs the copy."""
    path = noise_file.with_name(f"{noise_file.stem}_report.json")
    content = _json_bytes(report)
    try:
        if not path.is_file() or path.read_bytes() != content:
            _write_bytes(path, content)
    except OSError as e:
        print(f"note: could not save the noise report next to {noise_file} ({e}); it is still saved with the run")


# ----------------------------------------------------------------------------------------------------
# The on-device pipeline

def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                     offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Batched RandomCrop(size, padding=pad) + RandomHorizontalFlip() on uint8 (B, C, H, W) images.

    Zero padding, then one crop window per image (offsets (B, 2) as (top, left) in [0, 2*pad]) and a
    horizontal flip where `flips` is true; both drawn from `generator` unless given (no flips at all
    with flip=False). Same result as torchvision's functional crop and hflip with those offsets and flips.
    """
    b, c, h, w = images.shape
    dev = images.device
    if offsets is None:
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=dev)
    if flips is None:
        flips = torch.rand(b, generator=generator, device=dev) < 0.5
        flips &= flip
    # Two passes that copy whole rows with index_select, first on the transposed images (choosing
    # columns), then the right way round (choosing rows): several times faster on a CPU than gathering
    # single pixels, and a handful of kernels on a GPU.
    planes = torch.arange(b * c, device=dev).view(b, c, 1)
    cols = offsets[:, 1:] + torch.arange(w, device=dev)                       # (B, W) source columns
    cols = torch.where(flips[:, None], cols.flip(1), cols)                    # flipping = reading them backwards
    padded = F.pad(images.transpose(2, 3), (0, 0, pad, pad)).reshape(-1, h)   # rows = columns of the padded images
    out = padded.index_select(0, (planes * (w + 2 * pad) + cols[:, None, :]).view(-1)).view(b, c, w, h)
    rows = offsets[:, :1] + torch.arange(h, device=dev)                       # (B, H) source rows
    padded = F.pad(out.transpose(2, 3), (0, 0, pad, pad)).reshape(-1, w)
    return padded.index_select(0, (planes * (h + 2 * pad) + rows[:, None, :]).view(-1)).view(b, c, h, w)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, as ToTensor() then Normalize(mean, std) (equal up to float rounding)."""
    # one new tensor, scaled and shifted in place: fewer passes over memory than (x / 255 - mean) / std
    scale, shift = (1 / (255 * std)).view(1, -1, 1, 1), (mean / std).view(1, -1, 1, 1)
    return images.to(torch.float32, copy=True).mul_(scale).sub_(shift)


# ----------------------------------------------------------------------------------------------------
# Real-world label noise: Animal-10N (no clean labels) and CIFAR-N (human re-annotations of CIFAR)

ANIMAL10N_URL = "https://dm.kaist.ac.kr/datasets/animal-10n/"
ANIMAL10N_CLASSES = ["cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan", "hamster",
                     "guinea pig"]
ANIMAL10N_SPLITS = ("training", "testing")
# Random-crop padding: the reference's CIFAR augmentation (4 px) kept unchanged, so that Animal-10N runs
# differ from CIFAR runs only in their data; on 64-px images that is a shift of at most 1/16 of the side.
ANIMAL10N_PAD = 4
ANIMAL10N_CACHE_FORMAT = 1
# Members of raw_image.zip that are extracted: images directly in training/ or testing/, optionally under
# one top folder. The output path is built from (split, file name) only, so no member can escape.
_ANIMAL10N_MEMBER = re.compile(r"(?:[^/]+/)?(training|testing)/([^/\\]+\.jpe?g)", re.IGNORECASE)
_ANIMAL10N_NAME = re.compile(r"(\d+)_[^/\\]*\.jpe?g", re.IGNORECASE)


def animal10n_dir(root: Path) -> Path:
    """Where Animal-10N lives under the data root: `<root>/animal-10n/`."""
    return root / "animal-10n"


def _animal10n_layout(folder: Path) -> str:
    return (f"request Animal-10N at {ANIMAL10N_URL} and put the raw_image_ver.zip it sends you (or the "
            f"raw_image.zip inside it, or that zip's extracted training/ and testing/ folders of "
            f"<label>_<name>.jpg images) into {folder}/")


def _open_zip(path: Path, shown: str, folder: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{shown} is truncated or not a zip archive ({e}); delete it and {_animal10n_layout(folder)}")


def _extract_animal10n_splits(zip_path: Path, shown: str, folder: Path, splits: list[str]) -> None:
    """Extract the training/ and/or testing/ images of raw_image.zip into `folder`, each split appearing
    only once it is complete (a staging folder is renamed into place)."""
    with _open_zip(zip_path, shown, folder) as zf:
        members: dict[str, list[tuple[zipfile.ZipInfo, str]]] = {s: [] for s in splits}
        for info in zf.infolist():
            m = _ANIMAL10N_MEMBER.fullmatch(info.filename)
            if m and m.group(1) in members and not m.group(2).startswith(".") and "__MACOSX" not in info.filename:
                members[m.group(1)].append((info, m.group(2)))
        empty = [s for s, items in members.items() if not items]
        if empty:
            raise DataError(f"{shown} holds no images in {'/ or '.join(empty)}/; {_animal10n_layout(folder)}")
        staging = folder / f".extracting-{os.getpid()}"
        print(f"extracting {sum(map(len, members.values()))} Animal-10N images from {shown} into {folder}/")
        try:
            for split, items in members.items():
                (staging / split).mkdir(parents=True, exist_ok=True)
                for info, name in items:
                    with zf.open(info) as src, open(staging / split / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            for split in members:
                try:
                    os.replace(staging / split, folder / split)
                except OSError:
                    # another run on the same data (parallel trials) finished this split first
                    if not (folder / split).is_dir():
                        raise
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise DataError(f"{shown} is truncated or corrupt ({e}); delete it and {_animal10n_layout(folder)}")
        except NotImplementedError as e:  # e.g. Deflate64, which some archivers write and zipfile cannot read
            raise DataError(f"{shown} uses a compression Python cannot read ({e}); extract it with another tool "
                            f"so that {folder}/training/ and {folder}/testing/ exist")
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def extract_animal10n(folder: Path) -> None:
    """Make `folder/training/` and `folder/testing/` exist, extracting them from `folder/raw_image.zip`
    or, failing that, from the raw_image.zip nested in `folder/raw_image_ver.zip` (the file as downloaded)."""
    missing = [s for s in ANIMAL10N_SPLITS if not (folder / s).is_dir()]
    if not missing:
        return
    inner, outer = folder / "raw_image.zip", folder / "raw_image_ver.zip"
    if inner.is_file():
        _extract_animal10n_splits(inner, str(inner), folder, missing)
        return
    if not outer.is_file():
        raise DataError(f"Animal-10N not found ({' and '.join(str(folder / s) + '/' for s in missing)} missing); "
                        f"{_animal10n_layout(folder)}")
    with _open_zip(outer, str(outer), folder) as zf:
        nested = [i for i in zf.infolist() if Path(i.filename).name == "raw_image.zip"]
        if len(nested) != 1:
            raise DataError(f"{outer} should hold exactly one raw_image.zip, it holds {len(nested)}; "
                            f"{_animal10n_layout(folder)}")
        # the nested zip needs random access, so it goes to a temporary file first
        tmp = folder / f".raw_image.zip.{os.getpid()}"
        try:
            try:
                with zf.open(nested[0]) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (zipfile.BadZipFile, EOFError, zlib.error) as e:
                raise DataError(f"{outer} is truncated or corrupt ({e}); delete it and {_animal10n_layout(folder)}")
            _extract_animal10n_splits(tmp, f"{outer}:{nested[0].filename}", folder, missing)
        finally:
            tmp.unlink(missing_ok=True)


def _write_text_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def annotate_animal10n(folder: Path, num_classes: int = len(ANIMAL10N_CLASSES)) -> dict[str, tuple[list[str], np.ndarray]]:
    """Labels of the extracted Animal-10N images from their file names (`<label>_<name>.jpg`).

    Writes `training.csv` and `testing.csv` (columns `img_paths,targets`, paths relative to `folder`,
    sorted by file name) and returns {split: (paths, labels)}.
    """
    out = {}
    for split in ANIMAL10N_SPLITS:
        names = sorted(p.name for p in (folder / split).iterdir()
                       if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg") and not p.name.startswith("."))
        if not names:
            raise DataError(f"{folder / split}/ holds no .jpg images; {_animal10n_layout(folder)}")
        labels = []
        for name in names:
            m = _ANIMAL10N_NAME.fullmatch(name)
            if not m or int(m.group(1)) >= num_classes:
                raise DataError(f"{folder / split / name}: Animal-10N file names must be <label>_<name>.jpg with a "
                                f"label in 0..{num_classes - 1}; remove or rename the file")
            labels.append(int(m.group(1)))
        paths = [f"{split}/{n}" for n in names]
        rows = "".join(f"{p},{y}\n" for p, y in zip(paths, labels))
        _write_text_if_changed(folder / f"{split}.csv", "img_paths,targets\n" + rows)
        out[split] = (paths, np.array(labels, dtype=np.int64))
    return out


def decode_image(path: Path) -> np.ndarray:
    """uint8 (3, H, W) RGB pixels of an image file, or a DataError naming the file."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    # Pillow reports broken files as OSError (UnidentifiedImageError, truncation), ValueError or,
    # for some corrupt headers, SyntaxError
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} does not decode as an image ({e}); delete it (and the archive it came from) "
                        "and extract the dataset again")
    return np.asarray(rgb).transpose(2, 0, 1)


def channel_mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images scaled to [0, 1], as
    Normalize(mean, std) after ToTensor() expects them."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].astype(np.float64) / 255
        total += x.sum(axis=(0, 2, 3))
        squares += (x * x).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _read_animal10n_cache(cache: Path, csv_sums: dict[str, str]) -> dict | None:
    """The cached arrays if the manifest matches the current annotation files and every array file
    passes its SHA-256; None otherwise (the cache is then rebuilt)."""
    try:
        manifest = json.loads((cache / "manifest.json").read_text())
        if manifest.get("format") != ANIMAL10N_CACHE_FORMAT or manifest.get("csv_sha256") != csv_sums:
            return None
        arrays = {}
        for name, digest in manifest["files"].items():
            if file_digest(cache / name) != digest:
                return None
            arrays[Path(name).stem] = np.load(cache / name, allow_pickle=False)
        return {**arrays, "mean": tuple(manifest["mean"]), "std": tuple(manifest["std"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _build_animal10n_cache(folder: Path, annotations: dict, csv_sums: dict[str, str]) -> dict:
    """Decode every image once into uint8 arrays under `folder/cache/`; the manifest is written last,
    so an interrupted build is never mistaken for a finished one."""
    cache = folder / "cache"
    cache.mkdir(exist_ok=True)
    (cache / "manifest.json").unlink(missing_ok=True)
    print(f"decoding {sum(len(p) for p, _ in annotations.values())} Animal-10N images once into {cache}/")
    arrays: dict[str, np.ndarray] = {}
    for split, (paths, labels) in annotations.items():
        first = decode_image(folder / paths[0])
        images = np.empty((len(paths), *first.shape), dtype=np.uint8)
        for i, rel in enumerate(paths):
            img = first if i == 0 else decode_image(folder / rel)
            if img.shape != first.shape:
                raise DataError(f"{folder / rel} is {img.shape[2]}x{img.shape[1]} pixels but {folder / paths[0]} is "
                                f"{first.shape[2]}x{first.shape[1]}; all Animal-10N images must have one size")
            images[i] = img
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    mean, std = channel_mean_std(arrays["training_images"])
    files = {}
    for key, arr in arrays.items():
        tmp = cache / f".{key}.npy.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, cache / f"{key}.npy")
        files[f"{key}.npy"] = file_digest(cache / f"{key}.npy")
    manifest = {"format": ANIMAL10N_CACHE_FORMAT, "csv_sha256": csv_sums, "files": files,
                "mean": list(mean), "std": list(std), "mean_std_from": "training set"}
    _write_text_if_changed(cache / "manifest.json", json.dumps(manifest, indent=2))
    return {**arrays, "mean": mean, "std": std}


def load_animal10n(root: Path) -> NoisyData:
    """Animal-10N from `<root>/animal-10n/` (Song et al., "SELFIE", ICML 2019): real label noise, no clean labels.

    Accepts the downloaded raw_image_ver.zip, the raw_image.zip inside it, or its extracted training/
    and testing/ folders; extracts what is missing, writes training.csv / testing.csv and decodes the
    images once into `cache/` (uint8 .npy arrays checked by SHA-256 in cache/manifest.json). The
    normalisation mean/std are computed from the training images (the dataset publishes none).
    """
    folder = animal10n_dir(root)
    extract_animal10n(folder)
    annotations = annotate_animal10n(folder)
    csv_sums = {s: file_digest(folder / f"{s}.csv") for s in ANIMAL10N_SPLITS}
    arrays = _read_animal10n_cache(folder / "cache", csv_sums)
    if arrays is None or any(not np.array_equal(arrays.get(f"{s}_labels"), annotations[s][1]) for s in ANIMAL10N_SPLITS):
        arrays = _build_animal10n_cache(folder, annotations, csv_sums)
    info = {"noise": "real (human) labelling errors, about 8 % per the dataset's authors; no clean labels",
            "labels_from": "file names <label>_<name>.jpg", "mean_std_from": "training set",
            "cache": str(folder / "cache"), "noise_rate": None}
    return NoisyData("animal-10n", arrays["training_images"], arrays["training_labels"], None, None,
                     arrays["testing_images"], arrays["testing_labels"], len(ANIMAL10N_CLASSES),
                     list(ANIMAL10N_CLASSES), arrays["mean"], arrays["std"], pad=ANIMAL10N_PAD, info=info)


@dataclass(frozen=True)
class CifarNSpec:
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
    fix = f"download {url} to {path}, or {DATA_DIR_HINT}"
    if not path.is_file():
        if not download:
            raise DataError(f"CIFAR-N label file {path} is missing; {fix}")
        _download(url, path, f"the {name} human labels", fix, sha256=spec.sha256)
    got = file_digest(path)
    if got != spec.sha256:
        raise DataError(f"{path} fails its SHA-256 check (got {got[:12]}…, expected {spec.sha256[:12]}…); "
                        f"delete it and {fix}")
    return path


def read_cifarn_labels(path: Path) -> dict:
    """The dict of label arrays in a CIFAR-N `*_human.pt` file, without running any pickled code.

    The published files are torch.save zip archives whose `<name>/data.pkl` is an ordinary pickle of
    numpy arrays (no tensors), so that pickle is read with the restricted `_ArrayUnpickler`; a plain
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
            table = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise DataError(f"{path} is not a plain-array pickle ({e}); delete it and download it again")
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
