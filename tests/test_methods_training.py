"""Every baseline through the whole harness on tiny data: train_cifar.py, its own metrics in metrics.csv and
TensorBoard, a SIGKILL and a bit-identical resume (Co-teaching's two networks, ELR's per-image state), plot.py."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import methods
import plot
import runs
import train_cifar
from conftest import ROOT

pytestmark = pytest.mark.slow     # every method trained for real, killed and resumed: not in make test-fast

BASELINES = [name for name, m in methods.METHODS.items() if not m.by_flags]
# open-set noise needs no checksummed file, so subprocesses can use the fake data root as it is
FLAGS = ["--dataset_name", "cifar10", "--noise_mode", "openset", "--p", "0.4", "--batch_size", "64", "--n_epochs", "3",
         "--lr", "0.01", "--seed", "7", "--model", "wrn-16-1", "--device", "cpu", "--deterministic",
         "--train_subset", "128", "--test_subset", "32"]


def method_argv(name: str) -> list[str]:
    return methods.argv(name, sigma="0.5")


def only_run(out_dir):
    (run_dir,) = list((out_dir / "runs").iterdir())
    return run_dir


def metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(fake_root, tmp_path_factory) -> dict:
    """Each baseline trained once by train_cifar.py, uninterrupted: {name: (summary, run folder)}."""
    done = {}
    for name in BASELINES:
        out = tmp_path_factory.mktemp(name)
        summary = train_cifar.main([*FLAGS, *method_argv(name), "--data_dir", str(fake_root), "--out_dir", str(out)])
        done[name] = summary, only_run(out)
    return done


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_trains_from_train_cifar(trained, name):
    m = methods.get(name)
    summary, run_dir = trained[name]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert summary["variant"] == config["variant"] == config["method"] == name
    assert summary["reported_network"] == m.reported
    for f in m.flags:                       # its own flags recorded with their values, nobody else's
        assert (config[f.name] is not None) == (f.default is not None), f.name   # forget_rate: the noise rate
    others = set(methods.all_flags()) - {f.name for f in m.flags}
    assert all(config[k] is None for k in others)
    rows = metrics(run_dir)
    assert len(rows) == 3 and set(m.metrics) <= set(rows[0])
    assert (run_dir / "model2_final.pt").is_file() == (m.networks == 2)
    if m.networks == 2:                      # the second network trained on its own, from its own init
        first, second = (torch.load(run_dir / f, weights_only=True) for f in ("model_final.pt", "model2_final.pt"))
        assert first.keys() == second.keys() and not all(torch.equal(first[k], second[k]) for k in first)


def test_coteaching_reports_its_own_metrics_in_csv_and_tensorboard(fake_root, tmp_path):
    train_cifar.main([*FLAGS, *method_argv("Co-teaching"), "--num_gradual", "3",
                      "--data_dir", str(fake_root), "--out_dir", str(tmp_path)])
    run_dir = only_run(tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = metrics(run_dir)
    rate = config["noise"]["noise_rate"]      # --forget_rate not given: the labels' own noise rate, unset in config
    assert config["forget_rate"] is None
    # the authors' ramp: rate[epoch] of linspace(0, rate, num_gradual)
    assert [float(r["coteach/forget_rate"]) for r in rows] == pytest.approx([rate / 2, rate, rate])
    precision = [float(r["coteach/selected_precision"]) for r in rows]
    assert all(0 <= p <= 1 for p in precision)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(runs.tensorboard_dir(run_dir)))
    events.Reload()
    assert [e.value for e in events.Scalars("coteach/selected_precision")] == pytest.approx(precision)
    assert "Co-teaching" in runs.tensorboard_dir(run_dir).name


def cli(fake_root, out_dir, name, *extra):
    return [sys.executable, str(ROOT / "train_cifar.py"), *FLAGS, *method_argv(name), "--data_dir", str(fake_root),
            "--out_dir", str(out_dir), *extra]


def final_state(run_dir, networks: int):
    names = ["model_final.pt", "ema_final.pt", "targets_final.pt"] + (["model2_final.pt"] if networks == 2 else [])
    return [torch.load(run_dir / f, weights_only=True) for f in names]


@pytest.mark.parametrize("name", BASELINES)
def test_sigkill_then_resume_is_bit_identical_for_each_baseline(fake_root, tmp_path, trained, name):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    reference = trained[name][1]          # the same flags, never interrupted
    out = tmp_path / "killed"
    proc = subprocess.Popen(cli(fake_root, out, name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    start = time.time()
    while not (out / "runs").is_dir() or not any((out / "runs").glob("*/checkpoint.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 120
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)     # after the first checkpoint: epoch 2 (or 3) was under way
    proc.wait()
    run_dir = only_run(out)
    train_cifar.main(cli(fake_root, out, name, "--resume", run_dir.name)[2:])   # in this process: a Python less to start
    networks = methods.get(name).networks
    for x, y in zip(final_state(reference, networks), final_state(run_dir, networks)):
        if isinstance(x, dict):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
        else:
            assert torch.equal(x, y), name
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(metrics(reference)) == drop(metrics(run_dir)) and len(metrics(run_dir)) == 3


def test_compare_and_table_put_methods_side_by_side(trained, tmp_path):
    """plot.py's table gets a row per method, and compare a line per method."""
    names = ["Co-teaching-SLN", "ELR", "GCE"]
    (tmp_path / "runs").mkdir()
    for name in names:
        (tmp_path / "runs" / trained[name][1].name).symlink_to(trained[name][1])
    plot.main(["--table", "--runs_dir", str(tmp_path / "runs"), "--assets_dir", str(tmp_path / "assets")])
    md = (tmp_path / "assets" / "table.md").read_text()
    assert md.index("| Co-teaching-SLN |") < md.index("| ELR |") < md.index("| GCE |")
    plot.main(["--plot_type", "compare", "--runs_dir", str(tmp_path / "runs"), "--assets_dir", str(tmp_path / "assets")])
    with open(tmp_path / "assets" / "compare.csv", newline="") as f:
        assert {r["method"] for r in csv.DictReader(f)} == set(names)


