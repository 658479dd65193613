"""Co-teaching (Han et al., NeurIPS 2018), and Co-teaching with SLN, the paper's "SLN boosts sample selection".

Two networks train side by side. In every batch each one ranks the samples by its cross-entropy with the given
labels and keeps the (1 - rate) share with the smallest loss; each network is then trained on the samples its
peer kept. The rate rises linearly from 0 to --forget_rate over the first --num_gradual epochs, as the authors'
schedule (bhanML/Co-teaching: rate[epoch] from linspace(0, forget_rate^c, Tk), then forget_rate). Their
--forget_rate default is the noise rate; here: the share of wrong labels in the training set, which the clean labels
give (CIFAR with synthetic noise, CIFAR-N; for the paper's asym 0.4 file that is about 0.2, not 0.4), and it must be
given for a dataset without clean labels.
With SLN, the targets of the kept samples get SLN noise (the selection itself uses the given labels).
The first network is the one reported; the momentum model (test/acc_ema) follows it.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import sln
from methods import Batch, Flag, Method

METRICS = ("coteach/forget_rate", "coteach/selected_precision")


def forget_rate_at(epoch: int, forget_rate: float, num_gradual: int, exponent: float) -> float:
    """The authors' schedule: rate[epoch], rate = forget_rate everywhere but its first num_gradual entries,
    linspace(0, forget_rate^exponent, num_gradual) (their epochs count from 1 as ours, and epoch 0 is not trained).
    The one entry is computed as np.linspace computes it (i * step, the last one exactly the end), bit for bit,
    without making the array: a ramp of 10^10 epochs needs no 75 GiB."""
    if epoch >= num_gradual:
        return forget_rate
    top = forget_rate ** exponent
    return float(top) if epoch == num_gradual - 1 else float(epoch * (top / (num_gradual - 1)))


def small_loss(losses: torch.Tensor, rate: float) -> torch.Tensor:
    """Indices of the int((1 - rate) * n) samples with the smallest loss (at least one), ties in index order."""
    keep = max(1, int((1 - rate) * len(losses)))
    return torch.argsort(losses, stable=True)[:keep]


def coteaching_loss(logits1: torch.Tensor, logits2: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                    rate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each network's soft CE against `targets` on the samples its peer kept by small CE with `labels`; the sum of
    the two (their parameters are disjoint, so one backward pass trains both), and the two selections."""
    with torch.no_grad():
        kept1 = small_loss(F.cross_entropy(logits1, labels, reduction="none"), rate)
        kept2 = small_loss(F.cross_entropy(logits2, labels, reduction="none"), rate)
    loss = sln.soft_cross_entropy(logits1[kept2], targets[kept2]) + sln.soft_cross_entropy(logits2[kept1], targets[kept1])
    return loss, kept1, kept2


def objective(b: Batch):
    targets = sln.noisy_targets(b.targets, b.sigma, b.gen)
    loss, kept1, kept2 = coteaching_loss(b.logits[0], b.logits[1], b.labels, targets, b.state["rate"])
    clean = (~b.noisy[kept1]).sum() + (~b.noisy[kept2]).sum()
    return loss, torch.stack([clean, clean.new_full((), len(kept1) + len(kept2))])   # a fill, no host copy


def prepare(args: argparse.Namespace, told: dict) -> None:
    """A --forget_rate not given stays unset in the run's config (the setting is "the noise rate", the same for
    every seed, although each seed's subset has its own); the rate used is each epoch's coteach/forget_rate."""
    if args.forget_rate is None:
        if told["noise_rate"] is None:
            raise ValueError("Co-teaching needs --forget_rate (the authors: the noise rate), which this dataset's "
                             "labels do not tell: give it, e.g. --forget_rate 0.2")
        print(f"forget rate {told['noise_rate']:.4g} (the share of wrong training labels; --forget_rate not given)")
    if args.num_gradual > args.n_epochs:
        rate = told["noise_rate"] if args.forget_rate is None else args.forget_rate
        print(f"note: the forget rate's ramp (--num_gradual {args.num_gradual}) is longer than the run "
              f"({args.n_epochs} epochs): the last epoch drops {forget_rate_at(args.n_epochs, rate, args.num_gradual, args.forget_exponent):.4g} "
              f"of each batch, not {rate:.4g}")


def init(known: dict, args: argparse.Namespace) -> dict:
    given = args.forget_rate
    return {"rate": 0.0, "forget_rate": known["noise_rate"] if given is None else given}


def start_epoch(state: dict, epoch: int, args: argparse.Namespace) -> dict:
    state["rate"] = forget_rate_at(epoch, state["forget_rate"], args.num_gradual, args.forget_exponent)
    return {"coteach/forget_rate": state["rate"]}


def epoch_row(sums: list[float], has_clean: bool) -> dict:
    """The share of kept samples whose given label is right (both networks' selections), where that is known."""
    return {"coteach/selected_precision": sums[0] / sums[1] if has_clean and sums[1] else None}


FLAGS = (
    Flag("forget_rate", float, "share of each batch that Co-teaching drops as noisy once the schedule is done, in "
         "[0, 1) (default: the authors' choice, the noise rate: the share of wrong training labels, where clean "
         "labels tell it; required otherwise)", valid=lambda v: 0 <= v < 1, valid_text="in [0, 1)"),
    Flag("num_gradual", int, "epochs over which the forget rate rises from 0 (the authors' Tk, default 10)",
         default=10, valid=lambda v: v >= 1, valid_text="1 or more"),
    Flag("forget_exponent", float, "exponent c of the forget rate's ramp (the authors' default 1)", default=1.0,
         valid=lambda v: v > 0, valid_text="> 0"),
)
METHODS = [
    Method("Co-teaching", "two networks teach each other on small-loss samples, Han et al. 2018", objective,
           flags=FLAGS, networks=2, metrics=METRICS, prepare=prepare, init=init, start_epoch=start_epoch, epoch_row=epoch_row,
           colour="#17becf"),
    Method("Co-teaching-SLN", "Co-teaching with SLN noise (--sigma) on the targets of the kept samples", objective,
           flags=FLAGS, networks=2, sln=True, metrics=METRICS, prepare=prepare, init=init, start_epoch=start_epoch,
           epoch_row=epoch_row, colour="#d62728"),
]
