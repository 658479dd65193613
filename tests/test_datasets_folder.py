"""`train_real.py --dataset_name folder`: the user's own images, as an ImageFolder tree or train.csv/test.csv,
written here tiny (3 classes, 8-12 px PNG and JPEG files); loading, every bad input, training, resume, plots."""
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import datasets.folder
import datasets.images
import plot
import train_real
from conftest import assert_refused, variant_flags
from errors import DataError

CLASSES = ["cat", "dog", "owl"]


def write_image(path: Path, label: int, size: int = 10, seed: int = 0, mode: str = "RGB") -> None:
    """A small image whose colour depends on the class; the format follows the suffix (.png, .jpg)."""
    rng = np.random.default_rng(seed)
    colour = np.array([80 * label + 20, 200 - 60 * label, 40 + 50 * label])
    pixels = np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)


def make_tree(root: Path, n_train: int = 4, n_test: int = 2, size: int = 10) -> Path:
    """train/<class>/ and test/<class>/ with PNG and JPEG files (one grayscale) of one size."""
    for split, k in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(CLASSES):
            for i in range(k):
                suffix = ".jpg" if i % 2 else ".png"
                write_image(root / split / name / f"{i}{suffix}", label, size, seed=i + 10 * label,
                            mode="L" if (split, label, i) == ("train", 0, 0) else "RGB")
    return root


def make_csv(root: Path, names: bool = False, clean: bool = True, n_train: int = 4, n_test: int = 2,
             size: int = 10) -> Path:
    """train.csv / test.csv (path,label[,clean_label]) over images in img/; every fourth training label is
    wrong (the next class), so a quarter of the labels are noisy."""
    for split, k in (("train", n_train), ("test", n_test)):
        rows = []
        for label in range(len(CLASSES)):
            for i in range(k):
                rel = f"img/{split}/{label}_{i}.png"
                write_image(root / rel, label, size, seed=i + 10 * label)
                given = (label + 1) % len(CLASSES) if split == "train" and i == 0 else label
                show = (lambda c: CLASSES[c]) if names else str
                rows.append([rel, show(given)] + ([show(label)] if clean else []))
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"] + (["clean_label"] if clean else []))
            w.writerows(rows)
    return root


def read_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(open(path, newline="")))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


# ----------------------------------------------------------------------------------------------------
# Loading


def test_imagefolder_layout(tmp_path):
    make_tree(tmp_path)
    shutil.rmtree(tmp_path / "test" / "owl")                # test classes: a subset of the training classes ...
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"class 'owl' is in .*train \(4 images\) but not in .*test; the nearest class "
                                        r"there is '.*'; fix the label, or pass --allow_unshared_classes"):
        datasets.folder.load_folder(tmp_path)
    d = datasets.folder.load_folder(tmp_path, allow_unshared_classes=True)     # ... when asked for
    assert d.name == "folder" and d.class_names == CLASSES and d.num_classes == 3
    assert d.images.shape == (12, 3, 10, 10) and d.images.dtype == np.uint8 and d.test_images.shape == (4, 3, 10, 10)
    assert d.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and d.test_labels.tolist() == [0, 0, 1, 1]
    assert d.clean_labels is None and d.is_noisy is None and d.info["noise_rate"] is None
    assert d.pad == datasets.folder.FOLDER_PAD == 4 and d.flip
    x = d.images.astype(np.float64) / 255
    assert d.mean == pytest.approx(x.mean(axis=(0, 2, 3)).tolist()) and d.std == pytest.approx(x.std(axis=(0, 2, 3)).tolist())
    gray = d.images[0]                                      # the grayscale file became RGB
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])
    assert d.info["layout"] == "imagefolder" and d.info["image_shape"] == [10, 10]


@pytest.mark.parametrize("names", [False, True])
def test_csv_layout_with_clean_labels(tmp_path, names):
    make_csv(tmp_path, names=names)
    d = datasets.folder.load_folder(tmp_path)
    assert d.class_names == (CLASSES if names else ["0", "1", "2"])
    assert d.clean_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert d.is_noisy.tolist() == [True, False, False, False] * 3 and d.info["noise_rate"] == 0.25
    assert d.labels.tolist() == [1, 0, 0, 0, 2, 1, 1, 1, 0, 2, 2, 2]
    assert d.test_labels.tolist() == [0, 0, 1, 1, 2, 2] and d.info["layout"] == "csv"


