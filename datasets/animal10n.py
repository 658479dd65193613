"""Animal-10N (Song et al., "SELFIE: Refurbishing Unclean Samples for Robust Deep Learning", ICML 2019): 55,000
animal images of 64x64 with human labelling errors and no clean labels.

Read from the files its authors give out, decoded once into a checked cache and returned as a data.NoisyData, so
the training loop treats it like CIFAR with synthetic noise.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np

from data import NoisyData, file_digest
from datasets import Dataset
from datasets.images import channel_mean_std, decode_image
from errors import DataError
from files import write_atomic

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


# vgg19-bn: the network of the Animal-10N benchmark (SELFIE). Default sigma 0.5: the value of the earlier
# re-implementation's commands.
DATASETS = [
    Dataset("animal-10n", lambda c: load_animal10n(Path(c["data_dir"])), "train_real.py", len(ANIMAL10N_CLASSES),
            "vgg19-bn", {None: 0.5}, "this project's default", "no",
            "50,000 training and 5,000 test images of <data_dir>/animal-10n/, human label noise", rebuildable=False,
            help="animal-10n: <data_dir>/animal-10n/ (no clean labels)",
            example="--dataset_name animal-10n --batch_size 128 --n_epochs 300 --lr 0.001 --sigma 0.5 --mo "
                    "--lc_n_epoch 250 --seed 123"),
]
