"""The one training loop shared by train_cifar.py, train_real.py and tune.py, and the run folder it fills.

A run `<exp_id>` leaves
  configs/<exp_id>.yaml          every resolved setting, code version, library versions, noise rate
  runs/<exp_id>/                 TensorBoard scalars, metrics.csv (one row per epoch), noise.json,
                                 checkpoint.pt (+ checkpoint.prev.pt), model_final.pt, ema_final.pt,
                                 summary.json
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import difflib
import hashlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

import sln
from data import (ASYM_VARIANTS, CIFAR, SYM_VARIANTS, DataError, NoisyData, default_data_dir, load_cifar_noisy,
                  normalise, random_crop_flip)
from models import MODELS

CODE_DIR = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------------
# Flags shared by the training scripts

class Parser(argparse.ArgumentParser):
    """argparse that answers a bad flag with one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(message: str, code: int = 2):
    """Print a user-facing error on one line and exit without a traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def add_training_args(p: argparse.ArgumentParser, default_model: str, resumable: bool = True) -> None:
    """Flags of the method and the run, with the reference's defaults (SLN-REFERENCE.md)."""
    g = p.add_argument_group("training (defaults: the SLN reference code)")
    g.add_argument("--batch_size", type=int, default=128, help="minibatch size in images")
    g.add_argument("--n_epochs", type=int, default=300, help="number of training epochs")
    g.add_argument("--lr", type=float, default=0.001, help="SGD learning rate, constant (no schedule)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay (L2)")
    g.add_argument("--sigma", type=float, default=None,
                   help="std of the Gaussian noise added to one-hot targets; 0 = plain cross-entropy (CE). "
                        "Default: the paper's value for the dataset and noise")
    g.add_argument("--mo", action="store_true",
                   help="SLN+MO: report the momentum (weight-EMA) model; needs sigma > 0")
    g.add_argument("--ema_alpha", type=float, default=0.999, help="decay of the momentum model per optimiser step")
    g.add_argument("--lc_n_epoch", type=int, default=-1,
                   help="SLN+MO+LC: correct labels before every epoch after this one (reference 250); -1 = never")
    g.add_argument("--lc_augment", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the training augmentation in the label-correction pass, as the reference does; "
                        "--no-lc_augment predicts on un-augmented images")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the model init, data order, augmentation, SLN noise and generated label noise")
    g.add_argument("--model", choices=list(MODELS), default=default_model, help="network architecture")
    r = p.add_argument_group("data, device and output")
    r.add_argument("--data_dir", type=Path, default=default_data_dir(),
                   help="root of the datasets (default: $SLN_DATA_DIR or data/)")
    r.add_argument("--train_subset", type=int, default=None,
                   help="train on a stratified, seeded subset of this many training images (quick runs)")
    r.add_argument("--test_subset", type=int, default=None,
                   help="evaluate on a stratified, seeded subset of this many test images")
    r.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, mps ... (default: cuda if available)")
    r.add_argument("--deterministic", action="store_true",
                   help="bit-reproducible kernels (slower on GPU)")
    r.add_argument("--eval_batch_size", type=int, default=None,
                   help="batch size of evaluation and label-correction passes (no autograd); default 1024 on a GPU, "
                        "128 on a CPU (large batches measured 2-3x slower there: README 'Performance')")
    r.add_argument("--eval_every", type=int, default=1,
                   help="evaluate on the test set every this many epochs and at the last one (other epochs leave "
                        "the test columns empty); a validation split, if any, is evaluated every epoch")
    r.add_argument("--out_dir", type=Path, default=Path("."),
                   help="where configs/ and runs/ are written (default: current directory)")
    if resumable:
        r.add_argument("--resume", metavar="EXP_ID", default=None,
                       help="continue run EXP_ID (under --out_dir) from its last complete checkpoint, with its saved flags")
    s = p.add_argument_group("speed (all off by default: README 'Performance' says what each did where measured)")
    s.add_argument("--amp", action="store_true",
                   help="bf16 autocast for forward passes (CUDA only; on CPUs without bf16 units it is much slower)")
    s.add_argument("--channels_last", action="store_true",
                   help="NHWC memory layout for the network and its input batches")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the network and its EMA copy (the first epoch is slower while it compiles)")