def test_csv_without_clean_labels_and_padded_integers(tmp_path):
    make_csv(tmp_path, clean=False)
    rows = read_rows(tmp_path / "test.csv")
    rows[1][1] = "00"                                       # '00' is class 0
    write_rows(tmp_path / "test.csv", rows)
    d = datasets.folder.load_folder(tmp_path)
    assert d.clean_labels is None and d.is_noisy is None and d.test_labels[0] == 0


def test_image_size_resizes_mixed_sizes(tmp_path):
    make_tree(tmp_path, size=12)
    write_image(tmp_path / "train" / "dog" / "small.png", 1, size=8)
    with pytest.raises(DataError, match=r"small\.png is 8x8 pixels but .*train/cat/0\.png is 12x12; give --image_size"):
        datasets.folder.load_folder(tmp_path)
    d = datasets.folder.load_folder(tmp_path, image_size=9)
    assert d.images.shape == (13, 3, 9, 9) and d.test_images.shape == (6, 3, 9, 9) and d.info["resized_to"] == 9


# ----------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written

def run_cli(root, out_dir, *flags):
    argv = ["--dataset_name", "folder", "--batch_size", "8", "--n_epochs", "2", "--lr", "0.01", "--seed", "123",
            "--model", "wrn-16-1", "--data_dir", str(root), "--out_dir", str(out_dir), "--device", "cpu", *flags]
    return train_real.main(argv)


def edit_csv(split, row, column, value):
    def change(root):
        rows = read_rows(root / f"{split}.csv")
        rows[row - 1][column] = value
        write_rows(root / f"{split}.csv", rows)
    return change


def outside(root):
    write_image(root.parent / "elsewhere.png", 0)
    edit_csv("train", 3, 0, str(root.parent / "elsewhere.png"))(root)


