"""tune.py: real Ray Tune sweeps on CPU over tiny fake CIFAR, their tables checked against the runs' files."""
import contextlib
import csv
import ipaddress
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

import cluster
import data
import experiments
import methods
import runs
import sweeps
import tune
from errors import DataError
from test_datasets_real import cifarn_root  # noqa: F401  (a fixture: fake CIFAR-N files)

pytestmark = pytest.mark.slow     # real Ray sweeps and training: not in make test-fast


@pytest.fixture(scope="module")
def ray_session(fake_root):
    """One small local Ray for the whole module (start-up is slow), whose workers accept the fake
    noise files' checksums as `paper_sums` does in this process, and the fake CIFAR-N files as cifarn_root does."""
    sums = {(name, mode, 0.4): data.file_digest(data.noise_dir(fake_root, name) / f"{mode}0.4.csv")
            for name in ("cifar10", "cifar100") for mode in ("sym", "asym", "dependent")}

    def accept_fake_noise_files():
        import data as worker_data
        import datasets.cifar_n as worker_cifar_n
        worker_data.PAPER_NOISE_SHA256.update(sums)
        # the fake CIFAR-N files of cifarn_root (made per test, after this Ray started) are taken as they are
        worker_cifar_n.cifarn_label_file = lambda root, name, download=True: \
            Path(root) / "cifar-n" / worker_cifar_n.CIFARN[name].file

    # address="local": a Ray of its own, never a cluster that runs (or was left behind) on this machine
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING,
             runtime_env={**cluster.worker_env(), "worker_process_setup_hook": accept_fake_noise_files})
    yield
    ray.shutdown()


def quick_flags(fake_root, out_dir):
    return ["--batch_size", "64", "--n_epochs", "2", "--lr", "0.01", "--model", "wrn-16-1", "--train_subset", "200",
            "--test_subset", "50", "--data_dir", str(fake_root), "--out_dir", str(out_dir), "--device", "cpu"]


def search_flags(fake_root, out_dir, *extra):
    # the seed command of the README, made small
    return ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--lc_n_epoch", "-1", "--val_size", "0.1",
            "--seed", "123", "--sigmas", "1.0", *quick_flags(fake_root, out_dir), *extra]   # and the reference, 0


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(run_dir, name):
    return [float(r[name]) for r in read_csv(run_dir / "metrics.csv")]


