"""Forward correction with the true transition matrix (Patrini et al., CVPR 2017), "Forward-T" in tables.

The network's softmax p is pushed through T, T[i, j] = P(given label j | clean label i), and the loss is the
cross-entropy of p T with the given label: the network learns the clean posterior. T here is the one the noise
realised, counted from the training set's clean and given labels, so this is Forward with a known T, an upper
bound for the estimated-T variant. As the authors' code (giorgiop/loss-correction), p is clipped to
[1e-7, 1 - 1e-7] before the product.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from methods import Batch, Method

CLIP = 1e-7


def transition_matrix(clean: torch.Tensor, given: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Row-stochastic T[i, j]: the share of images of clean class i that were given label j (an empty class keeps
    its label: T[i, i] = 1)."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=clean.device)
    counts.index_put_((clean, given), torch.ones_like(clean, dtype=torch.float64), accumulate=True)
    empty = counts.sum(1) == 0
    counts[empty] = torch.eye(num_classes, dtype=torch.float64, device=clean.device)[empty]
    return (counts / counts.sum(1, keepdim=True)).float()


def forward_loss(logits: torch.Tensor, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1).clamp(CLIP, 1 - CLIP)
    return F.nll_loss((p @ t).log(), labels)


def init(known: dict, args: argparse.Namespace) -> dict:
    return {"T": transition_matrix(known["clean"], known["labels"], known["num_classes"])}


def objective(b: Batch):
    return forward_loss(b.logits[0], b.labels, b.state["T"]), None


METHODS = [Method("Forward-T", "forward loss correction with the true transition matrix, Patrini et al. 2017",
                  objective, init=init, needs_clean=True, colour="#e377c2")]
