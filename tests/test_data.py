"""Data loading and paper noise files."""
import pickle

import numpy as np
import pytest
import torchvision.datasets as tvd

import data
from conftest import write_cifar, write_label_csv
from errors import DataError


def test_reads_pickle_layout(fake_root):
    x, y, tx, ty = data.load_cifar("cifar10", fake_root, download=False)
    assert x.shape == (400, 3, 32, 32) and x.dtype == np.uint8
    assert tx.shape == (100, 3, 32, 32) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))


def test_missing_dataset_offline_says_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.delenv("MAKELEVEL", raising=False)
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz.*cifar-10-batches-py.*pass the --data_dir that "
                                        r"holds it$"):
        data.load_cifar("cifar10", tmp_path, download=True)   # download fails: network is off in tests
    assert not any(tmp_path.rglob("*.tar.gz"))
    monkeypatch.setenv("MAKELEVEL", "1")                      # run by make (make demo): its DATA_DIR is the way
    with pytest.raises(DataError, match=r"--data_dir that holds it \(make demo DATA_DIR=<folder>\)$"):
        data.load_cifar("cifar10", tmp_path, download=True)


@pytest.mark.parametrize("name, listed", [("cifar10", tvd.CIFAR10), ("cifar100", tvd.CIFAR100)])
def test_official_md5_sums_are_torchvision_s(name, listed):
    assert data.CIFAR[name].file_md5 == dict(listed.train_list + listed.test_list)
    assert set(data.CIFAR[name].file_md5) == set(data.CIFAR[name].train_files + data.CIFAR[name].test_files)


def test_label_out_of_range_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10", 50, 10)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = pickle.load(open(path, "rb"))
    batch["labels"][0] = 10
    pickle.dump(batch, open(path, "wb"), protocol=2)
    with pytest.raises(DataError, match=r"labels .* not .* integers in \[0, 10\)"):
        data.load_cifar("cifar10", tmp_path, download=False)


def test_truncated_batch_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10", 50, 10)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated"):
        data.load_cifar("cifar10", tmp_path, download=False)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="plain-array"):
        data.load_array_pickle(path)