def variant(args: argparse.Namespace) -> str:
    """Which of the paper's four models the flags ask for, or an error listing the valid combinations."""
    lc = args.lc_n_epoch != -1
    if args.sigma == 0 and not args.mo and not lc:
        return "CE"
    if args.sigma > 0 and not args.mo and not lc:
        return "SLN"
    if args.sigma > 0 and args.mo and not lc:
        return "SLN-MO"
    if args.sigma > 0 and args.mo and 0 < args.lc_n_epoch < args.n_epochs:
        return "SLN-MO-LC"
    fail(f"--sigma {args.sigma} {'--mo ' if args.mo else ''}--lc_n_epoch {args.lc_n_epoch} is not one of the "
         f"paper's models; use CE: --sigma 0 --lc_n_epoch -1 | SLN: --sigma >0 --lc_n_epoch -1 | "
         f"SLN+MO: --sigma >0 --mo --lc_n_epoch -1 | SLN+MO+LC: --sigma >0 --mo --lc_n_epoch in 1..{args.n_epochs - 1}")


def check_training_args(args: argparse.Namespace) -> str:
    """Validate the shared flags; return the model variant."""
    for name in ("batch_size", "n_epochs", "eval_batch_size", "eval_every"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) <= 0:
            fail(f"--{name} must be positive, got {getattr(args, name)}")
    if args.lr <= 0:
        fail(f"--lr must be positive, got {args.lr}")
    if args.sigma < 0:
        fail(f"--sigma must be >= 0, got {args.sigma}")
    if not 0 <= args.ema_alpha < 1:
        fail(f"--ema_alpha must be in [0, 1), got {args.ema_alpha}")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            fail(f"--{name} must be a positive number of images, got {getattr(args, name)}")
    return variant(args)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return device


# ----------------------------------------------------------------------------------------------------
# CIFAR dataset flags (train_cifar.py and tune.py)

NOISE_MODES = ["sym", "asym", "dependent", "openset"]

# Sigma per setting, from the reference README (used when --sigma is not given).
PAPER_SIGMA = {("cifar10", "sym"): 1.0, ("cifar10", "asym"): 0.5, ("cifar10", "dependent"): 0.5,
               ("cifar10", "openset"): 0.5, ("cifar100", "sym"): 0.2, ("cifar100", "asym"): 0.2,
               ("cifar100", "dependent"): 0.1}


def add_cifar_args(p: argparse.ArgumentParser) -> None:
    """Flags that choose the CIFAR dataset and its label noise."""
    d = p.add_argument_group("dataset and noise")
    d.add_argument("--dataset_name", choices=list(CIFAR), default="cifar10", help="training dataset")
    d.add_argument("--noise_mode", choices=NOISE_MODES, default="sym",
                   help="sym/asym/dependent: label noise; openset: CIFAR-100 images inside CIFAR-10 (CIFAR-10 only)")
    d.add_argument("--p", type=float, default=0.4, help="noise rate, in [0, 1)")
    d.add_argument("--custom_noise", action="store_true",
                   help="use generated noise (<data_dir>/<dataset>/label_noisy/<mode><p>_custom.csv) instead of the paper's files")
    d.add_argument("--make_new_custom_noise", action="store_true",
                   help="regenerate the custom noise file from --seed (needs --custom_noise); a file with other "
                        "content is kept aside as <name>.old-<hash>.csv, never overwritten")
    d.add_argument("--sym_variant", choices=list(SYM_VARIANTS), default=None,
                   help="custom sym noise: " + "; ".join(f"{k}: {v}" for k, v in SYM_VARIANTS.items())
                        + " (default other, or what the existing file was made with)")
    d.add_argument("--asym_variant", choices=list(ASYM_VARIANTS), default=None,
                   help="custom asym noise: " + "; ".join(f"{k}: {v}" for k, v in ASYM_VARIANTS.items())
                        + " (default paper, or what the existing file was made with)")


def load_cifar_data(args: argparse.Namespace) -> NoisyData:
    """The noisy CIFAR training set (and test set) the dataset flags describe; raises DataError."""
    return load_cifar_noisy(args.dataset_name, args.data_dir, args.noise_mode, args.p, args.seed, args.custom_noise,
                            args.make_new_custom_noise, args.sym_variant, args.asym_variant)


