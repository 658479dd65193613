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
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

import sln
from data import DataError, NoisyData, default_data_dir, normalise, random_crop_flip
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


def add_training_args(p: argparse.ArgumentParser, default_model: str) -> None:
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
    r.add_argument("--eval_batch_size", type=int, default=1024,
                   help="batch size of evaluation and label-correction passes (no autograd)")
    r.add_argument("--out_dir", type=Path, default=Path("."),
                   help="where configs/ and runs/ are written (default: current directory)")
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
    for name in ("batch_size", "n_epochs", "eval_batch_size"):
        if getattr(args, name) <= 0:
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
    def write(tmp: Path):
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    write_atomic(path, write)


def config_dict(args: argparse.Namespace, **extra) -> dict:
    plain = {k: (str(v.resolve()) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {**plain, **extra, "code": code_version(), "versions": library_versions(), "host": platform.node()}


# ----------------------------------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch_size: int,
            pad: int = 0, generator: torch.Generator | None = None, amp: bool = False) -> torch.Tensor:
    """Logits of `model` in eval mode for uint8 images on the device; with pad > 0 the training
    augmentation is applied first (the reference's label-correction pass does this). Logits are float32."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        xb = images[i:i + batch_size]
        if pad:
            xb = random_crop_flip(xb, pad, generator)
        with autocast(images.device, amp):
            out.append(model(normalise(xb, mean, std)).float())
    return torch.cat(out)


def accuracy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = torch.nn.functional.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    return float(acc), float(loss)


# ----------------------------------------------------------------------------------------------------
# Training

def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when `enabled` (--amp); a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_epoch(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
                ema_state: list[torch.Tensor], model_state: list[torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                labels: torch.Tensor, noisy_mask: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, pad: int,
                sigma: float, gen: torch.Generator, desc: str = "") -> torch.Tensor:
    """One epoch of training steps over the uint8 images `x` (already on the device) in a seeded random order.

    Each step crops, flips and normalises its batch on the device, adds SLN noise (sigma) to the batch's
    targets, takes an SGD step and an EMA step. Nothing in the loop waits for the device: the returned
    sums (objective, CE on clean samples, CE on noisy samples, correct predictions vs the given label)
    stay on it until the caller reads them. bench.py times this same function.
    """
    model.train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    order = torch.randperm(len(x), generator=gen, device=x.device)
    totals = torch.zeros(4, device=x.device)
    for i in tqdm(range(0, len(x), args.batch_size), desc=desc, leave=False, unit="batch", dynamic_ncols=True):
        idx = order[i:i + args.batch_size]
        # index_select copies whole images (x[idx] gathers them byte by byte on a CPU)
        xb = normalise(random_crop_flip(x.index_select(0, idx), pad, gen).contiguous(memory_format=fmt), mean, std)
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
            totals += torch.stack([loss * len(idx), torch.where(noisy, 0.0, ce).sum(), torch.where(noisy, ce, 0.0).sum(),
                                   (out.argmax(1) == labels[idx]).sum()])
    return totals


def train(args: argparse.Namespace, data: NoisyData, model: nn.Module, device: torch.device, run_dir: Path,
          on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train `model` on `data` with CE / SLN / SLN+MO / SLN+MO+LC as `args` say; return the final summary.

    Follows the reference `noise_cifar_train.py`: an EMA copy of the network is always kept (the
    network starts as a copy of it), SLN+MO and SLN+MO+LC report the EMA network; label correction
    runs before every epoch after `lc_n_epoch` and turns sigma off.
    """
    from torch.utils.tensorboard import SummaryWriter

    model_name = variant(args)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    x = torch.from_numpy(data.images).to(device)
    labels = torch.from_numpy(data.labels).to(device)
    n, c = len(labels), data.num_classes
    has_clean = data.clean_labels is not None
    clean = torch.from_numpy(data.clean_labels).to(device) if has_clean else labels
    noisy_mask = torch.from_numpy(data.is_noisy).to(device) if data.is_noisy is not None else torch.zeros_like(labels, dtype=torch.bool)
    test_x, test_y = torch.from_numpy(data.test_images).to(device), torch.from_numpy(data.test_labels).to(device)
    mean = torch.tensor(data.mean, device=device)
    std = torch.tensor(data.std, device=device)

    given = sln.onehot(labels, c)
    targets = given.clone()               # current (possibly corrected) targets, before SLN noise
    sigma = args.sigma
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    if args.compile:
        model.compile()  # in place: parameters, state-dict keys and the EMA tensors below stay the same
        ema.compile()
    ema_state, model_state = sln.ema_tensors(ema), sln.ema_tensors(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    report_ema = model_name in ("SLN-MO", "SLN-MO-LC")
    lc_on = model_name == "SLN-MO-LC"

    writer = SummaryWriter(str(run_dir))
    fields = ["epoch", "seconds", "sigma", "train/loss", "train/loss_clean", "train/loss_noisy", "train/acc",
              "test/loss", "test/acc", "test/loss_ema", "test/acc_ema", "test/acc_reported"]
    if lc_on:
        fields += ["lc/changed_fraction", "lc/corrected_precision"]
    metrics_path = run_dir / "metrics.csv"
    with open(metrics_path, "w", newline="") as f:
        csv.writer(f).writerow(fields)
    if not has_clean:
        print("note: no clean labels for this dataset: train/loss_clean, train/loss_noisy and "
              "lc/corrected_precision are not reported")

    history = []
    for epoch in range(1, args.n_epochs + 1):
        t0 = time.time()
        row: dict = {"epoch": epoch}
        if lc_on and epoch > args.lc_n_epoch:
            sigma = 0.0  # reference: correction switches SLN off for the rest of training
            logits = predict(ema, x, mean, std, args.eval_batch_size, data.pad if args.lc_augment else 0, gen, args.amp)
            losses = sln.soft_cross_entropy(logits, targets, reduction="none")
            targets = sln.corrected_targets(losses, given, logits)
            hard = targets.argmax(1)
            row["lc/changed_fraction"] = float((hard != labels).float().mean())
            if has_clean and noisy_mask.any():
                row["lc/corrected_precision"] = float((hard[noisy_mask] == clean[noisy_mask]).float().mean())

        totals = train_epoch(args, model, optimizer, ema_state, model_state, x, targets, labels, noisy_mask, mean, std,
                             data.pad, sigma, gen, f"epoch {epoch}/{args.n_epochs}")
        totals = totals.tolist()  # the one host sync of the epoch's training steps
        n_noisy = int(noisy_mask.sum())
        row.update({"seconds": None, "sigma": sigma, "train/loss": totals[0] / n, "train/acc": totals[3] / n})
        if has_clean:
            row["train/loss_clean"] = totals[1] / max(n - n_noisy, 1)
            row["train/loss_noisy"] = totals[2] / n_noisy if n_noisy else None
        row["test/acc"], row["test/loss"] = accuracy_and_loss(predict(model, test_x, mean, std, args.eval_batch_size, amp=args.amp), test_y)
        row["test/acc_ema"], row["test/loss_ema"] = accuracy_and_loss(predict(ema, test_x, mean, std, args.eval_batch_size, amp=args.amp), test_y)
        row["test/acc_reported"] = row["test/acc_ema"] if report_ema else row["test/acc"]
        row["seconds"] = time.time() - t0

        history.append(row)
        for k, v in row.items():
            if k != "epoch" and v is not None:
                writer.add_scalar(k, v, epoch)
        writer.flush()
        with open(metrics_path, "a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(k) is None else row[k] for k in fields])
        save_checkpoint(run_dir, {"epoch": epoch, "model": model.state_dict(), "ema": ema.state_dict(),
                                  "optimizer": optimizer.state_dict(), "targets": targets, "sigma": sigma,
                                  "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                  "variant": model_name})
        lc_note = f" | lc changed {row['lc/changed_fraction']:.3f}" if "lc/changed_fraction" in row else ""
        print(f"epoch {epoch}/{args.n_epochs} {row['seconds']:.1f}s | sigma {sigma:g} | train loss {row['train/loss']:.4f} "
              f"acc {row['train/acc']:.4f} | test acc {row['test/acc']:.4f} ema {row['test/acc_ema']:.4f}{lc_note}",
              flush=True)
        if on_epoch is not None:
            on_epoch(row)

    writer.close()
    torch.save(model.state_dict(), run_dir / "model_final.pt")
    torch.save(ema.state_dict(), run_dir / "ema_final.pt")
    torch.save(targets.cpu(), run_dir / "targets_final.pt")
    best = max(history, key=lambda r: r["test/acc_reported"])
    summary = {"variant": model_name, "reported_network": "ema" if report_ema else "net",
               "last_test_acc": history[-1]["test/acc_reported"], "best_test_acc": best["test/acc_reported"],
               "best_epoch": best["epoch"], "epochs": args.n_epochs,
               "seconds": sum(r["seconds"] for r in history)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Atomically replace checkpoint.pt, keeping the previous one as checkpoint.prev.pt until the new one is whole."""
    path, prev = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"

    def write(tmp: Path):
        torch.save(state, tmp)
    if path.exists():
        os.replace(path, prev)
    write_atomic(path, write)


def run(args: argparse.Namespace, data: NoisyData, model_builder: Callable[[int], nn.Module],
        on_epoch: Callable[[dict], None] | None = None) -> tuple[str, dict]:
    """Create the run folder and config, seed everything, build the model and train. Returns (exp_id, summary)."""
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
    exp_id = new_exp_id(out)
    run_dir = out / "runs" / exp_id
    noise_info = {k: v for k, v in data.info.items() if not isinstance(v, list)}
    config = config_dict(args, exp_id=exp_id, variant=model_name, dataset=data.name, device_used=str(device),
                         n_train=len(data.labels), n_test=len(data.test_labels), noise=noise_info)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    save_config(out / "configs" / f"{exp_id}.yaml", config)
    save_config(run_dir / "config.yaml", config)
    (run_dir / "noise.json").write_text(json.dumps(data.info))
    rate = data.noise_rate()
    print(f"{exp_id}: {model_name} on {data.name} ({len(data.labels)} train / {len(data.test_labels)} test images, "
          f"{'unknown' if rate is None else f'{rate:.2%}'} noisy) with {args.model} on {device}")
    summary = train(args, data, model, device, run_dir, on_epoch)
    print(f"{exp_id}: last test acc {summary['last_test_acc']:.4f}, best {summary['best_test_acc']:.4f} "
          f"(epoch {summary['best_epoch']}); outputs in {run_dir}")
    return exp_id, summary
