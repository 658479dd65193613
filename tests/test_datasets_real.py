"""Animal-10N and CIFAR-N: loading from the real on-disk formats (built here, tiny) and train_real.py runs."""
import csv
import dataclasses
import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import data
import datasets.animal10n
import datasets.cifar_n
import methods
import runs
import train_real
from conftest import assert_refused, variant_flags
from errors import DataError

# ----------------------------------------------------------------------------------------------------
# A fake Animal-10N: raw_image_ver.zip > raw_image.zip > training/, testing/ of <label>_<name>.jpg


def jpeg(label: int, rng: np.random.Generator, size: int = 64) -> bytes:
    """A small JPEG whose colour depends on the class."""
    colour = np.array([(37 * label) % 256, (91 * label + 40) % 256, (53 * label + 120) % 256])
    pixels = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def fake_animal10n_files(per_class_train: int = 4, per_class_test: int = 2, size: int = 64,
                         seed: int = 0) -> dict[str, bytes]:
    """{"training/3_00017.jpg": bytes, ...}: file names as in Animal-10N, `<label>_<name>.jpg`; a few
    names carry more underscores (the label is only the part before the first one)."""
    rng = np.random.default_rng(seed)
    files, serial = {}, 0
    for split, k in (("training", per_class_train), ("testing", per_class_test)):
        for label in range(10):
            for i in range(k):
                serial += 1
                name = f"{label}_{serial:05d}.jpg" if i else f"{label}_{datasets.animal10n.ANIMAL10N_CLASSES[label].replace(' ', '-')}_{serial:04d}.jpg"
                files[f"{split}/{name}"] = jpeg(label, rng, size)
    return files


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def write_animal10n(root: Path, files: dict[str, bytes], form: str = "ver") -> Path:
    """Put the fake dataset under root/animal-10n/ as downloaded ("ver"), as the nested zip ("inner")
    or extracted ("folders"). Junk a real archive may carry is added to the zips."""
    folder = datasets.animal10n.animal10n_dir(root)
    folder.mkdir(parents=True)
    inner = zip_bytes({**files, "__MACOSX/training/._0_00001.jpg": b"\x00\x05\x16\x07", "training/Thumbs.db": b"junk"})
    if form == "ver":
        (folder / "raw_image_ver.zip").write_bytes(zip_bytes({"raw_image.zip": inner}, zipfile.ZIP_STORED))
    elif form == "inner":
        (folder / "raw_image.zip").write_bytes(inner)
    else:
        for name, content in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
    return folder


def decoded(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB")).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def animal_files():
    return fake_animal10n_files()


@pytest.fixture(scope="module")
def animal_root(tmp_path_factory):
    """A smaller Animal-10N (20 / 10 images of 32x32, to keep CPU training short), extracted and cached
    once, for the training runs."""
    root = tmp_path_factory.mktemp("animal")
    write_animal10n(root, fake_animal10n_files(per_class_train=2, per_class_test=1, size=32))
    datasets.animal10n.load_animal10n(root)
    return root


@pytest.mark.parametrize("form", ["ver", "inner", "folders"])
def test_animal10n_extraction_annotation_and_arrays(tmp_path, animal_files, form):
    folder = write_animal10n(tmp_path, animal_files, form)
    d = datasets.animal10n.load_animal10n(tmp_path)

    for split in datasets.animal10n.ANIMAL10N_SPLITS:
        expected = sorted(n for n in animal_files if n.startswith(split + "/"))
        assert sorted(f"{split}/{p.name}" for p in (folder / split).iterdir()) == expected   # junk not extracted
        rows = list(csv.reader(open(folder / f"{split}.csv", newline="")))
        assert rows == [["img_paths", "targets"]] + [[n, n.split("/")[1].split("_")[0]] for n in expected]
    train_names = sorted(n for n in animal_files if n.startswith("training/"))
    test_names = sorted(n for n in animal_files if n.startswith("testing/"))
    assert d.images.shape == (40, 3, 64, 64) and d.images.dtype == np.uint8
    assert np.array_equal(d.images, np.stack([decoded(animal_files[n]) for n in train_names]))
    assert np.array_equal(d.test_images, np.stack([decoded(animal_files[n]) for n in test_names]))
    # each training image's file, relative to the data folder, as plot.py --label_issues names it
    assert [f.rsplit("/", 2)[-2:] for f in d.train_files] == [n.split("/") for n in train_names]
    assert all((tmp_path / f).is_file() for f in d.train_files)
    assert d.labels.tolist() == [int(n.split("/")[1].split("_")[0]) for n in train_names]
    assert d.test_labels.tolist() == [int(n.split("/")[1].split("_")[0]) for n in test_names]
    assert d.clean_labels is None and d.is_noisy is None and d.noise_rate() is None
    assert d.num_classes == 10 and d.class_names[3] == "coyote" and d.class_names[9] == "guinea pig"
    assert d.pad == datasets.animal10n.ANIMAL10N_PAD == 4
    x = d.images.astype(np.float64) / 255
    assert d.mean == pytest.approx(x.mean(axis=(0, 2, 3)).tolist(), abs=1e-12)
    assert d.std == pytest.approx(x.std(axis=(0, 2, 3)).tolist(), abs=1e-12)
    manifest = json.loads((folder / "cache" / "manifest.json").read_text())
    assert manifest["csv_sha256"]["training"] == data.file_digest(folder / "training.csv")
    assert manifest["mean"] == pytest.approx(list(d.mean))
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]     # no temporary files left


