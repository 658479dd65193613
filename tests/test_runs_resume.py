"""Resume after a crash, careful writes, and one-line answers to failures while running."""
import contextlib
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import runs
import train_cifar
import train_real
from conftest import ROOT

pytestmark = pytest.mark.slow     # real training runs killed and resumed: not in make test-fast

# open-set noise needs no checksummed file, so subprocesses can use the fake data root as it is
FLAGS = ["--dataset_name", "cifar10", "--noise_mode", "openset", "--p", "0.4", "--batch_size", "64", "--n_epochs", "3",
         "--lr", "0.01", "--sigma", "1.0", "--mo", "--lc_n_epoch", "1", "--seed", "7", "--model", "wrn-16-1",
         "--device", "cpu", "--deterministic"]


def cli(fake_root, out_dir, *extra):
    return [sys.executable, str(ROOT / "train_cifar.py"), *FLAGS, "--data_dir", str(fake_root), "--out_dir", str(out_dir), *extra]


def run_ids(out_dir):
    return sorted(p.name for p in (out_dir / "runs").iterdir())


def final_state(run_dir):
    return [torch.load(run_dir / f, weights_only=True) for f in ("model_final.pt", "ema_final.pt", "targets_final.pt")]


def assert_same_results(a: Path, b: Path):
    for x, y in zip(final_state(a), final_state(b)):
        if isinstance(x, dict):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        else:
            assert torch.equal(x, y)
    rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(d / "metrics.csv"))] for d in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) == 3


