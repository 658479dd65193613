"""Smoke runs of train_cifar.py on tiny fake CIFAR, checking everything a run leaves behind."""
import csv
import json
import re

import pytest
import torch
import yaml

import runs
import train_cifar
from conftest import variant_flags

VARIANTS = variant_flags("1.0")


def run_cli(fake_root, out_dir, *flags):
    argv = ["--batch_size", "64", "--n_epochs", "2", "--lr", "0.01", "--seed", "123", "--model", "wrn-16-1",
            "--data_dir", str(fake_root), "--out_dir", str(out_dir), "--device", "cpu", *flags]
    return train_cifar.main(argv)


def only_run(out_dir):
    (run_dir,) = list((out_dir / "runs").iterdir())
    return run_dir.name, run_dir


PAPER_SETTINGS = [(d, m) for d in ("cifar10", "cifar100") for m in ("sym", "asym", "dependent")]


# every model on one noise file, and every paper noise file (and open-set noise) with the model that uses every part
# (SLN noise, the EMA model, label correction): the data path and the model's path are independent, so the full
# product (25 runs, a minute more) would test nothing these miss
@pytest.mark.parametrize("dataset, mode, name", [("cifar10", "sym", v) for v in VARIANTS if v != "SLN-MO-LC"]
                         + [(d, m, "SLN-MO-LC") for d, m in PAPER_SETTINGS] + [("cifar10", "openset", "SLN-MO-LC")])
@pytest.mark.slow
def test_every_model_and_noise_mode(fake_root, paper_sums, tmp_path, dataset, mode, name):
    summary = run_cli(fake_root, tmp_path, "--dataset_name", dataset, "--noise_mode", mode, "--p", "0.4",
                      *VARIANTS[name])
    exp_id, run_dir = only_run(tmp_path)
    assert re.fullmatch(r"exp_[0-9A-Za-z_\-]+", exp_id)           # safe to type: no spaces or colons
    assert summary["variant"] == name

    config = yaml.safe_load((tmp_path / "configs" / f"{exp_id}.yaml").read_text())
    assert config["variant"] == name and config["dataset_name"] == dataset and config["noise_mode"] == mode
    assert 0.3 < config["noise"]["noise_rate"] < 0.5
    assert {"git_commit", "git_dirty"} <= set(config["code"]) and config["versions"]["torch"]

    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("train/loss", "train/loss_clean", "train/loss_noisy", "train/acc", "test/acc", "test/acc_ema"):
        assert all(r[key] != "" for r in rows), key
    reported = "test/acc_ema" if name.startswith("SLN-MO") else "test/acc"
    assert summary["last_test_acc"] == pytest.approx(float(rows[-1][reported]))
    if name == "SLN-MO-LC":
        assert rows[0]["lc/changed_fraction"] == "" and rows[1]["lc/changed_fraction"] != ""
        assert float(rows[1]["sigma"]) == 0.0                      # correction switches SLN off
        if mode != "openset":
            assert 0.0 <= float(rows[1]["lc/corrected_precision"]) <= 1.0

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["targets"].shape[0] == config["n_train"]
    assert {"model", "ema", "optimizer", "generator", "torch_rng"} <= set(ckpt)
    for f in ("model_final.pt", "ema_final.pt", "config.yaml", "noise.json", "summary.json"):
        assert (run_dir / f).is_file(), f
    assert list(run_dir.glob("*/events.out.tfevents.*")) == list(runs.tensorboard_dir(run_dir).glob("events.out.tfevents.*"))
    noise = json.loads((run_dir / "noise.json").read_text())
    if mode == "openset":
        assert len(noise["openset_replaced"]) == 160


@pytest.mark.slow
def test_tensorboard_scalars(fake_root, paper_sums, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_cli(fake_root, tmp_path, "--noise_mode", "sym", "--p", "0.4", *VARIANTS["SLN-MO-LC"])
    _, run_dir = only_run(tmp_path)
    acc = EventAccumulator(str(runs.tensorboard_dir(run_dir)))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_clean", "train/loss_noisy", "train/acc", "test/loss", "test/acc",
            "test/loss_ema", "test/acc_ema", "lc/changed_fraction", "lc/corrected_precision"} <= tags


