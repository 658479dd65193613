"""Shared fixtures: tiny CIFAR-10/100 folders written in the real pickle layout, paper-style noise files,
and a guard that keeps every test off the network."""
from __future__ import annotations

import csv
import os
import sys
import urllib.request
from pathlib import Path

# Progress bars are for a terminal; the tests read stderr as text, where a bar's carriage returns would split the
# one-line errors they check. Set here, not only in .ci/run, so that `make test` run by hand agrees with CI, and
# before anything imports tqdm: tqdm reads it once, at import, and torch imports it. Subprocesses inherit it.
os.environ["TQDM_DISABLE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import methods  # noqa: E402


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)    # torch.hub imported its own name (pretrained weights)


def assert_refused(capsys, call, message: str, out_dir: Path) -> None:
    """`call()` stops with exit status 2 and one stderr line holding `message`, and creates nothing at `out_dir`."""
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out_dir.exists()


write_cifar = data.write_synthetic_cifar     # (root, name, n_train, n_test, seed=0)


def write_label_csv(path: Path, clean: np.ndarray, noisy: np.ndarray, newline: str = "\r\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator=newline)
        w.writerow(["label", "label_noisy"])
        w.writerows(zip(clean.tolist(), noisy.tolist()))


def flip_labels(clean: np.ndarray, num_classes: int, p: float, mode: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = clean.copy()
    idx = rng.choice(len(clean), int(round(p * len(clean))), replace=False)
    if mode == "asym":
        noisy[idx] = (clean[idx] + 1) % num_classes
    else:
        noisy[idx] = (clean[idx] + rng.integers(1, num_classes, len(idx))) % num_classes
    return noisy


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    """A data root with tiny CIFAR-10 (400 train / 100 test) and CIFAR-100 (600 / 200) and, for both,
    sym/asym/dependent 0.4 noise files in the paper's format."""
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, "cifar10", 400, 100, seed=1)
    write_cifar(root, "cifar100", 600, 200, seed=2)
    for name in ("cifar10", "cifar100"):
        _, y, _, _ = data.load_cifar(name, root, download=False)
        for k, mode in enumerate(("sym", "asym", "dependent")):
            noisy = flip_labels(y, data.CIFAR[name].num_classes, 0.4, mode, seed=k)
            write_label_csv(data.noise_dir(root, name) / f"{mode}0.4.csv", y, noisy,
                            "\n" if mode == "dependent" else "\r\n")
    return root


@pytest.fixture
def paper_sums(fake_root, monkeypatch):
    """Make the fake noise files pass the SHA-256 check, as the real ones do."""
    sums = {(name, mode, 0.4): data.file_digest(data.noise_dir(fake_root, name) / f"{mode}0.4.csv")
            for name in ("cifar10", "cifar100") for mode in ("sym", "asym", "dependent")}
    monkeypatch.setattr(data, "PAPER_NOISE_SHA256", sums)
    return sums


def variant_flags(sigma: str, names: list[str] | None = None) -> dict[str, list[str]]:
    """Flags that train each method (default: the paper's four models, by their earlier flags; sigma for those that
    add SLN noise), for smoke runs."""
    names = names or [n for n, m in methods.METHODS.items() if m.by_flags]
    return {name: methods.argv(name, sigma) for name in names}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real training, real Ray, subprocess kills or the GPU check's dry run; "
                                       "`make test-fast` leaves these out (pytest -m 'not slow')")
