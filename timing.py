"""The training step measured, for bench.py (the benchmarks) and gpu_check.py (the GPU check): a network set up
exactly as a run sets it up, the device's clock, FLOP counts, host syncs and kernels per step, training processes
sharing a device; the step's numbers on a device against the CPU's strict float32; and the machine it all ran on."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata
import math
import multiprocessing
import os
import platform
import queue
import subprocess
import sys
import tempfile
import time
import warnings
from types import SimpleNamespace

import torch

import cli
import engine
import methods
import runs
import sln
from data import CIFAR, NoisyData
from datasets.augment import random_crop_flip
from models import make_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def train_flops_per_image(name: str, num_classes: int = 10, batch: int = 2) -> float:
    """FLOPs of one training step's forward and backward pass per image, as torch.utils.flop_counter
    counts them (convolutions and matrix products; exact, since they scale linearly with the batch)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = make_model(name, num_classes)
    x = torch.randn(batch, 3, 32, 32)
    targets = sln.onehot(torch.arange(batch) % num_classes, num_classes)
    with FlopCounterMode(display=False) as counter:
        sln.soft_cross_entropy(model(x), targets).backward()
    return counter.get_total_flops() / batch


class Trainer:
    """A network set up by engine.setup, the very function every training run calls (network, EMA copy, SGD,
    targets, data on the device), with the training flags' defaults plus SLN-MO (sigma 1), or the method of
    `method` (its networks and own flags at their defaults), on `x` and `labels`."""

    def __init__(self, name: str, x: torch.Tensor, labels: torch.Tensor, batch_size: int, flags: list[str] = (),
                 method: str = "SLN-MO"):
        parser = cli.Parser()
        cli.add_training_args(parser, default_model=name)
        self.args = parser.parse_args(["--batch_size", str(batch_size), *methods.argv(method), *flags])
        self.args.dataset_name = "cifar10"
        m = cli.check_method(self.args)
        images, y = x.cpu().numpy(), labels.cpu().numpy()
        noisy = torch.rand(len(y), generator=torch.Generator().manual_seed(0)).numpy() < 0.4
        spec = CIFAR["cifar10"]
        data = NoisyData("bench", images, y, y, noisy, images[:1], y[:1], 10, [str(c) for c in range(10)],
                         spec.mean, spec.std)
        torch.manual_seed(0)
        peers = [make_model(name, 10) for _ in range(m.networks - 1)]
        self.state = engine.setup(self.args, data, make_model(name, 10), x.device, peers=peers, method=m)
        if m.start_epoch:
            m.start_epoch(self.state.method_state, 1000, self.args)   # a method's schedule, at its end
        self.device = x.device

    def epoch(self, n: int) -> float:
        """Wall seconds of engine.train_epoch over the first `n` images, including its one read of the sums."""
        s = self.state
        part = dataclasses.replace(s, members=torch.arange(n, device=s.labels.device))
        sync(self.device)
        t = time.perf_counter()
        engine.train_epoch(part).tolist()
        return time.perf_counter() - t


def time_eval(name: str, x: torch.Tensor, n: int, rounds: int = 2) -> dict:
    """Images/s of engine.predict in large batches, in the device's default batches, and with channels_last."""
    device = x.device
    mean, std = torch.tensor(CIFAR["cifar10"].mean, device=device), torch.tensor(CIFAR["cifar10"].std, device=device)
    images = x[:n]
    small = engine.default_eval_batch_size(device)
    plain = make_model(name, 10).to(device)
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    settings = {"batch 1024": (plain, 1024), f"batch {small}": (plain, small),
                f"batch {small} channels_last": (fast, small)}
    best = {k: float("inf") for k in settings}
    for model, batch in settings.values():
        engine.predict(model, images[:batch], mean, std, batch)        # warm-up
    for _ in range(rounds):
        for k, (model, batch) in settings.items():
            sync(device)
            t0 = time.perf_counter()
            engine.predict(model, images, mean, std, batch)
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t0)
    out = {k: len(images) / t for k, t in best.items()}
    first = out["batch 1024"]
    return {"eval_img_s": out, "eval_speedup": {k: v / first for k, v in out.items()}}


