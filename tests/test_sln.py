"""Exact-value tests of the method's pure functions."""
import copy

import pytest
import torch
import torch.nn.functional as F

import sln
from models import make_model


def test_soft_cross_entropy_equals_cross_entropy_on_onehot():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=g)
    labels = torch.randint(0, 7, (16,), generator=g)
    onehot = sln.onehot(labels, 7)
    assert torch.allclose(sln.soft_cross_entropy(logits, onehot), F.cross_entropy(logits, labels), atol=1e-6)
    assert torch.allclose(sln.soft_cross_entropy(logits, onehot, "none"),
                          F.cross_entropy(logits, labels, reduction="none"), atol=1e-6)


def test_soft_cross_entropy_hand_value():
    logits = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([[2.0, -1.0]])   # SLN targets may leave the simplex; no clipping
    # -(2*log 0.5 - 1*log 0.5) = log 2
    assert sln.soft_cross_entropy(logits, targets).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_noisy_targets_mean_and_std():
    targets = sln.onehot(torch.zeros(200_000, dtype=torch.long), 4)
    g = torch.Generator().manual_seed(1)
    noisy = sln.noisy_targets(targets, 0.5, g)
    diff = noisy - targets
    assert diff.mean().item() == pytest.approx(0.0, abs=3e-3)
    assert diff.std().item() == pytest.approx(0.5, abs=3e-3)
    # fresh noise each call, and sigma 0 returns the targets untouched
    assert not torch.equal(sln.noisy_targets(targets[:10], 0.5, g), sln.noisy_targets(targets[:10], 0.5, g))
    assert sln.noisy_targets(targets, 0.0, g) is targets


def test_ema_after_k_steps_matches_closed_form():
    torch.manual_seed(0)
    model = make_model("wrn-16-1", 10)
    ema = copy.deepcopy(model)
    ema_t, cur_t = sln.ema_tensors(ema), sln.ema_tensors(model)
    start = [t.clone() for t in ema_t]
    alpha, k = 0.9, 5
    with torch.no_grad():
        for t in cur_t:               # the network jumps to new constant values ...
            t.add_(1.0)
    for _ in range(k):                # ... and the EMA follows: ema_k = a^k ema_0 + (1 - a^k) cur
        sln.ema_update(ema_t, cur_t, alpha)
    for e, s, c in zip(ema_t, start, cur_t):
        assert torch.allclose(e, alpha ** k * s + (1 - alpha ** k) * c, atol=1e-5)


def test_ema_covers_batchnorm_buffers_not_counters():
    model = make_model("wrn-16-1", 10)
    names = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    assert any(k.endswith("running_mean") for k in names) and any(k.endswith("running_var") for k in names)
    assert not any(k.endswith("num_batches_tracked") for k in names)
    assert len(sln.ema_tensors(model)) == len(names)


def test_label_correction_hand_worked_example():
    # 4 samples, 3 classes. Losses 1, 3, 2, 5 -> normalised l = 0, 0.5, 0.25, 1.
    losses = torch.tensor([1.0, 3.0, 2.0, 5.0])
    noisy = sln.onehot(torch.tensor([0, 1, 2, 0]), 3)
    ema_logits = torch.tensor([[0.0, 5.0, 0.0],   # predicts 1
                               [0.0, 0.0, 5.0],   # predicts 2
                               [0.0, 0.0, 5.0],   # predicts 2 (agrees with its label)
                               [5.0, 0.0, 0.0]])  # predicts 0
    expected = torch.tensor([[0.0, 1.0, 0.0],
                             [0.0, 0.5, 0.5],
                             [0.0, 0.0, 1.0],
                             [1.0, 0.0, 0.0]])
    assert torch.allclose(sln.corrected_targets(losses, noisy, ema_logits), expected)


def test_minmax_of_constant_values_is_zero():
    assert torch.equal(sln.minmax_normalise(torch.full((3,), 2.0)), torch.zeros(3))


def test_wrn_28_2_matches_reference_shape():
    model = make_model("wrn-28-2", 10)
    # the usual bias-free WRN-28-2 has 1,467,610 parameters; the reference adds a bias to each of its
    # convolutions: 16 (stem) + 8*32+32 + 8*64+64 + 8*128+128 (blocks and shortcuts) = 2,032 more
    assert sum(p.numel() for p in model.parameters()) == 1467610 + 2032
    assert model.bn1.momentum == 0.9
    assert make_model("wrn-16-1", 100)(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert make_model("vgg19-bn", 10)(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model"):
        make_model("resnet-9000", 10)