def run_config(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


class Touch:
    """Unpickled, creates the file `path`: what a crafted pickle could do instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def plant_pickles(folder: Path, marker: Path) -> list[Path]:
    """Replace every .pkl file under `folder`, and tune/tuner.pkl, with a pickle that creates `marker` when loaded."""
    paths = {*folder.rglob("*.pkl"), folder / "tune" / "tuner.pkl"}
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(Touch(marker)))
    return sorted(paths)


# ----------------------------------------------------------------------------------------------------

def test_split_validation_is_stratified_seeded_and_noisy(fake_root, paper_sums):
    full = data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, seed=1).subset(200, None, 1)
    train, (vx, vy) = full.split_validation(0.1, seed=5)
    info = train.info
    val_idx, train_idx = np.array(info["val_indices"]), np.array(info["train_indices"])
    assert len(vy) == 20 and len(train.labels) == 180
    assert not set(val_idx) & set(train_idx)
    assert set(val_idx) | set(train_idx) == set(full.info["train_indices"])
    # the validation labels are the noisy ones, and every noisy class keeps its share
    pos = {k: i for i, k in enumerate(full.info["train_indices"])}
    assert np.array_equal(vy, full.labels[[pos[k] for k in val_idx]])
    assert np.array_equal(vx, full.images[[pos[k] for k in val_idx]])
    assert np.all(np.abs(np.bincount(vy, minlength=10) - 0.1 * np.bincount(full.labels, minlength=10)) < 1)
    assert info["val_noise_rate"] == pytest.approx(np.mean(full.is_noisy[[pos[k] for k in val_idx]]))
    again = full.split_validation(0.1, seed=5)[0].info["val_indices"]
    other = full.split_validation(0.1, seed=6)[0].info["val_indices"]
    assert again == info["val_indices"] and other != info["val_indices"]
    with pytest.raises(DataError, match="--val_size"):
        full.split_validation(0.001, seed=5)


def test_sigma_search_interrupted_resumed_and_its_table(ray_session, fake_root, paper_sums, tmp_path, capsys):
    # 1.5 CPUs per trial on a 2-CPU Ray: trials run one after the other, each with one thread. Ctrl+C as
    # soon as the second has started, i.e. after the first finished.
    stop = threading.Event()

    def interrupt_when_second_trial_starts():
        while not stop.is_set():
            if len(list(tmp_path.glob("hp/hp_*/runs/*"))) >= 2:
                signal.raise_signal(signal.SIGINT)
                return
            time.sleep(0.05)

    previous = signal.signal(signal.SIGINT, lambda *a: None)   # a late signal must not stop pytest
    watcher = threading.Thread(target=interrupt_when_second_trial_starts)
    watcher.start()
    try:
        with pytest.raises(SystemExit) as exc:
            tune.main(search_flags(fake_root, tmp_path, "--cpus_per_trial", "1.5"))
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    assert exc.value.code == 1
    (hp_dir,) = (tmp_path / "hp").iterdir()
    assert re.fullmatch(r"hp_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", hp_dir.name)
    assert f"--resume {hp_dir}" in capsys.readouterr().err
    assert not (hp_dir / "sigma_search.csv").exists()
    (first,) = {p.parent for p in hp_dir.glob("runs/*/summary.json")}
    first_metrics = (first / "metrics.csv").read_text()
    first_sigma = run_config(first)["sigma"]
    (cut,) = [d for d in (hp_dir / "runs").iterdir() if d != first]
    checkpointed = (cut / "checkpoint.pt").is_file()
    cut_rows = (cut / "metrics.csv").read_text().splitlines() if checkpointed else []

    # nothing a sweep folder holds is unpickled: every pickle in it (Tune's tuner.pkl, its trials' params.pkl),
    # and one where Tuner.restore looks first, would create a file when loaded
    marker = tmp_path / "unpickled"
    planted = plant_pickles(hp_dir, marker)
    assert hp_dir / "tune" / "tuner.pkl" in planted
    assert tune.main(["--resume", hp_dir.name, "--out_dir", str(tmp_path)]) == hp_dir
    assert not marker.exists()
    table = read_csv(hp_dir / "sigma_search.csv")
    assert [float(r["sigma"]) for r in table] == [0.0, 1.0]
    run_of = {float(r["sigma"]): hp_dir / "runs" / r["exp_id"] for r in table}
    # the finished trial was not run again; the interrupted one continued from its checkpoint in its own folder,
    # or, cut off before its first checkpoint, ran again from the start in a new one
    assert run_of[first_sigma] == first and (first / "metrics.csv").read_text() == first_metrics
    sigmas = [run_config(d)["sigma"] for d in (hp_dir / "runs").iterdir()]
    other = ({0.0, 1.0} - {first_sigma}).pop()
    if checkpointed:
        assert run_of[other] == cut and sorted(sigmas) == [0.0, 1.0]
        assert (cut / "metrics.csv").read_text().splitlines()[:len(cut_rows)] == cut_rows
    else:
        assert run_of[other] != cut and sorted(sigmas) == sorted([0.0, 1.0, other])

    for r in table:
        run_dir = run_of[float(r["sigma"])]
        config = run_config(run_dir)
        variant = "CE" if float(r["sigma"]) == 0 else "SLN"      # sigma 0: the reference trial, without SLN noise
        assert (config["sigma"], config["variant"], config["mo"], config["lc_n_epoch"]) == (float(r["sigma"]), variant, False, -1)
        assert config["n_train"] == 180 and config["n_val"] == 20 and config["seed"] == 123
        acc = column(run_dir, "val/acc")
        assert len(acc) == 2
        assert float(r["val_acc_last_pct"]) == pytest.approx(100 * acc[-1], abs=1e-3)
        assert float(r["val_acc_best_pct"]) == pytest.approx(100 * max(acc), abs=1e-3)
        assert int(r["best_epoch"]) == int(np.argmax(acc)) + 1
        noise = json.loads((run_dir / "noise.json").read_text())
        assert len(noise["val_indices"]) == 20 and not set(noise["val_indices"]) & set(noise["train_indices"])
    # highest last-epoch validation accuracy wins, the smaller sigma on a tie; sigma 0 is never chosen
    last = {s: column(d, "val/acc")[-1] for s, d in run_of.items()}
    best = max((s for s in last if s > 0), key=lambda s: (last[s], -s))
    assert f"best sigma: {best} " in (hp_dir / "sigma_search.md").read_text()
    assert f"best sigma: {best} " in capsys.readouterr().out
    sweep = yaml.safe_load((hp_dir / "sweep.yaml").read_text())
    assert sweep["kind"] == "sigma_search" and sweep["grid"] == {"sigma": [0.0, 1.0]}
    assert sweep["resources"] == {"cpu": 1.5, "gpu": 0}
    assert sweep["base"]["data_dir"] == str(fake_root) and sweep["base"]["out_dir"] == str(hp_dir)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(runs.tensorboard_dir(first)))
    events.Reload()
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx(column(first, "val/acc"))


PAPER_MODELS = [n for n, m in methods.METHODS.items() if m.by_flags]
GRID = """
dataset_name: cifar10
p: 0.4
variants: [CE, SLN-MO-LC, gce, Co-teaching]
noise_modes: [sym]
seeds: [1, 2]
sigma: {sym: 1.0}
gce_q: 0.5
lc_n_epoch: 250
n_epochs: 300
model: wrn-16-1
"""


def test_experiments_grid_table_is_mean_and_sample_std_over_seeds(ray_session, fake_root, paper_sums, tmp_path):
    config_file = tmp_path / "grid.yaml"
    config_file.write_text(GRID)
    # the command line wins over the file: 2 epochs, correction before epoch 2
    hp_dir = tune.main(["--experiments", str(config_file), *quick_flags(fake_root, tmp_path), "--lc_n_epoch", "1"])
    runs = {}
    for run_dir in (hp_dir / "runs").iterdir():
        c = run_config(run_dir)
        runs[(c["variant"], c["seed"])] = run_dir
        assert c["n_epochs"] == 2 and c["noise_mode"] == "sym" and c["model"] == "wrn-16-1"
        assert (c["sigma"], c["mo"], c["lc_n_epoch"]) == ((1.0, True, 1) if c["variant"] == "SLN-MO-LC" else (0.0, False, -1))
        assert "n_val" not in c                                     # tables train on the whole training set
        # a method's own value in the file is for its trials only; Co-teaching's forget rate is the labels' noise rate
        assert c["gce_q"] == (0.5 if c["variant"] == "GCE" else None)
        assert c["forget_rate"] is None            # not given: each seed's own noise rate, one setting for the table
    assert sorted(runs) == [(v, s) for v in ("CE", "Co-teaching", "GCE", "SLN-MO-LC") for s in (1, 2)]
    for seed in (1, 2):
        rows = read_csv(runs[("Co-teaching", seed)] / "metrics.csv")
        rate = run_config(runs[("Co-teaching", seed)])["noise"]["noise_rate"]   # epoch 2 of the 10-epoch ramp
        assert float(rows[-1]["coteach/forget_rate"]) == pytest.approx(rate * 2 / 9, abs=1e-6)

    table = read_csv(hp_dir / "table.csv")
    # the paper's rows first, then CE-MO (CE's runs, their momentum network), then the baselines
    assert [r["variant"] for r in table] == ["CE", "SLN-MO-LC", "CE-MO", "Co-teaching", "GCE"]
    assert table[4]["gce_q"] == "0.5" and table[0]["gce_q"] == ""
    assert table[2]["exp_ids"] == table[0]["exp_ids"]
    (ce, lc) = table[:2]
    for row, variant in ((ce, "CE"), (lc, "SLN-MO-LC")):
        assert (row["variant"], row["noise"], row["n_seeds"]) == (variant, "sym", "2")
        accs = [column(runs[(variant, seed)], "test/acc_reported") for seed in (1, 2)]
        last = [100 * a[-1] for a in accs]
        best = [100 * max(a) for a in accs]
        assert float(row["last_mean"]) == pytest.approx(np.mean(last), abs=1e-3)
        assert float(row["last_std"]) == pytest.approx(abs(last[0] - last[1]) / np.sqrt(2), abs=1e-3)
        assert float(row["best_mean"]) == pytest.approx(np.mean(best), abs=1e-3)
        assert float(row["best_std"]) == pytest.approx(abs(best[0] - best[1]) / np.sqrt(2), abs=1e-3)
    md = (hp_dir / "table.md").read_text()
    last_lc = [100 * column(runs[("SLN-MO-LC", s)], "test/acc_reported")[-1] for s in (1, 2)]
    assert f"| SLN-MO-LC | {np.mean(last_lc):.2f} ± {np.std(last_lc, ddof=1):.2f} (n=2) |" in md
    assert md.index("| CE |") < md.index("| SLN-MO-LC |") < md.index("best epoch")

    # plot.py --table over the sweep's runs makes the identical table, Markdown and CSV
    import plot
    plot.main(["--table", "--runs_dir", str(hp_dir / "runs"), "--assets_dir", str(tmp_path / "assets")])
    assert (tmp_path / "assets" / "table.md").read_text() == md
    assert (tmp_path / "assets" / "table.csv").read_text() == (hp_dir / "table.csv").read_text()


# ----------------------------------------------------------------------------------------------------

BAD_FILES = [
    ("variants: [CE]\nnoise_modes: [sym]\nseeds: [1]\ncolour: red\n", r"unknown key 'colour'"),
    ("variants: [CE, SLN+MO]\nnoise_modes: [sym]\nseeds: [1]\n", r"variants: unknown 'SLN\+MO'; choose from CE, SLN"),
    ("variants: [CE]\nnoise_modes: [pairflip]\nseeds: [1]\n", r"noise_modes: unknown 'pairflip'"),
    ("variants: [CE]\nnoise_modes: [sym]\nseeds: [1, one]\n", r"seeds must be a non-empty list of distinct integers"),
    ("variants: [SLN]\nnoise_modes: [sym]\nseeds: [1]\nsigma: {sym: -1}\n", r"sigma for sym must be a number > 0"),
    ("variants: [CE]\nnoise_modes: [sym]\nseeds: [1]\nn_epochs: many\n", r"n_epochs: invalid int value: 'many'"),
    ("variants: [CE]\nnoise_modes: [sym]\nseeds: [1]\nmodel: resnet-9000\n", r"model: invalid choice: 'resnet-9000'"),
    ("variants: [CE]\nnoise_modes: [sym]\nseeds: [1]\ncustom_noise: yes please\n", r"custom_noise must be true or false"),
    ("variants: [CE]\nnoise_modes: [openset]\nseeds: [1]\ndataset_name: cifar100\n", r"CIFAR-10 only"),
    ("variants: [SLN-MO-LC]\nnoise_modes: [sym]\nseeds: [1]\n", r"SLN-MO-LC needs lc_n_epoch in 1\.\.299"),
    ("variants: [CE\nnoise_modes: [sym]\n", r"is not valid YAML at line \d"),
    ("- CE\n- SLN\n", r"must be a mapping"),
    # a key given twice: PyYAML would keep the last value without a word
    ("variants: [CE]\nnoise_modes: [sym]\nlr: 0.02\nseeds: [1]\nlr: 0.2\n",
     r"\.yaml: 'lr' is given twice \(lines 3 and 5\); keep one"),
    ("variants: [CE]\nnoise_modes: [sym]\nseeds: [1]\nsigma: {sym: 0.5, sym: 1.0}\n", r"'sym' is given twice"),
    # a value out of range: the file and the experiment it came from are named
    ("variants: [CE]\nnoise_modes: [sym]\nseeds: [1]\nbatch_size: 0\n",
     r"\.yaml, experiment noise_mode=sym variant=CE seed=1: --batch_size must be positive"),
    # a method's own flag that no listed method has: every trial would record it as null
    ("variants: [CE, SLN]\nnoise_modes: [sym]\nseeds: [1]\ngce_q: 0.5\n", r"\.yaml: gce_q is a flag of GCE, which "
     r"variants \(CE, SLN\) does not list, so no trial would use it; add GCE to variants, or drop gce_q$"),
    ("variants: [GCE]\nnoise_modes: [sym]\nseeds: [1]\nnum_gradual: 3\n", r"num_gradual is a flag of Co-teaching "
     r"and Co-teaching-SLN, which variants \(GCE\) does not list"),
    ("variants: [CE]\nnoise_modes: [sym]\nseeds: [1]\np: 1.5\n", r"\.yaml, experiment noise_mode=sym variant=CE "
     r"seed=1: .*p=1\.5 is outside"),
]


@pytest.mark.parametrize("text, message", BAD_FILES)
def test_bad_experiments_file_gives_one_line_and_writes_nothing(fake_root, paper_sums, tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        tune.main(["--experiments", str(path), "--data_dir", str(fake_root), "--out_dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err) and str(path) in err, err
    assert not (tmp_path / "hp").exists()


def test_experiments_file_takes_names_in_any_case(tmp_path):
    """An experiments file follows the command line's rule: every name in any case, recorded as declared."""
    path = tmp_path / "e.yaml"
    path.write_text("variants: [ce, Sln-Mo]\nnoise_modes: [Sym, ASYM]\nseeds: [1]\nsigma: {SYM: 1.0, asym: 0.5}\n")
    grid, _ = experiments.read_experiments(path)
    assert (grid["variants"], grid["noise_modes"], grid["sigma"]) == (["CE", "SLN-MO"], ["sym", "asym"],
                                                                       {"sym": 1.0, "asym": 0.5})


def test_dry_run_prints_every_trial_and_the_cost_and_starts_nothing(fake_root, paper_sums, tmp_path, capsys,
                                                                    monkeypatch):
    path = tmp_path / "e.yaml"
    path.write_text("variants: [CE, SLN-MO-LC, GCE]\nnoise_modes: [sym, asym]\nseeds: [1, 2]\nsigma: {sym: 1.0, asym: 0.5}\n"
                    "n_epochs: 10\nlc_n_epoch: 5\nmodel: wrn-16-1\ntrain_subset: 200\n")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"device": "cpu", "threads": 1, "train_img_s": {"wrn-16-1": 250.0}}))
    monkeypatch.setattr(cluster, "start_ray", lambda address: pytest.fail("a dry run started Ray"))
    assert tune.main(["--experiments", str(path), "--data_dir", str(fake_root), "--out_dir", str(tmp_path / "out"),
                      "--dry_run", "--bench", str(bench)]) is None
    out = capsys.readouterr().out.splitlines()
    trials = [line.split() for line in out if re.match(r"\s+\d+\s", line)]
    assert [t[0] for t in trials] == [str(n) for n in range(1, 13)]
    assert [(t[1], t[-2]) for t in trials[:6]] == [("CE", "1"), ("CE", "2"), ("SLN-MO-LC", "1"), ("SLN-MO-LC", "2"),
                                                   ("GCE", "1"), ("GCE", "2")]
    assert "--noise_mode asym --sigma 0.5 --mo --lc_n_epoch 5" in next(line for line in out if " SLN-MO-LC " in line
                                                                          and "asym" in line)
    assert all(t[-1] == "200" for t in trials)
    # 12 trials x 10 epochs x 200 images at 250 images/s: 96 s one trial at a time
    assert any(line.startswith("cost: 12 trials x 10 epochs x 200 images = 24,000 training images") for line in out), out
    assert any(line.startswith("time: at 250 training images/s (bench.py on cpu, 1 thread") and "about 1m36s" in line
               for line in out), out
    assert not (tmp_path / "out").exists()          # no sweep folder, no run


