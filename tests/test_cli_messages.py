"""What a new user meets in the first hour: the paper's sigma shown, errors that say what to change,
an estimate of the time left, the next command after a run, outputs git does not list."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import cli
import files
import train_cifar
from conftest import ROOT, variant_flags


def run_cli(fake_root, out_dir, *flags):
    argv = ["--batch_size", "64", "--n_epochs", "2", "--lr", "0.01", "--seed", "123", "--model", "wrn-16-1",
            "--data_dir", str(fake_root), "--out_dir", str(out_dir), "--device", "cpu", *flags]
    return train_cifar.main(argv)


def test_an_impossible_lc_epoch_says_what_to_change(fake_root, paper_sums, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(fake_root, tmp_path, "--noise_mode", "sym", "--p", "0.4", "--n_epochs", "1", "--sigma", "1.0",
                "--mo", "--lc_n_epoch", "5")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1..0" not in err, err
    assert "needs --n_epochs 2 or more and --lc_n_epoch below it" in err


def test_the_paper_sigma_is_listed_and_announced(fake_root, paper_sums, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cifar.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for (dataset, mode), sigma in cli.DEFAULT_SIGMA.items():
        if dataset in cli.CIFAR:
            assert f"{dataset} {mode} {sigma}" in help_text
    run_cli(fake_root, tmp_path, "--noise_mode", "asym", "--p", "0.4", "--lc_n_epoch", "-1", "--n_epochs", "1")
    out = capsys.readouterr().out
    assert "sigma 0.5 (the paper's value for cifar10 asym; --sigma not given)" in out.splitlines()[0]


@pytest.mark.slow
def test_epoch_lines_estimate_the_time_left_and_the_end_names_the_next_step(fake_root, paper_sums, tmp_path, capsys):
    run_cli(fake_root, tmp_path, "--noise_mode", "sym", "--p", "0.4", *variant_flags("1.0")["CE"], "--n_epochs", "3")
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3
    assert all(re.search(r"\(about (\d+s|\d+m\d\ds|\d+h\d\dm) left\)", line) for line in epochs[:2]), epochs
    assert "(done)" in epochs[2]
    (run_dir,) = (tmp_path / "runs").iterdir()
    nxt = out.strip().splitlines()[-1]
    assert nxt.startswith(f"next: its training curves with: python plot.py --exp_id {run_dir.name} --plot_type curves"
                          f" --runs_dir {tmp_path / 'runs'}"), nxt


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (42, "42s"), (425, "7m05s"), (10920, "3h02m")])
def test_durations_read_as_a_person_reads_them(seconds, text):
    assert files.duration(seconds) == text


def test_time_left_is_the_mean_epoch_times_the_epochs_left():
    assert files.time_left([10, 20, 30], 6) == "about 2m00s left"
    assert files.time_left([10], 0) == "done"
    assert files.time_left([], 4) == "time left unknown"


@pytest.mark.parametrize("path, ignored", [
    ("assets/exp_2026-12-02_14-39-42_878785/curves.png", True),
    ("assets/table.csv", True),
    ("viz/cifar10_sym_p_0.4.png", True),
    ("viz/cifar10_asym_p_0.4_custom.png", True),       # nothing viz.py writes is committed ...
    ("docs/figures/viz_cifar10_asym_p_0.4_custom.png", False),   # ... the docs' example is a copy here
    ("runs/README.md", False),
    ("runs/exp_1/config.yaml", True),
])
def test_what_the_scripts_write_is_git_ignored(path, ignored):
    done = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
    assert done.returncode == (0 if ignored else 1), path


def test_no_output_of_the_scripts_is_tracked():
    """The README says runs/, hp/, assets/ and viz/ are never committed: git tracks nothing there but their READMEs."""
    tracked = subprocess.run(["git", "ls-files", "runs", "hp", "assets", "viz"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert [p for p in tracked if not p.endswith("README.md")] == []


def test_a_run_folder_path_is_accepted_where_an_id_is(fake_root, paper_sums, tmp_path, monkeypatch, capsys):
    import plot
    import runs
    run_cli(fake_root, tmp_path, "--noise_mode", "sym", "--p", "0.4", *variant_flags("1.0")["CE"], "--n_epochs", "1")
    (run_dir,) = (tmp_path / "runs").iterdir()
    monkeypatch.chdir(tmp_path)
    for given in (f"runs/{run_dir.name}", f"runs/{run_dir.name}/", str(run_dir)):
        assert runs.find_run(tmp_path / "elsewhere", given) == run_dir
    written = plot.main(["--exp_id", f"runs/{run_dir.name}/", "--plot_type", "curves", "--assets_dir", "a"])
    assert Path("a") / run_dir.name / "curves.png" in written
    # a folder that is no run is still refused with the nearest ids
    with pytest.raises(runs.DataError, match=f"no run 'runs/exp_nope' in .*closest: {run_dir.name}"):
        runs.find_run(tmp_path / "runs", "runs/exp_nope")
    # resuming a path elsewhere than --out_dir says which to drop
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_cifar.main(["--resume", str(run_dir), "--out_dir", str(tmp_path / "other")])
    assert exc.value.code == 2 and "is not under --out_dir" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["train_cifar.py", "train_real.py", "tune.py", "viz.py", "plot.py", "bench.py"])
def test_a_python_without_the_packages_gets_one_line(script):
    # -S: this very Python without its site-packages, as the system Python is without the venv's
    done = subprocess.run([sys.executable, "-S", str(ROOT / script), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {script} needs torch") and "pip install -r requirements.txt" in line
    assert ". .venv/bin/activate" in line or "make env" in line


def test_the_packages_list_is_what_requirements_pins():
    import deps
    pinned = {line.split("==")[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    needed = {pip.lower() for pip in deps.CORE.values()} | {p.lower() for x in deps.EXTRA.values() for p in x.values()}
    assert needed <= pinned, needed - pinned


@pytest.mark.slow
def test_tensorboard_names_each_run_and_lists_its_hparams(fake_root, paper_sums, tmp_path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    flags = variant_flags("0.5")
    for name, seed in (("CE", "1"), ("SLN-MO", "2")):
        run_cli(fake_root, tmp_path, "--noise_mode", "sym", "--p", "0.4", *flags[name], "--n_epochs", "1",
                "--seed", seed)
    # what `tensorboard --logdir runs` reads: one run per training run, named by model, method, noise and seed
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "runs"))
    mux.Reload()
    names = sorted(mux.Runs())
    assert [n.split("/", 1)[1] for n in names] == ["CE_wrn-16-1_cifar10_sym0.4_seed1",
                                                   "SLN-MO_sigma0.5_wrn-16-1_cifar10_sym0.4_seed2"]
    for run_name in names:
        assert "test/acc" in mux.GetAccumulator(run_name).Tags()["scalars"]
        content = mux.SummaryMetadata(run_name, metadata.SESSION_START_INFO_TAG).plugin_data.content
        hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        seen = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in hp.items()}
        config = yaml.safe_load((tmp_path / "runs" / run_name.split("/")[0] / "config.yaml").read_text())
        for key in ("model", "sigma", "noise_mode", "p", "seed", "lr", "n_epochs", "variant"):
            assert seen[key] == config[key], key
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            mux.SummaryMetadata(run_name, metadata.EXPERIMENT_TAG).plugin_data.content).experiment
        assert {m.name.tag for m in experiment.metric_infos} >= {"final/last_test_acc", "final/best_test_acc"}
        summary = json.loads((tmp_path / "runs" / run_name.split("/")[0] / "summary.json").read_text())
        (last,) = mux.Scalars(run_name, "final/last_test_acc")
        assert last.value == pytest.approx(summary["last_test_acc"])


def hparams_columns(logdir):
    """The columns of TensorBoard's HParams tab over the runs in `logdir`, as its hparams plugin computes them (its
    backend over its own data provider, what `tensorboard --logdir` serves)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    backend = backend_context.Context(base_plugin.TBContext(
        logdir=str(logdir), multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir))))
    ctx = context.RequestContext()
    experiment = backend.experiment_from_metadata(ctx, "", True, backend.hparams_metadata(ctx, ""),
                                                  backend.hparams_from_data_provider(ctx, "", 0))
    return {h.name for h in experiment.hparam_infos}, {m.name.tag for m in experiment.metric_infos}