@contextlib.contextmanager
def native_stderr_to_python():
    """What native code writes to file descriptor 2 while the block runs (torch.profiler's kineto prints
    "USDT: profiler_start" lines there, unasked), written to sys.stderr once it ends instead: where the GPU check
    captures a part's stderr into its log, rather than onto the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            sys.stderr.write(caught.read().decode(errors="replace"))


def step_counts(trainer: Trainer, steps: int) -> dict:
    """Per training step: host syncs (CUDA's sync debug mode warns at each) and the device kernels torch.profiler
    records (memory copies and sets not counted); on a CPU, the top-level aten operations instead."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    s = trainer.state
    first = dataclasses.replace(s, members=torch.arange(steps * s.args.batch_size, device=s.labels.device))
    cuda = s.labels.device.type == "cuda"
    out: dict = {"host_syncs_per_step": None, "note": "host syncs and kernels are counted on CUDA only; "
                                                      "cpu_ops_per_step counts top-level aten ops"}
    if cuda:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sums = engine.train_epoch(first)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sums.tolist()
        out = {"host_syncs_per_step": sum("synchroniz" in str(w.message) for w in caught) / steps}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with native_stderr_to_python(), profile(activities=activities) as prof:
        engine.train_epoch(first).tolist()
    events = prof.events()
    if cuda:
        out["cuda_kernels_per_step"] = sum(e.device_type == DeviceType.CUDA and not e.name.startswith(
            ("Memcpy", "Memset")) for e in events) / steps
    out["cpu_ops_per_step"] = sum(e.name.startswith("aten::") and e.cpu_parent is None for e in events) / steps
    return out


def time_setting(name: str, x: torch.Tensor, labels: torch.Tensor, batch: int, precision: str, flags: list[str],
                 warmup_batches: int, steps: int, rounds: int, profile_steps: int) -> dict:
    """Images/s of engine.train_epoch in one precision with extra training flags (--amp for bf16), best of `rounds`
    epochs of `steps` batches after a warm-up (which is where --compile compiles); achieved TFLOP/s, step_counts."""
    engine.set_precision(precision)
    trainer = Trainer(name, x, labels, batch, (["--amp"] if precision == "bf16" else []) + flags)
    warmup = trainer.epoch(warmup_batches * batch)
    best = min(trainer.epoch(steps * batch) for _ in range(rounds))
    img_s = steps * batch / best
    return {"precision": precision, "flags": " ".join(["--precision", precision, *flags]),
            "train_img_s": round(img_s, 1), "ms_per_step": round(1000 * best / steps, 3),
            "warmup_s": round(warmup, 1), "achieved_tflop_s": round(img_s * train_flops_per_image(name) / 1e12, 3),
            **step_counts(trainer, profile_steps)}


def concurrent_worker(name: str, batch: int, steps: int, warmup_batches: int, device: str, barrier, results) -> None:
    """One of concurrent_epochs' processes: warm up, wait for the others, train `steps` batches of random images."""
    torch.set_num_threads(1)
    engine.set_precision("tf32")
    torch.backends.cudnn.benchmark = True
    g, n = torch.Generator().manual_seed(0), steps * batch
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    trainer = Trainer(name, x, torch.randint(0, 10, (n,), generator=g).to(device), batch)
    trainer.epoch(warmup_batches * batch)
    barrier.wait()
    start = time.time()
    seconds = trainer.epoch(n)
    results.put({"images": n, "start": start, "end": time.time(), "img_s": n / seconds})


def concurrent_epochs(name: str, batch: int, steps: int, warmup_batches: int, device: str, processes: int,
                      until: float = math.inf) -> list[dict]:
    """`processes` training processes (tf32, one CPU thread each) sharing `device`, started together once all are
    warmed up: each one's images, wall-clock start and end, and images/s. Raises RuntimeError when one fails or
    time.monotonic() passes `until`."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=concurrent_worker, args=(name, batch, steps, warmup_batches, device, barrier,
                                                           results), daemon=True) for _ in range(processes)]
    got: list[dict] = []
    try:
        for w in workers:
            w.start()
        while len(got) < processes:
            with contextlib.suppress(queue.Empty):
                got.append(results.get(timeout=0.5))
            failed = [(k, w.exitcode) for k, w in enumerate(workers) if w.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"process {failed[0][0]} ended with exit status {failed[0][1]}")
            if time.monotonic() > until:
                raise RuntimeError("the processes did not finish in the time given")
    finally:
        for w in workers:      # ended by now unless one failed; terminating a finished one would leak its semaphores
            w.join(None if len(got) == processes else 0)
            if w.is_alive():
                w.terminate()
                w.join()
    return got


def concurrent_throughput(name: str, batch: int, steps: int, warmup_batches: int, device: str, processes: int,
                          single_img_s: float | None, until: float = math.inf) -> tuple[dict, list[dict]]:
    """concurrent_epochs' total images/s, from the first start to the last end, next to one process's
    `single_img_s`; and each process's own figures."""
    got = concurrent_epochs(name, batch, steps, warmup_batches, device, processes, until)
    total = sum(r["images"] for r in got) / (max(r["end"] for r in got) - min(r["start"] for r in got))
    return {"processes": len(got), "precision": "tf32", "total_img_s": round(total, 1),
            "per_process_img_s": [round(r["img_s"], 1) for r in got],
            "vs_one_process": round(total / single_img_s, 2) if single_img_s else None}, got


# ----------------------------------------------------------------------------------------------------
# The training step's numbers on a device against the CPU's strict float32

# The largest relative loss difference and relative error of the updates that count as correct. On a CPU, bf16
# autocast changed one step's update by ~0.12 (tests/test_bench.py); TF32 keeps 10 mantissa bits to bf16's
# 7; strict float32 differs only by the order of its sums, which BatchNorm's backward lifts to ~1e-3.
TOLERANCE = {"fp32": {"loss": 1e-4, "update": 1e-2}, "tf32": {"loss": 1e-2, "update": 0.1},
             "bf16": {"loss": 5e-2, "update": 0.3}}


def draws(batch: int, n_test: int, seed: int, steps: int = 3) -> dict:
    """Everything random in numerics_run, drawn once on the CPU: images, labels, `steps` augmented batches, the SLN
    noise of every image, and test images."""
    g = torch.Generator().manual_seed(seed)
    n = steps * batch
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    batches = [(idx, random_crop_flip(images[idx], 4, g)) for idx in torch.arange(n).view(steps, batch)]
    return {"images": images, "labels": labels, "batches": batches, "noise": torch.randn(n, 10, generator=g),
            "test_images": torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8)}


