"""The training loop of train_cifar.py, train_real.py and tune.py: setup, one epoch, the epoch loop, prediction.

Follows the reference `noise_cifar_train.py`: an EMA copy of the network is always kept (the network starts
as a copy of it); SLN+MO and SLN+MO+LC report the EMA network; label correction runs before every epoch
after `lc_n_epoch` and turns sigma off. The authors' Clothing1M script adds four options, each a flag that is
off by default: a step learning-rate schedule (`lr_milestones`), a fresh class-balanced sample of the training
set every epoch (`num_per_class`), soft correction targets (`lc_soft`) and a validation set that picks the
epoch whose test accuracy is reported. Batches come from datasets/images.py (the images on the device, or image files
read by DataLoader workers). The run folder (config, metrics, checkpoints, resume) is runs.py's. A run that cannot
start or go on raises the project's errors (errors.py); the scripts say them and exit.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import shlex
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import files
import methods
import runs
import sln
from datasets import workers
from datasets.augment import normalise
from data import NoisyData, balanced_indices
from models import WeightsError
from errors import DataError, RunStopped
from datasets.images import DeviceImages, FileImages, UnreadableImage, image_source

METRIC_FIELDS = ["epoch", "seconds", "sigma", "train/loss", "train/loss_clean", "train/loss_noisy", "train/acc",
                 "train/acc_noisy",
                 "test/loss", "test/acc", "test/loss_ema", "test/acc_ema", "test/acc_reported"]
LC_FIELDS = ["lc/changed_fraction", "lc/corrected_precision"]
VAL_FIELDS = ["val/loss", "val/acc"]
LR_FIELDS = ["lr"]


def default_eval_batch_size(device: torch.device) -> int:
    """Measured on a 2-core CPU: wrn-16-1 evaluates 2-3x faster in batches of 128 than of 1024 (the working set
    fits the caches); a GPU wants large batches."""
    return 128 if device.type == "cpu" else 1024


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")    # x86's AVX512_BF16 and AMX, Arm's BF16 (as /proc/cpuinfo names them)


def cpu_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has native bf16 instructions, read from the flags Linux lists; False where it lists none."""
    return any(flag in runs.cpu_isa(cpuinfo) for flag in BF16_CPU_FLAGS)


