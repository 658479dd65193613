"""What the CUDA path needs that a CPU can test: a checkpoint from another kind of device resumes with a
note, the arithmetic is a recorded flag (--precision), and a CPU run is the same whatever TF32 says."""
import csv

import pytest
import torch
import yaml

import engine
import runs
import train_cifar

FLAGS = ["--dataset_name", "cifar10", "--noise_mode", "openset", "--p", "0.4", "--batch_size", "64", "--n_epochs", "3",
         "--lr", "0.01", "--sigma", "1.0", "--mo", "--lc_n_epoch", "2", "--seed", "5", "--model", "wrn-16-1",
         "--device", "cpu", "--deterministic"]


def train(root, out_dir, *extra):
    return train_cifar.main([*FLAGS, "--data_dir", str(root), "--out_dir", str(out_dir), *extra])


def only_run(out_dir):
    (run_dir,) = (out_dir / "runs").iterdir()
    return run_dir


def metric_rows(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(run_dir / "metrics.csv"))]


@pytest.mark.slow
def test_a_checkpoint_written_on_cuda_resumes_on_a_cpu_with_a_note(fake_root, tmp_path, capsys):
    train(fake_root, tmp_path)
    run_dir = only_run(tmp_path)
    epoch2 = torch.load(run_dir / "checkpoint.prev.pt", weights_only=True)
    epoch2.pop("sha256", None)
    # the CUDA generator's state: 16 bytes (seed and offset), where the CPU's is 5,056
    cuda_like = {**epoch2, "generator": torch.zeros(16, dtype=torch.uint8), "device": "cuda"}
    for name in ("summary.json", "checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).unlink()
    runs.save_checkpoint(run_dir, cuda_like)
    capsys.readouterr()
    train_cifar.main(["--resume", run_dir.name, "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "note: the checkpoint was written on cuda, this run continues on cpu" in out
    assert "random stream (data order, augmentation, SLN noise) differs from here on" in out
    assert "resuming after epoch 2" in out and (run_dir / "summary.json").is_file()
    assert [r["epoch"] for r in metric_rows(run_dir)] == ["1", "2", "3"]


@pytest.mark.slow
def test_precision_is_recorded_and_a_cpu_run_ignores_tf32(fake_root, tmp_path):
    train(fake_root, tmp_path / "fp32", "--precision", "fp32")
    train(fake_root, tmp_path / "tf32")
    a, b = only_run(tmp_path / "fp32"), only_run(tmp_path / "tf32")
    assert yaml.safe_load((a / "config.yaml").read_text())["precision"] == "fp32"
    assert yaml.safe_load((b / "config.yaml").read_text())["precision"] == "tf32"      # the default
    assert metric_rows(a) == metric_rows(b)


@pytest.mark.parametrize("flags, message", [
    (["--precision", "bf16"], r"--precision bf16 \(--amp, bf16 autocast\) needs a CUDA GPU or a CPU with bf16"),
    (["--amp", "--precision", "tf32"], r"--precision bf16 \(--amp, bf16 autocast\) needs a CUDA GPU or a CPU with bf16"),
    (["--precision", "fp16"], r"argument --precision: invalid choice: 'fp16'"),
])
def test_bad_precision_flags_are_one_line(fake_root, tmp_path, capsys, flags, message, monkeypatch):
    import re
    import engine
    monkeypatch.setattr(engine, "cpu_bf16_units", lambda: False)      # as on a CPU without bf16 instructions
    with pytest.raises(SystemExit) as exc:
        train(fake_root, tmp_path, *flags)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err


def test_amp_is_bf16_precision():
    import argparse
    for given in ("tf32", "fp32", "bf16"):
        args = argparse.Namespace(amp=True, precision=given)
        engine.resolve_precision(args)
        assert (args.precision, args.amp) == ("bf16", True)
    args = argparse.Namespace(amp=False, precision="bf16")
    engine.resolve_precision(args)
    assert args.amp


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True), ("bf16", False)])
def test_set_precision_sets_tf32_only_when_asked(precision, tf32):
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        engine.set_precision(precision)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (tf32, tf32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
