"""Datasets, label noise and the on-device input pipeline.

Datasets are plain arrays: images as uint8 (N, 3, H, W), labels as int64. Noise is decided here by
pure functions or read from files, never inside a dataset object. The training pipeline keeps the
whole training set on the training device and crops, flips and normalises whole batches there.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


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
        fix = f"download {spec.url} and extract it so that {folder}/ exists (or pass --data_dir)"
        if not download:
            raise DataError(f"{name} not found in {folder}; {fix}")
        if not archive.is_file():
            _download(spec.url, archive, name, fix, md5=spec.archive_md5)
        import tarfile
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    train = _read_batches(folder, spec.train_files, spec.label_key, spec.num_classes)
    test = _read_batches(folder, spec.test_files, spec.label_key, spec.num_classes)
    return (*train, *test)


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
    fix = f"download {url} to {path}"
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
    return np.sort(rng.choice(n, k, replace=False)), rng.choice(n_source, k, replace=False)


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
        if test_n:
            idx = stratified_indices(self.test_labels, test_n, seed)
            out.test_images, out.test_labels = self.test_images[idx], self.test_labels[idx]
        return out


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
                     custom_noise: bool = False, make_new_custom_noise: bool = False) -> NoisyData:
    """CIFAR-10/100 with the requested training-label noise, ready for training."""
    spec = CIFAR[dataset]
    x, y, tx, ty = load_cifar(dataset, root)
    info: dict = {"noise_mode": noise_mode, "p": p, "custom_noise": custom_noise}
    if custom_noise:
        raise DataError("--custom_noise is not available yet; use the paper's noise files (drop --custom_noise)")
    if noise_mode == "openset":
        if dataset != "cifar10":
            raise DataError("open-set noise exists for CIFAR-10 only (it inserts CIFAR-100 images); "
                            "use --dataset_name cifar10 or another --noise_mode")
        x100 = load_cifar("cifar100", root)[0]
        replaced, source = openset_indices(len(x), len(x100), p, seed)
        x = x.copy()
        x[replaced] = x100[source]
        clean, noisy = y, y
        is_noisy = np.zeros(len(y), dtype=bool)
        is_noisy[replaced] = True
        info.update(openset_replaced=replaced.tolist(), openset_source=source.tolist(), seed=seed)
    else:
        path = paper_noise_file(root, dataset, noise_mode, p)
        clean, noisy = read_label_csv(path, len(y), spec.num_classes)
        if not np.array_equal(clean, y):
            raise DataError(f"the clean labels in {path} do not match the training set in {root / spec.folder}: "
                            "the images are in a different order than torchvision's; re-download the dataset")
        is_noisy = clean != noisy
        info["noise_file"] = str(path)
    data = NoisyData(dataset, x, noisy, clean, is_noisy, tx, ty, spec.num_classes,
                     cifar_class_names(dataset, root), spec.mean, spec.std, info=info)
    data.info["noise_rate"] = data.noise_rate()
    return data


# ----------------------------------------------------------------------------------------------------
# The on-device pipeline

def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                     offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Batched RandomCrop(size, padding=pad) + RandomHorizontalFlip() on uint8 (B, C, H, W) images.

    Zero padding, then one crop window per image (offsets (B, 2) as (top, left) in [0, 2*pad]) and a
    horizontal flip where `flips` is true; both drawn from `generator` unless given. Same result as
    torchvision's functional crop and hflip with those offsets and flips.
    """
    b, c, h, w = images.shape
    dev = images.device
    if offsets is None:
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=dev)
    if flips is None:
        flips = torch.rand(b, generator=generator, device=dev) < 0.5
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