def pick_device(name: str) -> torch.device:
    """--device: auto picks CUDA, then Apple MPS, then the CPU. Raises DataError for a device that is not here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def resolve_precision(args: argparse.Namespace) -> None:
    """--amp is --precision bf16 (and wins over it, as the older flag that earlier commands give): make them agree."""
    if args.amp:
        args.precision = "bf16"
    args.amp = args.precision == "bf16"


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when `enabled` (--amp); a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def logits_of(model: nn.Module, batches, mean: torch.Tensor, std: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """float32 logits of `model` in eval mode for each uint8 batch (on the device) of `batches`, concatenated."""
    model.eval()
    out = []
    for xb in batches:
        with autocast(xb.device, amp):
            out.append(model(normalise(xb, mean, std)).float())
    return torch.cat(out)


def predict(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch_size: int,
            pad: int = 0, generator: torch.Generator | None = None, flip: bool = True,
            amp: bool = False) -> torch.Tensor:
    """Logits of `model` in eval mode for uint8 images on the device; with pad > 0 the training
    augmentation is applied first (the reference's label-correction pass does this). Logits are float32."""
    batches = DeviceImages(images, pad, flip).eval_batches(batch_size, augment=pad > 0, gen=generator)
    return logits_of(model, batches, mean, std, amp)


def lr_at(epoch: int, lr: float, milestones: list[int], decay: float) -> float:
    """The step schedule: `lr` times `decay` for every milestone that `epoch` is past (the authors' Clothing1M
    script: lr 1e-3, times 0.1 for epochs > 5)."""
    return lr * decay ** sum(epoch > m for m in milestones)


def accuracy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = torch.nn.functional.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    return float(acc), float(loss)


# ----------------------------------------------------------------------------------------------------
# Setup

@dataclasses.dataclass
class TrainState:
    """Everything one run trains with, on its device. `targets` (label correction), `sigma` and the method's
    state change as training goes; the rest is fixed after setup."""
    args: argparse.Namespace
    method: methods.Method
    model: nn.Module                     # the reported network (or the EMA's source, for SLN-MO)
    peers: list[nn.Module]               # the method's other networks (methods.Method.networks)
    ema: nn.Module
    optimizer: torch.optim.Optimizer     # over the parameters of every network
    method_state: dict                   # the method's own tensors (methods.Method.init), checkpointed
    ema_tensors: list[torch.Tensor]      # the EMA's float state (parameters and BN buffers), for sln.ema_update
    model_tensors: list[torch.Tensor]
    gen: torch.Generator                 # data order, augmentation, SLN noise
    x: DeviceImages | FileImages         # the training images (N of them)
    labels: torch.Tensor                 # given (noisy) labels
    clean: torch.Tensor                  # clean labels (the given ones where unknown)
    noisy_mask: torch.Tensor             # the given label (or, open-set, the image) is wrong
    given: torch.Tensor                  # one-hot given labels
    targets: torch.Tensor                # current targets before SLN noise: given, or corrected
    sigma: float
    test_x: DeviceImages | FileImages
    test_y: torch.Tensor
    # tune.py's split of the noisy training set (noisy labels) or the dataset's own clean one (Clothing1M)
    val_x: DeviceImages | FileImages | None
    val_y: torch.Tensor | None
    mean: torch.Tensor
    std: torch.Tensor
    eval_bs: int
    has_clean: bool
    members: torch.Tensor | None = None  # with num_per_class: this epoch's sample (indices); None: all images

    def fields(self) -> list[str]:
        """The columns of this run's metrics.csv."""
        return (METRIC_FIELDS + (LC_FIELDS if self.method.lc else []) + list(self.method.metrics)
                + (VAL_FIELDS if self.val_x is not None else []) + (LR_FIELDS if self.args.lr_milestones else []))

    @property
    def networks(self) -> list[nn.Module]:
        return [self.model, *self.peers]

    def trained(self, values: torch.Tensor) -> torch.Tensor:
        """The entries of a per-image tensor for the images this epoch trains on."""
        return values if self.members is None else values[self.members]


def method_state(method: methods.Method, known: dict, args: argparse.Namespace) -> dict:
    """The method's own tensors; a DataError where the method needs what the data does not tell."""
    try:
        return method.init(known, args) if method.init else {}
    except ValueError as e:
        raise DataError(str(e))


def setup(args: argparse.Namespace, data: NoisyData, model: nn.Module, device: torch.device,
          val: tuple[np.ndarray, np.ndarray] | None = None, peers: list[nn.Module] = (),
          method: methods.Method | None = None) -> TrainState:
    """Put the images where batches come from (the device, or DataLoader workers for image files), make the EMA
    copy of `model`, the optimiser of `model` and `peers` (a method's other networks) and the state of `method`,
    the run's (as the flags' check resolved it; the one `args` select when not given). bench.py times this too.
    Raises DataError where the method needs what the data lacks."""
    method = method or methods.of(args)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    to_dev = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    labels = to_dev(data.labels)
    has_clean = data.clean_labels is not None
    for net in (model, *peers):
        net.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    ema = copy.deepcopy(model)            # the reference copies the EMA network into the network at start
    for p in ema.parameters():
        p.requires_grad_(False)
    if args.compile:
        for net in (model, *peers, ema):
            net.compile()  # in place: parameters, state-dict keys and the EMA tensors below stay the same
    given = sln.onehot(labels, data.num_classes)
    source = lambda images: image_source(images, device, data.pad, data.flip, workers(vars(args)))  # noqa: E731
    clean = to_dev(data.clean_labels) if has_clean else labels
    known = {"labels": labels, "clean": clean if has_clean else None, "num_classes": data.num_classes,
             "noise_rate": data.noise_rate()}
    params = [q for net in (model, *peers) for q in net.parameters()]
    return TrainState(
        args=args, method=method, model=model, peers=list(peers), ema=ema,
        optimizer=torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                  weight_decay=args.weight_decay),
        method_state=method_state(method, known, args),
        ema_tensors=sln.ema_tensors(ema), model_tensors=sln.ema_tensors(model), gen=gen,
        x=source(data.images), labels=labels, clean=clean,
        noisy_mask=to_dev(data.is_noisy) if data.is_noisy is not None else torch.zeros_like(labels, dtype=torch.bool),
        given=given, targets=given.clone(), sigma=args.sigma,
        test_x=source(data.test_images), test_y=to_dev(data.test_labels),
        val_x=None if val is None else source(val[0]), val_y=None if val is None else to_dev(val[1]),
        mean=torch.tensor(data.mean, device=device), std=torch.tensor(data.std, device=device),
        eval_bs=args.eval_batch_size or default_eval_batch_size(device),
        has_clean=has_clean)