def numerics_run(device: torch.device, precision: str, d: dict, model: str, seed: int,
                 deterministic: bool = False) -> dict:
    """engine.train_epoch steps of SLN-MO-LC (an SGD and an EMA step each) set up as a run sets them up (Trainer),
    one label correction (engine.correct_labels, on un-augmented images so that no device draws) and one evaluation
    of both networks, all from the draws `d`; the tensors to compare, on the CPU.

    SLN's noise is drawn in train_epoch from the device's generator, which differs between devices; here it is the
    CPU's draw, added to the targets beforehand, and train_epoch runs with sigma 0 (noisy_targets then returns the
    targets as they are): the loss is the same as with sigma 1 and that noise. Sets torch's deterministic kernels and
    cudnn.benchmark as engine.run does with --deterministic or without."""
    engine.set_precision(precision)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    batch = str(len(d["batches"][0][0]))
    flags = ["--no-lc_augment", "--eval_batch_size", batch, "--seed", str(seed), "--precision", precision]
    s = Trainer(model, d["images"].to(device), d["labels"].to(device), int(batch),
                flags + (["--amp"] if precision == "bf16" else []), method="SLN-MO-LC").state
    initial = [t.detach().cpu().clone() for t in s.model_tensors]
    images, sigma, s.targets, s.sigma = s.x, s.sigma, (s.given.cpu() + s.sigma * d["noise"]).to(device), 0.0
    losses = []
    for idx, xb in d["batches"]:        # an epoch of one batch made beforehand: the same crops and flips everywhere
        made = (idx.to(device), xb.to(device))
        s.members, s.x = made[0], SimpleNamespace(train_batches=lambda *_, made=made: [made])
        losses.append(engine.train_epoch(s)[0].cpu() / len(idx))
    s.x, s.members, s.targets, s.sigma = images, None, s.given.clone(), sigma
    engine.correct_labels(s)
    logits = [engine.predict(net, d["test_images"].to(device), s.mean, s.std, s.eval_bs, amp=s.args.amp).cpu()
              for net in (s.model, s.ema)]
    # the float tensors of the state (sln.ema_tensors), split into parameters and BatchNorm's running statistics
    params = dict(s.model.named_parameters())
    is_param = [k in params for k, v in s.model.state_dict().items() if v.is_floating_point()]

    def split(tensors: list[torch.Tensor], want: bool) -> list[torch.Tensor]:
        return [t.detach().float().cpu() for t, p in zip(tensors, is_param) if p == want]
    return {"loss": losses, "weights": split(s.model_tensors, True), "buffers": split(s.model_tensors, False),
            "ema": split(s.ema_tensors, True), "ema_buffers": split(s.ema_tensors, False),
            "initial_weights": split(initial, True), "initial_buffers": split(initial, False),
            "targets": [s.targets.cpu()], "logits": logits}


