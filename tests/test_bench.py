"""bench.py on tiny settings, the speed options of the training loop, and the on-device crop on odd shapes.

No wall-clock time is asserted anywhere: only that every figure is written, consistent and in range.
"""
import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
import torchvision.transforms.functional as TF
from torch import nn

import bench
import datasets.augment
import engine
import timing
import train_cifar
from models import make_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    bench.main(["--quick", "--models", "wrn-16-1", "--options", "channels_last", "--device", "cpu", "--threads", "1",
                "--workers", "1", "--file_size", "40",
                "--data_dir", str(out.parent / "no-cifar-here"), "--json", str(out)])
    return json.loads(out.read_text())


def conv_linear_training_flops(model: nn.Module, shape=(1, 3, 32, 32)) -> float:
    """Training FLOPs per image worked out by hand: forward 2*MACs of every conv and linear layer;
    backward twice that, except that nothing needs the gradient of the input image."""
    fwd, first = [], []

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            macs = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] * out[0].numel()
        else:
            macs = m.in_features * m.out_features
        fwd.append(2 * macs)
        if not inputs[0].requires_grad and not first:
            first.append(2 * macs)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    model(torch.randn(shape))
    return 3 * sum(fwd) - first[0]


def test_quick_bench_writes_every_key(quick_results):
    r = quick_results
    assert r["data"].startswith("512 random uint8 images")
    assert r["device"] == "cpu" and r["threads"] == 1 and r["batch_size"] == 16 and r["steps"] == 2
    for key in ("pipeline_img_s", "dataloader_img_s", "matmul_flop_s"):
        assert r[key] > 0, key
    assert r["pipeline_speedup"] == pytest.approx(r["pipeline_img_s"] / r["dataloader_img_s"])
    assert r["matmul_flop_s"] == pytest.approx(sum(r["matmul_flop_s_before_after"]) / 2)
    m = "wrn-16-1"
    assert r["train_img_s"][m] > 0
    assert 0 <= r["non_model_fraction"][m] <= 1
    assert r["train_flops_per_image"][m] == pytest.approx(conv_linear_training_flops(make_model(m, 10)))
    assert r["flop_utilisation"][m] == pytest.approx(r["train_img_s"][m] * r["train_flops_per_image"][m]
                                                     / r["matmul_flop_s"])
    # wrn-28-2 was not asked for, so its target is not judged
    assert set(r["targets"]) == {"pipeline_speedup >= 10", "non_model_fraction/wrn-16-1 <= 0.05"}
    assert r["targets"]["pipeline_speedup >= 10"] == (r["pipeline_speedup"] >= 10)
    # at toy sizes the table says so instead of shouting MISSED
    assert r["quick"] and all(line.endswith("at --quick's toy sizes, which do not judge it") and "MISSED" not in line
                              for line in bench.table(r).splitlines() if line.startswith("target "))
    assert "MISSED" in bench.table({**r, "quick": False, "targets": {"pipeline_speedup >= 10": False}})
    opts = r["options"]
    assert set(opts) == {"default", "channels_last"} and r["option_model"] == m
    assert opts["channels_last"]["speedup"] == pytest.approx(opts["channels_last"]["train_img_s"]
                                                             / opts["default"]["train_img_s"])
    # evaluation in the old large batches, the CPU default's batches, and those with channels_last
    assert set(r["eval_img_s"]) == {"batch 1024", "batch 128", "batch 128 channels_last"}
    assert all(v > 0 for v in r["eval_img_s"].values())
    assert r["eval_speedup"]["batch 1024"] == 1
    assert r["eval_speedup"]["batch 128"] == pytest.approx(r["eval_img_s"]["batch 128"] / r["eval_img_s"]["batch 1024"])
    # the Clothing1M pipeline (JPEG files through DataLoader workers) next to resnet50's training step, tiny here
    assert r["clothing_pipeline_img_s"] > 0 and r["clothing_train_img_s"] > 0
    assert (r["clothing_crop"], r["clothing_batch_size"], r["workers"], r["file_size"]) == (32, 4, 1, 40)


