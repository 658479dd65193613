"""The user's own noisy labelled images (`train_real.py --dataset_name folder --data_dir ROOT`).

ROOT is the dataset folder itself, in one of two layouts:

- an ImageFolder tree, `train/<class>/<image>` and `test/<class>/<image>`: the classes are the sorted folder
  names of train/, the labels are the folders (there are no clean labels);
- two CSV files, `train.csv` and `test.csv`, with columns `path,label[,clean_label]`: paths relative to ROOT,
  labels integers 0..C-1 or class names (then the classes are the sorted names in train.csv).

Every image is decoded with PIL, converted to RGB and optionally resized, and the set is returned as a
data.NoisyData of uint8 arrays, so the training loop treats it like Animal-10N (normalisation from the training
images) or, with a clean_label column, like CIFAR-N (clean/noisy metrics, label-correction precision). Every
problem is one DataError that names the file and, for a CSV, the row: a user's own data is where typos live.
"""
from __future__ import annotations

import csv
import difflib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import NoisyData
from datasets import Dataset
from datasets.images import channel_mean_std, check_images_fit, decode_image, inside
from errors import DataError

# Random-crop padding: 4 px, as for CIFAR and Animal-10N (the reference's augmentation unchanged).
FOLDER_PAD = 4
MIN_IMAGE_SIZE = 8
# files an operating system or a photo tool leaves in folders; not images, so not the user's data
JUNK = {"thumbs.db", "desktop.ini"}
LAYOUTS = ("train/<class>/<image> and test/<class>/<image> folders (ImageFolder), or train.csv and test.csv "
           "with columns path,label[,clean_label]")
FIX_IMAGE = "replace or remove the file"
_INTEGER = re.compile(r"\d+")


@dataclass
class Split:
    """One split as listed on disk: image files, their labels and, where known, their clean labels."""

    paths: list[Path]
    where: list[str]                  # where each image was listed ("train.csv row 3: " or ""), for errors
    labels: list[str]
    clean: list[str] | None


def detect_layout(root: Path) -> str:
    """'imagefolder' or 'csv'; one layout only, so that no run silently trains on the other one."""
    tree, table = (root / "train").is_dir(), (root / "train.csv").is_file()
    if tree and table:
        raise DataError(f"{root} holds both train/ and train.csv; keep one layout (move the other away)")
    if not tree and not table:
        raise DataError(f"no dataset in {root} (no train/ folder, no train.csv); --dataset_name folder reads "
                        f"--data_dir itself, with {LAYOUTS}")
    return "imagefolder" if tree else "csv"


def visible_entries(folder: Path) -> list[Path]:
    """Entries of a folder without hidden files and OS junk, sorted by name so that runs are reproducible."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name.lower() not in JUNK)


def read_tree_split(root: Path, split: str) -> Split:
    """One split of the ImageFolder layout: every file under `<root>/<split>/<class>/`."""
    top = root / split
    if not top.is_dir():
        raise DataError(f"{top}/ is missing; the ImageFolder layout needs train/<class>/ and test/<class>/ folders")
    paths, labels = [], []
    for folder in (p for p in visible_entries(top) if p.is_dir()):
        files = [p for p in visible_entries(folder) if p.is_file()]
        if not files:
            raise DataError(f"class folder {folder}/ holds no images; add images or remove the folder")
        paths += files
        labels += [folder.name] * len(files)
    if not paths:
        raise DataError(f"{top}/ holds no class folders; put each class's images in {top}/<class>/")
    return Split(paths, [""] * len(paths), labels, None)


def read_csv_split(root: Path, split: str) -> Split:
    """One split of the CSV layout: `<root>/<split>.csv` with columns path,label[,clean_label]."""
    file = root / f"{split}.csv"
    if not file.is_file():
        raise DataError(f"{file} is missing; the CSV layout needs train.csv and test.csv (path,label[,clean_label])")
    try:
        return read_csv_rows(root, file)
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{file} is not a UTF-8 CSV file ({e}); save it as CSV (UTF-8) with columns "
                        "path,label[,clean_label]")


def read_csv_rows(root: Path, file: Path) -> Split:
    """The rows of one CSV file, each checked as it is read, so that an error can name its row."""
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns or "label" not in columns:
            raise DataError(f"{file} has columns {','.join(columns) or '(none)'}; it needs a header line "
                            "path,label[,clean_label]")
        reader.fieldnames = columns
        has_clean = "clean_label" in columns
        out = Split([], [], [], [] if has_clean else None)
        for row in reader:
            where = f"{file} row {reader.line_num}: "
            rel = (row.get("path") or "").strip()
            if not rel:
                raise DataError(f"{where}the path is empty")
            path = inside(root, rel, where)
            if not path.is_file():
                raise DataError(f"{where}image {path} does not exist; fix the path (relative to {root})")
            out.paths.append(path)
            out.where.append(where)
            out.labels.append(non_empty(row, "label", where))
            if out.clean is not None:
                out.clean.append(non_empty(row, "clean_label", where))
    if not out.paths:
        raise DataError(f"{file} lists no images")
    return out


def non_empty(row: dict, column: str, where: str) -> str:
    """A row's label, stripped; an empty one is an error rather than a class called ''."""
    value = (row.get(column) or "").strip()
    if not value:
        raise DataError(f"{where}the {column} is empty; give every row one" +
                        (" or drop the clean_label column" if column == "clean_label" else ""))
    return value