PAPER_CIFAR10 = str(tune.runs.CODE_DIR / "configs" / "paper_cifar10.yaml")


@pytest.mark.parametrize("flags, message", [
    (["--sigma", "1.0"], r"give its grid with --sigmas"),
    (["--mo"], r"--mo: the sigma search trains SLN.*use --method SLN-MO$"),
    (["--lc_n_epoch", "250"], r"trains without label correction; use --lc_n_epoch -1$"),
    (["--method", "GCE"], r"--method GCE: the sigma search varies the sigma of a method that adds SLN noise .*"
                          r"choose from SLN, SLN-MO, Co-teaching-SLN"),
    (["--method", "sln-mo-lc"], r"--method SLN-MO-LC: the sigma search varies"),
    (["--method", "nope"], r"--method: unknown method 'nope'"),
    (["--sigmas", "0"], r"--sigmas must be distinct values >= 0 with at least one > 0"),
    (["--sigmas", "-0.5", "0.5"], r"--sigmas must be distinct values >= 0"),
    (["--sigmas", "0.5", "0.5"], r"--sigmas must be distinct values >= 0"),
    (["--sigmas", "inf", "0.5"], r"--sigmas must be distinct values >= 0 .*got \[inf, 0\.5\]"),
    (["--val_size", "1.5"], r"--val_size must be a share in \(0, 1\)"),
    (["--val_size", "0.001", "DATA"], r"--val_size that keeps at least one image"),
    (["--cpus_per_trial", "0"], r"--cpus_per_trial must be > 0"),
    (["--resume", "hp_nowhere"], r"--resume hp_nowhere: no sweep there"),
    (["--resume", "hp_nowhere", "--n_epochs", "5", "--address", "auto"], r"saved settings; drop --n_epochs$"),
    (["--experiments", "nowhere.yaml"], r"cannot read --experiments nowhere.yaml"),
    (["--experiments", PAPER_CIFAR10, "--seed", "3"], r"--seed is set per run by"),
])
def test_bad_flags_give_one_line_and_write_nothing(fake_root, paper_sums, tmp_path, capsys, flags, message):
    # "DATA": the tiny fake CIFAR, for the errors that need data to be found
    data_flags = ["--data_dir", str(fake_root), "--train_subset", "200"]
    argv = ["--out_dir", str(tmp_path)] + [f for flag in flags for f in (data_flags if flag == "DATA" else [flag])]
    with pytest.raises(SystemExit) as exc:
        tune.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "hp").exists()