@pytest.mark.parametrize("flags, message", [
    (["--models", "resnet-9000"], "unknown model 'resnet-9000'"),
    (["--options", "turbo"], "unknown option 'turbo'"),
    (["--steps", "0"], "--steps must be positive"),
    (["--steps", "40"], "exceeds the 512 training images"),
])
def test_bench_bad_flags_give_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--device", "cpu", "--data_dir", str(tmp_path), "--json", str(tmp_path / "b.json"),
                    *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "b.json").exists()


def test_crop_flip_matches_torchvision_on_non_square_images():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (5, 2, 6, 9), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 7, (5, 2), generator=g)
    flips = torch.tensor([True, False, True, True, False])
    out = datasets.augment.random_crop_flip(images, 3, offsets=offsets, flips=flips)
    for i in range(5):
        ref = TF.crop(TF.pad(images[i], [3]), int(offsets[i, 0]), int(offsets[i, 1]), 6, 9)
        assert torch.equal(out[i], TF.hflip(ref) if flips[i] else ref)


def one_epoch(flags: list[str], n: int = 16) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """An epoch of engine.train_epoch (one SGD+EMA step) on fixed data; (sums, parameter updates, EMA tensors)."""
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.arange(n) % 10
    state = bench.Trainer("wrn-16-1", x, labels, 16, ["--lr", "0.05", *flags]).state
    before = [p.detach().clone() for p in state.model.parameters()]
    totals = engine.train_epoch(state)
    updates = [p.detach() - b for p, b in zip(state.model.parameters(), before)]
    return totals, updates, [t.clone() for t in state.ema_tensors]


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    return num / sum(float(y.pow(2).sum()) for y in b) ** 0.5


@pytest.fixture(scope="module")
def default_epoch():
    return one_epoch([])


def test_channels_last_trains_like_the_default(default_epoch):
    totals, updates, ema = one_epoch(["--channels_last"])
    ref_totals, ref_updates, ref_ema = default_epoch
    assert torch.allclose(totals, ref_totals, rtol=1e-4)
    # the same step up to float32 rounding of other convolution kernels, which BatchNorm's backward (a
    # difference of nearly equal terms) lifts to ~1e-3; a wrong layout would be off by order 1
    assert relative_error(updates, ref_updates) < 1e-2
    assert relative_error(ema, ref_ema) < 1e-5


def test_amp_trains_like_the_default_within_bf16_precision(default_epoch):
    # bf16 autocast runs on a CPU too (the training scripts refuse it there only because it is slow)
    totals, updates, _ = one_epoch(["--amp"])
    ref_totals, ref_updates, _ = default_epoch
    assert torch.allclose(totals[:3], ref_totals[:3], rtol=0.05)    # objective and CE sums
    # bf16 keeps 8 mantissa bits: the step differs by ~0.12 (relative, measured); an unrelated step of the
    # same size would be off by ~1.4
    assert relative_error(updates, ref_updates) < 0.3


def test_amp_refused_on_cpu_without_bf16_units_with_one_line(fake_root, paper_sums, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine, "cpu_bf16_units", lambda: False)
    argv = ["--n_epochs", "1", "--model", "wrn-16-1", "--data_dir", str(fake_root), "--out_dir", str(tmp_path),
            "--device", "cpu", "--sigma", "0", "--amp"]
    with pytest.raises(SystemExit) as exc:
        train_cifar.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(r"--amp, bf16 autocast\) needs a CUDA GPU or a CPU with bf16 "
                                                    r"instructions.*drop it", err), err
    assert not (tmp_path / "runs").exists()