# ----------------------------------------------------------------------------------------------------
# One epoch

def train_epoch(s: TrainState, desc: str = "") -> torch.Tensor:
    """One epoch of training steps over the images `s.x` (this epoch's `s.members`, if set) in a seeded random order.

    Each step takes its augmented batch from the source, normalises it, runs every network of the method, takes
    the method's objective (for the paper's models: SLN noise on the targets, then soft cross-entropy), an SGD step
    and an EMA step. Nothing in the loop waits for the device: the returned sums (objective, CE on clean samples,
    CE on noisy samples, correct predictions vs the given label, those among the noisy samples, of the first
    network), the index of the first step whose loss was not finite (the number of steps if none), then the
    method's own sums, stay on it until the caller reads them. bench.py times this same function.
    """
    a, m = s.args, s.method
    for net in s.networks:
        net.train()
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    device = s.labels.device
    order = torch.randperm(len(s.x) if s.members is None else len(s.members), generator=s.gen, device=device)
    if s.members is not None:
        order = s.members[order]
    n_steps = -(-len(order) // a.batch_size)
    steps = torch.arange(n_steps + 1, device=device)
    totals = torch.zeros(5, device=device)
    own: torch.Tensor | float = 0.0          # the method's own sums
    first_bad = steps[-1].clone()
    batches = s.x.train_batches(order, a.batch_size, s.gen)
    for step, (idx, xb) in enumerate(tqdm(batches, total=n_steps, desc=desc, leave=False, unit="batch",
                                          dynamic_ncols=True)):
        xb = normalise(xb.contiguous(memory_format=fmt), s.mean, s.std)
        with autocast(device, a.amp):
            outs = [net(xb) for net in s.networks]
        outs = [out.float() for out in outs]   # the loss and the metrics in float32, also with --amp
        batch = methods.Batch(outs, s.labels[idx], s.targets[idx], idx, s.noisy_mask[idx], s.sigma, s.gen,
                              s.method_state, a)
        loss, sums = m.objective(batch)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        sln.ema_update(s.ema_tensors, s.model_tensors, a.ema_alpha)
        with torch.no_grad():
            out, noisy = outs[0], batch.noisy
            ce = torch.nn.functional.cross_entropy(out, batch.labels, reduction="none")
            agree = out.argmax(1) == batch.labels
            totals += torch.stack([loss * len(idx), torch.where(noisy, 0.0, ce).sum(),
                                   torch.where(noisy, ce, 0.0).sum(), agree.sum(), (agree & noisy).sum()])
            own = own + sums if sums is not None else own
            first_bad = torch.where(torch.isfinite(loss) | (first_bad < n_steps), first_bad, steps[step])
    own = own if isinstance(own, torch.Tensor) else torch.zeros(0, device=device)
    return torch.cat([totals, first_bad.float().view(1), own.float()])


def correct_labels(s: TrainState) -> dict:
    """Label correction before an epoch (reference): sigma off for good; the EMA network, in eval mode and on
    augmented images (--lc_augment), predicts every training sample (of this epoch's sample, with num_per_class);
    new targets from sln.corrected_targets (soft ones with --lc_soft). Returns its metrics."""
    s.sigma = 0.0
    batches = s.x.eval_batches(s.eval_bs, augment=s.args.lc_augment, gen=s.gen, indices=s.members)
    logits = logits_of(s.ema, batches, s.mean, s.std, s.args.amp)
    losses = sln.soft_cross_entropy(logits, s.trained(s.targets), reduction="none")
    new = sln.corrected_targets(losses, s.trained(s.given), logits, soft=bool(s.args.lc_soft))
    if s.members is None:
        s.targets = new
    else:
        s.targets[s.members] = new
    hard, labels, noisy, clean = new.argmax(1), s.trained(s.labels), s.trained(s.noisy_mask), s.trained(s.clean)
    row = {"lc/changed_fraction": float((hard != labels).float().mean())}
    if s.has_clean and noisy.any():
        row["lc/corrected_precision"] = float((hard[noisy] == clean[noisy]).float().mean())
    return row


def epoch_metrics(s: TrainState, sums: list[float], evaluate_test: bool) -> dict:
    """The epoch's training metrics from train_epoch's sums, test metrics of both networks when `evaluate_test`,
    and the reported network's validation metrics when there is a validation split."""
    n, n_noisy = len(s.trained(s.labels)), int(s.trained(s.noisy_mask).sum())
    row = {"sigma": s.sigma, "train/loss": sums[0] / n, "train/acc": sums[3] / n}
    if s.has_clean:
        row["train/loss_clean"] = sums[1] / max(n - n_noisy, 1)
        row["train/loss_noisy"] = sums[2] / n_noisy if n_noisy else None
        # memorisation: how often the trained network agrees with the wrong labels, on the batches as trained
        row["train/acc_noisy"] = sums[4] / n_noisy if n_noisy else None
    reported = s.ema if s.method.mo else s.model
    def evaluate(net: nn.Module, images) -> torch.Tensor:
        return logits_of(net, images.eval_batches(s.eval_bs), s.mean, s.std, s.args.amp)
    if evaluate_test:
        row["test/acc"], row["test/loss"] = accuracy_and_loss(evaluate(s.model, s.test_x), s.test_y)
        row["test/acc_ema"], row["test/loss_ema"] = accuracy_and_loss(evaluate(s.ema, s.test_x), s.test_y)
        row["test/acc_reported"] = row["test/acc_ema"] if s.method.mo else row["test/acc"]
    if s.val_x is not None:
        row["val/acc"], row["val/loss"] = accuracy_and_loss(evaluate(reported, s.val_x), s.val_y)
    if s.method.epoch_row:
        row.update(s.method.epoch_row(sums[6:], s.has_clean))
    return row


# ----------------------------------------------------------------------------------------------------
# The epoch loop

def checkpoint(s: TrainState, epoch: int, exp_id: str) -> dict:
    """The run's whole state after `epoch`, with the identity of the run that wrote it (its id and method), so that
    another run's checkpoint is never resumed as this one's (runs.load_checkpoint)."""
    return {"epoch": epoch, "exp_id": exp_id, "model": s.model.state_dict(), "ema": s.ema.state_dict(),
            "optimizer": s.optimizer.state_dict(), "targets": s.targets, "sigma": s.sigma,
            "generator": s.gen.get_state(), "torch_rng": torch.get_rng_state(), "variant": s.method.name,
            "device": s.labels.device.type, **({"peers": [p.state_dict() for p in s.peers]} if s.peers else {}),
            **({"method_state": s.method_state} if s.method_state else {})}


def restore_generator(s: TrainState, ckpt: dict) -> None:
    """The checkpoint's state of the generator behind data order, augmentation and SLN noise. A checkpoint written
    on another kind of device (CUDA's state is 16 bytes, the CPU's 5,056) cannot be restored into this device's
    generator: the run continues with one seeded from its seed and epoch, and says that its random stream
    differs from there on (CUDA and CPU streams differ anyway)."""
    state, here = ckpt["generator"], s.labels.device.type
    if state.numel() == s.gen.get_state().numel():
        s.gen.set_state(state)
        return
    written = ckpt.get("device") or ("cuda" if state.numel() == 16 else "another device")
    s.gen.manual_seed(int(np.random.SeedSequence([s.args.seed, ckpt["epoch"]]).generate_state(1)[0]))
    print(f"note: the checkpoint was written on {written}, this run continues on {here}: the weights, optimiser "
          "and targets carry over, but the random stream (data order, augmentation, SLN noise) differs from here "
          "on, so the run is not bit-identical to one that stayed on one device")


def restore(s: TrainState, run_dir: Path) -> list[dict]:
    """Continue from the run's last complete checkpoint; return the metrics rows up to it."""
    ckpt = runs.load_checkpoint(run_dir, {"exp_id": run_dir.name, "variant": s.method.name})
    try:      # a checkpoint too old to record its run's identity may still be another run's
        if len(ckpt.get("peers", [])) != len(s.peers):
            raise ValueError(f"it holds {len(ckpt.get('peers', [])) + 1} networks, this run trains {len(s.networks)}")
        s.model.load_state_dict(ckpt["model"])
        s.ema.load_state_dict(ckpt["ema"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        for peer, state in zip(s.peers, ckpt.get("peers", [])):
            peer.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"the checkpoint in {run_dir} does not fit this run ({str(e).splitlines()[0]}); nothing can "
                        "be resumed: delete the folder and start the run again") from None
    for key, value in ckpt.get("method_state", {}).items():
        s.method_state[key] = value.to(s.labels.device) if isinstance(value, torch.Tensor) else value
    s.targets, s.sigma = ckpt["targets"].to(s.labels.device), ckpt["sigma"]
    restore_generator(s, ckpt)
    torch.set_rng_state(ckpt["torch_rng"])
    print(f"resuming after epoch {ckpt['epoch']}")
    return runs.read_metrics(run_dir / "metrics.csv")[:ckpt["epoch"]]   # rows written after it are dropped


def start_epoch(s: TrainState, epoch: int) -> dict:
    """Before an epoch, each only where its flag is set (the authors' Clothing1M script): the step schedule's
    learning rate, and a fresh class-balanced sample of the training set, labelled afresh with the given labels
    (they build a new training set every epoch). Returns the metrics it sets."""
    a, row = s.args, {}
    if a.lr_milestones:
        row["lr"] = lr_at(epoch, a.lr, a.lr_milestones, a.lr_decay)
        for group in s.optimizer.param_groups:
            group["lr"] = row["lr"]
    if a.num_per_class:
        sample = balanced_indices(s.labels.cpu().numpy(), a.num_per_class, [a.seed, epoch])
        s.members = torch.from_numpy(sample).to(s.labels.device)
        s.targets = s.given.clone()
    if s.method.start_epoch:
        row.update(s.method.start_epoch(s.method_state, epoch, a))
    return row


def either(flags: list[str]) -> str:
    """'--lr', '--lr or --sigma', '--lr, --sce_alpha or --sce_beta'."""
    return flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} or {flags[-1]}"


def describe_epoch(row: dict, n_epochs: int, seconds_so_far: list[float] | None = None) -> str:
    """One epoch's line; with the seconds of the epochs this process trained, the time the run has left."""
    left = "" if seconds_so_far is None else f" ({files.time_left(seconds_so_far, n_epochs - row['epoch'])})"
    parts = [f"epoch {row['epoch']}/{n_epochs} {row['seconds']:.1f}s{left}", f"sigma {row['sigma']:g}",
             f"train loss {row['train/loss']:.4f} acc {row['train/acc']:.4f}"]
    if "test/acc" in row:
        parts.append(f"test acc {row['test/acc']:.4f} ema {row['test/acc_ema']:.4f}")
    if "val/acc" in row:
        parts.append(f"val acc {row['val/acc']:.4f}")
    if "lc/changed_fraction" in row:
        parts.append(f"lc changed {row['lc/changed_fraction']:.3f}")
    return " | ".join(parts)


def train(args: argparse.Namespace, data: NoisyData, model: nn.Module, device: torch.device, run_dir: Path,
          on_epoch: Callable[[dict], None] | None = None, resume: bool = False,
          val: tuple[np.ndarray, np.ndarray] | None = None, peers: list[nn.Module] = (),
          method: methods.Method | None = None, hparams: dict[str, type] | None = None) -> dict:
    """Train `model` (and `peers`, a method's other networks) on `data` with `method` (see setup); return the
    final summary. `val` (images, labels) is evaluated every epoch with the reported network; `on_epoch` gets every
    metrics row. With `resume`, everything continues from the run's last complete checkpoint."""
    s = setup(args, data, model, device, val, peers, method)
    # a folder left without a checkpoint (killed before its first epoch ended) trains from epoch 1, as a new run would
    history = restore(s, run_dir) if resume and has_checkpoint(run_dir) else []
    if resume and not history:
        print("no epoch was checkpointed before the run stopped: training it from epoch 1")
    settings = {**vars(args), "variant": s.method.name}      # what TensorBoard names the run by, and lists
    writer = runs.start_log(run_dir, s.fields(), history, settings)
    if not s.has_clean and not resume:
        print("note: no clean labels for this dataset: train/loss_clean, train/loss_noisy and "
              "lc/corrected_precision are not reported")
    seconds: list[float] = []     # of the epochs trained by this process: the estimate of the time left
    for epoch in range(len(history) + 1, args.n_epochs + 1):
        t0 = time.time()
        row: dict = {"epoch": epoch, **start_epoch(s, epoch)}
        if s.method.lc and epoch > args.lc_n_epoch:
            row.update(correct_labels(s))
        sums = train_epoch(s, f"epoch {epoch}/{args.n_epochs}").tolist()   # the epoch's one host sync
        n_steps = -(-len(s.trained(s.labels)) // args.batch_size)
        if sums[5] < n_steps:
            kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "nothing was checkpointed yet"
            raise runs.TrainingStopped(f"the loss became NaN/Inf at epoch {epoch}, step {int(sums[5]) + 1}; {kept}; "
                                       f"lower {either(methods.divergence_flags(s.method))} and start a new run")
        row.update(epoch_metrics(s, sums, epoch % args.eval_every == 0 or epoch == args.n_epochs))
        row["seconds"] = time.time() - t0
        history.append(row)
        runs.log_epoch(run_dir, writer, s.fields(), row)
        runs.save_checkpoint(run_dir, checkpoint(s, epoch, run_dir.name))
        seconds.append(row["seconds"])
        print(describe_epoch(row, args.n_epochs, seconds), flush=True)
        if on_epoch is not None:
            on_epoch(row)
    tested = [r for r in history if r.get("test/acc_reported") is not None]
    best = max(tested, key=lambda r: r["test/acc_reported"])
    summary = {"variant": s.method.name, "reported_network": s.method.reported,
               "last_test_acc": history[-1]["test/acc_reported"], "best_test_acc": best["test/acc_reported"],
               "best_epoch": best["epoch"], "epochs": args.n_epochs, "seconds": sum(r["seconds"] for r in history)}
    if s.val_x is not None:
        # the authors' Clothing1M number: the test accuracy at the (first) epoch of best validation accuracy
        chosen = max(tested, key=lambda r: r["val/acc"])
        summary.update(best_val_acc=chosen["val/acc"], best_val_epoch=chosen["epoch"],
                       test_acc_at_best_val=chosen["test/acc_reported"])
    runs.log_hparams(writer, settings, summary, hparams or {})
    writer.close()
    finals = {"model_final.pt": s.model.state_dict(), "ema_final.pt": s.ema.state_dict(),
              "targets_final.pt": s.targets.cpu(), **{f"model{i + 2}_final.pt": p.state_dict()
                                                     for i, p in enumerate(s.peers)}}
    runs.finish(run_dir, finals, summary)
    return summary


def create_run_folder(out: Path, args: argparse.Namespace, data: NoisyData, method: methods.Method,
                      device: torch.device, val: tuple[np.ndarray, np.ndarray] | None) -> str:
    """runs.create_run; RunStopped (exit status 3) when the disk refuses it."""
    try:
        return runs.create_run(out, args, data, method.name, str(device), None if val is None else len(val[1]))
    except OSError as e:
        raise RunStopped(f"cannot create a run folder in {out / 'runs'} ({runs.write_error(e)}); nothing was written: "
                         "free disk space (or pass another --out_dir), then start the run again") from None


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / n).is_file() for n in ("checkpoint.pt", "checkpoint.prev.pt"))


