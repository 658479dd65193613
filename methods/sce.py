"""SCE, the symmetric cross-entropy (Wang et al., ICCV 2019): alpha * CE + beta * reverse CE.

The reverse CE swaps prediction and label, -sum_k p_k log y_k, with the one-hot label clamped to [1e-4, 1] so
that its log is finite: it is then -log(1e-4) * (1 - p_y). The CE term clamps the prediction to [1e-7, 1]. Both
terms are batch means, and the defaults are the authors' (YisenWang/symmetric_cross_entropy_for_noisy_labels):
alpha 0.1, beta 1.0 on CIFAR-10, alpha 6.0, beta 0.1 on CIFAR-100 (docs/methods.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods import Batch, Flag, Method, hundred_classes

LABEL_FLOOR = 1e-4       # the authors' clamp of the one-hot label in the reverse CE
PREDICTION_FLOOR = 1e-7  # ... and of the prediction in the CE term


def sce_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).to(p.dtype)
    ce = -(onehot * p.clamp(PREDICTION_FLOOR, 1).log()).sum(1).mean()
    rce = -(p * onehot.clamp(LABEL_FLOOR, 1).log()).sum(1).mean()
    return alpha * ce + beta * rce


def objective(b: Batch):
    return sce_loss(b.logits[0], b.labels, b.args.sce_alpha, b.args.sce_beta), None


positive = dict(valid=lambda v: v >= 0, valid_text=">= 0")
METHODS = [Method("SCE", "symmetric cross-entropy, Wang et al. 2019 (--sce_alpha, --sce_beta)", objective, flags=(
    Flag("sce_alpha", float, "weight of SCE's CE term (default: the authors', 0.1 on CIFAR-10, 6.0 on CIFAR-100)",
         default=lambda a: 6.0 if hundred_classes(a) else 0.1, weighs_loss=True, **positive),
    Flag("sce_beta", float, "weight of SCE's reverse-CE term (default: the authors', 1.0 on CIFAR-10, 0.1 on CIFAR-100)",
         default=lambda a: 0.1 if hundred_classes(a) else 1.0, weighs_loss=True, **positive)), colour="#8c564b")]