def test_bf16_trains_on_a_cpu_with_bf16_units(fake_root, paper_sums, tmp_path, monkeypatch):
    """Where the CPU has bf16 instructions, --precision bf16 trains (autocast runs on any CPU, so the test runs
    everywhere with the check answering yes) and is recorded; its losses are float32's within bf16's precision."""
    monkeypatch.setattr(engine, "cpu_bf16_units", lambda: True)
    def run(out, *flags):
        train_cifar.main(["--n_epochs", "1", "--batch_size", "32", "--lr", "0.01", "--model", "wrn-16-1",
                          "--data_dir", str(fake_root), "--out_dir", str(out), "--device", "cpu", "--sigma", "0",
                          "--seed", "3", "--train_subset", "64", "--test_subset", "32", *flags])
        folder = next((out / "runs").iterdir())
        return yaml.safe_load((folder / "config.yaml").read_text()), list(csv.DictReader(open(folder / "metrics.csv")))
    config, rows = run(tmp_path / "bf16", "--precision", "bf16")
    ref_config, ref_rows = run(tmp_path / "fp32", "--precision", "fp32")
    assert (config["precision"], config["amp"]) == ("bf16", True) and ref_config["precision"] == "fp32"
    loss, ref_loss = float(rows[0]["train/loss"]), float(ref_rows[0]["train/loss"])
    assert loss != ref_loss and abs(loss - ref_loss) < 0.05 * ref_loss


@pytest.mark.parametrize("text, native", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),   # Zen 4, Cooper Lake
    ("flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n", True),                            # Sapphire Rapids
    ("Features\t: fp asimd bf16 i8mm sve\n", True),                                             # Arm (Graviton 3)
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n", False),                         # AVX-512 without bf16
    ("flags\t\t: fpu sse2 avx2 fma\n", False),
])
def test_cpu_bf16_units_are_read_from_the_cpu_flags(tmp_path, text, native):
    (tmp_path / "cpuinfo").write_text(text)
    assert engine.cpu_bf16_units(str(tmp_path / "cpuinfo")) is native
    assert engine.cpu_bf16_units(str(tmp_path / "absent")) is False


def test_channels_last_run_matches_default_run(fake_root, paper_sums, tmp_path):
    def run(out, *flags):
        return train_cifar.main(["--n_epochs", "1", "--batch_size", "32", "--lr", "0.01", "--model", "wrn-16-1",
                                 "--train_subset", "64", "--test_subset", "40", "--sigma", "1.0", "--mo",
                                 "--data_dir", str(fake_root), "--out_dir", str(out), "--device", "cpu", *flags])
    ref = run(tmp_path / "default")
    got = run(tmp_path / "cl", "--channels_last")
    assert got["last_test_acc"] == pytest.approx(ref["last_test_acc"], abs=1 / 40 + 1e-9)  # at most one image flips
    (ref_dir,) = (tmp_path / "default" / "runs").iterdir()
    (cl_dir,) = (tmp_path / "cl" / "runs").iterdir()
    a = torch.load(ref_dir / "ema_final.pt", weights_only=True)
    b = torch.load(cl_dir / "ema_final.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert relative_error([b[k].float() for k in a], [a[k].float() for k in a]) < 1e-4
    config = (cl_dir / "config.yaml").read_text()
    assert "channels_last: true" in config and "amp: false" in config



def test_what_native_code_writes_to_fd_2_comes_back_through_sys_stderr(capfd):
    """timing.native_stderr_to_python: the GPU check captures a part's sys.stderr into its log; torch.profiler's
    kineto writes its "USDT: profiler_start" lines to file descriptor 2 directly, past that capture."""
    caught = io.StringIO()
    with contextlib.redirect_stderr(caught), timing.native_stderr_to_python():
        os.write(2, b"from native code\n")
    assert caught.getvalue() == "from native code\n"
    assert "from native code" not in capfd.readouterr().err


def test_counting_the_ops_of_a_step_prints_nothing_on_the_terminal():
    code = ("import contextlib, io, torch, timing\n"
            "x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)\n"
            "trainer = timing.Trainer('wrn-16-1', x, torch.randint(0, 10, (8,)), 4, [])\n"
            "caught = io.StringIO()\n"
            "with contextlib.redirect_stderr(caught):\n"
            "    counts = timing.step_counts(trainer, 1)\n"
            "print(counts['cpu_ops_per_step'] > 0, repr(caught.getvalue()))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True") and "profiler" not in done.stderr, done.stderr