def set_precision(precision: str) -> None:
    """TF32 for CUDA convolutions and matmuls only with --precision tf32: PyTorch's own defaults (TF32 convolutions,
    float32 matmuls) are neither strict float32 nor all TF32. bf16 autocast (train_epoch) keeps what it does not
    cast in strict float32. No effect on CPUs."""
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def run(args: argparse.Namespace, method: methods.Method, data: NoisyData, model_builder: Callable[[int], nn.Module],
        script: str, on_epoch: Callable[[dict], None] | None = None,
        val: tuple[np.ndarray, np.ndarray] | None = None, resume_id: str | None = None,
        hparams: dict[str, type] | None = None) -> tuple[str, dict]:
    """Create (or, with resume_id, reopen) the run folder, seed everything, build the model and train it with
    `method`, the one the flags' check returned (cli.check_method). `script` (train_cifar.py, ...) names the command that resumes
    the run; `hparams` (cli.hparams()) declares TensorBoard's HParams columns. Returns (exp_id, summary). Raises
    DataError where the flags, data or run folder do not allow the run, and RunStopped, whose message says what was
    kept and how to continue, where it stopped once begun."""
    device = pick_device(args.device)
    resolve_precision(args)
    if args.amp and device.type != "cuda" and not (device.type == "cpu" and cpu_bf16_units()):
        # measured (docs/performance.md): on a CPU without bf16 units autocast made training ~15x slower; on one
        # with AVX512_BF16 it was ~1.6-1.9x faster than float32
        raise DataError(f"--precision bf16 (--amp, bf16 autocast) needs a CUDA GPU or a CPU with bf16 instructions "
                        f"(AVX512_BF16 or AMX); on this {device.type} it is much slower than float32: drop it")
    set_precision(args.precision)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not args.deterministic
    torch.manual_seed(args.seed)
    try:
        model = model_builder(data.num_classes)
        peers = [model_builder(data.num_classes) for _ in range(method.networks - 1)]   # each its own init
    except WeightsError as e:
        raise DataError(str(e)) from None

    if method.needs_clean and data.clean_labels is None:
        raise DataError(f"--method {method.name} needs the clean labels of the training set, which {data.name} does "
                        "not have; choose another method")
    if method.prepare:
        try:
            method.prepare(args, {"noise_rate": data.noise_rate()})
        except ValueError as e:
            raise DataError(str(e)) from None

    out = args.out_dir.resolve()
    exp_id = resume_id

    def how() -> str:
        return f"python {script} --resume {exp_id}" + (f" --out_dir {shlex.quote(str(out))}" if out != Path.cwd() else "")
    # the run folder's lock, released however this ends; SIGTERM is handled as Ctrl-C from before the folder is made
    with contextlib.ExitStack() as held, runs.on_sigterm():
        try:
            if resume_id:
                runs.lock_run(out / "runs" / resume_id, held)    # first: nothing below may touch a folder in use
                runs.check_same_data(out / "runs" / resume_id, data)
                stale = runs.remove_stale_temporaries(out / "runs" / resume_id)
                if stale:
                    print(f"removed what an earlier, killed process left half-written: {', '.join(stale)}")
            else:
                with runs.DeferSignals():     # a stop waits until the folder is whole, so that it goes whole
                    exp_id = create_run_folder(out, args, data, method, device, val)
                runs.lock_run(out / "runs" / exp_id, held)     # a new folder: nobody else can hold it yet
            run_dir = out / "runs" / exp_id
            rate = data.noise_rate()
            print(f"{exp_id}: {method.name} on {data.name} ({len(data.labels)} train / {len(data.test_labels)} test "
                  f"images, {'unknown' if rate is None else f'{rate:.2%}'} noisy) with {args.model} on {device}")
            summary = train(args, data, model, device, run_dir, on_epoch, bool(resume_id), val, peers, method,
                            hparams)
        except runs.TrainingStopped as e:
            raise RunStopped(f"{exp_id}: {e}" + (f": {how()}" if e.resumable else "")) from None
        except UnreadableImage as e:
            again = f"continue with: {how()}" if (run_dir / "checkpoint.pt").is_file() else "then start the run again"
            raise RunStopped(f"{exp_id}: {e}, {again}") from None
        except KeyboardInterrupt as e:
            what, code = ("stopped by SIGTERM", 143) if isinstance(e, runs.Terminated) else ("interrupted", 130)
            if exp_id is None:
                raise RunStopped(f"{what} before the run folder was made; nothing was written", code) from None
            run_dir = out / "runs" / exp_id
            if has_checkpoint(run_dir):
                kept = f"the last complete epoch is checkpointed; continue with: {how()}"
            elif resume_id:
                kept = f"no epoch was complete; continue with: {how()} (it trains from epoch 1)"
            else:     # nothing of value: what this run made goes, so that no folder is left to resume or delete
                runs.remove_new_run(out, exp_id)
                kept = (f"no epoch was complete, so nothing of value was kept: removed {run_dir} and "
                        f"configs/{exp_id}.yaml; start the run again")
            raise RunStopped(f"{exp_id}: {what}; {kept}", code) from None
        at_val = ("" if "test_acc_at_best_val" not in summary else
                  f", at the best validation epoch ({summary['best_val_epoch']}) {summary['test_acc_at_best_val']:.4f}")
        print(f"{exp_id}: last test acc {summary['last_test_acc']:.4f}, best {summary['best_test_acc']:.4f} "
              f"(epoch {summary['best_epoch']}){at_val}; outputs in {run_dir}")
        runs_dir = "" if out / "runs" == Path.cwd() / "runs" else f" --runs_dir {shlex.quote(str(out / 'runs'))}"
        print(f"next: its training curves with: python plot.py --exp_id {exp_id} --plot_type curves{runs_dir} "
              "(other figures: python plot.py --help)")
        return exp_id, summary