def test_more_resources_than_the_cluster_has(ray_session, fake_root, paper_sums, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tune.engine, "cpu_bf16_units", lambda: False)     # as on a CPU without bf16 instructions
    for flag, value, message in (
            ("--cpus_per_trial", "3", r"--cpus_per_trial 3 but the Ray cluster has 2 CPUs"),
            ("--gpus_per_trial", "3", r"--gpus_per_trial 3 but the Ray cluster has 0 GPUs"),
            ("--gpus_per_trial", "0.25", r"--gpus_per_trial 0.25 shares a GPU between trials, but the Ray cluster "
                                         r"has no GPU; use --gpus_per_trial 0"),
            ("--gpus_per_trial", "1.5", r"fractions below 1 \(e\.g\. 0\.25: four trials on one GPU\)"),
            # what every trial would refuse on a CPU, refused once before the sweep starts
            ("--device", "cuda", r"--device cuda needs a GPU, but the trials get none \(--gpus_per_trial 0, or no GPU"),
            ("--precision", "bf16", r"--precision bf16 \(--amp\) needs a GPU or a CPU with bf16 instructions, but the "
                                    r"trials get none")):
        with pytest.raises(SystemExit) as exc:
            tune.main(search_flags(fake_root, tmp_path, flag, value))
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "hp").exists()


@pytest.mark.parametrize("name", ["paper_cifar10.yaml", "paper_cifar100.yaml"])
def test_shipped_paper_configs(name):
    grid, argv = experiments.read_experiments(tune.runs.CODE_DIR / "configs" / name)
    dataset = "cifar10" if name == "paper_cifar10.yaml" else "cifar100"
    assert grid["variants"] == PAPER_MODELS and grid["seeds"] == [1, 2, 3, 4, 5]
    assert grid["sigma"] == {m: tune.cli.default_sigma(dataset, m) for m in grid["noise_modes"]}
    assert grid["noise_modes"] == (tune.cli.NOISE_MODES if dataset == "cifar10" else ["sym", "asym", "dependent"])
    args = tune.build_parser().parse_args(argv)
    assert (args.dataset_name, args.p, args.n_epochs, args.lc_n_epoch, args.model) == (dataset, 0.4, 300, 250, "wrn-28-2")


# ----------------------------------------------------------------------------------------------------
# Sweeps that hold up (exact resume, local Ray, tables over sweep folders)

def test_sigma_table_shows_a_ce_reference_but_never_chooses_it(tmp_path):
    hp_dir = tmp_path / "hp_x"
    finished = {}
    for exp_id, sigma, val in (("a", 0.0, [0.5, 0.9]), ("b", 0.2, [0.4, 0.6]), ("c", 0.5, [0.6, 0.6])):
        (hp_dir / "runs" / exp_id).mkdir(parents=True)
        fields = ["epoch", "val/acc", "test/acc_reported"]
        # test accuracy only at the last epoch (--eval_every): the table reads validation accuracy alone
        rows = [{"epoch": i + 1, "val/acc": v, "test/acc_reported": None if i == 0 else 0.1} for i, v in enumerate(val)]
        tune.runs.write_metrics(hp_dir / "runs" / exp_id / "metrics.csv", fields, rows)
        finished[exp_id] = {"sigma": sigma}
    sweep = {"base": {"dataset_name": "cifar10", "noise_mode": "sym", "p": 0.4, "model": "wrn-16-1", "n_epochs": 2,
                      "seed": 0, "val_size": 0.1}}
    best, text = sweeps.sigma_table(hp_dir, finished, sweep)
    assert best == 0.2          # CE (sigma 0) has the highest accuracy but is only a reference; 0.2 ties 0.5, smaller wins
    assert "| 0.0 (CE) | 90.00 | 90.00 | 2 | a |" in text
    assert [r["sigma"] for r in read_csv(hp_dir / "sigma_search.csv")] == ["0.0", "0.2", "0.5"]
    # ... and the report says that the reference scored higher
    assert "note: sigma 0 (CE, no SLN noise) scored 90.00 %, above the chosen sigma 0.2's 60.00 %" in text
    # where the chosen sigma is ahead, no such line
    tune.runs.write_metrics(hp_dir / "runs" / "a" / "metrics.csv", ["epoch", "val/acc"],
                            [{"epoch": 1, "val/acc": 0.5}, {"epoch": 2, "val/acc": 0.55}])
    assert sweeps.sigma_table(hp_dir, finished, sweep)[0] == 0.2 and "note: sigma 0" not in sweeps.sigma_table(hp_dir, finished, sweep)[1]


def test_a_method_with_sln_has_its_own_sigma_search(ray_session, fake_root, paper_sums, tmp_path):
    """--method Co-teaching-SLN: its trials train Co-teaching-SLN at each sigma, and sigma 0 is plain Co-teaching
    (the method without SLN noise), shown for reference and never chosen."""
    assert methods.without_sln(methods.get("Co-teaching-SLN")).name == "Co-teaching"
    assert methods.without_sln(methods.get("SLN")).name == "CE"
    assert methods.without_sln(methods.get("SLN-MO")).name == "CE-MO"
    flags = search_flags(fake_root, tmp_path, "--method", "co-teaching-sln")
    flags[flags.index("--sigmas") + 1] = "0.5"                  # 0 is added
    flags[flags.index("--n_epochs") + 1] = "1"
    hp_dir = tune.main(flags)
    configs = {c["sigma"]: c for c in (run_config(d) for d in (hp_dir / "runs").iterdir())}
    assert {s: c["method"] for s, c in configs.items()} == {0.0: "Co-teaching", 0.5: "Co-teaching-SLN"}
    for c in configs.values():      # both trained Co-teaching's two networks on the same noisy split
        split = [json.loads((hp_dir / "runs" / x["exp_id"] / "noise.json").read_text())["val_indices"]
                 for x in (c, configs[0.5])]
        assert c["val_size"] == 0.1 and split[0] == split[1]
        assert "coteach/selected_precision" in read_csv(hp_dir / "runs" / c["exp_id"] / "metrics.csv")[0]
    text = (hp_dir / "sigma_search.md").read_text()
    assert text.startswith("Sigma search, Co-teaching-SLN: cifar10 sym p=0.4")
    assert "| 0.0 (Co-teaching) |" in text and "best sigma: 0.5 " in text
    sweep = yaml.safe_load((hp_dir / "sweep.yaml").read_text())
    assert sweep["base"]["method"] == "Co-teaching-SLN" and not sweep["base"]["mo"]


