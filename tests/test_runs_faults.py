"""Fault injection against the run folder's promises: a resume never trains on other data, a damaged
checkpoint or weight file is caught by its checksum, a full or read-only disk is one line, nothing half-written is
read as data or left behind. Real faults where the machine gives them cheaply (a tiny tmpfs, when this machine
lets a test mount one; real byte flips), else an OSError injected at the write."""
import contextlib
import csv
import errno
import json
import os
import re
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

import data
import plot
import runs
import train_cifar

pytestmark = pytest.mark.slow     # real runs damaged, killed and resumed: not in make test-fast

FLAGS = ["--dataset_name", "cifar10", "--noise_mode", "openset", "--p", "0.4", "--batch_size", "64", "--n_epochs", "3",
         "--lr", "0.01", "--sigma", "1.0", "--mo", "--lc_n_epoch", "1", "--seed", "7", "--model", "wrn-16-1",
         "--device", "cpu", "--deterministic"]


def train(root, out_dir, *extra):
    return train_cifar.main([*FLAGS, "--data_dir", str(root), "--out_dir", str(out_dir), *extra])


def only_run(out_dir: Path) -> Path:
    (run_dir,) = [p for p in (out_dir / "runs").iterdir() if (p / "config.yaml").is_file()]
    return run_dir