class CallsEncode:
    """Unpickled, calls the allowed _codecs.encode with arguments a real array never gives it."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        import _codecs
        return _codecs.encode, self.args


@pytest.mark.parametrize("args, error", [(("x", "no-such-codec"), "LookupError"), ((b"x", "rot13"), "TypeError"),
                                         (("\udcff", "ascii"), "UnicodeEncodeError")])
def test_an_allowed_callable_used_badly_is_the_same_one_line(tmp_path, args, error):
    """Nothing runs but the allowed callables; whatever they raise on a crafted file's arguments is the one-line
    refusal every damaged pickle gets, with the plain CIFAR loader and the CIFAR-N one alike."""
    path = tmp_path / "crafted.pkl"
    path.write_bytes(pickle.dumps({"data": CallsEncode(*args)}, protocol=2))
    with pytest.raises(DataError, match=rf"crafted\.pkl is truncated or not a plain-array pickle \({error}: "):
        data.load_array_pickle(path)
    import datasets.cifar_n
    with pytest.raises(DataError, match=rf"crafted\.pkl is truncated or not a plain-array pickle \({error}: "):
        datasets.cifar_n.read_cifarn_labels(path)
    import zipfile                                           # a torch.save-style zip holding the same pickle
    with zipfile.ZipFile(tmp_path / "crafted.pt", "w") as zf:
        zf.writestr("archive/data.pkl", path.read_bytes())
    with pytest.raises(DataError, match=rf"crafted\.pt is not a plain-array pickle \({error}: "):
        datasets.cifar_n.read_cifarn_labels(tmp_path / "crafted.pt")


def test_paper_noise_loads_and_marks_noisy(fake_root, paper_sums):
    d = data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, seed=0)
    assert d.noise_rate() == pytest.approx(0.4)
    assert np.array_equal(d.is_noisy, d.labels != d.clean_labels)
    assert d.info["noise_rate"] == pytest.approx(0.4)


def test_noise_checksum_mismatch(fake_root):
    # without the paper_sums fixture the fake files fail the real SHA-256 sums
    with pytest.raises(DataError, match="SHA-256"):
        data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, seed=0)


def test_rate_without_paper_file_suggests_custom_noise(fake_root, paper_sums):
    with pytest.raises(DataError, match="--custom_noise"):
        data.load_cifar_noisy("cifar10", fake_root, "sym", 0.2, seed=0)


def test_missing_noise_file_offline(tmp_path, paper_sums):
    write_cifar(tmp_path, "cifar10", 50, 10)
    with pytest.raises(DataError, match=r"download https://raw.githubusercontent.com/chenpf1025/SLN/.*sym0.4.csv to"):
        data.load_cifar_noisy("cifar10", tmp_path, "sym", 0.4, seed=0)


@pytest.mark.parametrize("problem, rows, message", [
    ("wrong length", lambda y: (y[:-3], y[:-3]), "has 397 rows but the training set has 400"),
    ("out of range", lambda y: (y, np.where(np.arange(len(y)) == 5, 12, y)), r"outside \[0, 10\)"),
])
def test_bad_noise_files(tmp_path, fake_root, problem, rows, message):
    y = data.load_cifar("cifar10", fake_root, download=False)[1]
    path = tmp_path / "labels.csv"
    write_label_csv(path, *rows(y))
    with pytest.raises(DataError, match=message):
        data.read_label_csv(path, 400, 10)


def test_non_integer_noise_label(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("label,label_noisy\n1,2\n3,cat\n")
    with pytest.raises(DataError, match="row 3 is not two integer labels"):
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


def test_a_subset_smaller_than_the_classes_says_which_are_left_out(fake_root, paper_sums, capsys):
    d = data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, seed=1)
    capsys.readouterr()
    small = d.subset(4, 3, seed=1)
    assert len(small.labels) == 4 and len(small.test_labels) == 3
    out = capsys.readouterr().out
    assert "note: --train_subset 4 leaves 6 of the 10 classes out: they are not trained on" in out
    assert "note: --test_subset 3 leaves 7 of the 10 classes out: they are not in the test accuracy" in out
    d.subset(200, 50, seed=1)          # every class kept: no note
    assert "note:" not in capsys.readouterr().out


def test_download_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """download_file writes through files.write_atomic: a good download appears under its name, a bad checksum or
    a broken connection leaves neither the file nor a temporary one behind."""
    import hashlib
    import io
    import urllib.error
    import urllib.request
    payload = b"label,label_noisy\n0,1\n"
    good = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    dest = tmp_path / "sub" / "noise.csv"
    data.download_file("https://example.org/x", dest, "the file", "fetch it by hand", sha256=good)
    assert dest.read_bytes() == payload
    for name, sha in (("bad-sum.csv", "0" * 64), ("cut.csv", good)):
        if name == "cut.csv":
            def broken(url, timeout):
                raise urllib.error.URLError("connection reset")
            monkeypatch.setattr(urllib.request, "urlopen", broken)
        with pytest.raises(DataError, match="checksum" if name == "bad-sum.csv" else "cannot download"):
            data.download_file("https://example.org/x", tmp_path / "sub" / name, "the file", "fetch it", sha256=sha)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["noise.csv"]


def test_a_failed_download_leaves_no_folder_a_mistyped_data_dir_would_have_made(tmp_path, monkeypatch):
    """Offline, a --data_dir that does not exist gets the one-line error and no empty folder tree (the CIFAR archive
    and the noise files alike); a folder that existed before stays. The CIFAR folder itself given as --data_dir
    is named as one level too deep."""
    import urllib.error
    import urllib.request
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="cannot get cifar10"):
        data.load_cifar("cifar10", tmp_path / "typo" / "data")
    with pytest.raises(DataError, match="cannot download"):
        data.download_file("https://example.org/x", tmp_path / "typo2" / "label_noisy" / "sym0.4.csv", "f", "fix",
                           sha256="0" * 64)
    (tmp_path / "kept").mkdir()
    with pytest.raises(DataError):
        data.load_cifar("cifar10", tmp_path / "kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    write_cifar(tmp_path / "root", "cifar10", 20, 10, seed=0)
    with pytest.raises(DataError, match=r"cifar-10-batches-py is the cifar10 folder itself; .*--data_dir .*root$"):
        data.load_cifar("cifar10", tmp_path / "root" / "cifar-10-batches-py")