def test_a_sweep_is_driven_by_one_process_at_a_time(tmp_path, capsys):
    """tune.py --resume of a sweep whose driver still runs is refused in one line naming that driver, before
    anything is read or written; once the driver is gone (killed, so no clean exit), the sweep can be taken."""
    hp_dir = tmp_path / "hp" / "hp_2026-01-01_00-00-00"
    (hp_dir / "tune").mkdir(parents=True)
    (hp_dir / "tune" / "tuner.pkl").write_bytes(b"")          # what Tuner.can_restore looks for
    (hp_dir / "sweep.yaml").write_text("kind: sigma_search\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import contextlib, sys, time; from pathlib import Path; import runs; "
         "held = contextlib.ExitStack(); runs.lock_folder(Path(sys.argv[1]), held, 'x'); print('held', flush=True); "
         "time.sleep(120)", str(hp_dir)], cwd=tune.runs.CODE_DIR, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exc:
            tune.main(["--resume", hp_dir.name, "--out_dir", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        assert re.fullmatch(rf"error: sweep {hp_dir.name} is being run by another process \(pid {holder.pid}\); "
                            r"wait for it to end, or stop it first, then resume", err), err
        assert (hp_dir / "sweep.yaml").read_text() == "kind: sigma_search\n"
    finally:
        holder.kill()
        holder.wait()
    with contextlib.ExitStack() as held:
        sweeps.lock_sweep(hp_dir, held)          # the killed driver left no stale lock


@pytest.mark.parametrize("text, message", [
    ("", r"it holds nothing, not a mapping of settings"),
    ("- a\n- b\n", r"it holds list, not a mapping"),
    ("!!python/object/apply:os.system [touch x]\n", r"not plain YAML at line 1 \(could not determine a constructor"),
    ("kind: sigma_search\nbase: {a: 1\n", r"not plain YAML at line \d"),
    ("kind: sigma_search\n", r"base, grid and resources must each be a mapping"),
    ("kind: experiments\nbase: {}\ngrid: {variant: [Nope], noise_mode: [sym], seed: [1]}\n"
     "resources: {cpu: 1, gpu: 0}\n", r"grid: variant must be a non-empty list of variants"),
    ("kind: sigma_search\nbase: {lr: fast}\ngrid: {sigma: [0.5]}\nresources: {cpu: 1, gpu: 0}\n",
     r"base: lr is 'fast', which --lr does not take"),
])
def test_a_damaged_sweep_yaml_is_one_line(tmp_path, capsys, text, message):
    """--resume reads sweep.yaml as plain YAML and checks it before anything runs: an empty, foreign or edited
    file is one line naming it, not a TypeError."""
    hp_dir = tmp_path / "hp" / "hp_2026-01-01_00-00-00"
    hp_dir.mkdir(parents=True)
    (hp_dir / "sweep.yaml").write_text(text)
    with pytest.raises(SystemExit) as exc:
        tune.main(["--resume", hp_dir.name, "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"error: {re.escape(str(hp_dir / 'sweep.yaml'))} is damaged: {message}.*; restore it from "
                        r"a copy, or start the sweep again", err), err
    assert sorted(p.name for p in hp_dir.iterdir()) == [".lock", "sweep.yaml"]


def test_trials_start_in_table_order_one_noise_mode_after_the_other():
    sweep = {"grid": {"variant": ["CE", "SLN"], "noise_mode": ["sym", "asym"], "seed": [1, 2]}}
    order = [(c["noise_mode"], c["variant"], c["seed"]) for c in tune.trial_configs(sweep)]
    assert order == [(m, v, s) for m in ("sym", "asym") for v in ("CE", "SLN") for s in (1, 2)]


def short_tmp_dir() -> Path:
    """A short private folder: Ray's unix socket paths under it must stay below the 107-character limit."""
    return Path(tempfile.mkdtemp(prefix="sln-ray-", dir="/tmp"))


def processes_under(folder: Path) -> list[int]:
    """PIDs of the processes whose command line names `folder`: the Ray processes started with it as temp dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if str(folder).encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def private_data_root(fake_root, tmp_path):
    """The fake CIFAR-10 without noise files: the subprocess sweeps use --custom_noise, which needs no checksum."""
    root = tmp_path / "data"
    shutil.copytree(fake_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    return root


def test_local_sweep_ignores_a_cluster_left_behind(tmp_path):
    """ray start leaves <ray temp>/ray_current_cluster behind when its cluster is killed without ray stop; a plain
    tune.py (no --address) must still start its own Ray. Ray's temp root is a private folder (RAY_TMPDIR)."""
    ray_tmp = short_tmp_dir()
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")   # nothing listens on port 9
    code = ("import ray, cluster; cluster.start_ray(None); "
            "print('nodes', len(ray.nodes()), 'cpus', ray.cluster_resources().get('CPU')); ray.shutdown()")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(tune.runs.CODE_DIR)}
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        kill_pids(processes_under(ray_tmp))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert re.search(r"nodes 1 cpus \d", done.stdout)


def listening_sockets(pids: set[int]) -> list[tuple[str, str, int]]:
    """(process name, IP, port) of every TCP socket that the processes `pids` listen on."""
    import psutil   # ships inside Ray (ray/thirdparty_files), importable once ray is
    found = []
    for pid in sorted(pids):
        try:
            proc = psutil.Process(pid)
            found += [(proc.name(), c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="tcp")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def on_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)      # ::ffff:127.0.0.1: a v6 socket bound to 127.0.0.1
    return (mapped or address).is_loopback


def test_a_local_sweep_listens_on_loopback_only_with_token_auth_on(fake_root, tmp_path):
    """A real local sweep (its own Ray, as tune.py without --address starts it), listed while a trial trains: every
    port that the driver, Ray's GCS, raylet, agents and trial workers listen on is bound to 127.0.0.1, none to all
    interfaces (docs/tune-and-plots.md), and Ray's token authentication is on. Its own HOME keeps Ray's new token
    out of the user's ~/.ray; only the processes of this sweep are stopped, by PID."""
    command, env, ray_tmp = driver_sweep(fake_root, tmp_path, n_epochs=8)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}   # Ray's default for a new local Ray
    env["HOME"] = str(home)
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    started: set[int] = set()
    try:
        deadline = time.time() + 300
        while not list(tmp_path.glob("hp/hp_*/runs/*/config.yaml")):     # a trial trains: its worker is up
            assert driver.poll() is None and time.time() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.1)
        import psutil   # ships inside Ray (ray/thirdparty_files), importable once ray is
        started = {driver.pid, *processes_under(ray_tmp),
                   *(child.pid for child in psutil.Process(driver.pid).children(recursive=True))}
        sockets = listening_sockets(started)
        auth = {}                       # the authentication mode that Ray's GCS and raylet were started with
        for pid in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                if (name := psutil.Process(pid).name()) in ("gcs_server", "raylet"):
                    auth[name] = psutil.Process(pid).environ().get("RAY_AUTH_MODE")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        kill_pids(sorted(started | set(processes_under(ray_tmp))))
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sockets
    assert [s for s in sockets if not on_loopback(s[1])] == [], sockets
    assert auth == {"gcs_server": "token", "raylet": "token"}, auth
    assert (home / ".ray" / "auth_token").read_text().strip()


def driver_sweep(fake_root, tmp_path, n_epochs: int) -> tuple[list[str], dict, Path]:
    """A two-trial sigma search run as its own process on a private Ray temp dir: (command, env, Ray temp dir)."""
    ray_tmp = short_tmp_dir()
    root = private_data_root(fake_root, tmp_path)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "TQDM_DISABLE": "1"}
    flags = ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--custom_noise", "--lc_n_epoch", "-1",
             "--sigmas", "1.0", "--cpus_per_trial", "1.5", "--batch_size", "64", "--n_epochs", str(n_epochs),
             "--lr", "0.01", "--model", "wrn-16-1", "--train_subset", "200", "--test_subset", "50",
             "--data_dir", str(root), "--out_dir", str(tmp_path), "--device", "cpu"]
    return [sys.executable, str(tune.runs.CODE_DIR / "tune.py"), *flags], env, ray_tmp


