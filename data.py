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
                     offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Batched RandomCrop(size, padding=pad) + RandomHorizontalFlip() on uint8 (B, C, H, W) images.

    Zero padding, then one crop window per image (offsets (B, 2) as (top, left) in [0, 2*pad]) and a
    horizontal flip where `flips` is true; both drawn from `generator` unless given (no flips at all
    with flip=False). Same result as torchvision's functional crop and hflip with those offsets and flips.
    """
    b, _, h, w = images.shape
    dev = images.device
    if offsets is None:
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=dev)
    if flips is None:
        flips = torch.rand(b, generator=generator, device=dev) < 0.5
        flips &= flip
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(h, device=dev)                       # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=dev)                       # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)                    # flipping = reading columns backwards
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]                # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, as ToTensor() then Normalize(mean, std)."""
    return (images.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


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
    fix = f"download {url} to {path}"
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
            "realised_noise_rates": rates, "n_full": len(y), "noise_rate": rate}
    return NoisyData(name, x, noisy, clean, is_noisy, tx, ty, base.num_classes, cifar_class_names(spec.base, root),
                     base.mean, base.std, info=info)
