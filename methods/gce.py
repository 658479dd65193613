"""GCE, the generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): (1 - p_y^q) / q per sample.

q -> 0 gives CE, q = 1 the (noise-robust, slow to fit) mean absolute error; the paper's q = 0.7 is between. The
authors published no code; q = 0.7 is the paper's, as in the most used port (AlanChou/Truncated-Loss) and in the
SCE authors' Keras code. This is plain GCE, without the truncated variant's pruning (docs/methods.md).
"""
from __future__ import annotations

import torch

from methods import Batch, Flag, Method


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float) -> torch.Tensor:
    """Mean over the batch of (1 - p_y^q) / q, p = softmax(logits), y the given label (the paper's Eq. 6)."""
    p_y = torch.softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    return ((1 - p_y ** q) / q).mean()


def objective(b: Batch):
    return gce_loss(b.logits[0], b.labels, b.args.gce_q), None


METHODS = [Method("GCE", "generalized cross-entropy, Zhang & Sabuncu 2018 (--gce_q)", objective, flags=(
    Flag("gce_q", float, "GCE's exponent q in (0, 1]: 1 is the MAE, towards 0 CE (default 0.7, the paper's)",
         default=0.7, valid=lambda v: 0 < v <= 1, valid_text="in (0, 1]"),), colour="#9467bd")]