BAD = {
    "test label unknown": ("csv", edit_csv("test", 3, 1, "7"), r"test\.csv row 3: label '7' is not one of the 3 classes"),
    "clean label unknown": ("names", edit_csv("train", 2, 2, "zebra"), r"train\.csv row 2: clean_label 'zebra' is not one"),
    "names and integers": ("names", edit_csv("train", 4, 1, "2"), r"train\.csv row 2: label 'dog' is a name but .*train\.csv row 4 has the integer '2'"),
    "empty label": ("csv", edit_csv("train", 4, 1, " "), r"train\.csv row 4: the label is empty; give every row one"),
    "not utf-8": ("csv", lambda r: (r / "train.csv").write_bytes(b"path,label\n\xff\xfe,1\n"), r"train\.csv is not a UTF-8 CSV file"),
    "missing image": ("csv", edit_csv("train", 5, 0, "img/nope.png"), r"train\.csv row 5: image .*img/nope\.png does not exist"),
    "dot-dot path": ("csv", edit_csv("train", 6, 0, "../elsewhere.png"), r"train\.csv row 6: path '\.\./elsewhere\.png' leaves the data folder"),
    "absolute path outside": ("csv", outside, r"train\.csv row 3: path '/.*elsewhere\.png' leaves the data folder"),
    "columns missing": ("csv", lambda r: write_rows(r / "test.csv", [["file", "class"], ["img/a.png", "0"]]),
                        r"test\.csv has columns file,class; it needs a header line path,label\[,clean_label\]"),
    "undecodable (csv)": ("csv", lambda r: (r / "img/train/1_2.png").write_bytes(b"not a png"),
                          r"train\.csv row 8: .*img/train/1_2\.png does not decode as an image"),
    "undecodable (tree)": ("tree", lambda r: (r / "train/dog/3.jpg").write_bytes(b"\xff\xd8 broken"),
                           r"train/dog/3\.jpg does not decode as an image"),
    "empty class folder": ("tree", lambda r: (r / "train" / "emu").mkdir(), r"class folder .*train/emu/ holds no images"),
    "test class unknown": ("tree", lambda r: write_image(r / "test" / "emu" / "0.png", 0),
                           r"class 'emu' is in .*/test \(1 image\) but not in .*/train; the nearest class there is "),
    # one label mistyped: a class of its own with one training image and no test image
    "typo in a class name": ("names", edit_csv("train", 3, 1, "caat"),
                             r"class 'caat' is in .*train\.csv \(1 image\) but not in .*test\.csv; the nearest "
                             r"class there is 'cat'; fix the label, or pass --allow_unshared_classes to keep it"),
    "mixed sizes": ("tree", lambda r: write_image(r / "test" / "owl" / "big.png", 2, size=12),
                    r"test/owl/big\.png is 12x12 pixels but .*train/cat/0\.png is 10x10; give --image_size N"),
    "no data": ("empty", lambda r: None, r"no dataset in .* \(no train/ folder, no train\.csv\); .*ImageFolder.*path,label"),
    "both layouts": ("tree", lambda r: make_csv(r), r"holds both train/ and train\.csv; keep one layout"),
    "missing test.csv": ("csv", lambda r: (r / "test.csv").unlink(), r"test\.csv is missing"),
    "below 8 px": ("tiny", lambda r: None, r"the images are 6x6 pixels; the networks need at least 8x8: give --image_size 8"),
    "too small for vgg": ("tree", lambda r: None, r"--model vgg19-bn needs images of at least 32x32, these are 10x10"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_nothing_written(tmp_path, capsys, case):
    layout, change, message = BAD[case]
    root = tmp_path / "data"
    root.mkdir()
    {"csv": make_csv, "names": lambda r: make_csv(r, names=True), "tree": make_tree, "empty": lambda r: r,
     "tiny": lambda r: make_tree(r, size=6)}[layout](root)
    change(root)
    flags = ["--model", "vgg19-bn"] if case == "too small for vgg" else []
    with pytest.raises(SystemExit) as exc:
        run_cli(root, tmp_path / "out", *flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "out" / "configs").exists()


@pytest.mark.parametrize("flags, message", [
    (["--dataset_name", "animal-10n", "--image_size", "32"], "--image_size is for --dataset_name clothing1m and folder only"),
    (["--image_size", "4"], "--image_size must be at least 8, got 4"),
    (["--dataset_name", "animal-10n", "--allow_unshared_classes"], "--allow_unshared_classes is for --dataset_name "
                                                                   "folder only; animal-10n's classes are fixed"),
    (["--noise_label", "worst"], "--noise_label is for cifar10n / cifar100n only; folder's labels"),
])
def test_bad_flags(tmp_path, capsys, flags, message):
    assert_refused(capsys, lambda: run_cli(tmp_path / "data", tmp_path / "out", *flags), message, tmp_path / "out")


def test_an_image_size_whose_images_cannot_fit_in_memory_is_one_line(tmp_path, capsys, monkeypatch):
    """--image_size 10^20 (or 20000 on a small machine) made numpy raise MemoryError or OverflowError when the first
    image was resized: the images' size is checked against the memory available before any is decoded, and the
    images' own size (no --image_size) before their array is made."""
    root = make_tree(tmp_path / "data")
    assert_refused(capsys, lambda: run_cli(root, tmp_path / "out", "--image_size", str(10**20)),
                   f"--image_size {10**20}: the 18 images of {root} would take 5e+32 GiB, more than the ", tmp_path / "out")
    monkeypatch.setattr(datasets.images, "available_memory", lambda: 2**30)        # a machine with 1 GiB free
    assert_refused(capsys, lambda: run_cli(root, tmp_path / "out", "--image_size", "8192"),
                   "the 18 images of", tmp_path / "out")
    monkeypatch.setattr(datasets.images, "available_memory", lambda: 12 * 3 * 10 * 10 - 1)    # 12 training images of 10x10
    assert_refused(capsys, lambda: run_cli(root, tmp_path / "out"), "12 images of 10x10 pixels (as ", tmp_path / "out")


def test_defaults_for_folder():
    args = train_real.build_parser().parse_args(["--dataset_name", "folder"])
    train_real.check_args(args)
    assert (args.model, args.sigma, args.image_size) == ("wrn-28-2", 0.5, None)


@pytest.mark.parametrize("size", [8, 16, 48])
def test_default_model_takes_any_size(size):
    net = train_real.make_model(train_real.DEFAULT_MODEL["folder"], 3).eval()
    assert net(torch.zeros(2, 3, size, size)).shape == (2, 3)


# ----------------------------------------------------------------------------------------------------
# Training, resume, plots

def only_run(out_dir: Path) -> Path:
    (run_dir,) = list((out_dir / "runs").iterdir())
    return run_dir


def check_run(run_dir: Path, summary: dict, variant: str, image_size, n_train: int) -> list[dict]:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["dataset_name"] == "folder" and config["image_size"] == image_size and config["n_train"] == n_train
    assert json.loads((run_dir / "summary.json").read_text())["variant"] == summary["variant"] == variant
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(r["test/acc"] != "" for r in rows)
    return rows


def test_ce_on_imagefolder_then_curves(tmp_path, capsys):
    root = make_tree(tmp_path / "data", size=12)
    write_image(root / "train" / "owl" / "odd.jpg", 2, size=9)       # mixed sizes: --image_size
    summary = run_cli(root, tmp_path / "out", "--image_size", "10", *variant_flags("0.5")["CE"])
    out = capsys.readouterr().out
    assert "folder (imagefolder layout): 13 training and 6 test images of 10x10, 3 classes; clean labels: none" in out
    run_dir = only_run(tmp_path / "out")
    rows = check_run(run_dir, summary, "CE", 10, 13)
    assert all(r["train/loss_clean"] == "" for r in rows)
    assets = tmp_path / "assets"
    plot.main(["--runs_dir", str(tmp_path / "out" / "runs"), "--assets_dir", str(assets), "--exp_id", run_dir.name,
               "--plot_type", "curves"])
    assert (assets / run_dir.name / "curves.png").is_file()
    # which of my labels are wrong: keyed by the image files, with no clean labels to measure against
    plot.main(["--runs_dir", str(tmp_path / "out" / "runs"), "--assets_dir", str(assets), "--exp_id", run_dir.name,
               "--label_issues"])
    issues = list(csv.DictReader(open(assets / run_dir.name / "label_issues.csv")))
    assert sorted(r["path"] for r in issues) == sorted(p.relative_to(root).as_posix() for p in root.glob("train/*/*"))
    assert all(r["given_label"] == r["path"].split("/")[1] for r in issues) and "clean_label" not in issues[0]
    assert "precision and recall cannot be measured" in (assets / run_dir.name / "label_issues.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        plot.main(["--runs_dir", str(tmp_path / "out" / "runs"), "--assets_dir", str(assets), "--exp_id", run_dir.name,
                   "--plot_type", "pred_probs"])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no clean labels" in err


def test_sln_mo_lc_on_csv_with_clean_labels_then_pred_probs(tmp_path, capsys):
    root = make_csv(tmp_path / "data", names=True)
    summary = run_cli(root, tmp_path / "out", *variant_flags("0.5")["SLN-MO-LC"])
    assert "noise rate 25.00% (label != clean_label)" in capsys.readouterr().out
    run_dir = only_run(tmp_path / "out")
    rows = check_run(run_dir, summary, "SLN-MO-LC", None, 12)
    assert all(r["train/loss_clean"] != "" and r["test/acc_ema"] != "" for r in rows)
    assert rows[1]["lc/corrected_precision"] != ""
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["noise"]["noise_rate"] == 0.25
    assets = tmp_path / "assets"
    plot.main(["--runs_dir", str(tmp_path / "out" / "runs"), "--assets_dir", str(assets), "--exp_id", run_dir.name,
               "--plot_type", "pred_probs", "--device", "cpu"])
    assert (assets / run_dir.name / "pred_probs.png").is_file()


def final_state(run_dir: Path) -> list:
    return [torch.load(run_dir / f, weights_only=True) for f in ("model_final.pt", "ema_final.pt", "targets_final.pt")]


def test_resume_after_an_interrupted_epoch(tmp_path, capsys):
    """As test_runs_resume's torn-checkpoint test: the last checkpoint is damaged, so --resume continues from the
    one before and must reproduce the uninterrupted run bit for bit."""
    root = make_csv(tmp_path / "data")
    flags = ["--n_epochs", "3", "--deterministic", *variant_flags("0.5")["SLN-MO-LC"]]
    run_cli(root, tmp_path / "out", *flags)
    run_dir = only_run(tmp_path / "out")
    reference = final_state(run_dir)
    metrics = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(run_dir / "metrics.csv"))]
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (run_dir / "summary.json").unlink()                   # ... so the run never finished
    capsys.readouterr()
    train_real.main(["--resume", run_dir.name, "--out_dir", str(tmp_path / "out"), "--device", "cpu"])
    assert "using checkpoint.prev.pt (epoch 2)" in capsys.readouterr().out
    assert only_run(tmp_path / "out") == run_dir
    for x, y in zip(reference, final_state(run_dir)):
        if isinstance(x, dict):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        else:
            assert torch.equal(x, y)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(run_dir / "metrics.csv"))] == metrics
    with pytest.raises(SystemExit) as exc:                  # a resumed run keeps its image size
        train_real.main(["--resume", run_dir.name, "--out_dir", str(tmp_path / "out"), "--image_size", "16"])
    assert exc.value.code == 2 and "--image_size 16 (the run has none)" in capsys.readouterr().err
