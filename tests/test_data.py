"""Data loading, paper noise files and the on-device augmentation."""
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import data
from conftest import write_cifar, write_label_csv


def test_reads_pickle_layout(fake_root):
    x, y, tx, ty = data.load_cifar("cifar10", fake_root, download=False)
    assert x.shape == (400, 3, 32, 32) and x.dtype == np.uint8
    assert tx.shape == (100, 3, 32, 32) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))


def test_missing_dataset_offline_says_what_to_fetch(tmp_path):
    with pytest.raises(data.DataError, match=r"cifar-10-python.tar.gz.*cifar-10-batches-py"):
        data.load_cifar("cifar10", tmp_path, download=True)   # download fails: network is off in tests
    assert not any(tmp_path.rglob("*.tar.gz"))


def test_label_out_of_range_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10", 50, 10)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = pickle.load(open(path, "rb"))
    batch["labels"][0] = 10
    pickle.dump(batch, open(path, "wb"), protocol=2)
    with pytest.raises(data.DataError, match=r"labels .* not .* integers in \[0, 10\)"):
        data.load_cifar("cifar10", tmp_path, download=False)


def test_truncated_batch_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10", 50, 10)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(data.DataError, match="truncated"):
        data.load_cifar("cifar10", tmp_path, download=False)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(data.DataError, match="plain-array"):
        data.load_array_pickle(path)


def test_paper_noise_loads_and_marks_noisy(fake_root, paper_sums):
    d = data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, seed=0)
    assert d.noise_rate() == pytest.approx(0.4)
    assert np.array_equal(d.is_noisy, d.labels != d.clean_labels)
    assert d.info["noise_rate"] == pytest.approx(0.4)


def test_noise_checksum_mismatch(fake_root):
    # without the paper_sums fixture the fake files fail the real SHA-256 sums
    with pytest.raises(data.DataError, match="SHA-256"):
        data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, seed=0)


def test_rate_without_paper_file_suggests_custom_noise(fake_root, paper_sums):
    with pytest.raises(data.DataError, match="--custom_noise"):
        data.load_cifar_noisy("cifar10", fake_root, "sym", 0.2, seed=0)


def test_missing_noise_file_offline(tmp_path, paper_sums):
    write_cifar(tmp_path, "cifar10", 50, 10)
    with pytest.raises(data.DataError, match=r"download https://raw.githubusercontent.com/chenpf1025/SLN/.*sym0.4.csv to"):
        data.load_cifar_noisy("cifar10", tmp_path, "sym", 0.4, seed=0)


@pytest.mark.parametrize("problem, rows, message", [
    ("wrong length", lambda y: (y[:-3], y[:-3]), "has 397 rows but the training set has 400"),
    ("out of range", lambda y: (y, np.where(np.arange(len(y)) == 5, 12, y)), r"outside \[0, 10\)"),
])
def test_bad_noise_files(tmp_path, fake_root, problem, rows, message):
    y = data.load_cifar("cifar10", fake_root, download=False)[1]
    path = tmp_path / "labels.csv"
    write_label_csv(path, *rows(y))
    with pytest.raises(data.DataError, match=message):
        data.read_label_csv(path, 400, 10)


def test_non_integer_noise_label(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("label,label_noisy\n1,2\n3,cat\n")
    with pytest.raises(data.DataError, match="row 3 is not two integer labels"):
        data.read_label_csv(path, 2, 10)


def test_openset_replaces_seeded_fraction(fake_root):
    d = data.load_cifar_noisy("cifar10", fake_root, "openset", 0.25, seed=3)
    x10 = data.load_cifar("cifar10", fake_root, download=False)[0]
    x100 = data.load_cifar("cifar100", fake_root, download=False)[0]
    replaced = np.array(d.info["openset_replaced"])
    assert len(replaced) == 100 and d.is_noisy.sum() == 100
    assert np.array_equal(d.images[replaced], x100[d.info["openset_source"]])
    assert np.array_equal(d.images[~d.is_noisy], x10[~d.is_noisy])
    assert np.array_equal(d.labels, d.clean_labels)            # labels are kept
    again = data.load_cifar_noisy("cifar10", fake_root, "openset", 0.25, seed=3)
    assert again.info["openset_replaced"] == d.info["openset_replaced"]


def test_stratified_subset_keeps_class_shares():
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    idx = data.stratified_indices(labels, 100, seed=0)
    assert len(idx) == 100 and len(set(idx)) == 100
    assert np.bincount(labels[idx]).tolist() == [10, 20, 30, 40]
    assert np.array_equal(idx, data.stratified_indices(labels, 100, seed=0))


def test_crop_flip_is_pixel_identical_to_torchvision():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 9, (6, 2), generator=g)
    flips = torch.tensor([True, False, True, False, True, False])
    out = data.random_crop_flip(images, 4, offsets=offsets, flips=flips)
    for i in range(6):
        # torchvision's RandomCrop(32, padding=4): pad with zeros, crop at (top, left); then hflip
        ref = TF.crop(TF.pad(images[i], [4]), int(offsets[i, 0]), int(offsets[i, 1]), 32, 32)
        if flips[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref)


def test_crop_flip_draws_every_offset_and_both_flips():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(4000, 1, 3, 3, dtype=torch.uint8)
    images[:, 0, 1, 1] = 1          # a single lit pixel; where it lands reveals the offset drawn
    out = data.random_crop_flip(images, 1, g)
    where = out.view(4000, -1).argmax(1)
    counts = torch.bincount(where, minlength=9).float() / 4000
    assert torch.all((counts > 0.08) & (counts < 0.15))      # 9 positions, ~1/9 each


def test_normalise_matches_to_tensor_normalize():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    ref = torch.stack([TF.normalize(TF.convert_image_dtype(im, torch.float32), mean.tolist(), std.tolist()) for im in x])
    assert torch.allclose(data.normalise(x, mean, std), ref, atol=1e-6)
