"""The paper's four models (Chen et al., ICLR 2021, Table 1): CE, SLN, SLN+MO and SLN+MO+LC.

One objective for all four, as the reference's `train_noise`: the soft cross-entropy of the network's logits with
the current targets plus SLN noise (sigma 0 for CE; label correction replaces the targets and sets sigma to 0).
What tells them apart is the declaration: noise or not, the momentum model reported or not, labels corrected or
not. They are selected by --sigma, --mo and --lc_n_epoch, as in the earlier re-implementation's commands.
CE-MO (`--method CE-MO`) is CE reporting its momentum model: the paper has no such row, but SLN-MO's lead over it
is what the noise adds beyond the weight average. A CE run holds its numbers too (every run keeps an EMA network),
so tables and figures show a CE-MO row for every CE run.
"""
from __future__ import annotations

import sln
from methods import Batch, Method


def noisy_soft_ce(b: Batch):
    """SLN (paper Eq. 5) on the batch's targets, then the soft cross-entropy (plain CE when sigma is 0)."""
    return sln.soft_cross_entropy(b.logits[0], sln.noisy_targets(b.targets, b.sigma, b.gen)), None


METHODS = [
    Method("CE", "plain cross-entropy on the given labels (--sigma 0)", noisy_soft_ce, by_flags=True,
           colour="#7f7f7f"),
    Method("SLN", "stochastic label noise: Gaussian noise of std --sigma on the one-hot targets of every batch",
           noisy_soft_ce, sln=True, by_flags=True, colour="#1f77b4"),
    Method("SLN-MO", "SLN, reporting the momentum model (weight EMA, --ema_alpha): --sigma >0 --mo", noisy_soft_ce,
           sln=True, mo=True, by_flags=True, colour="#ff7f0e"),
    Method("SLN-MO-LC", "SLN+MO with label correction by the momentum model after --lc_n_epoch: --sigma >0 --mo "
           "--lc_n_epoch N", noisy_soft_ce, sln=True, mo=True, lc=True, by_flags=True, colour="#2ca02c"),
    Method("CE-MO", "CE, reporting its momentum model (weight EMA, --ema_alpha): SLN-MO without the noise, the "
           "control that tells the noise from the weight average", noisy_soft_ce, mo=True, same_training_as="CE",
           colour="#000000"),
]