def test_animal10n_cache_is_reused_and_checksummed(tmp_path, animal_files, monkeypatch):
    folder = write_animal10n(tmp_path, animal_files, "folders")
    first = datasets.animal10n.load_animal10n(tmp_path)

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache is valid")
    monkeypatch.setattr(datasets.animal10n, "decode_image", no_decoding)
    again = datasets.animal10n.load_animal10n(tmp_path)
    assert np.array_equal(again.images, first.images) and again.mean == pytest.approx(first.mean)

    cached = folder / "cache" / "training_images.npy"
    raw = bytearray(cached.read_bytes())
    raw[-1] ^= 0xFF                                             # one flipped pixel: the checksum must notice
    cached.write_bytes(bytes(raw))
    with pytest.raises(AssertionError, match="decoded"):
        datasets.animal10n.load_animal10n(tmp_path)
    monkeypatch.undo()
    assert np.array_equal(datasets.animal10n.load_animal10n(tmp_path).images, first.images)


def test_corrupt_animal10n_image_is_named(tmp_path, animal_files):
    files = dict(animal_files)
    files["training/4_00099.jpg"] = b"\xff\xd8 this is not a JPEG"
    write_animal10n(tmp_path, files, "ver")
    with pytest.raises(DataError, match=r"training/4_00099\.jpg does not decode"):
        datasets.animal10n.load_animal10n(tmp_path)


