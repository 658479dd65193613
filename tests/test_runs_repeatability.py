"""When two runs are bit-identical (docs/training.md): what config.yaml records of the machine, that equal records
repeat bit for bit (a method with two networks included; through a tune.py trial: tests/test_tune.py), and that a
different CPU instruction set changes the numbers, as a different thread count does (tests/test_cli_messages.py)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import runs
import train_cifar

pytestmark = pytest.mark.slow     # training runs repeated, one in a subprocess: not in make test-fast

ROOT = runs.CODE_DIR
COTEACHING = ["--method", "Co-teaching", "--num_gradual", "1"]   # its small-loss selection from the first epoch


def flags(fake_root, out_dir, *extra):
    return ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--batch_size", "64", "--n_epochs", "2",
            "--lr", "0.01", "--seed", "7", "--model", "wrn-16-1", "--train_subset", "200", "--test_subset", "50",
            "--data_dir", str(fake_root), "--out_dir", str(out_dir), "--device", "cpu", *extra]


def numbers(run_dir):
    """metrics.csv without its seconds column: what must repeat bit for bit."""
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    seconds = rows[0].split(",").index("seconds")
    return [[v for i, v in enumerate(r.split(",")) if i != seconds] for r in rows]


def only_run(out_dir):
    (run_dir,) = (out_dir / "runs").iterdir()
    return run_dir


def test_cpu_isa_is_read_from_the_cpu_flags(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl "
                                      "avx512_bf16 xsave\n")
    assert runs.cpu_isa(str(tmp_path / "cpuinfo")) == ["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                                       "avx512_bf16"]
    (tmp_path / "arm").write_text("Features\t: fp asimd evtstrm aes sve bf16\n")
    assert runs.cpu_isa(str(tmp_path / "arm")) == ["asimd", "sve", "bf16"]
    assert runs.cpu_isa(str(tmp_path / "absent")) == []


def test_a_two_network_method_repeats_bit_for_bit_and_records_the_instruction_set(fake_root, paper_sums, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", torch.backends.cpu.get_cpu_capability().lower())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("a", "b"):
            train_cifar.main(flags(fake_root, tmp_path / name, *COTEACHING))
    finally:
        torch.set_num_threads(before)
    a, b = only_run(tmp_path / "a"), only_run(tmp_path / "b")
    assert numbers(a) == numbers(b)
    runtime = yaml.safe_load((a / "config.yaml").read_text())["runtime"]
    assert runtime["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert runtime["cpu_isa"] == runs.cpu_isa() and runtime["torch_threads"] == 1 and runtime["cpu_name"]
    # an override of the kernels' choice is part of the record
    assert runtime["kernel_env"]["ATEN_CPU_CAPABILITY"] == torch.backends.cpu.get_cpu_capability().lower()


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="no vector unit to switch off")
def test_another_instruction_set_changes_the_numbers_and_the_record(fake_root, tmp_path):
    """ATen's kernels for the CPU's own vector unit (AVX2, AVX512, ...) against its plain ones: the same flags,
    seed and thread count give other numbers, and config.yaml says which kernels ran. (The committed mini
    Co-teaching run that a rerun could not repeat had been trained on a CPU without AVX-512.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    root = tmp_path / "data"          # a copy without noise files: --custom_noise makes one, with no checksum
    shutil.copytree(fake_root / "cifar-10-batches-py", root / "cifar-10-batches-py")
    for name, capability in (("native", None), ("default", "default")):
        run_env = {**env, **({"ATEN_CPU_CAPABILITY": capability} if capability else {})}
        # a fresh process: ATen picks its kernels once, at its first use; custom noise needs no checksum hook
        done = subprocess.run([sys.executable, str(ROOT / "train_cifar.py"),
                               *flags(root, tmp_path / name, "--custom_noise", *COTEACHING)],
                              env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    native, default = only_run(tmp_path / "native"), only_run(tmp_path / "default")
    records = [yaml.safe_load((d / "config.yaml").read_text())["runtime"] for d in (native, default)]
    assert records[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert records[1]["cpu_capability"] == "DEFAULT"
    assert numbers(native)[0] == numbers(default)[0]                 # the same columns
    assert numbers(native)[1] != numbers(default)[1]                 # other floats from the first epoch on