@pytest.fixture(scope="module")
def reference_run(fake_root, tmp_path_factory):
    """The uninterrupted run every resumed run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("reference")
    train_cifar.main(cli(fake_root, out)[2:])
    return out / "runs" / run_ids(out)[0]


def resume_in_process(fake_root, out_dir, exp_id):
    """The resume as `python train_cifar.py ... --resume EXP_ID` does it, in this process (a Python less to start;
    the kill under test happened to another process)."""
    train_cifar.main(cli(fake_root, out_dir, "--resume", exp_id)[2:])


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout
        time.sleep(0.05)


def test_sigkill_then_resume_is_bit_identical(fake_root, tmp_path, reference_run):
    proc = subprocess.Popen(cli(fake_root, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    wait_for(tmp_path / "runs", proc)
    (exp_id,) = run_ids(tmp_path)
    wait_for(tmp_path / "runs" / exp_id / "checkpoint.pt", proc)
    time.sleep(random.Random(0).uniform(0, 1.0))      # somewhere in epoch 2 or 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resume_in_process(fake_root, tmp_path, exp_id)
    assert run_ids(tmp_path) == [exp_id]           # continued in place, no new run
    assert_same_results(reference_run, tmp_path / "runs" / exp_id)


def test_ctrl_c_says_how_to_resume(fake_root, tmp_path, reference_run):
    # a child of a background job inherits an ignored SIGINT; give it the default so Python sees Ctrl-C
    proc = subprocess.Popen(cli(fake_root, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(tmp_path / "runs", proc)
    (exp_id,) = run_ids(tmp_path)
    wait_for(tmp_path / "runs" / exp_id / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].endswith(f"--resume {exp_id} --out_dir {tmp_path}")
    assert "Traceback" not in err
    resume_in_process(fake_root, tmp_path, exp_id)
    assert_same_results(reference_run, tmp_path / "runs" / exp_id)


def test_sigterm_says_how_to_resume_and_resumes_bit_identically(fake_root, tmp_path, reference_run):
    # kill, timeout, job schedulers and docker stop send SIGTERM: it must end a run as Ctrl-C does, exit 143
    proc = subprocess.Popen(cli(fake_root, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    wait_for(tmp_path / "runs", proc)
    (exp_id,) = run_ids(tmp_path)
    wait_for(tmp_path / "runs" / exp_id / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in last and last.endswith(f"--resume {exp_id} --out_dir {tmp_path}"), err
    assert "Traceback" not in err
    # resumed by the run folder's path, as tab completion gives it
    done = subprocess.run([*cli(fake_root, tmp_path)[:2], "--resume", f"runs/{exp_id}/"], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr
    assert run_ids(tmp_path) == [exp_id]
    assert_same_results(reference_run, tmp_path / "runs" / exp_id)


def test_sigterm_before_the_first_checkpoint_removes_what_the_run_made(fake_root, tmp_path):
    proc = subprocess.Popen(cli(fake_root, tmp_path, "--n_epochs", "300"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wait_for(tmp_path / "runs", proc)
    (exp_id,) = run_ids(tmp_path)
    wait_for(tmp_path / "runs" / exp_id / "config.yaml", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if "checkpointed" in err:
        pytest.skip("the first epoch ended before SIGTERM came")
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].endswith(f"stopped by SIGTERM; no epoch was complete, so nothing of value was "
                                                 f"kept: removed {tmp_path / 'runs' / exp_id} and configs/{exp_id}.yaml; "
                                                 "start the run again"), err
    assert "Traceback" not in err
    assert run_ids(tmp_path) == [] and not (tmp_path / "configs" / f"{exp_id}.yaml").exists()


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (Linux: the SigCgt mask of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_sigterm_in_the_first_seconds_gets_one_line(fake_root, tmp_path):
    """A SIGTERM while Python still imports torch ends with one line and 143, not silently with -15."""
    proc = subprocess.Popen(cli(fake_root, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    start = time.time()
    while not catches_sigterm(proc.pid):
        assert proc.poll() is None and time.time() - start < 60
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert len(err.strip().splitlines()) == 1 and "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").is_dir() or run_ids(tmp_path) == []


def test_a_run_folder_without_a_checkpoint_resumes_from_epoch_1(fake_root, tmp_path, reference_run, capsys):
    """A folder that a kill -9 left before the first checkpoint trains from the start when resumed, bit for bit as
    a run never stopped."""
    in_process(fake_root, tmp_path)
    (exp_id,) = run_ids(tmp_path)
    run_dir = tmp_path / "runs" / exp_id
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "summary.json", "model_final.pt", "ema_final.pt",
                 "targets_final.pt"):
        (run_dir / name).unlink()
    capsys.readouterr()
    in_process(fake_root, tmp_path, "--resume", exp_id)
    assert "training it from epoch 1" in capsys.readouterr().out
    assert_same_results(reference_run, run_dir)


def test_checks_of_the_flags_and_the_run_folder_come_before_the_data(fake_root, tmp_path, capsys, monkeypatch):
    """A resume of a run in use, and a method the dataset cannot serve, are refused without loading any data."""
    in_process(fake_root, tmp_path, "--n_epochs", "2")
    (exp_id,) = run_ids(tmp_path)
    (tmp_path / "runs" / exp_id / "summary.json").unlink()
    import datasets

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded")
    monkeypatch.setattr(datasets, "dataset_from_config", no_data)
    with contextlib.ExitStack() as held:
        runs.lock_run(tmp_path / "runs" / exp_id, held)    # as another process training it would
        expect_exit(capsys, 2, rf"run {exp_id} is being trained by another process", train_cifar.main,
                    ["--resume", exp_id, "--out_dir", str(tmp_path)])
    expect_exit(capsys, 2, r"--method Forward-T needs the clean labels of the training set, which animal-10n does not",
                train_real.main, ["--dataset_name", "animal-10n", "--method", "Forward-T", "--data_dir",
                                  str(tmp_path / "no-data-here"), "--out_dir", str(tmp_path / "x")])
    expect_exit(capsys, 2, r"Co-teaching needs --forget_rate", train_real.main,
                ["--dataset_name", "animal-10n", "--method", "co-teaching", "--data_dir", str(tmp_path / "no-data-here"),
                 "--out_dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


# A training process that SIGKILLs itself just before its n-th rename of a checkpoint file. Renames: epoch 1's
# tmp -> checkpoint.pt (1); epoch 2's checkpoint.pt -> checkpoint.prev.pt (2) and tmp -> checkpoint.pt (3); epoch 3's
# first (4): so 2, 3 and 4 are before, between and after the two renames of epoch 2's write.
KILL_AT_RENAME = """
import os, signal, sys
sys.path.insert(0, sys.argv.pop(1))
n, count, real = int(os.environ["SLN_KILL_AT_RENAME"]), [0], os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.basename(str(dst)).startswith("checkpoint"):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
import train_cifar
import train_real
train_cifar.main(sys.argv[1:])
"""


@pytest.mark.parametrize("kill_at", [2, 3, 4])
def test_sigkill_at_each_rename_of_a_checkpoint_write_resumes_bit_identically(fake_root, tmp_path, reference_run,
                                                                              kill_at):
    env = {**os.environ, "TQDM_DISABLE": "1", "SLN_KILL_AT_RENAME": str(kill_at)}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(ROOT), *cli(fake_root, tmp_path)[2:]],
                            capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (exp_id,) = run_ids(tmp_path)
    resume_in_process(fake_root, tmp_path, exp_id)
    assert_same_results(reference_run, tmp_path / "runs" / exp_id)


def in_process(fake_root, out_dir, *extra):
    return train_cifar.main([*FLAGS, "--data_dir", str(fake_root), "--out_dir", str(out_dir), *extra])


def test_torn_checkpoint_falls_back_to_previous(fake_root, tmp_path, reference_run, capsys):
    in_process(fake_root, tmp_path)
    (exp_id,) = run_ids(tmp_path)
    run_dir = tmp_path / "runs" / exp_id
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])   # torn write of epoch 3
    (run_dir / "summary.json").unlink()                                 # ... so the run never finished
    in_process(fake_root, tmp_path, "--resume", exp_id)
    out = capsys.readouterr().out
    assert "checkpoint.pt is damaged" in out and "using checkpoint.prev.pt (epoch 2)" in out
    assert_same_results(reference_run, run_dir)


def expect_exit(capsys, code, pattern, fn, *args):
    with pytest.raises(SystemExit) as exc:
        fn(*args)
    assert exc.value.code == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    return err


def test_resume_problems_are_one_line(fake_root, tmp_path, capsys):
    in_process(fake_root, tmp_path, "--n_epochs", "2", "--lc_n_epoch", "1")
    (exp_id,) = run_ids(tmp_path)
    run_dir = tmp_path / "runs" / exp_id
    capsys.readouterr()
    expect_exit(capsys, 2, rf"no run 'exp_nope' .* closest: {exp_id}", in_process, fake_root, tmp_path,
                "--resume", "exp_nope")
    expect_exit(capsys, 2, r"--lr 0.5 \(run has 0.01\).*--seed 8 \(run has 7\)", train_cifar.main,
                ["--resume", exp_id, "--out_dir", str(tmp_path), "--lr", "0.5", "--seed", "8"])
    expect_exit(capsys, 2, r"has already finished \(--n_epochs 2\); nothing to resume", train_cifar.main,
                ["--resume", exp_id, "--out_dir", str(tmp_path)])
    expect_exit(capsys, 2, rf"trained cifar10, which train_real.py does not take .*python train_cifar.py --resume {exp_id}",
                train_real.main, ["--resume", exp_id, "--out_dir", str(tmp_path)])
    (run_dir / "summary.json").unlink()     # as if cut off after its last checkpoint
    moved = tmp_path / "moved-data"         # the same data in another folder: --data_dir may change on resume
    shutil.copytree(fake_root, moved)
    # what the flags resolve to is compared, not their text: this run was started with --sigma/--mo/--lc_n_epoch
    err = expect_exit(capsys, 2, r"--method SLN \(run trained SLN-MO-LC\); drop", train_cifar.main,
                      ["--resume", exp_id, "--out_dir", str(tmp_path), "--method", "SLN", "--noise_mode", "OpenSet"])
    assert "None" not in err and "noise_mode" not in err
    train_cifar.main(["--resume", exp_id, "--out_dir", str(tmp_path), "--data_dir", str(moved), "--method", "sln-mo-lc"])
    assert (run_dir / "summary.json").is_file()
    (run_dir / "summary.json").unlink()
    for f in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / f).write_bytes(b"garbage")
    expect_exit(capsys, 2, "no usable checkpoint", train_cifar.main, ["--resume", exp_id, "--out_dir", str(tmp_path)])


@pytest.mark.parametrize("text, message", [
    ("", r"is damaged: it holds nothing, not a run's settings"),
    ("- a\n- b\n", r"is damaged: it holds a list, not a run's settings"),
    ("!!python/object/apply:os.system [touch x]\n", r"is damaged: not plain YAML at line 1 \(could not determine a "
                                                    r"constructor"),
    ("dataset_name: DATASET\nlr: fast\n", r"is damaged: lr is 'fast', which --lr does not take"),
    ("dataset_name: DATASET\nmodel: resnet-9000\n", r"is damaged: model is 'resnet-9000', which --model does not take"),
])
@pytest.mark.parametrize("script", [train_cifar, train_real])
def test_resume_of_a_damaged_run_config_is_one_line(tmp_path, capsys, text, message, script):
    """--resume reads config.yaml as plain YAML and checks every saved flag before anything runs, as plot.py does."""
    run_dir = tmp_path / "runs" / "exp_2026-01-01_00-00-00_abcdef"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(text.replace("DATASET", "cifar10" if script is train_cifar else "animal-10n"))
    err = expect_exit(capsys, 2, message, script.main, ["--resume", run_dir.name, "--out_dir", str(tmp_path)])
    assert err.startswith(f"error: {run_dir / 'config.yaml'} is damaged: ") and err.endswith(
        "; restore it from a copy of the run, or start the run again"), err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_disk_full_keeps_last_checkpoint(fake_root, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save(obj, f, *a, **k):
        if str(f).endswith(".checkpoint.pt.tmp") and obj["epoch"] == 2:
            Path(f).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    expect_exit(capsys, 3, r"could not write the checkpoint of epoch 2 .*No space left.*epoch 1 is kept.*--resume",
                in_process, fake_root, tmp_path)
    (exp_id,) = run_ids(tmp_path)
    run_dir = tmp_path / "runs" / exp_id
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (run_dir / ".checkpoint.pt.tmp").exists()
    monkeypatch.setattr(torch, "save", real_save)
    in_process(fake_root, tmp_path, "--resume", exp_id)          # space freed: the run finishes
    assert len(list(csv.DictReader(open(run_dir / "metrics.csv")))) == 3


def test_nan_loss_stops_with_epoch_and_step(fake_root, tmp_path, capsys):
    expect_exit(capsys, 3, r"NaN/Inf at epoch 1, step \d+; nothing was checkpointed yet; lower --lr",
                in_process, fake_root, tmp_path, "--lr", "1e12")
    (exp_id,) = run_ids(tmp_path)
    assert not (tmp_path / "runs" / exp_id / "checkpoint.pt").exists()


def test_a_diverging_loss_names_the_flags_of_the_runs_method(fake_root, tmp_path, capsys):
    """ELR blown up by its own weight is told to lower --lr or --elr_lambda, not SLN's --sigma, which it has not."""
    elr = [f for f in FLAGS if f not in ("--mo", "--sigma", "1.0", "--lc_n_epoch", "1")]
    err = expect_exit(capsys, 3, r"NaN/Inf at epoch 1, step \d+; .*; lower --lr or --elr_lambda and start a new run$",
                      train_cifar.main, [*elr, "--method", "ELR", "--elr_lambda", "1e30", "--data_dir", str(fake_root),
                                         "--out_dir", str(tmp_path)])
    assert "--sigma" not in err