@pytest.mark.parametrize("form", ["ver", "inner"])
def test_truncated_animal10n_zip(tmp_path, animal_files, form):
    folder = write_animal10n(tmp_path, animal_files, form)
    (path,) = folder.glob("*.zip")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{path.name} is truncated"):
        datasets.animal10n.load_animal10n(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # nothing half-extracted


def test_truncated_nested_zip(tmp_path, animal_files):
    folder = datasets.animal10n.animal10n_dir(tmp_path)
    folder.mkdir(parents=True)
    inner = zip_bytes(animal_files)
    (folder / "raw_image_ver.zip").write_bytes(zip_bytes({"raw_image.zip": inner[: len(inner) // 2]}))
    with pytest.raises(DataError, match=r"raw_image_ver\.zip:raw_image\.zip is truncated"):
        datasets.animal10n.load_animal10n(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["raw_image_ver.zip"]


def test_animal10n_zip_cannot_write_outside(tmp_path, animal_files):
    evil = {"../../escape1.jpg": b"x", "training/../../escape2.jpg": b"x", "testing/..\\..\\escape3.jpg": b"x",
            "/abs/dir/training/0_escape4.jpg": b"x", **animal_files}
    folder = datasets.animal10n.animal10n_dir(tmp_path / "root")
    folder.mkdir(parents=True)
    (folder / "raw_image.zip").write_bytes(zip_bytes(evil))
    datasets.animal10n.load_animal10n(tmp_path / "root")
    assert not [p for p in tmp_path.rglob("*escape*")]
    extracted = sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.jpg"))
    assert extracted == sorted(animal_files)


@pytest.mark.parametrize("name", ["training/cat_00001.jpg", "testing/12_00001.jpg"])
def test_animal10n_file_name_without_label(tmp_path, animal_files, name):
    write_animal10n(tmp_path, {**animal_files, name: animal_files["training/1_00006.jpg"]}, "folders")
    with pytest.raises(DataError, match=re.escape(Path(name).name) + r": .*<label>_<name>\.jpg"):
        datasets.animal10n.load_animal10n(tmp_path)


def test_missing_animal10n_says_where_to_get_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_real.main(["--dataset_name", "animal-10n", "--data_dir", str(tmp_path / "data"),
                         "--out_dir", str(tmp_path / "out"), "--device", "cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for part in ("https://dm.kaist.ac.kr/datasets/animal-10n/", "raw_image_ver.zip", "raw_image.zip",
                 "training/", "testing/", "<label>_<name>.jpg", str(tmp_path / "data" / "animal-10n")):
        assert part in err, part
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# train_real.py on Animal-10N: the four models, no clean labels

VARIANTS = variant_flags("0.5")


def run_cli(root, out_dir, *flags):
    argv = ["--batch_size", "16", "--n_epochs", "2", "--lr", "0.01", "--seed", "123", "--model", "wrn-16-1",
            "--data_dir", str(root), "--out_dir", str(out_dir), "--device", "cpu", *flags]
    return train_real.main(argv)


def only_run(out_dir):
    (run_dir,) = list((out_dir / "runs").iterdir())
    return run_dir


@pytest.mark.parametrize("name", list(VARIANTS))
def test_animal10n_every_model(animal_root, tmp_path, capsys, name):
    summary = run_cli(animal_root, tmp_path, "--dataset_name", "animal-10n", *VARIANTS[name])
    run_dir = only_run(tmp_path)
    out = capsys.readouterr().out
    assert summary["variant"] == name
    assert out.count("no clean labels") == 1                   # said once, not every epoch
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["dataset"] == "animal-10n" and config["n_train"] == 20 and config["n_test"] == 10
    assert config["noise"]["noise_rate"] is None and config["model"] == "wrn-16-1"
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert r["train/loss_clean"] == "" and r["train/loss_noisy"] == ""    # need clean labels: omitted
        assert r["test/acc"] != "" and r["train/loss"] != ""
    reported = "test/acc_ema" if name.startswith("SLN-MO") else "test/acc"
    assert summary["last_test_acc"] == pytest.approx(float(rows[-1][reported]))
    if name == "SLN-MO-LC":
        assert rows[1]["lc/changed_fraction"] != "" and rows[1]["lc/corrected_precision"] == ""
        assert float(rows[1]["sigma"]) == 0.0
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(runs.tensorboard_dir(run_dir)))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert "lc/changed_fraction" in tags and "test/acc_ema" in tags
        assert not {"train/loss_clean", "train/loss_noisy", "lc/corrected_precision"} & tags
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["targets"].shape == (20, 10)


def test_readme_command_flags_and_defaults():
    """The SEED-README Animal-10N command parses as is; dataset-dependent defaults resolve."""
    p = train_real.build_parser()
    args = p.parse_args("--dataset_name animal-10n --batch_size 128 --n_epochs 300 --lr 0.001 --sigma 0.5 --mo "
                        "--lc_n_epoch 250 --seed 123".split())
    train_real.check_args(args)
    assert (args.model, args.sigma, args.mo, args.lc_n_epoch, args.noise_label) == ("vgg19-bn", 0.5, True, 250, None)
    args = p.parse_args(["--dataset_name", "cifar10n", "--noise_label", "worst"])
    train_real.check_args(args)
    assert (args.model, args.sigma) == ("wrn-28-2", 0.5)
    args = p.parse_args(["--dataset_name", "cifar100n"])
    train_real.check_args(args)
    assert (args.model, args.sigma, args.noise_label) == ("wrn-28-2", 0.1, "noisy")
    args = p.parse_args(["--dataset_name", "animal-10n", "--model", "wrn-28-2"])
    train_real.check_args(args)
    assert args.model == "wrn-28-2"


@pytest.mark.parametrize("flags, message", [
    (["--dataset_name", "cifar10n"], r"cifar10n needs --noise_label aggre \| worst \| random1"),
    (["--dataset_name", "cifar100n", "--noise_label", "worst"], r"needs --noise_label noisy \(got worst\)"),
    (["--dataset_name", "animal-10n", "--noise_label", "aggre"], "cifar10n / cifar100n only"),
    (["--dataset_name", "webvision"], "invalid choice"),
    (["--dataset_name", "animal-10n", "--sigma", "0", "--mo"], "not one of the paper's models"),
])
def test_bad_flags_one_line_nothing_written(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        run_cli(tmp_path / "data", tmp_path / "out", *flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------------------------------
# CIFAR-N: label files in the published format (torch.save of a dict of numpy arrays)

def flip_exactly(clean: np.ndarray, k: int, num_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = clean.copy()
    idx = rng.choice(len(clean), k, replace=False)
    noisy[idx] = (clean[idx] + rng.integers(1, num_classes, k)) % num_classes
    return noisy


# flips out of the 400 fake CIFAR-10 training images: aggre (9.0 %) agrees with the published rate to
# 0.1 %, the others (40.0, 17.0, 18.0, 17.5 %) do not (published 40.2, 17.2, 18.1, 17.6 %)
CIFAR10N_FLIPS = {"aggre_label": 36, "worse_label": 160, "random_label1": 68, "random_label2": 72, "random_label3": 70}


@pytest.fixture
def cifarn_root(tmp_path, fake_root, monkeypatch):
    """A data root with the fake CIFAR images (linked) and fake CIFAR-N files whose checksums are accepted."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("cifar10", "cifar100"):
        (root / data.CIFAR[name].folder).symlink_to(fake_root / data.CIFAR[name].folder)
    (root / "cifar-n").mkdir()
    y10 = data.load_cifar("cifar10", root, download=False)[1]
    table10 = {"clean_label": y10, **{k: flip_exactly(y10, n, 10, seed) for seed, (k, n) in enumerate(CIFAR10N_FLIPS.items())}}
    torch.save(table10, root / "cifar-n" / "CIFAR-10_human.pt")
    y100 = data.load_cifar("cifar100", root, download=False)[1]
    table100 = {"clean_label": y100, "noisy_label": flip_exactly(y100, 241, 100, 9),
                "clean_coarse_label": (y100 // 5).tolist(), "noisy_coarse_label": (y100 // 5).tolist()}
    torch.save(table100, root / "cifar-n" / "CIFAR-100_human.pt")
    accept_checksums(root, monkeypatch)
    return root, table10, table100


def accept_checksums(root, monkeypatch):
    specs = {name: dataclasses.replace(spec, sha256=data.file_digest(root / "cifar-n" / spec.file))
             for name, spec in datasets.cifar_n.CIFARN.items()}
    monkeypatch.setattr(datasets.cifar_n, "CIFARN", specs)


def test_fake_cifarn_has_the_published_layout(cifarn_root):
    root, _, _ = cifarn_root
    with zipfile.ZipFile(root / "cifar-n" / "CIFAR-10_human.pt") as zf:
        assert "CIFAR-10_human/data.pkl" in zf.namelist()
    with zipfile.ZipFile(root / "cifar-n" / "CIFAR-100_human.pt") as zf:
        assert "CIFAR-100_human/data.pkl" in zf.namelist()


@pytest.mark.parametrize("label, key", list(datasets.cifar_n.CIFARN["cifar10n"].label_keys.items()))
def test_cifar10n_labels_and_realised_noise_rate(cifarn_root, label, key):
    root, table, _ = cifarn_root
    d = datasets.cifar_n.load_cifar_n("cifar10n", root, label)
    assert np.array_equal(d.labels, table[key]) and np.array_equal(d.clean_labels, table["clean_label"])
    assert np.array_equal(d.is_noisy, table[key] != table["clean_label"])
    assert d.info["realised_noise_rate"] == CIFAR10N_FLIPS[key] / 400 == d.noise_rate()
    assert d.info["realised_noise_rates"] == {lab: CIFAR10N_FLIPS[k] / 400
                                              for lab, k in datasets.cifar_n.CIFARN["cifar10n"].label_keys.items()}
    assert d.info["matches_published"] == (key == "aggre_label")
    assert d.mean == data.CIFAR["cifar10"].mean and d.class_names[0] == "airplane"


def test_cifar100n_and_plain_pickle_files(cifarn_root):
    root, _, table100 = cifarn_root
    d = datasets.cifar_n.load_cifar_n("cifar100n", root, "noisy")
    assert d.info["realised_noise_rate"] == 241 / 600 and d.num_classes == 100
    # the same dict as a plain pickle (no torch zip around it) reads the same
    with open(root / "cifar-n" / "CIFAR-100_human.pt", "wb") as f:
        pickle.dump(table100, f, protocol=2)
    d2 = datasets.cifar_n.read_cifarn_labels(root / "cifar-n" / "CIFAR-100_human.pt")
    assert np.array_equal(d2["noisy_label"], table100["noisy_label"])
    assert d2["clean_coarse_label"] == table100["clean_coarse_label"]


class MakesADirectory:
    """A pickled object that runs code when unpickled (os.mkdir) if the reader lets it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


@pytest.mark.parametrize("payload", ["code", "tensor", "list_of_objects"])
def test_cifarn_file_with_non_array_objects_is_refused(cifarn_root, monkeypatch, tmp_path, payload):
    root, table, _ = cifarn_root
    marker = tmp_path / "pwned"
    bad = {"code": MakesADirectory(marker), "tensor": torch.zeros(400, dtype=torch.long),
           "list_of_objects": [MakesADirectory(marker)]}[payload]
    torch.save({**table, "worse_label": bad}, root / "cifar-n" / "CIFAR-10_human.pt")
    accept_checksums(root, monkeypatch)
    with pytest.raises(DataError, match="not a plain-array pickle"):
        datasets.cifar_n.load_cifar_n("cifar10n", root, "worst")
    assert not marker.exists()


def test_cifarn_checksum_and_missing_file(cifarn_root, monkeypatch):
    root, _, _ = cifarn_root
    monkeypatch.undo()                                            # the real checksums again
    with pytest.raises(DataError, match=r"CIFAR-10_human\.pt fails its SHA-256 check"):
        datasets.cifar_n.load_cifar_n("cifar10n", root, "aggre")
    (root / "cifar-n" / "CIFAR-10_human.pt").unlink()
    url = "https://raw.githubusercontent.com/UCSC-REAL/cifar-10-100n/main/data/CIFAR-10_human.pt"
    with pytest.raises(DataError, match=re.escape(url)):    # the network is off in tests
        datasets.cifar_n.load_cifar_n("cifar10n", root, "aggre")
    assert sorted(p.name for p in (root / "cifar-n").iterdir()) == ["CIFAR-100_human.pt"]


def test_cifarn_in_another_image_order_is_refused(cifarn_root, monkeypatch):
    root, table, _ = cifarn_root
    torch.save({k: v[::-1].copy() for k, v in table.items()}, root / "cifar-n" / "CIFAR-10_human.pt")
    accept_checksums(root, monkeypatch)
    with pytest.raises(DataError, match="different order"):
        datasets.cifar_n.load_cifar_n("cifar10n", root, "aggre")


def test_train_real_cifar10n_reports_rate_and_all_metrics(cifarn_root, tmp_path, capsys):
    root, _, _ = cifarn_root
    summary = run_cli(root, tmp_path / "out", "--dataset_name", "cifar10n", "--noise_label", "worst",
                      "--train_subset", "64", "--test_subset", "50", *VARIANTS["SLN-MO-LC"])
    out = capsys.readouterr().out
    assert "realised noise rate 40.00% on all 400 training images; published 40.2% (DIFFERENT" in out
    assert "no clean labels" not in out and summary["variant"] == "SLN-MO-LC"
    run_dir = only_run(tmp_path / "out")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["noise"]["realised_noise_rate"] == 0.4 and config["noise"]["noise_label"] == "worst"
    assert config["n_train"] == 64 and config["n_test"] == 50
    assert len(json.loads((run_dir / "noise.json").read_text())["train_indices"]) == 64
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    for key in ("train/loss_clean", "train/loss_noisy", "test/acc_ema"):
        assert all(r[key] != "" for r in rows), key
    assert 0.0 <= float(rows[1]["lc/corrected_precision"]) <= 1.0


BASELINES = [name for name, m in methods.METHODS.items() if not m.by_flags]


@pytest.mark.slow
def test_every_baseline_trains_from_train_real_on_cifar10n(cifarn_root, tmp_path):
    """CIFAR-N has clean labels: every baseline trains, Forward-T with the true T, Co-teaching with the noise rate."""
    root, _, _ = cifarn_root
    for name in BASELINES:
        out = tmp_path / name
        summary = run_cli(root, out, "--dataset_name", "cifar10n", "--noise_label", "worst", "--train_subset", "64",
                          "--test_subset", "50", "--n_epochs", "1", *variant_flags("0.5", [name])[name])
        assert summary["variant"] == name
        config = yaml.safe_load((only_run(out) / "config.yaml").read_text())
        assert config["method"] == name and config["dataset_name"] == "cifar10n"


def test_baselines_that_need_what_animal10n_lacks_say_so(animal_root, tmp_path, capsys):
    """Animal-10N has no clean labels: Forward-T (the true T) is refused, Co-teaching asks for its forget rate, and
    trains once given it. Nothing is written for a refused run."""
    for name, message in (("Forward-T", "--method Forward-T needs the clean labels of the training set"),
                          ("Co-teaching", "Co-teaching needs --forget_rate")):
        assert_refused(capsys, lambda: run_cli(animal_root, tmp_path / name, "--dataset_name", "animal-10n",
                                               *variant_flags("0.5", [name])[name]), message, tmp_path / name / "runs")
    summary = run_cli(animal_root, tmp_path / "given", "--dataset_name", "animal-10n", "--n_epochs", "1",
                      *variant_flags("0.5", ["Co-teaching"])["Co-teaching"], "--forget_rate", "0.1")
    assert summary["variant"] == "Co-teaching"
