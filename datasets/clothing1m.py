"""Clothing1M (Xiao et al., "Learning from Massive Noisy Labeled Data for Image Classification", CVPR 2015):
a million clothing images from shopping sites with labels taken from the text around them, 14 classes, and
small sets of images labelled by people, used here as the clean validation and test sets.

Read from `<data_dir>/clothing1m/`, in either of two layouts:

- the release of the dataset's owners: `images/`, `noisy_label_kv.txt` and `clean_label_kv.txt` (`<image path>
  <label>` per line), `noisy_train_key_list.txt`, `clean_val_key_list.txt` and `clean_test_key_list.txt` (one
  image path per line; the label comes from the matching kv file), optionally `category_names_eng.txt`;
- the pre-joined lists of the SLN authors' repository: `annotations/noisy_train.txt`, `clean_val.txt` and
  `clean_test.txt` (`<image path> <label>` per line; 14,313 and 10,526 lines for val and test).

Image paths are relative to `clothing1m/`. Only the lists are read into memory; the images stay files
(images.ImageFiles), opened batch by batch while training. Every line is checked as it is read, so that an
error names its file and line, and every listed image's header is read once before training starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from data import NoisyData
from datasets import Dataset, workers
from datasets.images import ImageFiles, check_readable, inside
from errors import DataError

NUM_CLASSES = 14
# normalisation of the authors' noise_clothing1m_train.py (Clothing1M images, not ImageNet)
MEAN = (0.6959, 0.6537, 0.6371)
STD = (0.3113, 0.3192, 0.3214)
# the authors resize the shorter side to 256 before cropping 224: the ratio is kept for other crop sizes
RESIZE_PER_CROP = 256 / 224
REQUEST = ("Clothing1M is given out by its authors on request (see https://github.com/Cysu/noisy_label, "
           "'Clothing1M Experiments', for whom to ask for the download link)")
OWNER_FILES = {"noisy labels": "noisy_label_kv.txt", "clean labels": "clean_label_kv.txt",
               "train": "noisy_train_key_list.txt", "val": "clean_val_key_list.txt", "test": "clean_test_key_list.txt"}
AUTHOR_FILES = {"train": "annotations/noisy_train.txt", "val": "annotations/clean_val.txt",
                "test": "annotations/clean_test.txt"}
CLASS_NAMES_FILE = "category_names_eng.txt"
PUBLISHED_LINES = {"val": 14313, "test": 10526}   # the authors' clean_val.txt and clean_test.txt
FIX_IMAGE = "replace the file or remove its line"


def clothing1m_dir(root: Path) -> Path:
    """Where Clothing1M lives under the data root: `<root>/clothing1m/`."""
    return root / "clothing1m"


def layout_hint(folder: Path) -> str:
    return (f"{REQUEST}; put its images/ folder and its list files ({', '.join(OWNER_FILES.values())}) into "
            f"{folder}/, or images/ and the SLN authors' {', '.join(AUTHOR_FILES.values())}")


def detect_layout(folder: Path) -> str:
    """'authors' when their three pre-joined lists are there (what the reference trained on), else 'owners'."""
    if not folder.is_dir():
        raise DataError(f"Clothing1M not found ({folder}/ does not exist); {layout_hint(folder)}")
    if all((folder / f).is_file() for f in AUTHOR_FILES.values()):
        return "authors"
    missing = [f for f in OWNER_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise DataError(f"Clothing1M in {folder}/ is incomplete ({', '.join(missing)} missing); {layout_hint(folder)}")
    return "owners"


def relative_path(folder: Path, path: str, where: str) -> str:
    """A listed image path, normalised and relative to `folder`; a DataError when it leaves the folder."""
    rel = os.path.normpath(path)
    if os.path.isabs(rel) or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        # the rare case goes through images.inside (it accepts an absolute path that stays inside)
        rel = os.path.relpath(inside(folder, path, where), Path(os.path.normpath(folder.absolute())))
    return rel


def read_lines(file: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of every non-blank line of a UTF-8 text file, one at a time
    (a million-line list is not held twice)."""
    with open(file, encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if fields:
                    yield n, fields
        except UnicodeDecodeError as e:
            raise DataError(f"{file} is not a UTF-8 text file ({e}); use the list file as the dataset gives it")


def parse_label(value: str, where: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) >= NUM_CLASSES:
        raise DataError(f"{where}label {value!r} is not a class of Clothing1M (0..{NUM_CLASSES - 1}); fix the line")
    return int(value)


def read_labelled(folder: Path, name: str) -> tuple[list[str], list[int]]:
    """The `<image path> <label>` lines of folder/name (paths checked to stay in folder)."""
    paths, labels = [], []
    for n, fields in read_lines(folder / name):
        where = f"{folder / name} line {n}: "
        if len(fields) != 2:
            raise DataError(f"{where}expected '<image path> <label>', got {' '.join(fields)[:80]!r}; fix the line")
        paths.append(relative_path(folder, fields[0], where))
        labels.append(parse_label(fields[1], where))
    if not paths:
        raise DataError(f"{folder / name} lists no images; {layout_hint(folder)}")
    return paths, labels


def read_keyed(folder: Path, name: str, kv: dict[str, int], kv_name: str) -> tuple[list[str], list[int]]:
    """The image paths listed one per line in folder/name, with their labels from the kv file `kv_name`."""
    paths, labels = [], []
    for n, fields in read_lines(folder / name):
        where = f"{folder / name} line {n}: "
        if len(fields) != 1:
            raise DataError(f"{where}expected one image path, got {' '.join(fields)[:80]!r}; fix the line")
        rel = relative_path(folder, fields[0], where)
        if rel not in kv:
            raise DataError(f"{where}{fields[0]} has no label in {folder / kv_name}; add it there or remove the line")
        paths.append(rel)
        labels.append(kv[rel])
    if not paths:
        raise DataError(f"{folder / name} lists no images; {layout_hint(folder)}")
    return paths, labels


def read_splits(folder: Path, layout: str) -> dict[str, tuple[list[str], list[int]]]:
    """{'train' | 'val' | 'test': (relative image paths, labels)} in the given layout."""
    if layout == "authors":
        return {split: read_labelled(folder, name) for split, name in AUTHOR_FILES.items()}
    noisy = dict(zip(*read_labelled(folder, OWNER_FILES["noisy labels"])))
    clean = dict(zip(*read_labelled(folder, OWNER_FILES["clean labels"])))
    return {"train": read_keyed(folder, OWNER_FILES["train"], noisy, OWNER_FILES["noisy labels"]),
            "val": read_keyed(folder, OWNER_FILES["val"], clean, OWNER_FILES["clean labels"]),
            "test": read_keyed(folder, OWNER_FILES["test"], clean, OWNER_FILES["clean labels"])}


def class_names(folder: Path) -> tuple[list[str], str]:
    """The 14 class names from category_names_eng.txt (one per line, in label order), else '0'..'13'."""
    file = folder / CLASS_NAMES_FILE
    if not file.is_file():
        return [str(k) for k in range(NUM_CLASSES)], "label numbers (no category_names_eng.txt)"
    names = [" ".join(fields) for _, fields in read_lines(file)]
    if len(names) != NUM_CLASSES:
        raise DataError(f"{file} names {len(names)} classes, Clothing1M has {NUM_CLASSES}; use the file of the "
                        "release or remove it (the classes are then numbered)")
    return names, CLASS_NAMES_FILE


def resize_for(crop: int) -> int:
    """The shorter side an image is resized to before a crop of `crop` (256 for the authors' 224)."""
    return round(crop * RESIZE_PER_CROP)


def load_clothing1m(root: Path, crop: int, workers: int) -> NoisyData:
    """Clothing1M from `<root>/clothing1m/` (either layout, see the module docstring) as NoisyData whose images are
    ImageFiles: the noisy training set (no clean labels), the clean test set and, in `val`, the clean validation
    set. Every listed image's header is read once here, in `workers` DataLoader processes."""
    folder = clothing1m_dir(root)
    layout = detect_layout(folder)
    splits = read_splits(folder, layout)
    names, names_from = class_names(folder)
    files = {s: ImageFiles(folder, np.array([p.encode() for p in paths]), resize_for(crop), crop)
             for s, (paths, _) in splits.items()}
    labels = {s: np.array(y, dtype=np.int64) for s, (_, y) in splits.items()}
    lists = AUTHOR_FILES if layout == "authors" else OWNER_FILES
    for split in ("train", "val", "test"):
        shown = f"{folder / lists[split]}"
        check_readable(files[split], workers, shown, FIX_IMAGE)
    counts = np.bincount(labels["train"], minlength=NUM_CLASSES)
    info = {"layout": layout, "lists": {s: lists[s] for s in ("train", "val", "test")}, "root": str(folder.absolute()),
            "n_full": len(labels["train"]), "n_val": len(labels["val"]), "n_test": len(labels["test"]),
            "val_test_lines_match_published": (len(labels["val"]), len(labels["test"])) ==
            (PUBLISHED_LINES["val"], PUBLISHED_LINES["test"]),
            "train_class_counts": counts.tolist(), "class_names_from": names_from,
            "resize": resize_for(crop), "crop": crop, "mean_std_from": "the SLN authors' noise_clothing1m_train.py",
            "normalise": f"mean {MEAN}, std {STD}",
            "augment": f"train: Resize({resize_for(crop)}), RandomCrop({crop}), RandomHorizontalFlip; evaluation: "
                       f"Resize({resize_for(crop)}), CenterCrop({crop})",
            "noise": "labels from the text around each image (no clean labels for the training set)",
            "noise_rate": None}
    return NoisyData("clothing1m", files["train"], labels["train"], None, None, files["test"], labels["test"],
                     NUM_CLASSES, names, MEAN, STD, pad=0, info=info, val=(files["val"], labels["val"]))


def summary(data: NoisyData, config: dict) -> str:
    """The line train_real.py prints once the lists are read: the sizes of the three sets and the image sizes."""
    info = data.info
    return (f"clothing1m (the {info['layout']}' lists): {len(data.labels):,} noisy training, "
            f"{len(data.val[1]):,} clean validation and {len(data.test_labels):,} clean test images, "
            f"{info['resize']}-px resize, {info['crop']}-px crops"
            + ("" if info["val_test_lines_match_published"] else " (val/test sizes differ from the authors' "
               f"{PUBLISHED_LINES['val']:,} / {PUBLISHED_LINES['test']:,} lines)"))


# The authors' Clothing1M recipe (noise_clothing1m_train.py) where it differs from the shared defaults, which are
# their CIFAR recipe: batch 32, 10 epochs, weight decay 1e-3, lr / 10 after epoch 5, a fresh balanced sample of
# 18,976 images per class every epoch, soft label-correction targets, evaluation in batches of 4 x 32, 224-px
# crops (after resizing the shorter side to 256), ImageNet weights. A value is used when its flag is not given.
# (--lr_decay is the shared default, 0.1, as theirs.)
RECIPE = {"batch_size": 32, "n_epochs": 10, "weight_decay": 1e-3, "lr_milestones": [5], "num_per_class": 18976,
          "lc_soft": True, "eval_batch_size": 128, "image_size": 224}

# default sigma 0.2: the authors' README command
DATASETS = [
    Dataset("clothing1m", lambda c: load_clothing1m(Path(c["data_dir"]), c["image_size"], workers(c)), "train_real.py",
            NUM_CLASSES, "resnet50", {None: 0.2}, "the authors' README command", "no",
            "1M noisy training images, clean validation and test sets of <data_dir>/clothing1m/", rebuildable=False,
            help="clothing1m: <data_dir>/clothing1m/ (images/ and the owners' or the SLN authors' list files; the "
                 "authors' recipe becomes the default)",
            example="--dataset_name clothing1m --sigma 0.2 --mo --lc_n_epoch 1 --seed 123",
            model_note=" (ImageNet weights)",
            defaults_note="clothing1m also takes the rest of the authors' Clothing1M recipe as its defaults "
                          "(datasets/clothing1m.py's RECIPE)",
            summary=summary, recipe=RECIPE, image_size=True, pretrained=True),
]