def copy_unfinished(run_dir, out_dir):
    """A copy of a finished run under out_dir/runs/, as if cut off after its last checkpoint."""
    dest = out_dir / "runs" / run_dir.name
    dest.mkdir(parents=True)
    for f in run_dir.iterdir():
        if f.is_file() and f.name != "summary.json" and not f.name.endswith("_final.pt"):
            dest.joinpath(f.name).write_bytes(f.read_bytes())
    return dest


@pytest.mark.parametrize("mine, theirs, which", [
    ("Co-teaching", "Co-teaching-SLN", "both"),      # one architecture: it used to resume, with SLN's sigma
    ("Co-teaching", "ELR", "both"),                  # one network against two: it used to end in a traceback
    ("ELR", "Co-teaching", "both"),
    ("Co-teaching", "ELR", "unrecorded"),            # a checkpoint from before identities were recorded
    ("ELR", "Co-teaching", "unrecorded"),
    ("Co-teaching", "Co-teaching-SLN", "latest"),    # the previous checkpoint is this run's: it is used
])
def test_another_runs_checkpoint_is_never_resumed_as_this_ones(trained, tmp_path, capsys, mine, theirs, which):
    """A checkpoint records the id and method of the run that wrote it. Another run's is not this run's: the run
    falls back to its own previous checkpoint, or is refused in one line with nothing written."""
    run_dir = copy_unfinished(trained[mine][1], tmp_path)
    foreign = trained[theirs][1]
    for name in ("checkpoint.pt",) if which == "latest" else ("checkpoint.pt", "checkpoint.prev.pt"):
        if which == "unrecorded":
            state = torch.load(foreign / name, weights_only=True)
            for key in ("exp_id", "variant", "sha256"):
                state.pop(key, None)
            runs.save_checkpoint(tmp_path, state)        # a sound checksum over what is left
            (tmp_path / "checkpoint.pt").replace(run_dir / name)
        else:
            (run_dir / name).write_bytes((foreign / name).read_bytes())
    capsys.readouterr()
    resume = ["--resume", run_dir.name, "--out_dir", str(tmp_path)]
    if which == "latest":
        train_cifar.main(resume)
        out = capsys.readouterr().out
        assert (f"warning: checkpoint.pt is not this run's (written by another run: {foreign.name}, {theirs}; this run "
                f"is {run_dir.name}, {mine}) (set aside as checkpoint.damaged.pt); using checkpoint.prev.pt (epoch 2)"
                in out), out
        networks = methods.get(mine).networks    # epoch 3 trained again from its own epoch 2: as if never stopped
        for x, y in zip(final_state(trained[mine][1], networks), final_state(run_dir, networks)):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) if isinstance(x, dict) \
                else torch.equal(x, y)
        return
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(SystemExit) as exc:
        train_cifar.main(resume)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    if which == "both":
        assert err == (f"error: no usable checkpoint in {run_dir}: " + "; ".join(
            f"{n} is not this run's (written by another run: {foreign.name}, {theirs}; this run is {run_dir.name}, "
            f"{mine})" for n in ("checkpoint.pt", "checkpoint.prev.pt"))
            + "; nothing can be resumed: delete the folder and start the run again"), err
    else:
        nets = {"ELR": 1, "Co-teaching": 2}
        assert err == (f"error: the checkpoint in {run_dir} does not fit this run (it holds {nets[theirs]} networks, "
                       f"this run trains {nets[mine]}); nothing can be resumed: delete the folder and start the run "
                       "again"), err
    assert sorted(p.name for p in run_dir.iterdir()) == before
