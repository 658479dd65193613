"""Timing of the training step and of evaluation, shared by bench.py (the benchmarks) and gpu_check.py (the GPU
check): a network set up exactly as a run sets it up, the device's clock, FLOP counts, host syncs and kernels per
step, and training processes sharing a device."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import multiprocessing
import queue
import time
import warnings

import torch

import cli
import engine
import methods
import sln
from data import CIFAR, NoisyData
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
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        engine.train_epoch(first).tolist()
    events = prof.events()
    if cuda:
        out["cuda_kernels_per_step"] = sum(e.device_type == DeviceType.CUDA and not e.name.startswith(
            ("Memcpy", "Memset")) for e in events) / steps
    out["cpu_ops_per_step"] = sum(e.name.startswith("aten::") and e.cpu_parent is None for e in events) / steps
    return out


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
