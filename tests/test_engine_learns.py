"""Does the method work? SLN+MO against CE on real images with 40 % symmetric label noise, and each baseline.

scikit-learn ships the UCI handwritten digits (1,797 real 8x8 images), so this runs offline in about
half a minute on 2 CPU cores. A small MLP trained with CE memorises the wrong labels and its test
accuracy falls; with SLN and the momentum model it does not.
"""
import contextlib
import io

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import data
import cli
import engine
import methods
import noise

pytestmark = pytest.mark.slow     # training long enough to see an effect: not in make test-fast

SEEDS = (0, 1, 2)


def noisy_digits(seed: int) -> data.NoisyData:
    d = load_digits()
    images = np.repeat((d.images * (255 / 16)).astype(np.uint8)[:, None], 3, axis=1)   # (N, 3, 8, 8)
    labels = d.target.astype(np.int64)
    test = data.stratified_indices(labels, 500, seed)
    train = np.setdiff1d(np.arange(len(labels)), test)
    clean = labels[train]
    noisy = noise.sym_noise(clean, 10, 0.4, seed)
    return data.NoisyData("digits", images[train], noisy, clean, noisy != clean, images[test], labels[test], 10,
                          [str(i) for i in range(10)], (0.5,) * 3, (0.5,) * 3, pad=0, flip=False)


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def train_digits(tmp_path, seed: int, sigma: float, mo: bool, method_argv: list[str] = ()) -> float:
    parser = cli.Parser()
    cli.add_training_args(parser, default_model="wrn-16-1")   # every flag at its default, then these
    args = parser.parse_args(["--batch_size", "64", "--n_epochs", "40", "--lr", "0.03", "--sigma", str(sigma),
                              "--ema_alpha", "0.99", "--seed", str(seed)] + (["--mo"] if mo else []) + list(method_argv))
    args.dataset_name = "digits"
    method = cli.check_method(args)
    torch.manual_seed(seed)
    model, peers = mlp(), [mlp() for _ in range(method.networks - 1)]
    digits = noisy_digits(seed)
    if method.prepare:
        method.prepare(args, {"noise_rate": digits.noise_rate()})
    run_dir = tmp_path / f"{seed}-{sigma}-{mo}-{method.name}"
    run_dir.mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = engine.train(args, digits, model, torch.device("cpu"), run_dir, peers=peers)
    return summary["last_test_acc"]


def test_sln_mo_beats_ce_under_symmetric_noise(tmp_path):
    d = noisy_digits(0)
    assert d.noise_rate() == pytest.approx(0.4, abs=0.01)
    ce = np.mean([train_digits(tmp_path, s, 0.0, False) for s in SEEDS])
    sln_mo = np.mean([train_digits(tmp_path, s, 0.5, True) for s in SEEDS])
    # measured: CE 0.69, SLN+MO 0.91 (mean of 3 seeds); demand a clear margin, not the exact values
    assert sln_mo > ce + 0.10, (ce, sln_mo)


BASELINES = [name for name, m in methods.METHODS.items() if not m.by_flags]


@pytest.fixture(scope="module")
def ce_digits(tmp_path_factory) -> float:
    return train_digits(tmp_path_factory.mktemp("ce"), 0, 0.0, False)


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_learns_the_digits_under_symmetric_noise(tmp_path, name, ce_digits):
    """Each baseline with its defaults, one seed, beside CE (the same seed). Demanded: it learns (far above the 10 %
    of chance) and ends no worse than CE by more than 0.1; the message reports both numbers. Co-teaching-SLN takes
    sigma 0.2: with SLN-MO's 0.5 at this learning rate it collapsed to one class once its forget rate reached 0.4
    (measured 2026-12-03; docs/methods.md)."""
    sigma = 0.2 if methods.get(name).sln else 0.0
    acc = train_digits(tmp_path, 0, sigma, False, ["--method", name])
    report = f"{name}: last test accuracy {acc:.3f}, CE {ce_digits:.3f} (digits, 40 % sym noise, seed 0)"
    print(report)
    assert acc > 0.5 and acc > ce_digits - 0.1, report