def differences(got: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    """max_abs: the largest |got - ref| of any element; max_rel: the largest over tensors of that tensor's max_abs
    over its largest |ref| (elementwise quotients blow up where values cross zero)."""
    diffs = [(g.double() - r.double()).abs().max() for g, r in zip(got, ref)]
    scales = [r.double().abs().max().clamp_min(1e-30) for r in ref]
    return {"max_abs": max(float(d) for d in diffs), "max_rel": max(float(d / s) for d, s in zip(diffs, scales))}


def update_error(got: list[torch.Tensor], ref: list[torch.Tensor], initial: list[torch.Tensor]) -> float | None:
    """|| (got - initial) - (ref - initial) || / || ref - initial ||: how far the step taken is from the reference's
    (weights barely move in a few steps, so their own differences say little)."""
    num = sum(float((g.double() - r.double()).pow(2).sum()) for g, r in zip(got, ref))
    den = sum(float((r.double() - i.double()).pow(2).sum()) for r, i in zip(ref, initial))
    return math.sqrt(num / den) if den > 0 else None


def compare(got: dict, ref: dict, precision: str) -> dict:
    """numerics_run's figures in one precision against the reference, and whether they are within TOLERANCE.
    `buffers` are BatchNorm's running statistics (which the EMA averages too). The label-correction targets are
    reported, not judged: after three steps the predictions are nearly uniform, so tiny differences move argmaxes."""
    out = {name: differences(got[name], ref[name]) for name in ("loss", "weights", "ema", "buffers", "ema_buffers")}
    for name, key, initial in (("weight", "weights", "initial_weights"), ("ema", "ema", "initial_weights"),
                               ("buffer", "buffers", "initial_buffers")):
        out[f"{name}_update_rel_error"] = update_error(got[key], ref[key], ref[initial])
    out.update(eval_logits=differences(got["logits"], ref["logits"]),
               lc_targets_max_abs=differences(got["targets"], ref["targets"])["max_abs"],
               lc_argmax_agreement=float((got["targets"][0].argmax(1) == ref["targets"][0].argmax(1)).float().mean()),
               loss_values=[float(v) for v in got["loss"]])
    loss, update = TOLERANCE[precision]["loss"], TOLERANCE[precision]["update"]
    bounds = {f"loss max_rel <= {loss:g}": (out["loss"]["max_rel"], loss),
              f"weight update rel error <= {update:g}": (out["weight_update_rel_error"], update),
              f"EMA update rel error <= {update:g}": (out["ema_update_rel_error"], update),
              f"BatchNorm statistics update rel error <= {update:g}": (out["buffer_update_rel_error"], update),
              f"eval logits max_rel <= {update:g}": (out["eval_logits"]["max_rel"], update)}
    out["checks"] = {"all finite": all(bool(torch.isfinite(t).all()) for ts in got.values() for t in ts),
                     **{k: value is not None and value <= bound for k, (value, bound) in bounds.items()}}
    out["correct"] = all(out["checks"].values())
    return out


def deterministic_twice(device: torch.device, d: dict, model: str, seed: int) -> dict:
    """numerics_run twice in tf32 with --deterministic's kernels: whether the two are the same to the last bit."""
    try:
        a, b = (numerics_run(device, "tf32", d, model, seed, deterministic=True) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(False)
    differ = [k for k in a if not all(torch.equal(x, y) for x, y in zip(a[k], b[k]))]
    return {"precision": "tf32", "bit_identical": not differ, "differing": differ,
            **({"error": f"the two --deterministic runs differ in {', '.join(differ)}"} if differ else {})}


# ----------------------------------------------------------------------------------------------------
# The machine

def driver() -> dict:
    """The NVIDIA driver as nvidia-smi reports it, and the newest CUDA its driver API supports (cuda-bindings, which
    the torch wheels bring), or why they could not be told."""
    out: dict = {}
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            out.update(driver_version=lines[0].split(",")[0].strip(), nvidia_smi=[line.strip() for line in lines])
        else:
            out["nvidia_smi"] = f"exit status {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        out["nvidia_smi"] = "not found" if isinstance(e, FileNotFoundError) else f"{type(e).__name__}: {e}"[:200]
    try:
        from cuda.bindings import driver as cuda_driver
        err, version = cuda_driver.cuDriverGetVersion()
        out["cuda_driver_api"] = f"{version // 1000}.{version % 1000 // 10}" if int(err) == 0 else f"unknown ({err})"
    except Exception as e:     # a probe only: whatever a machine without the driver library raises
        out["cuda_driver_api"] = f"unknown ({type(e).__name__}: {' '.join(str(e).split())}"[:129] + ")"
    return out


def ray_version() -> str | None:
    """Ray's version, or None where it is not installed."""
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """What a measurement ran on: the libraries, CUDA and cuDNN as torch sees them, the GPU and its driver, Ray,
    the host, the code."""
    gpu = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    return {**runs.library_versions(), "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": gpu is not None,
            "gpu": gpu and {"name": gpu.name, "count": torch.cuda.device_count(), "memory_gib":
                            round(gpu.total_memory / 2 ** 30, 1), "compute_capability": f"{gpu.major}.{gpu.minor}"},
            "driver": driver(), "ray": ray_version() or "not installed", "host": platform.node(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "code": runs.code_version()}