def resume_driver(script: str, hp_dir: Path, env: dict, ray_tmp: Path) -> subprocess.CompletedProcess:
    """`tune.py --resume hp_dir` as its own process, which must finish the sweep; its Ray processes are stopped."""
    try:
        done = subprocess.run([sys.executable, script, "--resume", str(hp_dir)], env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        kill_pids(processes_under(ray_tmp))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def session_of(pid: int) -> int | None:
    """The session ID of a process, None when it has ended."""
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def wait_for_first_trial(tmp_path, driver) -> None:
    deadline = time.time() + 300
    while not list(tmp_path.glob("hp/hp_*/runs/*/summary.json")):
        assert driver.poll() is None and time.time() < deadline, "the first trial did not finish"
        time.sleep(0.02)


def test_resume_after_sigkill_never_trains_a_finished_trial_again(fake_root, tmp_path):
    """SIGKILL the driver right after the first trial wrote summary.json (Tune's own state still calls it
    running), then --resume: every trial ends with exactly one finished run, the first one untouched."""
    command, env, ray_tmp = driver_sweep(fake_root, tmp_path, n_epochs=2)
    script = command[1]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for_first_trial(tmp_path, driver)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_pids(processes_under(ray_tmp))   # the Ray processes of the killed driver
    (hp_dir,) = (tmp_path / "hp").iterdir()
    (first,) = [p.parent for p in hp_dir.glob("runs/*/summary.json")]
    before = {name: (first / name).read_bytes() for name in ("metrics.csv", "summary.json", "config.yaml")}
    done = resume_driver(script, hp_dir, env, ray_tmp)
    finished = [p.parent for p in hp_dir.glob("runs/*/summary.json")]
    by_sigma = {}
    for run_dir in finished:
        by_sigma.setdefault(run_config(run_dir)["sigma"], []).append(run_dir.name)
    assert sorted(by_sigma) == [0.0, 1.0] and all(len(v) == 1 for v in by_sigma.values()), by_sigma
    assert first in finished and {n: (first / n).read_bytes() for n in before} == before
    table = read_csv(hp_dir / "sigma_search.csv")
    assert sorted(r["exp_id"] for r in table) == sorted(p.name for p in finished)


def test_one_table_pools_sweep_runs_and_loose_runs(ray_session, fake_root, paper_sums, tmp_path, capsys):
    """Bookkeeping keys (tune_trial_id, out_dir, resume, ...) do not split a table: a sweep's CE run with seed 2
    and a train_cifar.py CE run with seed 1 of the same settings share one cell."""
    import plot
    import train_cifar
    config_file = tmp_path / "grid.yaml"
    config_file.write_text("dataset_name: cifar10\np: 0.4\nvariants: [CE]\nnoise_modes: [sym]\nseeds: [2]\n"
                           "model: wrn-16-1\n")
    hp_dir = tune.main(["--experiments", str(config_file), *quick_flags(fake_root, tmp_path / "sweep")])
    out = capsys.readouterr().out
    assert "1 trial, each with 1 CPU and 0 GPUs" in out
    # the runs' own TensorBoard logs are named; Tune's hint at a copy of its own is not printed
    assert f"tensorboard --logdir {hp_dir / 'runs'}" in out and "To visualize your results with TensorBoard" not in out
    loose = quick_flags(fake_root, hp_dir) + ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4",
                                              "--sigma", "0", "--lc_n_epoch", "-1", "--seed", "1"]
    train_cifar.main(loose)
    assert len(list((hp_dir / "runs").iterdir())) == 2
    # the sweep folder itself: plot.py reads its runs/
    plot.main(["--table", "--runs_dir", str(hp_dir), "--assets_dir", str(tmp_path / "assets")])
    row, mo = read_csv(tmp_path / "assets" / "table.csv")           # CE, and CE-MO of the same runs
    assert (row["method"], row["noise"], row["n_seeds"], sorted(row["seeds"].split())) == ("CE", "sym", "2", ["1", "2"])
    assert (mo["method"], mo["exp_ids"]) == ("CE-MO", row["exp_ids"])


def test_mini_experiments_file_and_its_search_agree():
    """configs/mini_cifar10.yaml (the README's Results) parses into the 24-run grid, and the sigma search in
    results/mini_cifar10/reproduce.sh trains with the same settings, so the sigma it picks suits the grid."""
    import shlex
    root = tune.runs.CODE_DIR
    grid, argv = experiments.read_experiments(root / "configs" / "mini_cifar10.yaml")
    assert grid["variants"] == PAPER_MODELS and grid["noise_modes"] == ["sym", "asym", "dependent"]
    assert grid["seeds"] == [1, 2, 3]
    assert set(grid["sigma"]) == {"sym", "asym", "dependent"} and all(s > 0 for s in grid["sigma"].values())
    args = tune.build_parser().parse_args(argv)
    assert (args.dataset_name, args.p, args.model, args.train_subset, args.test_subset) == ("cifar10", 0.4, "wrn-16-1", 2000, None)
    assert 0 < args.lc_n_epoch < args.n_epochs and args.eval_every > 0 and args.n_epochs % args.eval_every == 0
    script = (root / "results" / "mini_cifar10" / "reproduce.sh").read_text()
    search = script[script.index("sweep sigma_search"):]
    search = shlex.split(search[:search.index(")")].replace("\\\n", " "))
    # the search's label flags: a noise file's (cifar10, --p) or CIFAR-10N's (cifar10n, --noise_label worst)
    labels = {name: shlex.split(script[script.index(f"labels=(--dataset_name {name} "):].split(")")[0][len("labels=("):])
              for name in ("cifar10", "cifar10n")}
    human_grid, human_argv = experiments.read_experiments(root / "configs" / "mini_cifar10n.yaml")
    human = tune.build_parser().parse_args(human_argv)
    assert human_grid["variants"] == PAPER_MODELS and human_grid["noise_modes"] == ["worst"]
    assert labels["cifar10n"] == ["--dataset_name", "cifar10n", "--noise_label", "worst"]
    for parsed, extra in ((args, labels["cifar10"]), (human, labels["cifar10n"])):
        flags = dict(zip(search + extra, (search + extra)[1:]))
        assert flags["--dataset_name"] == parsed.dataset_name
        for name in ("model", "train_subset", "n_epochs", "lr", "batch_size", "ema_alpha") + (("p",) if parsed is args else ()):
            assert str(getattr(parsed, name)) == flags[f"--{name}"], name
        assert "--channels_last" in search and parsed.channels_last
    assert (human.lc_n_epoch, human.eval_every, human.seed) == (args.lc_n_epoch, args.eval_every, args.seed)
    # Co-teaching-SLN's own search: the baselines' setting, split and scored as SLN's search is
    cot = script[script.index("sweep sigma_search/Co-teaching-SLN"):]
    cot = shlex.split(cot[:cot.index(")")].replace("\\\n", " "))
    cot_flags = dict(zip(cot, cot[1:]))
    baselines = tune.build_parser().parse_args(experiments.read_experiments(root / "configs" / "mini_cifar10_baselines.yaml")[1])
    assert cot_flags["--method"] == "Co-teaching-SLN" and cot_flags["--dataset_name"] == baselines.dataset_name
    for name in ("model", "train_subset", "n_epochs", "lr", "batch_size", "ema_alpha", "p"):
        assert str(getattr(baselines, name)) == cot_flags[f"--{name}"], name
    for name in ("--val_size", "--seed", "--eval_every", "--lc_n_epoch"):
        assert cot_flags[name] == flags[name], name


