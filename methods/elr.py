"""ELR, early-learning regularisation (Liu et al., NeurIPS 2020): CE + lambda * mean log(1 - <t_i, p_i>).

t_i is a running average (momentum beta) of the network's own normalised predictions for image i, from zeros; the
regulariser pulls p_i towards it, so the network keeps what it learnt early instead of fitting wrong labels later.
As the authors' code (shengliu66/ELR): p is clamped to [1e-4, 1 - 1e-4], t is updated before the loss with the
detached prediction; defaults beta 0.7, lambda 3 (CIFAR-10), beta 0.9, lambda 7 (CIFAR-100).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from methods import Batch, Flag, Method, hundred_classes

CLAMP = 1e-4


def elr_loss(logits: torch.Tensor, labels: torch.Tensor, history: torch.Tensor, index: torch.Tensor, beta: float,
             lam: float) -> torch.Tensor:
    """The ELR objective of one batch; updates the rows `index` of `history` (N x C) in place."""
    p = torch.softmax(logits, dim=1).clamp(CLAMP, 1 - CLAMP)
    with torch.no_grad():
        q = p / p.sum(1, keepdim=True)
        history[index] = beta * history[index] + (1 - beta) * q
    regulariser = (1 - (history[index] * p).sum(1)).log().mean()
    return F.cross_entropy(logits, labels) + lam * regulariser


def init(known: dict, args: argparse.Namespace) -> dict:
    return {"history": torch.zeros(len(known["labels"]), known["num_classes"], device=known["labels"].device)}


def objective(b: Batch):
    return elr_loss(b.logits[0], b.labels, b.state["history"], b.index, b.args.elr_beta, b.args.elr_lambda), None


METHODS = [Method("ELR", "early-learning regularisation, Liu et al. 2020 (--elr_lambda, --elr_beta)", objective, flags=(
    Flag("elr_lambda", float, "weight of ELR's regulariser (default: the authors', 3 on CIFAR-10, 7 on CIFAR-100)",
         default=lambda a: 7.0 if hundred_classes(a) else 3.0, valid=lambda v: v >= 0, valid_text=">= 0",
         weighs_loss=True),
    Flag("elr_beta", float, "momentum of ELR's per-image prediction average, in [0, 1) (default: the authors', 0.7 on "
         "CIFAR-10, 0.9 on CIFAR-100)", default=lambda a: 0.9 if hundred_classes(a) else 0.7,
         valid=lambda v: 0 <= v < 1, valid_text="in [0, 1)")),
    init=init, colour="#bcbd22")]