def test_subsets_are_stratified_and_recorded(fake_root, paper_sums, tmp_path):
    run_cli(fake_root, tmp_path, "--noise_mode", "sym", "--p", "0.4", "--train_subset", "100", "--test_subset", "50",
            *VARIANTS["CE"])
    exp_id, run_dir = only_run(tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["n_train"] == 100 and config["n_test"] == 50
    assert len(json.loads((run_dir / "noise.json").read_text())["train_indices"]) == 100


@pytest.mark.parametrize("flags, message", [
    (["--sigma", "0", "--mo"], "not one of the paper's models"),
    (["--sigma", "1", "--lc_n_epoch", "1"], "not one of the paper's models"),
    (["--sigma", "1", "--mo", "--lc_n_epoch", "2"], r"lc_n_epoch in 1\.\.1"),
    (["--n_epochs", "1", "--sigma", "1", "--mo", "--lc_n_epoch", "5"], "needs --n_epochs 2 or more"),
    (["--sigma", "-1"], "--sigma must be >= 0"),
    (["--p", "1.0"], r"p=1.0 is outside \[0, 1\); pass e.g. --p 0.4"),
    (["--noise_mode", "openset", "--dataset_name", "cifar100"], "CIFAR-10 only"),
    (["--make_new_custom_noise"], "needs --custom_noise"),
    (["--batch_size", "0"], "--batch_size must be positive"),
    (["--eval_every", "0"], "--eval_every must be positive"),
    (["--noise_mode", "pairflip"], "invalid choice"),
    (["--model", "resnet-9000"], "invalid choice"),
    (["--p", "0.3"], "--custom_noise"),
    # a method's own flag with another method, or out of its range (tests/test_methods.py has every check)
    (["--sigma", "0", "--gce_q", "0.5"], "--gce_q is a flag of GCE, not of CE"),
    (["--method", "GCE", "--gce_q", "0"], r"--gce_q \(GCE\) must be in \(0, 1\], got 0"),
    (["--method", "Co-teaching", "--forget_rate", "-0.1"], r"--forget_rate \(Co-teaching\) must be in \[0, 1\)"),
    (["--method", "NoSuchLoss"], "unknown method 'NoSuchLoss'"),
    # the optimiser's and the seed's ranges, and nan / inf, which pass every range check (a traceback or a run
    # folder that dies at step 1 before these checks)
    (["--momentum", "-1"], r"--momentum must be in \[0, 1\), got -1"),
    (["--weight_decay", "-0.1"], "--weight_decay must be >= 0"),
    (["--seed", "-1"], r"--seed must be in 0\.\.4294967295"),
    (["--sigma", "nan"], "--sigma must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--n_epochs", "1", "--lr_milestones", "1"], r"epochs below n_epochs \(1, too few: use 2 or more\), got 1"),
    (["--method", "GCE", "--gce_q", "nan"], "--gce_q must be a finite number"),
    # a count no machine can give: a million DataLoader processes forked at the first batch
    (["--workers", str(10**6)], r"--workers 1000000 is more than this machine can run: it has \d+ CPU cores?; "
                                r"give at most \d+"),
])
def test_bad_flags_give_one_line_and_write_nothing(fake_root, paper_sums, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        run_cli(fake_root, tmp_path, *flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "configs").exists()


@pytest.mark.slow
def test_eval_every_leaves_unevaluated_epochs_empty(fake_root, paper_sums, tmp_path):
    """--eval_every 2 over 3 epochs: the test set is evaluated at epochs 2 and 3 (the last); metrics.csv leaves
    epoch 1's test cells empty, TensorBoard has no test point there, and the summary's best is over 2 and 3."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    summary = run_cli(fake_root, tmp_path, "--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4",
                      "--n_epochs", "3", "--eval_every", "2", *VARIANTS["SLN-MO"])
    _, run_dir = only_run(tmp_path)
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    tested = [int(r["epoch"]) for r in rows if r["test/acc"] != ""]
    assert tested == [2, 3]
    assert all(r[k] == "" for r in rows[:1] for k in ("test/acc", "test/loss", "test/acc_ema", "test/acc_reported"))
    assert all(r["train/loss"] != "" for r in rows)                 # training metrics every epoch
    acc = {int(r["epoch"]): float(r["test/acc_reported"]) for r in rows if r["test/acc_reported"]}
    assert summary["best_epoch"] == max(acc, key=acc.get) and summary["last_test_acc"] == acc[3]
    events = EventAccumulator(str(runs.tensorboard_dir(run_dir)))
    events.Reload()
    assert [e.step for e in events.Scalars("test/acc_ema")] == [2, 3]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


def test_run_records_which_copy_of_the_data_it_trained_on(fake_root, paper_sums, tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    import numpy as np

    import data
    run_cli(fake_root, tmp_path, "--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4",
            "--train_subset", "200", *VARIANTS["CE"])
    _, run_dir = only_run(tmp_path)
    prov = yaml.safe_load((run_dir / "config.yaml").read_text())["data_provenance"]
    loaded = data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, seed=123).subset(200, None, 123)
    sha = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()  # noqa: E731
    assert prov["train_images_sha256"] == sha(loaded.images)
    assert prov["train_labels_sha256"] == sha(loaded.labels.astype("<i8"))     # the noisy labels it trained on
    assert prov["test_labels_sha256"] == sha(loaded.test_labels.astype("<i8"))
    assert prov["official_files"] is False                                  # the fake files are not the archive's
    # with the official md5 list naming exactly these files, they count as the official archive; one byte off, not
    folder = fake_root / "cifar-10-batches-py"
    listed = {f.name: data.file_digest(f, "md5") for f in sorted(folder.glob("data_batch_*"))}
    listed["test_batch"] = data.file_digest(folder / "test_batch", "md5")
    official = lambda sums: dataclasses.replace(data.CIFAR["cifar10"], file_md5=sums)  # noqa: E731
    monkeypatch.setitem(data.CIFAR, "cifar10", official(listed))
    assert data.cifar_files_official("cifar10", fake_root)
    monkeypatch.setitem(data.CIFAR, "cifar10", official({**listed, "test_batch": "0" * 32}))
    assert not data.cifar_files_official("cifar10", fake_root)


def test_a_method_typed_in_any_case_is_recorded_as_declared(fake_root, paper_sums, tmp_path):
    """--method gce trains GCE and records "GCE", and every other name follows the same rule (--noise_mode Sym is
    sym): --filter, tables and --resume compare the declared names."""
    run_cli(fake_root, tmp_path, "--dataset_name", "CIFAR10", "--noise_mode", "Sym", "--p", "0.4", "--n_epochs", "1",
            "--method", "gce")
    _, run_dir = only_run(tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["method"], config["variant"], config["dataset_name"], config["noise_mode"]) == \
        ("GCE", "GCE", "cifar10", "sym")


def test_every_script_takes_names_in_any_case():
    import plot
    import train_real
    import tune
    import viz
    assert viz.build_parser().parse_args(["CIFAR10", "--noise_mode", "ASYM"]).dataset == "cifar10"
    assert plot.build_parser().parse_args(["--plot_type", "Curves", "--network", "EMA"]).plot_type == ["curves"]
    real = train_real.build_parser().parse_args(["--dataset_name", "CIFAR10N", "--noise_label", "Worst"])
    assert (real.dataset_name, real.noise_label) == ("cifar10n", "worst")
    assert tune.build_parser().parse_args(["--model", "WRN-16-1"]).model == "wrn-16-1"
    with pytest.raises(SystemExit):
        train_cifar.build_parser().parse_args(["--noise_mode", "symmetric"])    # not a name in any case