def test_simultaneous_runs_get_different_ids(tmp_path):
    ids = []
    threads = [threading.Thread(target=lambda: ids.append(runs.new_exp_id(tmp_path))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 16 and all(" " not in i and ":" not in i for i in ids)


def test_config_is_never_overwritten(tmp_path):
    path = tmp_path / "c.yaml"
    runs.save_config(path, {"a": 1})
    with pytest.raises(FileExistsError):
        runs.save_config(path, {"a": 2})
    assert path.read_text() == "a: 1\n"


def test_a_run_still_training_is_not_resumed_beside_itself(fake_root, tmp_path, capsys):
    """--resume of a run that another process is training is refused in one line naming that process (two
    processes would append the same epochs to one metrics.csv); once that process is killed, the lock is free."""
    proc = subprocess.Popen(cli(fake_root, tmp_path, "--n_epochs", "200"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        wait_for(tmp_path / "runs", proc)
        (exp_id,) = run_ids(tmp_path)
        run_dir = tmp_path / "runs" / exp_id
        wait_for(run_dir / "checkpoint.pt", proc)
        expect_exit(capsys, 2, rf"run {exp_id} is being trained by another process \(pid {proc.pid}\); wait for it",
                    train_cifar.main, ["--resume", exp_id, "--out_dir", str(tmp_path)])
    finally:
        proc.kill()
        proc.wait()
    with contextlib.ExitStack() as held:
        runs.lock_run(run_dir, held)          # a killed holder leaves no stale lock


def test_resume_takes_a_method_name_in_any_case(fake_root, tmp_path, capsys):
    """A run started with --method gce (recorded as GCE) resumes with --method gce, and a flag the run did not set is
    named as such, never as "None"."""
    gce = [f for f in FLAGS if f not in ("--mo", "--sigma", "1.0", "--lc_n_epoch", "1")]
    gce += ["--method", "gce", "--data_dir", str(fake_root), "--out_dir", str(tmp_path), "--n_epochs", "2"]
    train_cifar.main(gce)
    (exp_id,) = run_ids(tmp_path)
    run_dir = tmp_path / "runs" / exp_id
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["method"] == "GCE"
    (run_dir / "summary.json").unlink()
    capsys.readouterr()
    err = expect_exit(capsys, 2, r"--train_subset 50 \(the run has none\)", train_cifar.main,
                      ["--resume", exp_id, "--out_dir", str(tmp_path), "--method", "gce", "--train_subset", "50"])
    assert "None" not in err and "--method" not in err
    train_cifar.main(["--resume", exp_id, "--out_dir", str(tmp_path), "--method", "gce"])
    assert (run_dir / "summary.json").is_file()
