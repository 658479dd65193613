"""Stochastic label noise (SLN), the momentum model and label correction, as small pure functions.

Chen et al., "Noise against noise: stochastic label noise helps combat inherent label noise",
ICLR 2021. Every function takes and returns tensors on the training device; none reads globals.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot encoding of integer `labels`."""
    return F.one_hot(labels, num_classes).float()


def noisy_targets(targets: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SLN (paper Eq. 5): target + sigma * N(0, I), fresh for every minibatch.

    The noise is neither clipped nor renormalised, exactly as in the reference's `train_noise`.
    """
    if sigma == 0:
        return targets
    noise = torch.randn(targets.shape, generator=generator, device=targets.device, dtype=targets.dtype)
    return targets + sigma * noise


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-sum_k target_k * log_softmax(logits)_k per sample: the SLN loss (mean over the batch by default).

    With one-hot targets this is the ordinary cross-entropy.
    """
    losses = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.mean()


def ema_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the momentum model averages: every floating-point entry of the state dict.

    This is the whole state, BatchNorm running statistics included, as in the reference's `WeightEMA`;
    integer buffers (BatchNorm's num_batches_tracked) are left alone there too.
    """
    return [t for t in model.state_dict().values() if t.is_floating_point()]


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], current: list[torch.Tensor], alpha: float) -> None:
    """Momentum model step (paper Sec. 3.3): ema <- alpha * ema + (1 - alpha) * current, in place.

    One fused multi-tensor call per optimiser step; the reference uses alpha = 0.999.
    """
    torch._foreach_lerp_(ema, current, 1.0 - alpha)


def minmax_normalise(values: torch.Tensor) -> torch.Tensor:
    """Scale `values` to [0, 1] by their minimum and maximum (all zeros if they are all equal)."""
    span = values.max() - values.min()
    return (values - values.min()) / span.clamp_min(torch.finfo(values.dtype).tiny)


def corrected_targets(losses: torch.Tensor, noisy_onehot: torch.Tensor, ema_logits: torch.Tensor,
                      soft: bool = False) -> torch.Tensor:
    """Label correction (paper Sec. 3.3, reference `noise_cifar_train.py`), steps 3 and 4.

    `losses` are the momentum model's per-sample losses against the current targets; after min-max
    normalisation to l in [0, 1], the new target is l * onehot(noisy label) + (1 - l) * onehot(argmax
    prediction): samples the model finds hard keep their given label, easy ones take its prediction.
    With `soft`, the prediction is the momentum model's softmax instead of its one-hot argmax, as in the
    reference's `noise_clothing1m_train.py`.
    """
    weight = minmax_normalise(losses).unsqueeze(1)
    if soft:
        predicted = torch.softmax(ema_logits, dim=1)
    else:
        predicted = onehot(ema_logits.argmax(dim=1), noisy_onehot.shape[1])
    return weight * noisy_onehot + (1 - weight) * predicted