@pytest.mark.slow
def test_hparams_columns_are_the_union_of_every_methods_settings(fake_root, paper_sums, tmp_path):
    """TensorBoard takes the HParams tab's columns from one run's declaration: every run declares every setting, so
    that a method's own flags (GCE's gce_q, ELR's elr_lambda) are columns whichever run comes first."""
    flags = variant_flags("0.5", ["CE", "GCE", "ELR"])
    for name in flags:
        run_cli(fake_root, tmp_path, "--noise_mode", "sym", "--p", "0.4", *flags[name], "--n_epochs", "1",
                "--test_subset", "50")
    columns, metrics = hparams_columns(tmp_path / "runs")
    assert {"gce_q", "elr_lambda", "elr_beta", "num_gradual", "forget_rate", "sce_alpha", "noise_label", "test_subset",
            "variant", "sigma", "seed"} <= columns, columns
    assert {"final/last_test_acc", "final/best_test_acc", "final/test_acc_at_best_val"} <= metrics


@pytest.mark.slow
def test_config_records_what_decides_the_numbers_and_equal_records_repeat_bit_for_bit(fake_root, paper_sums,
                                                                                       tmp_path):
    import torch
    before = torch.get_num_threads()
    metrics = {}
    try:
        for name, threads in (("a", 1), ("b", 1), ("c", 2)):
            torch.set_num_threads(threads)
            run_cli(fake_root, tmp_path / name, "--noise_mode", "sym", "--p", "0.4", *variant_flags("1.0")["SLN-MO"],
                    "--deterministic")
            (run_dir,) = (tmp_path / name / "runs").iterdir()
            runtime = yaml.safe_load((run_dir / "config.yaml").read_text())["runtime"]
            assert runtime["torch_threads"] == threads and runtime["torch"] == str(torch.__version__)
            assert runtime["device_name"] and "torch_interop_threads" in runtime
            rows = (run_dir / "metrics.csv").read_text().splitlines()
            seconds = rows[0].split(",").index("seconds")
            metrics[name] = [[v for i, v in enumerate(r.split(",")) if i != seconds] for r in rows]
    finally:
        torch.set_num_threads(before)
    assert metrics["a"] == metrics["b"]          # same record, same flags and seed: bit-identical