def test_a_finished_run_elsewhere_is_reused_only_when_it_trained_the_same(tmp_path):
    """--reuse_runs: a trial takes a finished run of another folder (say, committed results) instead of training,
    but only when the Tune config and every training flag agree; its small files are copied into the sweep."""
    import argparse
    config = {"noise_mode": "sym", "variant": "CE", "seed": 1}
    flags = {"dataset_name": "cifar10", "lr": 0.02, "n_epochs": 100, "sigma": 0.0, "seed": 1, "noise_mode": "sym"}
    committed = tmp_path / "committed"
    for name, changes, finished in (("exp_other_lr", {"lr": 0.05}, True), ("exp_unfinished", {}, False),
                                    ("exp_same", {}, True)):
        run = committed / name
        run.mkdir(parents=True)
        saved = {**flags, **changes, "tune_config": config, "data_dir": "/elsewhere", "device": "cuda", "exp_id": name}
        (run / "config.yaml").write_text(yaml.safe_dump(saved))
        (run / "metrics.csv").write_text("epoch,test/acc_reported\n1,0.5\n")
        if finished:
            (run / "summary.json").write_text(json.dumps({"variant": "CE"}))
    args = argparse.Namespace(**flags, data_dir=Path("/here"), out_dir=tmp_path / "sweep", device="cpu",
                              tune_config=config, tune_trial_id="t1")
    found = tune.reusable_run([str(committed)], config, args)
    assert found == committed / "exp_same"
    assert tune.reusable_run([str(committed)], {**config, "seed": 2}, args) is None
    assert tune.reusable_run([str(committed)], config, argparse.Namespace(**{**vars(args), "n_epochs": 50})) is None
    copied = tune.adopt(found, tmp_path / "sweep" / "runs")
    assert sorted(p.name for p in copied.iterdir()) == ["config.yaml", "metrics.csv", "summary.json"]
    assert tune.earlier_runs(tmp_path / "sweep" / "runs", config) == (copied, None)


@pytest.mark.parametrize("to", ["driver", "group"])
def test_sigterm_stops_a_sweep_as_ctrl_c_does_and_progress_is_shown(fake_root, tmp_path, to):
    """SIGTERM (kill, timeout, a job scheduler) once the first trial finished: exit 143 with the command that
    continues the sweep, which then finishes it; progress lines count trials and estimate the rest. Sent to the
    driver alone or to its process group (timeout), Tune stops the sweep: Ray's own processes are in sessions of
    their own, and end with the driver."""
    command, env, ray_tmp = driver_sweep(fake_root, tmp_path, n_epochs=8)
    script = command[1]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        wait_for_first_trial(tmp_path, driver)
        time.sleep(3)       # one progress poll (every 2 s) sees the finished trial, while the second trains
        # Ray's processes are out of the driver's session, so a signal to its group reaches the driver alone (a
        # raylet stopped under a driver ends it at once, exit 1 and no word)
        sessions = {pid: sid for pid in processes_under(ray_tmp) if (sid := session_of(pid)) is not None}
        assert sessions and driver.pid not in sessions.values(), sessions
        if to == "driver":
            driver.send_signal(signal.SIGTERM)
        else:
            os.killpg(driver.pid, signal.SIGTERM)
        out, err = driver.communicate(timeout=120)
        left = time.time() + 20         # and they end with the driver
        while processes_under(ray_tmp) and time.time() < left:
            time.sleep(0.2)
        assert not processes_under(ray_tmp)
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_pids(processes_under(ray_tmp))
    (hp_dir,) = (tmp_path / "hp").iterdir()
    assert driver.returncode == 143, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM: ") and last.endswith(f"python tune.py --resume {hp_dir}"), last
    assert f"SIGTERM: stopping the sweep; continue the sweep with: python tune.py --resume {hp_dir}\n" in err
    assert "Traceback" not in err
    # the project's resume line only: none of Ray Tune's own advice (Tuner.restore), which does not apply here
    assert "Tuner.restore" not in out + err and "Stop signal received" not in out + err
    assert "sweep: 0 of 2 trials done, 2 left; time left known once a trial has finished" in out
    assert re.search(r"sweep: 1 of 2 trials done, 1 left; about (\d+s|\d+m\d\ds) left", out), out[-3000:]
    if to == "group":
        return          # stopped as for the driver alone; the "driver" case tests that the resume finishes it
    done = resume_driver(script, hp_dir, env, ray_tmp)
    assert "sweep: 1 of 2 trials done, 1 left" in done.stdout and "sweep: 2 of 2 trials done, 0 left; all done" in done.stdout
    for text in ("Traceback", "Exception ignored", "SystemExit"):       # a sweep that went well ends without them
        assert text not in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    assert len(read_csv(hp_dir / "sigma_search.csv")) == 2


def test_baselines_experiments_file_matches_the_mini_setting():
    """configs/mini_cifar10_baselines.yaml trains the baselines in exactly the setting of configs/mini_cifar10.yaml,
    with SLN's searched sigma for Co-teaching-SLN."""
    root = tune.runs.CODE_DIR
    mini, mini_argv = experiments.read_experiments(root / "configs" / "mini_cifar10.yaml")
    grid, argv = experiments.read_experiments(root / "configs" / "mini_cifar10_baselines.yaml")
    # every baseline; CE-MO is no baseline but CE's own momentum network, read off the CE runs
    assert set(grid["variants"]) == {n for n, m in methods.METHODS.items() if not m.by_flags and not m.same_training_as}
    assert grid["seeds"] == mini["seeds"] and all(grid["sigma"][m] == mini["sigma"][m] for m in grid["noise_modes"])
    a, b = tune.build_parser().parse_args(mini_argv), tune.build_parser().parse_args(argv)
    for name in ("dataset_name", "p", "model", "train_subset", "n_epochs", "lr", "batch_size", "ema_alpha",
                 "eval_every", "channels_last", "weight_decay", "momentum"):
        assert getattr(a, name) == getattr(b, name), name


