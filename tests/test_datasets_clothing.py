"""`train_real.py --dataset_name clothing1m`: a fake Clothing1M (14 classes, a few dozen 20x24 JPEGs) in the owners'
layout and in the SLN authors' pre-joined lists; the recipe's pieces (balanced resampling, soft label correction,
step schedule, validation-picked test accuracy), every bad input, pretrained weights, resume and plots."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import yaml
from PIL import Image

import engine
import models
import plot
import sln
import cli
import datasets.clothing1m
import datasets.images
import train_real
from conftest import assert_refused, variant_flags
from data import balanced_indices

NAMES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket", "Downcoat", "Suit",
         "Shawl", "Dress", "Vest", "Underwear"]
# training images per class: unequal, so that the balanced sample (num_per_class 2) has something to balance
TRAIN_PER_CLASS = [2 + k % 3 for k in range(14)]


def write_jpeg(path: Path, label: int, seed: int, size=(24, 20)) -> None:
    """A small JPEG (width 24, height 20) whose colour depends on the class."""
    rng = np.random.default_rng(seed)
    colour = np.array([(37 * label) % 256, (91 * label + 60) % 256, (53 * label + 120) % 256])
    pixels = np.clip(colour + rng.normal(0, 15, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def make_clothing(root: Path, layout: str = "owners", names: bool = True) -> Path:
    """<root>/clothing1m/ with images/<a>/<b>/<key>.jpg, 41 noisy training images (every fifth label wrong), one
    clean validation and one clean test image per class, and the list files of `layout`."""
    folder = root / "clothing1m"
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    n = 0
    for split, counts in (("train", TRAIN_PER_CLASS), ("val", [1] * 14), ("test", [1] * 14)):
        for label, count in enumerate(counts):
            for _ in range(count):
                rel = f"images/{n % 10}/{n % 7:02d}/{1000 + n},{n * 7}.jpg"
                write_jpeg(folder / rel, label, seed=n)
                given = (label + 1) % 14 if split == "train" and n % 5 == 0 else label
                splits[split].append((rel, given))
                n += 1
    if layout == "authors":
        (folder / "annotations").mkdir(parents=True)
        for split, name in (("train", "noisy_train"), ("val", "clean_val"), ("test", "clean_test")):
            (folder / "annotations" / f"{name}.txt").write_text("".join(f"{p} {y}\n" for p, y in splits[split]))
    else:
        # the owners' noisy_label_kv.txt labels more images than the training list holds (here: the val images)
        noisy = splits["train"] + [(p, (y + 3) % 14) for p, y in splits["val"]]
        (folder / "noisy_label_kv.txt").write_text("".join(f"{p} {y}\n" for p, y in noisy))
        (folder / "clean_label_kv.txt").write_text("".join(f"{p} {y}\n" for p, y in splits["test"] + splits["val"]))
        for split, name in (("train", "noisy_train"), ("val", "clean_val"), ("test", "clean_test")):
            (folder / f"{name}_key_list.txt").write_text("".join(f"{p}\n" for p, _ in splits[split]))
    if names:
        (folder / "category_names_eng.txt").write_text("\n".join(NAMES) + "\n")
    return root


def run_cli(root: Path, out_dir: Path, *flags: str) -> dict:
    argv = ["--dataset_name", "clothing1m", "--data_dir", str(root), "--out_dir", str(out_dir), "--device", "cpu",
            "--image_size", "16", "--batch_size", "8", "--n_epochs", "2", "--num_per_class", "2", "--lr_milestones", "1",
            "--workers", "0", "--no-pretrained", "--seed", "3", *flags]
    return train_real.main(argv)


def only_run(out_dir: Path) -> Path:
    (run_dir,) = list((out_dir / "runs").iterdir())
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


# ----------------------------------------------------------------------------------------------------
# The data

@pytest.fixture(scope="module")
def owners_root(tmp_path_factory) -> Path:
    return make_clothing(tmp_path_factory.mktemp("owners"))


def test_both_layouts_give_the_same_dataset(owners_root, tmp_path):
    a = datasets.clothing1m.load_clothing1m(owners_root, 16, workers=0)
    b = datasets.clothing1m.load_clothing1m(make_clothing(tmp_path, "authors", names=False), 16, workers=0)
    assert (a.info["layout"], b.info["layout"]) == ("owners", "authors")
    assert a.class_names == NAMES and b.class_names == [str(k) for k in range(14)] and a.num_classes == 14
    for x, y in ((a.images, b.images), (a.test_images, b.test_images), (a.val[0], b.val[0])):
        assert x.paths.tolist() == y.paths.tolist() and x.shape[1:] == (3, 16, 16) and (x.resize, x.crop) == (18, 16)
    assert a.labels.tolist() == b.labels.tolist() and len(a.labels) == sum(TRAIN_PER_CLASS) == 41
    assert a.test_labels.tolist() == a.val[1].tolist() == list(range(14))
    assert a.clean_labels is None and a.noise_rate() is None and (a.mean, a.std) == (datasets.clothing1m.MEAN, datasets.clothing1m.STD)
    assert a.labels[0] == 1 and a.info["train_class_counts"] == np.bincount(a.labels, minlength=14).tolist()
    assert not a.info["val_test_lines_match_published"]


def test_balanced_indices_is_the_authors_sampler():
    """The authors keep the first num_per_class of every class in one shuffled order: the same, vectorised."""
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 1, 2, 2, 2, 3])
    for seed in range(5):
        order = np.random.default_rng([seed, 1]).permutation(len(labels))
        kept, count = [], {}
        for i in order:
            if count.get(labels[i], 0) < 2:
                kept.append(i)
                count[labels[i]] = count.get(labels[i], 0) + 1
        got = balanced_indices(labels, 2, [seed, 1])
        assert got.tolist() == sorted(kept)
        assert np.bincount(labels[got]).tolist() == [2, 2, 2, 1]
    assert balanced_indices(labels, 2, [0, 1]).tolist() != balanced_indices(labels, 2, [0, 2]).tolist()


def test_soft_corrected_targets_use_the_softmax():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0]])
    given = sln.onehot(torch.tensor([0, 1, 2]), 3)
    losses = torch.tensor([1.0, 3.0, 2.0])                        # min-max: l = 0, 1, 0.5
    soft = sln.corrected_targets(losses, given, logits, soft=True)
    p = torch.softmax(logits, 1)
    assert torch.allclose(soft[0], p[0]) and torch.equal(soft[1], given[1])
    assert torch.allclose(soft[2], 0.5 * given[2] + 0.5 * p[2])
    assert torch.allclose(soft.sum(1), torch.ones(3))
    hard = sln.corrected_targets(losses, given, logits)
    assert torch.equal(hard[0], torch.tensor([1.0, 0, 0])) and torch.equal(hard[2], torch.tensor([0.5, 0, 0.5]))


def test_step_schedule():
    assert [engine.lr_at(e, 1e-3, [5], 0.1) for e in (1, 5, 6, 10)] == [1e-3, 1e-3, 1e-3 * 0.1, 1e-3 * 0.1]
    assert engine.lr_at(9, 1.0, [2, 4], 0.5) == 0.25 and engine.lr_at(3, 0.1, [], 0.1) == 0.1


def test_worker_crops_are_the_authors_transforms(owners_root):
    files = datasets.clothing1m.load_clothing1m(owners_root, 16, workers=0).images
    img = Image.open(files.path(3)).convert("RGB")
    centre = T.Compose([T.Resize(18), T.CenterCrop(16)])(img)
    assert np.array_equal(datasets.images.load_crop(files.path(3), 18, 16, None), np.asarray(centre).transpose(2, 0, 1))
    resized = T.Resize(18)(img)                                   # 24x20 -> 21x18: crops at top 0..2, left 0..5
    assert resized.size == (21, 18)
    crop = datasets.images.load_crop(files.path(3), 18, 16, (0.99, 0.5, 0.2))    # top 2, left 3, flipped
    expected = np.asarray(T.functional.hflip(T.functional.crop(resized, 2, 3, 16, 16))).transpose(2, 0, 1)
    assert np.array_equal(crop, expected)


def test_file_batches_do_not_depend_on_the_worker_count(owners_root):
    files = datasets.clothing1m.load_clothing1m(owners_root, 16, workers=0).images
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))

    def batches(workers):
        source = datasets.images.FileImages(files, torch.device("cpu"), workers)
        train = [(i, x) for i, x in source.train_batches(order, 8, torch.Generator().manual_seed(1))]
        return train + list(source.eval_batches(16, augment=True, gen=torch.Generator().manual_seed(2)))
    one, two = batches(0), batches(2)
    assert len(one) == 6 + 3 and all(x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16) for _, x in one[:6])
    for a, b in zip(one, two):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(x, y)


# ----------------------------------------------------------------------------------------------------
# Training runs

@pytest.mark.slow
def test_sln_mo_lc_run_with_resnet50(owners_root, tmp_path, capsys):
    """The authors' recipe on the fake data: resnet50 from scratch, soft LC before epoch 2 on that epoch's balanced
    sample, lr / 10 after epoch 1, the clean validation set picking the reported epoch."""
    summary = run_cli(owners_root, tmp_path / "out", "--workers", "1", *variant_flags("0.2")["SLN-MO-LC"])
    out = capsys.readouterr().out
    assert "clothing1m (the owners' lists): 41 noisy training, 14 clean validation and 14 clean test images" in out
    run_dir = only_run(tmp_path / "out")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["model"], config["pretrained"], config["lc_soft"], config["weight_decay"], config["n_val"]) == \
        ("resnet50", False, True, 1e-3, 14)
    assert (config["num_per_class"], config["lr_milestones"], config["lr_decay"], config["image_size"]) == (2, [1], 0.1, 16)
    assert config["noise"]["augment"] == ("train: Resize(18), RandomCrop(16), RandomHorizontalFlip; evaluation: "
                                          "Resize(18), CenterCrop(16)")
    assert config["noise"]["normalise"] == "mean (0.6959, 0.6537, 0.6371), std (0.3113, 0.3192, 0.3214)"
    assert config["noise"]["layout"] == "owners" and config["data_provenance"]["train_images_sha256"] == \
        datasets.clothing1m.load_clothing1m(owners_root, 16, 0).images.digest()
    rows = metrics(run_dir)
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-3 * 0.1]
    assert rows[0]["lc/changed_fraction"] == "" and rows[1]["lc/changed_fraction"] != ""
    assert all(r["val/acc"] != "" and r["test/acc_ema"] != "" for r in rows) and float(rows[1]["sigma"]) == 0
    # the reported number: test accuracy at the first epoch of best validation accuracy
    val = [float(r["val/acc"]) for r in rows]
    chosen = val.index(max(val))
    assert summary["best_val_epoch"] == chosen + 1 and summary["best_val_acc"] == val[chosen]
    assert summary["test_acc_at_best_val"] == float(rows[chosen]["test/acc_reported"]) == float(rows[chosen]["test/acc_ema"])
    assert json.loads((run_dir / "summary.json").read_text())["test_acc_at_best_val"] == summary["test_acc_at_best_val"]
    # soft targets on epoch 2's balanced sample (2 per class), the given one-hot labels everywhere else
    labels = datasets.clothing1m.load_clothing1m(owners_root, 16, 0).labels
    sample = balanced_indices(labels, 2, [3, 2])
    assert len(sample) == 28 and np.bincount(labels[sample]).tolist() == [2] * 14
    targets = torch.load(run_dir / "targets_final.pt", weights_only=True)
    rest = np.setdiff1d(np.arange(41), sample)
    assert torch.equal(targets[rest], sln.onehot(torch.from_numpy(labels[rest]), 14))
    assert torch.allclose(targets[sample].sum(1), torch.ones(28))
    assert (targets[sample].max(1).values < 1).sum() >= 27      # soft: only the hardest sample keeps its one-hot label
    assert float(rows[1]["lc/changed_fraction"]) == pytest.approx(
        float((targets[sample].argmax(1) != torch.from_numpy(labels[sample])).float().mean()))


def test_authors_lists_ce_run_then_curves_and_table(tmp_path, capsys):
    root = make_clothing(tmp_path / "data", "authors")
    summary = run_cli(root, tmp_path / "out", "--model", "wrn-16-1", *variant_flags("0.2")["CE"])
    assert "clothing1m (the authors' lists)" in capsys.readouterr().out
    run_dir = only_run(tmp_path / "out")
    rows = metrics(run_dir)
    assert summary["variant"] == "CE" and summary["reported_network"] == "net"
    assert summary["test_acc_at_best_val"] == float(rows[summary["best_val_epoch"] - 1]["test/acc"])
    assets = tmp_path / "assets"
    runs_dir = str(tmp_path / "out" / "runs")
    plot.main(["--runs_dir", runs_dir, "--assets_dir", str(assets), "--exp_id", run_dir.name, "--plot_type", "curves"])
    curves = list(csv.reader(open(assets / run_dir.name / "curves.csv")))
    assert curves[0] == ["epoch", "test/acc", "test/acc_ema", "val/acc", "train/loss"] and len(curves) == 3
    plot.main(["--table", "--runs_dir", runs_dir, "--assets_dir", str(assets), "--name", "table"])
    row, mo = list(csv.DictReader(open(assets / "table.csv")))      # CE, and CE-MO read off the same run
    assert (row["variant"], mo["variant"], mo["exp_ids"]) == ("CE", "CE-MO", row["exp_ids"])
    assert row["dataset_name"] == "clothing1m" and row["variant"] == "CE" and row["noise"] == "-"
    assert float(row["at_best_val_mean"]) == pytest.approx(100 * summary["test_acc_at_best_val"], abs=1e-4)
    assert float(row["last_mean"]) == pytest.approx(100 * summary["last_test_acc"], abs=1e-4)
    table = (assets / "table.md").read_text()
    assert "epoch of best validation accuracy (the authors' Clothing1M number)" in table
    assert "lr_milestones=(1,)" in table and "num_per_class=2" in table


def final_state(run_dir: Path) -> list:
    return [torch.load(run_dir / f, weights_only=True) for f in ("model_final.pt", "ema_final.pt", "targets_final.pt")]


@pytest.mark.slow
def test_resume_is_bit_identical(owners_root, tmp_path, capsys):
    """The last checkpoint is torn, so --resume continues from the one before: the same run, bit for bit (the
    balanced sample is drawn from (seed, epoch), the crops from the checkpointed generator)."""
    flags = ["--model", "wrn-16-1", "--n_epochs", "3", "--deterministic", *variant_flags("0.2")["SLN-MO-LC"]]
    run_cli(owners_root, tmp_path / "out", *flags)
    run_dir = only_run(tmp_path / "out")
    reference = final_state(run_dir)
    before = [{k: v for k, v in r.items() if k != "seconds"} for r in metrics(run_dir)]
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (run_dir / "summary.json").unlink()                   # ... so the run never finished
    capsys.readouterr()
    train_real.main(["--resume", run_dir.name, "--out_dir", str(tmp_path / "out"), "--device", "cpu", "--workers", "2"])
    assert "using checkpoint.prev.pt (epoch 2)" in capsys.readouterr().out
    for x, y in zip(reference, final_state(run_dir)):
        if isinstance(x, dict):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        else:
            assert torch.equal(x, y)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in metrics(run_dir)] == before
    with pytest.raises(SystemExit) as exc:
        train_real.main(["--resume", run_dir.name, "--out_dir", str(tmp_path / "out"), "--num_per_class", "5"])
    assert exc.value.code == 2 and "--num_per_class 5 (run has 2)" in capsys.readouterr().err


def test_unreadable_image_mid_run_says_how_to_resume(owners_root, tmp_path, capsys, monkeypatch):
    """A file whose header reads but whose pixels do not (e.g. truncated later) stops the run with one line."""
    def broken(path, resize, crop, params):
        raise OSError("image file is truncated")
    monkeypatch.setattr(datasets.images, "load_crop", broken)
    with pytest.raises(SystemExit) as exc:
        run_cli(owners_root, tmp_path / "out", "--model", "wrn-16-1", *variant_flags("0.2")["CE"])
    assert exc.value.code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(r"\.jpg does not decode as an image \(image file is truncated\); "
                                                    r"replace the file, then start the run again$", err)


# ----------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written

def edit(name: str, line: int, text: str):
    def change(folder: Path) -> None:
        lines = (folder / name).read_text().splitlines()
        lines[line - 1] = text
        (folder / name).write_text("\n".join(lines) + "\n")
    return change


def first_image(folder: Path, split_file: str = "noisy_train_key_list.txt") -> Path:
    return folder / (folder / split_file).read_text().split()[0]


BAD = {
    "no data": ("none", lambda f: None,
                r"Clothing1M not found \(.*clothing1m/ does not exist\); Clothing1M is given out by its authors on "
                r"request .*; put its images/ folder and its list files .* into .*clothing1m/"),
    "list missing": ("owners", lambda f: (f / "clean_val_key_list.txt").unlink(),
                     r"Clothing1M in .*clothing1m/ is incomplete \(clean_val_key_list\.txt missing\); Clothing1M is given out"),
    "malformed kv line": ("owners", edit("noisy_label_kv.txt", 3, "images/a.jpg"),
                          r"noisy_label_kv\.txt line 3: expected '<image path> <label>', got 'images/a\.jpg'; fix the line"),
    "label out of range": ("authors", edit("annotations/clean_test.txt", 2, "images/0/00/1000,0.jpg 14"),
                           r"clean_test\.txt line 2: label '14' is not a class of Clothing1M \(0\.\.13\)"),
    "label not a number": ("authors", edit("annotations/noisy_train.txt", 5, "images/0/00/1000,0.jpg x"),
                           r"noisy_train\.txt line 5: label 'x' is not a class of Clothing1M"),
    "key without label": ("owners", edit("clean_test_key_list.txt", 4, "images/9/99/nowhere.jpg"),
                          r"clean_test_key_list\.txt line 4: images/9/99/nowhere\.jpg has no label in .*clean_label_kv\.txt"),
    "key list malformed": ("owners", edit("noisy_train_key_list.txt", 2, "images/a.jpg 3"),
                           r"noisy_train_key_list\.txt line 2: expected one image path, got 'images/a\.jpg 3'"),
    "path leaves the root": ("authors", edit("annotations/clean_val.txt", 1, "../../etc/passwd 3"),
                             r"clean_val\.txt line 1: path '\.\./\.\./etc/passwd' leaves the data folder .*clothing1m"),
    "absolute path elsewhere": ("authors", edit("annotations/clean_val.txt", 2, "/etc/passwd 3"),
                                r"clean_val\.txt line 2: path '/etc/passwd' leaves the data folder"),
    "image does not decode": ("owners", lambda f: first_image(f).write_bytes(b"\xff\xd8 not really a jpeg"),
                              r"images/0/00/1000,0\.jpg does not decode as an image \(.*\) \(listed in .*"
                              r"noisy_train_key_list\.txt\); replace the file or remove its line"),
    "image missing": ("authors", lambda f: first_image(f, "annotations/clean_test.txt").unlink(),
                      r"image .*\.jpg does not exist \(listed in .*annotations/clean_test\.txt\)"),
    "wrong class names": ("owners", lambda f: (f / "category_names_eng.txt").write_text("a\nb\n"),
                          r"category_names_eng\.txt names 2 classes, Clothing1M has 14"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_nothing_written(tmp_path, capsys, case):
    layout, change, message = BAD[case]
    root = tmp_path / "data"
    root.mkdir()
    if layout != "none":
        make_clothing(root, layout)
        change(root / "clothing1m")
    with pytest.raises(SystemExit) as exc:
        run_cli(root, tmp_path / "out", "--model", "wrn-16-1")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out" / "runs").exists() and not (tmp_path / "out" / "configs").exists()


@pytest.mark.parametrize("flags, message", [
    (["--model", "wrn-16-1", "--pretrained"], "--pretrained: wrn-16-1 has no ImageNet weights here"),
    (["--weights", "w.pt"], "--weights loads pretrained weights, --no-pretrained asks for none"),
    (["--lr_decay", "0.5", "--lr_milestones"], "--lr_decay needs --lr_milestones"),
    (["--lr_milestones", "2"], "--lr_milestones must be increasing epochs in 1..1, got 2"),
    (["--num_per_class", "-1"], "--num_per_class must be 0 or more, got -1"),
    (["--noise_label", "worst"], "--noise_label is for cifar10n / cifar100n only; clothing1m's labels"),
])
def test_bad_flags(tmp_path, capsys, flags, message):
    assert_refused(capsys, lambda: run_cli(tmp_path / "data", tmp_path / "out", *flags), message, tmp_path / "out")


def test_batches_of_crops_that_cannot_fit_in_memory_are_one_line(owners_root, tmp_path, capsys):
    """Clothing1M is read batch by batch: --image_size 10^20 crops (MemoryError, or an overflow, at the first batch)
    are refused once the lists are read, before the run folder exists. The largest batch counts (the recipe's
    --eval_batch_size 128), up to the size of the largest set (41 training images)."""
    out = tmp_path / "out"
    assert_refused(capsys, lambda: run_cli(owners_root, out, "--model", "wrn-16-1", "--image_size", str(10**20)),
                   f"--image_size {10**20} with batches of 41 images would take 4.6e+33 GiB, more than the ", out)
    assert_refused(capsys, lambda: run_cli(owners_root, out, "--model", "wrn-16-1", "--image_size", str(10**18),
                                           "--batch_size", "2", "--eval_batch_size", "4"),
                   f"--image_size {10**18} with batches of 4 images would take 4.5e+28 GiB", out)


def test_the_authors_recipe_is_the_default_and_given_flags_win():
    p = train_real.build_parser()
    args = p.parse_args(["--dataset_name", "clothing1m"])
    train_real.check_args(args)
    assert (args.model, args.pretrained, args.sigma, args.batch_size, args.n_epochs, args.lr, args.momentum) == \
        ("resnet50", True, 0.2, 32, 10, 1e-3, 0.9)
    assert (args.weight_decay, args.lr_milestones, args.lr_decay, args.num_per_class, args.lc_soft) == \
        (1e-3, [5], 0.1, 18976, True)
    assert (args.image_size, args.eval_batch_size, args.ema_alpha, args.lc_augment) == (224, 128, 0.999, True)
    args = p.parse_args(["--dataset_name", "clothing1m", "--batch_size", "64", "--lr_milestones", "--num_per_class",
                         "0", "--no-lc_soft", "--model", "wrn-28-2"])
    train_real.check_args(args)
    assert (args.batch_size, args.lr_milestones, args.lr_decay, args.num_per_class, args.lc_soft, args.pretrained) == \
        (64, [], None, 0, False, None)
    args = p.parse_args(["--dataset_name", "animal-10n"])          # other datasets: nothing of it
    train_real.check_args(args)
    assert (args.batch_size, args.weight_decay, args.lr_milestones, args.num_per_class, args.lc_soft,
            args.pretrained, args.image_size) == (128, 5e-4, None, None, None, None, None)


@pytest.mark.parametrize("n_epochs, milestones, note", [
    ("2", None, "the recipe's --lr_milestones 5 is past the run's end (--n_epochs 2), so the learning rate stays "
                "constant"),
    ("5", None, "--lr_milestones 5 is past the run's end (--n_epochs 5)"),
    ("6", [5], None),
])
def test_a_short_run_skips_the_recipe_milestone_past_its_end(capsys, n_epochs, milestones, note):
    args = train_real.build_parser().parse_args(["--dataset_name", "clothing1m", "--n_epochs", n_epochs])
    train_real.check_args(args)      # not refused: the user typed no --lr_milestones
    assert args.lr_milestones == milestones
    out = capsys.readouterr().out
    assert (note in out) if note else ("past the run's end" not in out)


# ----------------------------------------------------------------------------------------------------
# Pretrained weights

def test_offline_without_cached_weights_is_one_line(owners_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    argv = ["--dataset_name", "clothing1m", "--data_dir", str(owners_root), "--out_dir", str(tmp_path / "out"),
            "--device", "cpu", "--sigma", "0"]
    with pytest.raises(SystemExit) as exc:
        train_real.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"the ImageNet weights resnet50-0676ba61\.pth of resnet50 are not in .*hub/checkpoints/ and cannot "
                     r"be downloaded \(network disabled in tests\); download https://download\.pytorch\.org/models/"
                     r"resnet50-0676ba61\.pth into .*, or pass --weights PATH", err)
    assert not (tmp_path / "out").exists()


def test_local_weights_file(tmp_path, capsys):
    """--weights PATH: a state dict (here of a ResNet-50 trained from scratch, 14-way) loads with weights_only; every
    tensor but the final layer's is taken; the final layer is new."""
    torch.manual_seed(0)
    saved = models.make_model("resnet50", 14).state_dict()
    path = tmp_path / "resnet50.pt"
    torch.save(saved, path)
    args = train_real.build_parser().parse_args(["--dataset_name", "clothing1m", "--weights", str(path)])
    train_real.check_args(args)
    assert args.pretrained is True
    net = models.make_model("resnet50", 14, cli.pretrained_weights(args)).state_dict()
    assert all(torch.equal(net[k], saved[k]) for k in saved if not k.startswith("fc."))
    assert net["fc.weight"].shape == (14, 2048) and not torch.equal(net["fc.weight"], saved["fc.weight"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "small.pt")
    for file, message in (("missing.pt", r"--weights .*missing\.pt does not exist"),
                          ("junk.pt", r"--weights .*junk\.pt is not a PyTorch state dict"),
                          ("small.pt", r"the weights do not fit resnet50: .*conv1\.weight")):
        with pytest.raises(SystemExit) as exc:
            run_cli(tmp_path / "data", tmp_path / "out", "--weights", str(tmp_path / file), "--pretrained")
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()
