"""Real-world label noise: Animal-10N (human labelling errors, no clean labels) and CIFAR-N (human
re-annotations of the CIFAR training images).

Each dataset is read from the files its authors publish, checked (CIFAR-N: SHA-256) or decoded once into a
checked cache (Animal-10N), and returned as a data.NoisyData, so the training loop treats it like CIFAR with
synthetic noise. CIFAR on disk, downloads and checksums come from data.py.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data import (CIFAR, ArrayUnpickler, NoisyData, cifar_class_names, cifar_files_official, data_dir_hint,
                  download_file, file_digest, load_array_pickle, load_cifar)
from files import write_atomic
from errors import DataError

# ----------------------------------------------------------------------------------------------------
# Animal-10N (Song et al., "SELFIE", ICML 2019)

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


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save to exactly `path` (given a name, np.save would append .npy to a temporary name)."""
    with open(path, "wb") as f:
        np.save(f, array)


def _write_text_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    write_atomic(path, lambda tmp: tmp.write_text(text))


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


EXTRACT_AGAIN = "delete it (and the archive it came from) and extract the dataset again"


def decode_image(path: Path, size: int | None = None, fix: str = EXTRACT_AGAIN, where: str = "") -> np.ndarray:
    """uint8 (3, H, W) RGB pixels of an image file, resized to size x size (bilinear) if a size is given,
    or a DataError naming the file (after `where`, e.g. a CSV row) and what to do about it (`fix`)."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if size is not None:
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    # Pillow reports broken files as OSError (UnidentifiedImageError, truncation), ValueError or,
    # for some corrupt headers, SyntaxError
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}{path} does not decode as an image ({e}); {fix}")
    return np.asarray(rgb).transpose(2, 0, 1)


def channel_mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images scaled to [0, 1], as
    Normalize(mean, std) after ToTensor() expects them."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    chunk = min(chunk, max(1, 2**30 // (8 * images[0].size)))   # large images: float64 chunks of at most 1 GiB
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
        write_atomic(cache / f"{key}.npy", lambda tmp, arr=arr: save_npy(tmp, arr))
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
                     list(ANIMAL10N_CLASSES), arrays["mean"], arrays["std"], pad=ANIMAL10N_PAD, info=info,
                     train_files=[Path(os.path.relpath(folder / rel, root)).as_posix() for rel in annotations["training"][0]])


# ----------------------------------------------------------------------------------------------------
# CIFAR-N (Wei et al., ICLR 2022)

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