def test_cifar10n_sigma_search_and_grid_over_its_label_sets(ray_session, cifarn_root, tmp_path):
    """CIFAR-N in tune.py: a sigma search on cifar10n worst, and a grid whose axis is noise_labels. The runs'
    configs have the human label set and no noise mode or rate, so tables put the label set in the column."""
    root, _, _ = cifarn_root
    flags = ["--batch_size", "64", "--n_epochs", "1", "--lr", "0.01", "--model", "wrn-16-1", "--train_subset", "200",
             "--test_subset", "50", "--data_dir", str(root), "--device", "cpu"]
    hp_dir = tune.main(["--dataset_name", "cifar10n", "--noise_label", "worst", "--lc_n_epoch", "-1", "--sigmas", "0.5",
                        "--val_size", "0.1", *flags, "--out_dir", str(tmp_path / "search")])
    configs = {run_config(d)["sigma"]: run_config(d) for d in (hp_dir / "runs").iterdir()}
    assert sorted(configs) == [0.0, 0.5]           # the grid and the reference trial (CE)
    c = configs[0.5]
    assert (c["dataset_name"], c["noise_label"], c["noise_mode"], c["p"]) == ("cifar10n", "worst", None, None)
    assert "cifar10n worst labels" in (hp_dir / "sigma_search.md").read_text()

    grid = tmp_path / "grid.yaml"
    grid.write_text("dataset_name: cifar10n\nvariants: [CE, SLN]\nnoise_labels: [worst, aggre]\nseeds: [1]\n"
                    "sigma: {worst: 0.5, aggre: 0.2}\n")
    hp_dir = tune.main(["--experiments", str(grid), *flags, "--out_dir", str(tmp_path / "grid")])
    configs = [run_config(d) for d in (hp_dir / "runs").iterdir()]
    assert sorted((c["noise_label"], c["variant"], c["sigma"]) for c in configs) == [
        ("aggre", "CE", 0.0), ("aggre", "SLN", 0.2), ("worst", "CE", 0.0), ("worst", "SLN", 0.5)]
    assert all(c["noise_mode"] is None and c["p"] is None for c in configs)
    table = read_csv(hp_dir / "table.csv")             # the label sets are the table's columns
    assert sorted((r["variant"], r["noise"]) for r in table) == [("CE", "aggre"), ("CE", "worst"), ("CE-MO", "aggre"),
                                                                 ("CE-MO", "worst"), ("SLN", "aggre"), ("SLN", "worst")]


@pytest.mark.parametrize("text, message", [
    ("dataset_name: cifar10n\nvariants: [CE]\nnoise_modes: [sym]\nseeds: [1]\n", "give noise_labels instead"),
    ("variants: [CE]\nnoise_labels: [worst]\nseeds: [1]\n", "noise_labels are CIFAR-N's; cifar10 takes noise_modes"),
    ("variants: [CE]\nnoise_labels: [worst]\nnoise_modes: [sym]\nseeds: [1]\n", "not both"),
    ("dataset_name: cifar10n\nvariants: [CE]\nnoise_labels: [wrost]\nseeds: [1]\n", "noise_labels: unknown 'wrost'"),
])
def test_bad_cifar_n_grids_are_one_line(tmp_path, capsys, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    with pytest.raises(SystemExit) as e:
        tune.main(["--experiments", str(grid), "--out_dir", str(tmp_path / "out"), "--data_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_sweep_trial_is_bit_identical_to_the_same_run_of_train_cifar(ray_session, fake_root, paper_sums, tmp_path):
    """The sweep path (a Ray worker, one thread per CPU of the trial, engine.run through tune.trial) adds nothing
    to the numbers: a Co-teaching trial equals train_cifar.py with its recorded flags and thread count."""
    import torch
    import train_cifar
    from test_runs_repeatability import flags as repeat_flags, numbers
    grid = tmp_path / "grid.yaml"
    grid.write_text("variants: [Co-teaching]\nnoise_modes: [sym]\nseeds: [7]\nnum_gradual: 1\n")
    sweep_flags = [f for f in repeat_flags(fake_root, tmp_path / "sweep") if f not in ("--seed", "7")]
    hp_dir = tune.main(["--experiments", str(grid), *sweep_flags, "--cpus_per_trial", "1"])
    trial = next((hp_dir / "runs").iterdir())
    config = yaml.safe_load((trial / "config.yaml").read_text())
    assert config["runtime"]["torch_threads"] == 1
    before = torch.get_num_threads()
    torch.set_num_threads(config["runtime"]["torch_threads"])
    try:
        train_cifar.main(repeat_flags(fake_root, tmp_path / "loose", "--method", "Co-teaching", "--num_gradual", "1"))
    finally:
        torch.set_num_threads(before)
    assert numbers(next((tmp_path / "loose" / "runs").iterdir())) == numbers(trial)


from test_datasets_real import animal_root  # noqa: E402,F401  (a fixture: a small fake Animal-10N)


def test_sigma_search_on_a_folder_and_animal10n(ray_session, tmp_path, animal_root, capsys):
    """The sigma search of every dataset: a folder of the user's own images, on a split of its noisy training set,
    as for CIFAR; Animal-10N's plan takes its default network; a grid over such a dataset says what to do instead."""
    from test_datasets_folder import make_csv
    folder = make_csv(tmp_path / "mine", clean=True, n_train=10, size=12)
    hp_dir = tune.main(["--dataset_name", "FOLDER", "--data_dir", str(folder), "--lc_n_epoch", "-1", "--sigmas",
                        "1.0", "--n_epochs", "1", "--batch_size", "8", "--lr", "0.01", "--model", "wrn-16-1",
                        "--device", "cpu", "--out_dir", str(tmp_path / "search")])
    configs = [run_config(d) for d in (hp_dir / "runs").iterdir()]
    assert sorted(c["sigma"] for c in configs) == [0.0, 1.0]          # 1.0 and the reference
    assert all((c["dataset_name"], c["val_size"], c["n_val"], c["n_train"], c["noise_mode"]) ==
               ("folder", 0.1, 3, 27, None) for c in configs)
    assert [float(r["sigma"]) for r in read_csv(hp_dir / "sigma_search.csv")] == [0.0, 1.0]
    assert "folder labels as given" in (hp_dir / "sigma_search.md").read_text()
    capsys.readouterr()
    assert tune.main(["--dataset_name", "animal-10n", "--data_dir", str(animal_root), "--lc_n_epoch", "-1",
                      "--n_epochs", "3", "--out_dir", str(tmp_path / "a"), "--dry_run"]) is None
    out = capsys.readouterr().out
    assert "--model vgg19-bn" in out and "cost: 5 trials x 3 epochs x 18 images" in out, out
    grid = tmp_path / "grid.yaml"
    grid.write_text("dataset_name: animal-10n\nvariants: [CE]\nnoise_modes: [sym]\nseeds: [1]\n")
    with pytest.raises(SystemExit) as exc:
        tune.main(["--experiments", str(grid), "--data_dir", str(animal_root), "--out_dir", str(tmp_path / "g")])
    assert exc.value.code == 2 and "search its sigma with tune.py --dataset_name animal-10n" in capsys.readouterr().err


def test_a_trial_whose_run_cannot_go_on_fails_and_the_sweep_names_it(ray_session, fake_root, paper_sums, tmp_path,
                                                                    capsys):
    """A trial's run that stops (the loss becomes NaN at an absurd learning rate) ends its trial as the script would
    end (the engine's error, its exit status 3); the sweep counts the trial failed, says where its error is, writes no
    table and exits 1, with the command that continues it."""
    with pytest.raises(SystemExit) as exc:
        tune.main(search_flags(fake_root, tmp_path, "--lr", "1e12"))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    (hp_dir,) = (tmp_path / "hp").iterdir()
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert line.startswith("error: 0 of 2 trials finished (2 failed: see ")
    assert line.endswith(f"continue the sweep with: python tune.py --resume {hp_dir}")
    failed = line.split("see ", 1)[1].split("); continue", 1)[0].split(", ")
    assert len(failed) == 2 and all(Path(p).is_dir() and hp_dir in Path(p).parents for p in failed)
    # Tune's record of each failed trial: its process ended with the status the script gives a stopped run
    assert all("exit code 3" in (Path(p) / "error.txt").read_text() for p in failed)
    assert not list(hp_dir.glob("runs/*/summary.json")) and not (hp_dir / "sigma_search.csv").exists()