def refused(capsys, code, pattern, fn, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        fn(*args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == code, err
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    return err


def private_root(fake_root, tmp_path) -> Path:
    """The fake CIFAR-10 alone, in a folder of this test's (custom noise files get written there)."""
    root = tmp_path / "data"
    shutil.copytree(fake_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    return root


@contextlib.contextmanager
def tiny_disk(folder: Path, size_kb: int):
    """A folder on a tmpfs of size_kb kB, or None where this machine lets no test mount one."""
    folder.mkdir(parents=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is None or done.returncode != 0:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def flip_tensor_bytes(path: Path, n: int = 400) -> None:
    """XOR n bytes in the middle of the largest tensor inside a torch zip file: the file still loads."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - n // 2
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


# ----------------------------------------------------------------------------------------------------
# Silent changes

def test_resume_refuses_labels_other_than_the_run_trained_on(fake_root, tmp_path, capsys):
    root = private_root(fake_root, tmp_path)
    flags = ["--noise_mode", "sym", "--p", "0.35", "--custom_noise", "--n_epochs", "2", "--lc_n_epoch", "-1",
             "--mo", "--seed", "1"]
    train(root, tmp_path / "a", *flags)
    run_dir = only_run(tmp_path / "a")
    (run_dir / "summary.json").unlink()         # as if killed before it finished
    train(root, tmp_path / "b", *flags[:-1], "3", "--make_new_custom_noise")    # the file made again, seed 3
    capsys.readouterr()
    err = refused(capsys, 2, r"cannot be resumed on this data: the training labels, the noise file .*sym0\.35_custom"
                  r"\.csv differ", train_cifar.main, ["--resume", run_dir.name, "--out_dir", str(tmp_path / "a")])
    assert "start a new run" in err
    assert not (run_dir / "summary.json").exists()


def test_a_damaged_checkpoint_is_caught_and_the_previous_one_used(fake_root, tmp_path, capsys):
    reference = tmp_path / "reference"
    train(fake_root, reference)
    train(fake_root, tmp_path / "damaged")
    run_dir = only_run(tmp_path / "damaged")
    (run_dir / "summary.json").unlink()
    flip_tensor_bytes(run_dir / "checkpoint.pt")                 # epoch 3's, still a loadable file
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 3
    train(fake_root, tmp_path / "damaged", "--resume", run_dir.name)
    out = capsys.readouterr().out
    assert "checkpoint.pt is damaged (its content does not match the checksum stored with it)" in out
    assert "using checkpoint.prev.pt (epoch 2)" in out and (run_dir / "checkpoint.damaged.pt").is_file()
    for name in ("model_final.pt", "ema_final.pt", "targets_final.pt"):
        a = torch.load(only_run(reference) / name, weights_only=True)
        b = torch.load(run_dir / name, weights_only=True)
        assert (a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)) if isinstance(a, dict) \
            else torch.equal(a, b)


def test_the_fallback_checkpoint_is_never_rotated_away(tmp_path, capsys):
    state = {"epoch": 1, "model": {"w": torch.ones(3)}, "ema": {"w": torch.ones(3)}, "optimizer": {}, "sigma": 1.0,
             "targets": torch.zeros(4, 2), "generator": torch.zeros(5, dtype=torch.uint8), "torch_rng": torch.zeros(5, dtype=torch.uint8)}
    runs.save_checkpoint(tmp_path, state)
    runs.save_checkpoint(tmp_path, {**state, "epoch": 2, "model": {"w": torch.full((3,), 2.0)}})
    (tmp_path / "checkpoint.pt").write_bytes(b"torn")
    assert runs.load_checkpoint(tmp_path)["epoch"] == 1            # falls back...
    assert not (tmp_path / "checkpoint.pt").exists()               # ...and sets the damaged one aside at once
    runs.save_checkpoint(tmp_path, {**state, "epoch": 2})
    # a kill right after the next save's first rename leaves the sound epoch-1 file as the fallback
    os.replace(tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt")
    assert runs.load_checkpoint(tmp_path)["epoch"] == 2
    capsys.readouterr()


def test_two_runs_racing_for_one_custom_noise_file(fake_root, tmp_path, monkeypatch, capsys):
    root = private_root(fake_root, tmp_path)
    _, y, _, _ = data.load_cifar("cifar10", root, download=False)
    path = data.custom_noise_paths(root, "cifar10", "sym", 0.35)["labels"]
    real = data.generate_noise

    def other_run_wins(*args, **kwargs):        # the other run writes its file while this one generates
        out = real(*args, **kwargs)
        seed = args[3] + winner_seed_offset
        noisy, source, _ = real(args[0], args[1], args[2], seed, *args[4:], **kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data._label_csv_bytes(args[4], noisy, source))
        return out
    monkeypatch.setattr(data, "generate_noise", other_run_wins)
    winner_seed_offset = 0                       # the same seed: the same file, used as it is
    noisy, _, _, _ = data.load_custom_noise(root, "cifar10", "sym", 0.35, 1, y, 10)
    assert "another run wrote" in capsys.readouterr().out and (data.read_label_csv(path, len(y), 10)[1] == noisy).all()
    path.unlink()
    winner_seed_offset = 2                       # another seed: refused, and the winner's file is kept
    with pytest.raises(data.DataError, match="another run wrote .* with other labels"):
        data.load_custom_noise(root, "cifar10", "sym", 0.35, 1, y, 10)
    assert not list(path.parent.glob("*.old-*"))


# ----------------------------------------------------------------------------------------------------
# One line where a traceback was

def test_disk_full_when_the_run_folder_is_made(fake_root, tmp_path, capsys, monkeypatch):
    with tiny_disk(tmp_path / "disk", 8) as disk:
        if disk is None:                          # no tmpfs here: the same error, injected
            disk = tmp_path / "disk"
            monkeypatch.setattr(runs, "write_new", no_space)
        else:
            (disk / "filler").write_bytes(b"x" * 6000)
        refused(capsys, 3, r"cannot create a run folder in .*No space left on device.*nothing was written",
                train, fake_root, disk)
        assert [p for p in (disk / "runs").iterdir()] == [] and not list((disk / "configs").iterdir())


@pytest.mark.parametrize("failing", ["model_final.pt", "summary.json"])
def test_disk_full_when_the_run_finishes(fake_root, tmp_path, capsys, monkeypatch, failing):
    real = runs.write_atomic

    def write(path, fn):
        if Path(path).name == failing:
            no_space()
        return real(path, fn)
    monkeypatch.setattr(runs, "write_atomic", write)
    err = refused(capsys, 3, rf"could not write the run's final files .*No space left on device.*checkpoint of the "
                  r"last epoch is kept.*--resume", train, fake_root, tmp_path)
    run_dir = only_run(tmp_path)
    assert not (run_dir / "summary.json").exists()
    monkeypatch.setattr(runs, "write_atomic", real)
    argv = shlex.split(err.split("then resume: ", 1)[1])[2:]     # the printed command, as pasted
    train_cifar.main(argv)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["sha256"]) == {"model_final.pt", "ema_final.pt", "targets_final.pt"}


def test_disk_full_at_the_first_checkpoint_says_so_in_plain_words(fake_root, tmp_path, capsys, monkeypatch):
    real = torch.save

    def save(obj, f, *a, **k):      # what torch's zip writer raises on a full disk
        if str(f).endswith(".checkpoint.pt.tmp"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    err = refused(capsys, 3, r"checkpoint of epoch 1 .*\(No space left on device\); no epoch was checkpointed yet",
                  train, fake_root, tmp_path)
    assert "inline_container" not in err and "--resume" not in err and "epoch 0" not in err


def test_a_read_only_data_dir_that_must_hold_a_new_noise_file(fake_root, tmp_path, capsys, monkeypatch):
    root = private_root(fake_root, tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(data, "write_new", read_only)
    refused(capsys, 2, r"cannot write .*label_noisy \(Read-only file system\).*pass a --data_dir you can write to",
            train, root, tmp_path / "out", "--noise_mode", "sym", "--p", "0.35", "--custom_noise")


@contextlib.contextmanager
def read_only_root(fake_root: Path, folder: Path):
    """The fake CIFAR-10 on a real read-only file system (a tmpfs remounted read-only), or None where this machine
    lets no test mount one."""
    with tiny_disk(folder, 4096) as disk:
        if disk is not None:
            shutil.copytree(fake_root / "cifar-10-batches-py", disk / "cifar-10-batches-py")
            if subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, timeout=30).returncode:
                disk = None
        yield disk


@pytest.mark.parametrize("blocked", ["read-only", "a file in the way"])
@pytest.mark.parametrize("script", ["train_cifar", "train_real"])
def test_a_data_root_that_cannot_take_a_missing_download(fake_root, tmp_path, capsys, blocked, script):
    """A root holding the CIFAR images but unable to take a missing paper noise file or CIFAR-N label file: one line
    naming the folder that cannot be written, the URL and where to put the file; nothing written."""
    import datasets.cifar_n
    import train_real
    sub = "cifar10" if script == "train_cifar" else "cifar-n"
    with contextlib.ExitStack() as stack:
        if blocked == "read-only":
            root = stack.enter_context(read_only_root(fake_root, tmp_path / "ro"))
            if root is None:
                pytest.skip("this machine lets no test mount a read-only file system")
            why = "Read-only file system"
        else:
            root = private_root(fake_root, tmp_path)
            (root / sub).write_text("not a folder")
            why = f"{root / sub} is a file, not a folder"
        folder = root / sub / "label_noisy" if script == "train_cifar" else root / sub
        url, dest = ((data.PAPER_NOISE_URL.format(folder="CIFAR10", mode="sym", p=0.4), folder / "sym0.4.csv")
                     if script == "train_cifar" else
                     (datasets.cifar_n.CIFARN_URL.format(file="CIFAR-10_human.pt"), folder / "CIFAR-10_human.pt"))
        before = sorted(p.relative_to(root) for p in root.rglob("*"))
        if script == "train_cifar":
            call = lambda: train(root, tmp_path / "out", "--noise_mode", "sym", "--p", "0.4")  # noqa: E731
        else:
            call = lambda: train_real.main(["--dataset_name", "cifar10n", "--noise_label", "worst", "--data_dir",  # noqa: E731
                                            str(root), "--out_dir", str(tmp_path / "out"), "--device", "cpu"])
        err = refused(capsys, 2, "", call)
        assert err.startswith(f"error: cannot write {folder} ({why}), where ") and \
            f"; download {url} to {dest}, or " in err, err
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
        assert not (tmp_path / "out" / "runs").exists()


def test_a_checkpoint_of_something_else(fake_root, tmp_path, capsys):
    train(fake_root, tmp_path, "--n_epochs", "2")
    run_dir = only_run(tmp_path)
    (run_dir / "summary.json").unlink()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        torch.save({"epoch": 2}, run_dir / name)
    capsys.readouterr()
    refused(capsys, 2, r"no usable checkpoint .*checkpoint\.pt is damaged \(not a checkpoint of this project: it has "
            r"no model, ema, optimizer.*delete the folder", train_cifar.main,
            ["--resume", run_dir.name, "--out_dir", str(tmp_path)])


def test_a_damaged_weight_file_is_refused_by_plot(fake_root, tmp_path, capsys):
    train(fake_root, tmp_path, "--n_epochs", "2")
    run_dir = only_run(tmp_path)
    flip_tensor_bytes(run_dir / "ema_final.pt")
    capsys.readouterr()
    refused(capsys, 2, r"ema_final\.pt is damaged: its SHA-256 is not the one summary\.json recorded", plot.main,
            ["--runs_dir", str(tmp_path / "runs"), "--exp_id", run_dir.name, "--plot_type", "pred_probs",
             "--data_dir", str(fake_root), "--assets_dir", str(tmp_path / "a")])


# ----------------------------------------------------------------------------------------------------
# Smaller

def test_printed_commands_quote_their_paths(fake_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out dir ü"
    real = runs.save_checkpoint

    def save_then_interrupt(run_dir, state):
        real(run_dir, state)
        raise KeyboardInterrupt
    monkeypatch.setattr(runs, "save_checkpoint", save_then_interrupt)
    err = refused(capsys, 130, r"interrupted", train, fake_root, out)
    argv = shlex.split(err.split("continue with: ", 1)[1])
    assert argv[:3] == ["python", "train_cifar.py", "--resume"] and argv[argv.index("--out_dir") + 1] == str(out)


def test_a_row_cut_off_mid_number_is_never_plotted(fake_root, tmp_path, capsys):
    train(fake_root, tmp_path)
    run_dir = only_run(tmp_path)
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    (run_dir / "metrics.csv").write_text("\n".join(lines[:-1] + [lines[-1][:12]]) + "\n")
    plot.main(["--runs_dir", str(tmp_path / "runs"), "--exp_id", run_dir.name, "--plot_type", "curves",
               "--assets_dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert re.search(rf"note: .*metrics\.csv row 4 is damaged \(\d+ fields, the header has \d+; cut off", err), err
    rows = list(csv.DictReader(open(tmp_path / "a" / run_dir.name / "curves.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_a_resume_removes_what_a_killed_process_left_half_written(fake_root, tmp_path, capsys):
    train(fake_root, tmp_path, "--n_epochs", "2")
    run_dir = only_run(tmp_path)
    (run_dir / "summary.json").unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in (f".model_final.pt.tmp{dead.pid}", ".checkpoint.pt.tmp"):
        (run_dir / name).write_bytes(b"half")
    (run_dir / ".ema_final.pt.tmp1").write_bytes(b"busy")     # a live process's (pid 1): kept
    capsys.readouterr()
    train_cifar.main(["--resume", run_dir.name, "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"removed what an earlier, killed process left half-written: .checkpoint.pt.tmp, .model_final.pt.tmp{dead.pid}" in out
    assert sorted(p.name for p in run_dir.glob(".*.tmp*")) == [".ema_final.pt.tmp1"]


def test_stale_temporaries_are_matched_by_name_only(tmp_path):
    (tmp_path / "notes.tmp1").write_text("a user's file")
    assert runs.remove_stale_temporaries(tmp_path) == [] and (tmp_path / "notes.tmp1").exists()