def check_cifar_args(args: argparse.Namespace) -> None:
    """Validate the dataset flags (the paper's sigma default is left to the caller)."""
    if not 0 <= args.p < 1:
        fail(f"--p must be in [0, 1), got {args.p}")
    if args.noise_mode == "openset" and args.dataset_name != "cifar10":
        fail("open-set noise exists for CIFAR-10 only; use --dataset_name cifar10 or another --noise_mode")
    if args.make_new_custom_noise and not args.custom_noise:
        fail("--make_new_custom_noise needs --custom_noise")


# ----------------------------------------------------------------------------------------------------
# Run folders

def new_exp_id(out_dir: Path, prefix: str = "exp") -> str:
    """A fresh id, unique even for runs started in the same instant (the folder is created exclusively)."""
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    while True:
        exp_id = f"{prefix}_{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"
        try:
            (out_dir / "runs" / exp_id).mkdir()
            return exp_id
        except FileExistsError:
            continue


def code_version() -> dict:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=CODE_DIR, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"git_commit": git("rev-parse", "HEAD") or "unknown",
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def library_versions() -> dict:
    import torchvision
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(np.__version__)}


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_config(path: Path, config: dict) -> None:
    """Write a YAML file whole or not at all, and never over an existing one (FileExistsError)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.link(tmp, path)   # atomic, and fails if `path` exists
    finally:
        tmp.unlink(missing_ok=True)


def config_dict(args: argparse.Namespace, **extra) -> dict:
    plain = {k: (str(v.resolve()) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {**plain, **extra, "code": code_version(), "versions": library_versions(), "host": platform.node()}


def data_provenance(data: NoisyData) -> dict:
    """Which copy of the data a run trained on: SHA-256 of the training and test images and labels exactly
    as loaded (after subsets and splits), and whether the files were the official archive (None: unknown)."""
    def sha(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    return {"train_images_sha256": sha(data.images), "train_labels_sha256": sha(data.labels.astype("<i8")),
            "test_images_sha256": sha(data.test_images), "test_labels_sha256": sha(data.test_labels.astype("<i8")),
            "official_files": data.info.get("official_files")}


def default_eval_batch_size(device: torch.device) -> int:
    """Measured on a 2-core CPU: wrn-16-1 evaluates 2-3x faster in batches of 128 than of 1024 (the working set
    fits the caches); a GPU wants large batches."""
    return 128 if device.type == "cpu" else 1024


# ----------------------------------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch_size: int,
            pad: int = 0, generator: torch.Generator | None = None, flip: bool = True,
            amp: bool = False) -> torch.Tensor:
    """Logits of `model` in eval mode for uint8 images on the device; with pad > 0 the training
    augmentation is applied first (the reference's label-correction pass does this). Logits are float32."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        xb = images[i:i + batch_size]
        if pad:
            xb = random_crop_flip(xb, pad, generator, flip=flip)
        with autocast(images.device, amp):
            out.append(model(normalise(xb, mean, std)).float())
    return torch.cat(out)


def accuracy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = torch.nn.functional.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    return float(acc), float(loss)


# ----------------------------------------------------------------------------------------------------
# Training

class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss, disk full); the message says where and what to do."""

    def __init__(self, message: str, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


METRIC_FIELDS = ["epoch", "seconds", "sigma", "train/loss", "train/loss_clean", "train/loss_noisy", "train/acc",
                 "test/loss", "test/acc", "test/loss_ema", "test/acc_ema", "test/acc_reported"]
LC_FIELDS = ["lc/changed_fraction", "lc/corrected_precision"]


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when `enabled` (--amp); a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_epoch(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
                ema_state: list[torch.Tensor], model_state: list[torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                labels: torch.Tensor, noisy_mask: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, pad: int,
                sigma: float, gen: torch.Generator, desc: str = "", flip: bool = True) -> torch.Tensor:
    """One epoch of training steps over the uint8 images `x` (already on the device) in a seeded random order.

    Each step crops, flips and normalises its batch on the device, adds SLN noise (sigma) to the batch's
    targets, takes an SGD step and an EMA step. Nothing in the loop waits for the device: the returned
    sums (objective, CE on clean samples, CE on noisy samples, correct predictions vs the given label)
    and the index of the first step whose loss was not finite (the number of steps if none) stay on it
    until the caller reads them. bench.py times this same function.
    """
    model.train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    order = torch.randperm(len(x), generator=gen, device=x.device)
    n_steps = -(-len(x) // args.batch_size)
    steps = torch.arange(n_steps + 1, device=x.device)
    totals = torch.zeros(4, device=x.device)
    first_bad = steps[-1].clone()
    for step in tqdm(range(n_steps), desc=desc, leave=False, unit="batch", dynamic_ncols=True):
        idx = order[step * args.batch_size:(step + 1) * args.batch_size]
        # index_select copies whole images (x[idx] gathers them byte by byte on a CPU)
        xb = random_crop_flip(x.index_select(0, idx), pad, gen, flip=flip).contiguous(memory_format=fmt)
        xb = normalise(xb, mean, std)
        tb = sln.noisy_targets(targets[idx], sigma, gen)
        with autocast(x.device, args.amp):
            out = model(xb)
        out = out.float()  # the loss and the metrics in float32, also with --amp
        loss = sln.soft_cross_entropy(out, tb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sln.ema_update(ema_state, model_state, args.ema_alpha)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(out, labels[idx], reduction="none")
            noisy = noisy_mask[idx]
            totals += torch.stack([loss * len(idx), torch.where(noisy, 0.0, ce).sum(),
                                   torch.where(noisy, ce, 0.0).sum(), (out.argmax(1) == labels[idx]).sum()])
            first_bad = torch.where(torch.isfinite(loss) | (first_bad < n_steps), first_bad, steps[step])
    return torch.cat([totals, first_bad.float().view(1)])


def train(args: argparse.Namespace, data: NoisyData, model: nn.Module, device: torch.device, run_dir: Path,
          on_epoch: Callable[[dict], None] | None = None, resume: bool = False,
          val: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Train `model` on `data` with CE / SLN / SLN+MO / SLN+MO+LC as `args` say; return the final summary.

    `val` (images, labels), if given, is evaluated after every epoch with the reported network
    (`val/acc`, `val/loss`); `on_epoch` receives every epoch's metrics row.

    Follows the reference `noise_cifar_train.py`: an EMA copy of the network is always kept (the
    network starts as a copy of it), SLN+MO and SLN+MO+LC report the EMA network; label correction
    runs before every epoch after `lc_n_epoch` and turns sigma off. With `resume`, everything (weights,
    optimiser, targets, RNG states, metrics so far) continues from the run's last complete checkpoint.
    """
    from torch.utils.tensorboard import SummaryWriter

    model_name = variant(args)
    report_ema, lc_on = model_name in ("SLN-MO", "SLN-MO-LC"), model_name == "SLN-MO-LC"
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    to_dev = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    x, labels = to_dev(data.images), to_dev(data.labels)
    has_clean = data.clean_labels is not None
    clean = to_dev(data.clean_labels) if has_clean else labels
    noisy_mask = to_dev(data.is_noisy) if data.is_noisy is not None else torch.zeros_like(labels, dtype=torch.bool)
    test_x, test_y = to_dev(data.test_images), to_dev(data.test_labels)
    mean, std = torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    n, n_noisy = len(labels), int(noisy_mask.sum())
    eval_bs = args.eval_batch_size or default_eval_batch_size(device)

    given = sln.onehot(labels, data.num_classes)
    targets = given.clone()               # current (possibly corrected) targets, before SLN noise
    sigma = args.sigma
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    ema = copy.deepcopy(model)            # the reference copies the EMA network into the network at start
    for p in ema.parameters():
        p.requires_grad_(False)
    if args.compile:
        model.compile()  # in place: parameters, state-dict keys and the EMA tensors below stay the same
        ema.compile()
    ema_state, model_state = sln.ema_tensors(ema), sln.ema_tensors(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)

    fields = METRIC_FIELDS + (LC_FIELDS if lc_on else [])
    if val is not None:
        val_x, val_y = to_dev(val[0]), to_dev(val[1])
        fields += ["val/loss", "val/acc"]
    metrics_path = run_dir / "metrics.csv"
    history: list[dict] = []
    if resume:
        ckpt = load_checkpoint(run_dir)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        targets, sigma = ckpt["targets"].to(device), ckpt["sigma"]
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        history = read_metrics(metrics_path)[:ckpt["epoch"]]  # drop rows written after that checkpoint
        print(f"resuming after epoch {ckpt['epoch']}")
    write_atomic(metrics_path, lambda tmp: write_metrics(tmp, fields, history))
    writer = SummaryWriter(str(run_dir), purge_step=len(history) + 1)
    if not has_clean and not resume:
        print("note: no clean labels for this dataset: train/loss_clean, train/loss_noisy and "
              "lc/corrected_precision are not reported")

    for epoch in range(len(history) + 1, args.n_epochs + 1):
        t0 = time.time()
        row: dict = {"epoch": epoch}
        if lc_on and epoch > args.lc_n_epoch:
            sigma = 0.0  # reference: correction switches SLN off for the rest of training
            logits = predict(ema, x, mean, std, eval_bs, data.pad if args.lc_augment else 0, gen,
                             data.flip, args.amp)
            targets = sln.corrected_targets(sln.soft_cross_entropy(logits, targets, reduction="none"), given, logits)
            hard = targets.argmax(1)
            row["lc/changed_fraction"] = float((hard != labels).float().mean())
            if has_clean and n_noisy:
                row["lc/corrected_precision"] = float((hard[noisy_mask] == clean[noisy_mask]).float().mean())

        sums = train_epoch(args, model, optimizer, ema_state, model_state, x, targets, labels, noisy_mask, mean, std,
                           data.pad, sigma, gen, f"epoch {epoch}/{args.n_epochs}", data.flip).tolist()  # one host sync
        if sums[4] < -(-n // args.batch_size):
            kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "nothing was checkpointed yet"
            raise TrainingStopped(f"the loss became NaN/Inf at epoch {epoch}, step {int(sums[4]) + 1}; {kept}; "
                                  "lower --lr or --sigma and start a new run")
        row.update({"sigma": sigma, "train/loss": sums[0] / n, "train/acc": sums[3] / n})
        if has_clean:
            row["train/loss_clean"] = sums[1] / max(n - n_noisy, 1)
            row["train/loss_noisy"] = sums[2] / n_noisy if n_noisy else None
        evaluate = lambda net, images: predict(net, images, mean, std, eval_bs, amp=args.amp)  # noqa: E731
        if epoch % args.eval_every == 0 or epoch == args.n_epochs:
            row["test/acc"], row["test/loss"] = accuracy_and_loss(evaluate(model, test_x), test_y)
            row["test/acc_ema"], row["test/loss_ema"] = accuracy_and_loss(evaluate(ema, test_x), test_y)
            row["test/acc_reported"] = row["test/acc_ema"] if report_ema else row["test/acc"]
        if val is not None:
            row["val/acc"], row["val/loss"] = accuracy_and_loss(evaluate(ema if report_ema else model, val_x), val_y)
        row["seconds"] = time.time() - t0

        history.append(row)
        for k, v in row.items():
            if k != "epoch" and v is not None:
                writer.add_scalar(k, v, epoch)
        writer.flush()
        with open(metrics_path, "a", newline="") as f:
            csv.writer(f).writerow(metric_cells(row, fields))
        save_checkpoint(run_dir, {"epoch": epoch, "model": model.state_dict(), "ema": ema.state_dict(),
                                  "optimizer": optimizer.state_dict(), "targets": targets, "sigma": sigma,
                                  "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                  "variant": model_name})
        lc_note = f" | lc changed {row['lc/changed_fraction']:.3f}" if "lc/changed_fraction" in row else ""
        test_note = f" | test acc {row['test/acc']:.4f} ema {row['test/acc_ema']:.4f}" if "test/acc" in row else ""
        val_note = f" | val acc {row['val/acc']:.4f}" if "val/acc" in row else ""
        print(f"epoch {epoch}/{args.n_epochs} {row['seconds']:.1f}s | sigma {sigma:g} | train loss {row['train/loss']:.4f} "
              f"acc {row['train/acc']:.4f}{test_note}{val_note}{lc_note}", flush=True)
        if on_epoch is not None:
            on_epoch(row)

    writer.close()
    for name, obj in (("model_final.pt", model.state_dict()), ("ema_final.pt", ema.state_dict()),
                      ("targets_final.pt", targets.cpu())):
        write_atomic(run_dir / name, lambda tmp, obj=obj: torch.save(obj, tmp))
    best = max((r for r in history if r.get("test/acc_reported") is not None), key=lambda r: r["test/acc_reported"])
    summary = {"variant": model_name, "reported_network": "ema" if report_ema else "net",
               "last_test_acc": history[-1]["test/acc_reported"], "best_test_acc": best["test/acc_reported"],
               "best_epoch": best["epoch"], "epochs": args.n_epochs,
               "seconds": sum(r["seconds"] for r in history)}
    write_atomic(run_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary


def metric_cells(row: dict, fields: list[str]) -> list:
    """One metrics.csv line: a metric the epoch did not compute is an empty cell."""
    return ["" if row.get(k) is None else row[k] for k in fields]


def write_metrics(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(metric_cells(r, fields) for r in rows)


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv back as dicts of floats (None for empty cells); floats round-trip exactly."""
    with open(path, newline="") as f:
        return [{k: (None if v in ("", None) else int(v) if k == "epoch" else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------------------------------
# Checkpoints

class _DeferSigint:
    """Hold Ctrl-C back while a checkpoint is written, so an interrupt never leaves half a file behind."""

    def __enter__(self):
        self.caught = False
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            self.old = signal.signal(signal.SIGINT, lambda *a: setattr(self, "caught", True))
        return self

    def __exit__(self, *exc):
        if self.main:
            signal.signal(signal.SIGINT, self.old)
            if self.caught:
                raise KeyboardInterrupt


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write checkpoint.pt atomically; the previous one stays (as checkpoint.prev.pt) until the new one is whole."""
    path, prev = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    tmp = run_dir / ".checkpoint.pt.tmp"
    with _DeferSigint():
        try:
            torch.save(state, tmp)
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            raise TrainingStopped(f"could not write the checkpoint of epoch {state['epoch']} to {run_dir} ({e}); "
                                  f"the checkpoint of epoch {state['epoch'] - 1} is kept; free disk space, then resume", resumable=True)
        if path.exists():
            os.replace(path, prev)
        os.replace(tmp, path)


def load_checkpoint(run_dir: Path) -> dict:
    """The newest readable checkpoint of a run: checkpoint.pt, or checkpoint.prev.pt if that one is torn."""
    problems = []
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(ckpt, dict) or "epoch" not in ckpt:
                raise ValueError("not a checkpoint of this project")
        except Exception as e:  # a torn file raises whatever the zip/pickle reader trips on
            problems.append(f"{name} is damaged ({type(e).__name__})")
            continue
        if problems:
            print(f"warning: {'; '.join(problems)}; using {name} (epoch {ckpt['epoch']})")
        return ckpt
    raise DataError(f"no usable checkpoint in {run_dir}: {'; '.join(problems)}; start a new run instead")


# ----------------------------------------------------------------------------------------------------
# Starting and resuming runs

def find_run(runs: Path, exp_id: str) -> Path:
    """The run folder runs/<exp_id> (one with a config.yaml), or an error naming the closest existing ids."""
    if exp_id and (runs / exp_id / "config.yaml").is_file():
        return runs / exp_id
    known = sorted(p.name for p in runs.iterdir() if (p / "config.yaml").is_file()) if runs.is_dir() else []
    if not known:
        raise DataError(f"no run {exp_id!r}: there are no runs in {runs}; pass the folder that holds them")
    near = difflib.get_close_matches(exp_id, known, n=3, cutoff=0.0)
    raise DataError(f"no run {exp_id!r} in {runs}; closest: {', '.join(near)}")


def resolve_resume(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace) -> argparse.Namespace:
    """For --resume: the run's saved flags, after checking that no flag given now contradicts them."""
    run_dir = find_run(args.out_dir.resolve() / "runs", args.resume)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    unset = object()  # argparse fills in defaults only for attributes the namespace lacks
    given = {k: v for k, v in vars(parser.parse_args(argv, argparse.Namespace(
        **{a.dest: unset for a in parser._actions}))).items() if v is not unset}
    allowed_to_differ = {"resume", "device", "out_dir", "eval_batch_size"}
    diffs = []
    for key, value in given.items():
        old = saved.get(key)
        if key in allowed_to_differ:
            continue
        new = str(Path(value).resolve()) if isinstance(value, Path) else value
        if new != old:
            diffs.append(f"--{key} {new} (run has {old})")
    if given.get("make_new_custom_noise"):
        raise DataError("--make_new_custom_noise cannot be used with --resume: a resumed run keeps its labels")
    if diffs:
        raise DataError(f"run {args.resume} was started with other flags: {'; '.join(diffs)}; "
                        "drop these flags to resume it, or start a new run")
    resumed = argparse.Namespace(**vars(args))
    for action in parser._actions:
        if action.dest in saved and action.dest not in allowed_to_differ:
            value = saved[action.dest]
            setattr(resumed, action.dest, Path(value) if action.type is Path and value is not None else value)
    if hasattr(resumed, "make_new_custom_noise"):
        resumed.make_new_custom_noise = False   # the noise file written at the start is reused as it is
    return resumed


def parse_training_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a training script's flags; with --resume, the resumed run's own flags (checked against argv)."""
    args = parser.parse_args(argv)
    if getattr(args, "resume", None):
        try:
            args = resolve_resume(parser, argv, args)
        except DataError as e:
            fail(str(e))
    return args


def run(args: argparse.Namespace, data: NoisyData, model_builder: Callable[[int], nn.Module],
        on_epoch: Callable[[dict], None] | None = None,
        val: tuple[np.ndarray, np.ndarray] | None = None, resume_id: str | None = None) -> tuple[str, dict]:
    """Create (or, with resume_id, reopen) the run folder, seed everything, build the model and train.
    Returns (exp_id, summary); a training failure exits with its one-line message."""
    model_name = variant(args)
    device = pick_device(args.device)
    if args.amp and device.type != "cuda":
        # measured (README 'Performance'): on a CPU without bf16 units autocast made training ~15x slower
        fail(f"--amp (bf16 autocast) is for CUDA GPUs; on {device.type} it is much slower than float32: drop --amp")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not args.deterministic
    torch.manual_seed(args.seed)
    model = model_builder(data.num_classes)

    out = args.out_dir.resolve()
    resume = bool(resume_id)
    if resume:
        exp_id = resume_id
        run_dir = out / "runs" / exp_id
    else:
        exp_id = new_exp_id(out)
        run_dir = out / "runs" / exp_id
        # lists (indices) and dicts (the noise report) go to noise.json only, not the config
        noise_info = {k: v for k, v in data.info.items() if not isinstance(v, (list, dict))}
        config = config_dict(args, exp_id=exp_id, variant=model_name, dataset=data.name, device_used=str(device),
                             n_train=len(data.labels), n_test=len(data.test_labels), noise=noise_info,
                             data_provenance=data_provenance(data),
                             **({} if val is None else {"n_val": len(val[1])}))
        (out / "configs").mkdir(parents=True, exist_ok=True)
        save_config(out / "configs" / f"{exp_id}.yaml", config)
        save_config(run_dir / "config.yaml", config)
        (run_dir / "noise.json").write_text(json.dumps(data.info))
    rate = data.noise_rate()
    print(f"{exp_id}: {model_name} on {data.name} ({len(data.labels)} train / {len(data.test_labels)} test images, "
          f"{'unknown' if rate is None else f'{rate:.2%}'} noisy) with {args.model} on {device}")
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "train_cifar.py"
    how = f"python {script} --resume {exp_id}" + (f" --out_dir {out}" if out != Path.cwd() else "")
    try:
        summary = train(args, data, model, device, run_dir, on_epoch, resume, val)
    except TrainingStopped as e:
        fail(f"{exp_id}: {e}" + (f": {how}" if e.resumable else ""), 3)
    except DataError as e:   # an unusable checkpoint
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"{exp_id}: interrupted; the last complete epoch is checkpointed; continue with: {how}", 130)
    print(f"{exp_id}: last test acc {summary['last_test_acc']:.4f}, best {summary['best_test_acc']:.4f} "
          f"(epoch {summary['best_epoch']}); outputs in {run_dir}")
    return exp_id, summary