def csv_classes(train: Split) -> list[str]:
    """Class names of a CSV training set from its label column: '0'..'C-1' for integer labels (C - 1 the
    largest), else the sorted names. A mix of both is refused: '3' might then be the fourth class or a class
    called 3."""
    values = train.labels + (train.clean or [])
    integer = [bool(_INTEGER.fullmatch(v)) for v in values]
    if any(integer) and not all(integer):
        i, j = integer.index(True), integer.index(False)
        rows = train.where * (2 if train.clean else 1)
        column = ["label"] * len(train.labels) + ["clean_label"] * len(train.clean or [])
        raise DataError(f"{rows[j]}{column[j]} {values[j]!r} is a name but {rows[i].rstrip(': ')} has the integer "
                        f"{values[i]!r}; use integers 0..C-1 or class names, not both")
    # the classes are those of the given labels (what the network learns); a clean label outside them is an error
    if all(integer):
        return [str(k) for k in range(max(int(v) for v in train.labels) + 1)]
    return sorted(set(train.labels))


def canonical(value: str) -> str:
    """An integer label without leading zeros ('007' -> '7'); anything else unchanged."""
    return str(int(value)) if _INTEGER.fullmatch(value) else value


def to_indices(values: list[str], where: list[str], classes: list[str], what: str, integers: bool) -> np.ndarray:
    """int64 class indices of label strings (with `integers`, CSV integer labels, '07' is class 7); an unknown
    one is named with its file and row."""
    index = {name: k for k, name in enumerate(classes)}
    if integers:
        values = [canonical(v) for v in values]
    for v, w in zip(values, where):
        if v not in index:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise DataError(f"{w}{what} {v!r} is not one of the {len(classes)} classes ({shown})")
    return np.array([index[v] for v in values], dtype=np.int64)


def decode_split(split: Split, image_size: int | None, shape: tuple[int, ...] | None,
                 first: Path | None) -> np.ndarray:
    """uint8 (N, 3, H, W) images of a split. Without --image_size all must have the shape of `first`'s image
    (the first training image), and the error names two files of different sizes."""
    images: np.ndarray | None = None
    for i, (path, where) in enumerate(zip(split.paths, split.where)):
        img = decode_image(path, image_size, FIX_IMAGE, where)
        if shape is None:
            shape, first = img.shape, path
        if img.shape != shape:
            raise DataError(f"{where}{path} is {img.shape[2]}x{img.shape[1]} pixels but {first} is {shape[2]}x"
                            f"{shape[1]}; give --image_size N to resize every image to N x N")
        if images is None:
            check_images_fit(len(split.paths), shape[1], shape[2], f"{len(split.paths):,} images of {shape[2]}x"
                             f"{shape[1]} pixels (as {path})", "give --image_size N to resize every image to N x N")
            images = np.empty((len(split.paths), *shape), dtype=np.uint8)
        images[i] = img
    return images


def check_shared_classes(train: Split, test: Split, root: Path, layout: str, integers: bool) -> None:
    """Refuse a class that only the training set or only the test set has: a typo in one label (`aeroplane` for
    `airplane`) would otherwise be a class of its own. The error names the class, how many images have it, the
    nearest class name of the other set and the flag that accepts it on purpose."""
    norm = canonical if integers else (lambda v: v)
    sets = {"train": Counter(norm(v) for v in train.labels), "test": Counter(norm(v) for v in (test.clean or test.labels))}
    where = {"train": root / "train.csv", "test": root / "test.csv"} if layout == "csv" else \
        {"train": root / "train", "test": root / "test"}
    for here, there in (("train", "test"), ("test", "train")):
        only = sorted(set(sets[here]) - set(sets[there]))
        if only:
            name, n = only[0], sets[here][only[0]]
            near = difflib.get_close_matches(name, sorted(sets[there]), n=1, cutoff=0.0)
            raise DataError(f"class {name!r} is in {where[here]} ({n} image{'s' if n > 1 else ''}) but not in "
                            f"{where[there]}" + (f" (and {len(only) - 1} more)" if len(only) > 1 else "")
                            + (f"; the nearest class there is {near[0]!r}" if near else "")
                            + "; fix the label, or pass --allow_unshared_classes to keep it as a class of its own")


