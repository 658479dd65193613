"""Timing of the training step and of evaluation, shared by bench.py (the benchmarks) and gpu_check.py (the GPU
check): a network set up exactly as a run sets it up, the device's clock, FLOP counts."""
from __future__ import annotations

import copy
import dataclasses
import time

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
        self.state = engine.setup(self.args, data, make_model(name, 10), x.device, peers=peers)
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