def load_folder(root: Path, image_size: int | None = None, allow_unshared_classes: bool = False) -> NoisyData:
    """The dataset in `root` (ImageFolder tree or train.csv/test.csv, see the module docstring) as NoisyData.

    Normalisation mean/std come from the training images (a user's set publishes none); labels of test images
    must be among the training classes. With a clean_label column in train.csv, is_noisy = label != clean_label
    and the noise rate is recorded in info; in test.csv a clean_label column, if any, is the label evaluated.
    """
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; --dataset_name folder reads --data_dir itself, "
                        f"with {LAYOUTS}")
    layout = detect_layout(root)
    read = read_tree_split if layout == "imagefolder" else read_csv_split
    train, test = read(root, "train"), read(root, "test")
    if allow_unshared_classes:    # the classes of both sets: a test-only class is one the network never trains on
        both = Split(train.paths + test.paths, train.where + test.where, train.labels + (test.clean or test.labels), None)
        classes = sorted(set(both.labels)) if layout == "imagefolder" else csv_classes(both)
    else:
        classes = sorted(set(train.labels)) if layout == "imagefolder" else csv_classes(train)
    integers = layout == "csv" and classes[0] == "0" and all(_INTEGER.fullmatch(c) for c in classes)
    if not allow_unshared_classes:
        check_shared_classes(train, test, root, layout, integers)
    labels = to_indices(train.labels, train.where, classes, "label", integers)
    clean = None if train.clean is None else to_indices(train.clean, train.where, classes, "clean_label", integers)
    test_labels = to_indices(test.labels, test.where, classes, "label", integers)
    if test.clean is not None:       # the test set is for measuring: its clean labels, where given, are the truth
        test_labels = to_indices(test.clean, test.where, classes, "clean_label", integers)
    if image_size is not None:     # before the first image is resized to it
        check_images_fit(len(train.paths) + len(test.paths), image_size, image_size,
                         f"--image_size {image_size}: the {len(train.paths) + len(test.paths):,} images of {root}",
                         "give a smaller --image_size")
    images = decode_split(train, image_size, None, None)
    test_images = decode_split(test, image_size, images.shape[1:], train.paths[0])
    if min(images.shape[2:]) < MIN_IMAGE_SIZE:
        raise DataError(f"the images are {images.shape[3]}x{images.shape[2]} pixels; the networks need at least "
                        f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}: give --image_size {MIN_IMAGE_SIZE} or more")
    mean, std = channel_mean_std(images)
    is_noisy = None if clean is None else labels != clean
    rate = None if is_noisy is None else float(is_noisy.mean())
    info = {"layout": layout, "root": str(root.absolute()), "n_full": len(labels),
            "image_shape": [int(images.shape[2]), int(images.shape[3])], "resized_to": image_size,
            "mean_std_from": "training set", "noise_rate": rate,
            "noise": "the user's labels" + (f", {rate:.2%} differ from clean_label" if rate is not None
                                            else "; no clean labels")}
    return NoisyData("folder", images, labels, clean, is_noisy, test_images, test_labels, len(classes), classes,
                     mean, std, pad=FOLDER_PAD, info=info,
                     train_files=[Path(os.path.relpath(path, root)).as_posix() for path in train.paths])


def summary(data: NoisyData, config: dict) -> str:
    """The line train_real.py prints once the set is loaded: its layout, sizes, classes and noise rate, if known."""
    return (f"folder ({data.info['layout']} layout): {len(data.labels):,} training and {len(data.test_labels):,} test "
            f"images of {data.images.shape[3]}x{data.images.shape[2]}, {data.num_classes} classes; "
            + ("clean labels: none" if data.noise_rate() is None else f"noise rate {data.noise_rate():.2%} "
               "(label != clean_label)"))


# wrn-28-2 pools globally, so it takes any image size from 8 px on, where VGG-19's five max-pools need at least
# 32 px. Default sigma 0.5, as for Animal-10N.
DATASETS = [
    Dataset("folder",
            lambda c: load_folder(Path(c["data_dir"]), c.get("image_size"), bool(c.get("allow_unshared_classes"))),
            "train_real.py", None, "wrn-28-2", {None: 0.5}, "this project's default", "optional",
            "your own images in --data_dir: train/<class>/ and test/<class>/, or train.csv and test.csv",
            help="folder: your own images in --data_dir itself, as train/<class>/ and test/<class>/ folders or "
                 "train.csv and test.csv with columns path,label[,clean_label]",
            example="--dataset_name folder --data_dir my_images --image_size 32 --sigma 0.5 --mo --lc_n_epoch 250",
            summary=summary, image_size=True, unshared_classes=True),
]
