"""Datasets on disk: CIFAR-10/100 in its python pickle layout, the paper's noise files, generated
("custom") noise files, and NoisyData, the arrays a run trains on.

Datasets are plain arrays: images as uint8 (N, 3, H, W), labels as int64; a set too large for memory
(Clothing1M) holds a list of its image files instead (datasets/images.py's ImageFiles), indexed the same way. Noise
is decided by the pure functions of noise.py or read from files here, never inside a dataset object. The dataset
declarations, the real-world noisy datasets (Animal-10N, CIFAR-N, Clothing1M, a folder) and the on-device
augmentation live in datasets/, which imports this module (never the other way round), so this module needs no
torch (torchvision only fetches a missing CIFAR archive).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from files import folders_kept_only_on_success, write_atomic, write_new
from errors import DataError
from noise import check_noise_options, generate_noise, noise_report, noise_rules, openset_indices

# ----------------------------------------------------------------------------------------------------
# CIFAR on disk

@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR lives on disk and online, and what its files must hold."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    url: str
    archive_md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    file_md5: dict[str, str]           # every file of the official archive, to tell it from a re-encoded copy


CIFAR = {
    "cifar10": CifarSpec(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
         "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
         "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}),
    "cifar100": CifarSpec(
        "cifar-100-python", ("train",), ("test",), "fine_labels", 100,
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
        (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
        {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def data_dir_hint() -> str:
    """How a user points the scripts at a data root that already holds the files: under make (which sets
    MAKELEVEL for the commands it runs), through make's DATA_DIR."""
    return "pass the --data_dir that holds it" + (" (make demo DATA_DIR=<folder>)" if os.environ.get("MAKELEVEL") else "")


def default_data_dir() -> Path:
    """`$SLN_DATA_DIR` if set, else `data/` (relative to the current directory)."""
    return Path(os.environ.get("SLN_DATA_DIR", "data"))


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: downloaded pickles can run no code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    # What the allowed callables raise on arguments a crafted file gives them (an unknown codec for _codecs.encode:
    # LookupError; a shape too large for _reconstruct: MemoryError), besides what a torn stream raises
    ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, LookupError, OverflowError,
              MemoryError)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def load_array_pickle(path: Path):
    """Read a pickle that may hold only plain containers and numpy arrays (CIFAR batches, CIFAR-N labels)."""
    try:
        with open(path, "rb") as f:
            return ArrayUnpickler(f, encoding="latin1").load()
    except ArrayUnpickler.ERRORS as e:
        raise DataError(f"{path} is truncated or not a plain-array pickle ({type(e).__name__}: {e}); delete it and "
                        "download it again") from None


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str, num_classes: int):
    images, labels = [], []
    for name in files:
        batch = load_array_pickle(folder / name)
        if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
            raise DataError(f"{folder / name} is not a CIFAR batch (no 'data'/'{label_key}' entries); "
                            "delete the folder and download it again")
        images.append(np.asarray(batch["data"]))
        labels.append(np.asarray(batch[label_key]))
    x, y = np.concatenate(images), np.concatenate(labels)
    # Re-encoded copies (shared/data/prepare_cifar10.py) fail the official md5 sums, so check content instead.
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataError(f"images in {folder} have shape {x.shape} and dtype {x.dtype}; expected (N, 3072) uint8")
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"labels in {folder} are not {len(x)} integers in [0, {num_classes})")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def download_file(url: str, dest: Path, what: str, fix: str, md5: str | None = None, sha256: str | None = None) -> None:
    """Fetch `url` to `dest` atomically, verifying the checksum before the file appears. A folder that cannot take
    the file (read-only, or a file in the way) is a DataError naming it, before anything is fetched."""

    def fetch(tmp: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except (urllib.error.URLError, OSError) as e:
            raise DataError(f"cannot download {what} ({e}); {fix}")
        got = file_digest(tmp, "md5" if md5 else "sha256")
        if got != (md5 or sha256):
            raise DataError(f"download of {what} from {url} failed its checksum ({got}); {fix}")
    with folders_kept_only_on_success(dest.parent):
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # create and remove a probe: os.access says yes to root even on a read-only file system
            os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=dest.parent))
        except OSError as e:
            blocker = next((d for d in [dest.parent, *dest.parent.parents] if d.exists() and not d.is_dir()), None)
            why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))
            raise DataError(f"cannot write {dest.parent} ({why}), where {what} are saved on first use; {fix}") from None
        print(f"downloading {what} from {url}")
        write_atomic(dest, fetch)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks so that a large archive needs little memory."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_cifar(name: str, root: Path, download: bool = True):
    """(train_images, train_labels, test_images, test_labels) of CIFAR-10/100 under `root`.

    Reads the standard python layout (`cifar-10-batches-py/`, `cifar-100-python/`); downloads and
    checks the official archive when it is missing.
    """
    spec = CIFAR[name]
    folder = root / spec.folder
    if not all((folder / f).is_file() for f in spec.train_files + spec.test_files):
        archive = root / Path(spec.url).name
        fix = f"download {spec.url} and extract it so that {folder}/ exists, or {data_dir_hint()}"
        if root.name == spec.folder and (root / spec.train_files[0]).is_file():    # one level too deep
            raise DataError(f"{root} is the {name} folder itself; pass the folder that holds it: --data_dir {root.parent}")
        if not download:
            raise DataError(f"{name} not found in {folder}; {fix}")
        from torchvision.datasets.utils import download_and_extract_archive
        try:  # torchvision checks the archive's md5 before extracting it
            with folders_kept_only_on_success(root):
                download_and_extract_archive(spec.url, str(root), filename=archive.name, md5=spec.archive_md5)
        except (OSError, RuntimeError, tarfile.TarError) as e:
            raise DataError(f"cannot get {name} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); {fix}")
    train = _read_batches(folder, spec.train_files, spec.label_key, spec.num_classes)
    test = _read_batches(folder, spec.test_files, spec.label_key, spec.num_classes)
    return (*train, *test)


def write_synthetic_cifar(root: Path, name: str, n_train: int, n_test: int, seed: int = 0) -> None:
    """A CIFAR in its on-disk layout (pickled training batches and test_batch) whose images' colour depends on their
    class, plus Gaussian noise, so that a network has something to learn: the GPU check's data without CIFAR-10, and
    the tests'."""
    spec, rng = CIFAR[name], np.random.default_rng(seed)
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    y, ty = rng.permutation(np.arange(n_train) % spec.num_classes), np.arange(n_test) % spec.num_classes
    palette = rng.integers(0, 256, size=(spec.num_classes, 3, 1, 1))
    for names, labels in ((spec.train_files, y), (spec.test_files, ty)):
        images = np.clip(palette[labels] + rng.normal(0, 40, size=(len(labels), 3, 32, 32)), 0, 255)
        for name, idx in zip(names, np.array_split(np.arange(len(labels)), len(names))):
            batch = {"data": images[idx].astype(np.uint8).reshape(len(idx), -1), spec.label_key: labels[idx].tolist()}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def cifar_files_official(name: str, root: Path) -> bool:
    """Whether the CIFAR files under `root` are byte for byte those of the official archive (the md5 sums
    torchvision lists too); a re-encoded copy, such as the offline JPEG copy, is not."""
    folder = root / CIFAR[name].folder
    return all((folder / f).is_file() and file_digest(folder / f, "md5") == md5
               for f, md5 in CIFAR[name].file_md5.items())


def cifar_class_names(name: str, root: Path) -> list[str]:
    """Class names for figures and reports: CIFAR-10's are fixed, CIFAR-100's come from its `meta` pickle
    (the class indices when that is missing)."""
    if name == "cifar10":
        return CIFAR10_CLASSES
    meta = root / CIFAR[name].folder / "meta"
    if meta.is_file():
        names = load_array_pickle(meta).get("fine_label_names")
        if names and len(names) == 100:
            return [str(n) for n in names]
    return [str(i) for i in range(100)]


# Superclass (coarse label) of each CIFAR-100 fine class, in fine-label order; the same as the
# 'coarse_labels' of the official pickles, used when those are missing.
CIFAR100_COARSE = (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
                   6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
                   5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
                   10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
                   16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)


def cifar100_coarse(root: Path) -> tuple[np.ndarray, str]:
    """Superclass of each CIFAR-100 fine class, from the `train` pickle's 'coarse_labels' when present,
    else the built-in table; and where it came from."""
    path = root / CIFAR["cifar100"].folder / "train"
    if path.is_file():
        batch = load_array_pickle(path)
        if isinstance(batch, dict) and "coarse_labels" in batch and "fine_labels" in batch:
            fine, coarse = np.asarray(batch["fine_labels"]), np.asarray(batch["coarse_labels"])
            table = np.full(100, -1, dtype=np.int64)
            table[fine] = coarse
            if (table >= 0).all() and np.array_equal(table[fine], coarse):
                return table, "coarse_labels of cifar-100-python/train"
    return np.array(CIFAR100_COARSE, dtype=np.int64), "data.CIFAR100_COARSE"


# ----------------------------------------------------------------------------------------------------
# Label files: the paper's noise (and custom noise, same format)

PAPER_NOISE_URL = "https://raw.githubusercontent.com/chenpf1025/SLN/master/data/{folder}/label_noisy/{mode}{p}.csv"
PAPER_NOISE_SHA256 = {
    ("cifar10", "sym", 0.4): "96c1bb492340f32681142d5cb2b0003c005227235e923b27ef86d2c11ab083d0",
    ("cifar10", "asym", 0.4): "eae3112b2e876f1ed375d2456b7d9b135b3b0f0c9e5c1a2d1b81417307d7d64c",
    ("cifar10", "dependent", 0.4): "e56e57cd7ec402ead6cd65f6f64ca436c7d3e5cf4bdf174eb8a1efa1daa90dad",
    ("cifar100", "sym", 0.4): "e074d1181c8b297dd1e888a70bc8a959c26769c08fb4fadff58460f901d5f5fc",
    ("cifar100", "asym", 0.4): "a1fbcb8217b5c7dc68cc1f101d2034c634fce5e2b9f6ac34daadc5ca9826bd3c",
    ("cifar100", "dependent", 0.4): "f5d3e4506550be0532344138d6f0fc82ac32472cf669acee43b8f190b8d260d7",
}


def noise_dir(root: Path, dataset: str) -> Path:
    """`<root>/<dataset>/label_noisy/`: the paper's repository layout, kept for its files and custom ones."""
    return root / dataset / "label_noisy"


def paper_noise_file(root: Path, dataset: str, mode: str, p: float, download: bool = True) -> Path:
    """Path of the authors' noisy-label CSV, fetched on first use and always checked against its SHA-256."""
    key = (dataset, mode, p)
    if key not in PAPER_NOISE_SHA256:
        have = ", ".join(f"{m} p={q}" for d, m, q in PAPER_NOISE_SHA256 if d == dataset) or "none"
        raise DataError(f"the paper has no {mode} noise file at p={p} for {dataset} (it has: {have}); "
                        "add --custom_noise to generate such noise")
    path = noise_dir(root, dataset) / f"{mode}{p}.csv"
    url = PAPER_NOISE_URL.format(folder=dataset.upper(), mode=mode, p=p)
    fix = f"download {url} to {path}, or {data_dir_hint()}"
    if not path.is_file():
        if not download:
            raise DataError(f"paper noise file {path} is missing; {fix}")
        download_file(url, path, f"the paper's {dataset} {mode}{p} labels", fix, sha256=PAPER_NOISE_SHA256[key])
    got = file_digest(path)
    if got != PAPER_NOISE_SHA256[key]:
        raise DataError(f"{path} fails its SHA-256 check (got {got[:12]}…, expected "
                        f"{PAPER_NOISE_SHA256[key][:12]}…); delete it and {fix}")
    return path


def read_label_csv(path: Path, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) labels from a `label,label_noisy` CSV with one row per training image."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read label file {path}: {e}")
    if not rows or [c.strip() for c in rows[0][:2]] != ["label", "label_noisy"]:
        raise DataError(f"{path} must start with the header 'label,label_noisy'")
    body = rows[1:]
    if len(body) != n:
        raise DataError(f"{path} has {len(body)} rows but the training set has {n} images; "
                        "it belongs to another dataset or is truncated")
    try:
        table = np.array([[int(r[0]), int(r[1])] for r in body], dtype=np.int64)
    except (ValueError, IndexError):
        bad = next(i for i, r in enumerate(body) if len(r) < 2 or not all(c.strip().lstrip("-").isdigit() for c in r[:2]))
        raise DataError(f"{path} row {bad + 2} is not two integer labels: {','.join(body[bad])!r}")
    if table.min() < 0 or table.max() >= num_classes:
        raise DataError(f"{path} holds labels outside [0, {num_classes})")
    return table[:, 0], table[:, 1]


# ----------------------------------------------------------------------------------------------------
# Custom noise files: <data_dir>/<dataset>/label_noisy/<mode><p>_custom.csv and companions

def custom_noise_paths(root: Path, dataset: str, mode: str, p: float) -> dict[str, Path]:
    """The four files of one generated noise setting: labels, per-class rules, metadata and report."""
    folder, stem = noise_dir(root, dataset), f"{mode}{p}"
    return {"labels": folder / f"{stem}_custom.csv", "rules": folder / f"{stem}_noise_rules.csv",
            "meta": folder / f"{stem}_custom.json", "report": folder / f"{stem}_custom_report.json"}


def _json_bytes(obj) -> bytes:
    """Stable, diff-friendly JSON: sorted keys, one key per line, flat lists on one line (matrix rows each)."""
    def fmt(v, indent: str) -> str:
        inner = indent + "  "
        if isinstance(v, dict):
            items = [f"{inner}{json.dumps(k)}: {fmt(v[k], inner)}" for k in sorted(v)]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
        if isinstance(v, list) and v and isinstance(v[0], list):
            return "[\n" + ",\n".join(inner + fmt(x, inner) for x in v) + "\n" + indent + "]"
        return json.dumps(v)
    return (fmt(obj, "") + "\n").encode()


def _label_csv_bytes(clean: np.ndarray, noisy: np.ndarray, source: np.ndarray | None) -> bytes:
    columns = [clean, noisy] + ([source] if source is not None else [])
    header = "label,label_noisy" + (",cifar100_index" if source is not None else "")
    body = [",".join(map(str, row)) for row in zip(*(col.tolist() for col in columns))]
    return ("\n".join([header, *body]) + "\n").encode()


def _rules_csv_bytes(rows: list[tuple[int, str, float, str]]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["source_class", "destination_classes", "probability", "rule"])
    w.writerows(rows)
    return out.getvalue().encode()


def _write_bytes(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_bytes(content))


def save_noise_files(files: dict[Path, bytes]) -> list[str]:
    """Write a set of noise files. Files already holding exactly these bytes are left alone; a file with
    other content is never replaced silently: it is renamed to `<name>.old-<hash>.<ext>` first (hash of
    its own content), and the returned messages say so."""
    messages = []
    for path, content in files.items():
        if path.is_file():
            old = path.read_bytes()
            if old == content:
                continue
            tag = hashlib.sha256(old).hexdigest()[:8]
            aside = path.with_name(f"{path.stem}.old-{tag}{path.suffix}")
            if aside.is_file() and aside.read_bytes() == old:
                path.unlink()          # the same old content is already kept under that name
            else:
                os.replace(path, aside)
            messages.append(f"kept the previous {path.name} (different content) aside as {aside.name}")
        _write_bytes(path, content)
    return messages


def _read_openset_column(path: Path, n: int, n_source: int) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows[0]) < 3 or rows[0][2].strip() != "cifar100_index":
        raise DataError(f"{path} has no cifar100_index column, so it does not say which images open-set noise "
                        "replaces; regenerate it with --make_new_custom_noise")
    try:
        source = np.array([int(r[2]) for r in rows[1:n + 1]], dtype=np.int64)
    except (ValueError, IndexError):
        raise DataError(f"{path}: cifar100_index must be an integer in every row (-1 = image kept)")
    if source.min(initial=-1) < -1 or source.max(initial=-1) >= n_source:
        raise DataError(f"{path}: cifar100_index outside [-1, {n_source}) (there are {n_source} CIFAR-100 images)")
    return source


def load_custom_noise(root: Path, dataset: str, mode: str, p: float, seed: int, labels: np.ndarray,
                      num_classes: int, images: np.ndarray | None = None, n_source: int | None = None,
                      make_new: bool = False, sym_variant: str | None = None, asym_variant: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None, dict, Path]:
    """Read `<mode><p>_custom.csv`, or generate it (with its rules, metadata and report) when it is missing
    or `make_new` is set. Returns (noisy labels, CIFAR-100 index per image or None, metadata, csv path).

    An existing file is used exactly as it is; flags that contradict its recorded generator are an error. The
    options are load_cifar_noisy's to check.
    """
    paths = custom_noise_paths(root, dataset, mode, p)
    csv_path = paths["labels"]
    if csv_path.is_file() and not make_new:
        clean, noisy = read_label_csv(csv_path, len(labels), num_classes)
        if not np.array_equal(clean, labels):
            raise DataError(f"the clean labels in {csv_path} do not match the training set; it was made for other "
                            "data: regenerate it with --make_new_custom_noise")
        source = _read_openset_column(csv_path, len(labels), n_source or 0) if mode == "openset" else None
        if source is not None and not np.array_equal(noisy, clean):
            raise DataError(f"{csv_path}: open-set noise keeps labels, but label_noisy differs from label")
        try:
            meta = json.loads(paths["meta"].read_text()) if paths["meta"].is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read {paths['meta']} ({e}); delete it (the labels file alone is enough) "
                            "or regenerate everything with --make_new_custom_noise")
        wanted = sym_variant or asym_variant
        if wanted is not None and meta.get("variant") != wanted:
            raise DataError(f"{csv_path} was generated with variant {meta.get('variant', 'unknown')!r}, not "
                            f"{wanted!r}; add --make_new_custom_noise to regenerate it (the current files are "
                            "kept aside)")
        if meta.get("labels_sha256") != file_digest(csv_path):
            print(f"note: {csv_path} is not the file its metadata describes (edited by hand?); "
                  "using its labels as they are")
            meta = {**meta, "edited": True}
        elif meta.get("seed") != seed:
            print(f"note: using {csv_path} as it is (generated with seed {meta.get('seed')}); --seed {seed} does "
                  "not change it, --make_new_custom_noise regenerates it with this seed")
        return noisy, source, meta, csv_path

    missing = not csv_path.is_file()      # before generating: another run may write it meanwhile
    coarse, coarse_from = (cifar100_coarse(root) if asym_variant == "superclass" else (None, None))
    noisy, source, meta = generate_noise(dataset, mode, p, seed, labels, num_classes, images, n_source,
                                         sym_variant or "other", asym_variant or "paper", coarse)
    if coarse_from:
        meta["superclasses_from"] = coarse_from
    labels_bytes = _label_csv_bytes(labels, noisy, source)
    meta["labels_sha256"] = hashlib.sha256(labels_bytes).hexdigest()
    meta["files"] = {k: v.name for k, v in paths.items()}
    files = {csv_path: labels_bytes,
             paths["rules"]: _rules_csv_bytes(noise_rules(mode, p, num_classes, meta)),
             paths["meta"]: _json_bytes(meta),
             paths["report"]: _json_bytes(noise_report(labels, noisy, num_classes,
                                                        None if source is None else source >= 0))}
    why = "it is missing" if missing else "--make_new_custom_noise"
    print(f"generating {csv_path} ({why}): {mode} noise p={p}, seed {seed}, {meta['generator']} "
          f"({meta['variant']}), {meta['realised_rate']:.2%} noisy")
    try:
        if missing and not publish_new(csv_path, labels_bytes):
            print(f"note: another run wrote {csv_path} meanwhile, with exactly these labels; using it")
        if all(path.is_file() and path.read_bytes() == content for path, content in files.items()):
            print("unchanged: the files already hold exactly these labels (same seed, same generator)")
        for message in save_noise_files(files):
            print(message)
    except OSError as e:
        raise DataError(f"cannot write {csv_path.parent} ({e.strerror or e}): the custom noise file has to be made "
                        "there first; pass a --data_dir you can write to (or a copy of this one), or generate "
                        "the file once where you can write and copy it in") from e
    return noisy, source, meta, csv_path


def publish_new(path: Path, content: bytes) -> bool:
    """Create `path` holding `content`, only if no file has that name (atomically, so two runs that generate the
    same missing noise file at once cannot both write it): True if this call made it; False if another run made
    it first with the same bytes. Another run's different file is refused in one line, and never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_new(path, content)
        return True
    except FileExistsError:
        if path.read_bytes() == content:
            return False
        raise DataError(f"another run wrote {path} while this one was generating it, with other labels (another "
                        "--seed or generator); run this one again to use that file as it is, or add "
                        "--make_new_custom_noise to regenerate it (the other file is kept aside)")


# ----------------------------------------------------------------------------------------------------
# A noisy training set, and subsets of it

@dataclass
class NoisyData:
    """Training images with their given (noisy) labels and, where known, the clean ones; plus the test set and,
    for a dataset that comes with one (Clothing1M), a clean validation set."""

    name: str
    images: np.ndarray            # uint8 (N, 3, H, W), or a datasets.images.ImageFiles list of N image files
    labels: np.ndarray            # int64 (N,) labels used for training
    clean_labels: np.ndarray | None
    is_noisy: np.ndarray | None   # bool (N,): the label (or, for open-set noise, the image) is wrong
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 4                  # zero padding of the random crop
    flip: bool = True             # random horizontal flips (not for digits or text)
    info: dict = field(default_factory=dict)  # noise description saved with the run
    val: tuple | None = None      # (images, clean labels) of the dataset's own validation set
    # the image files of the whole training set (before subsets and splits, which info["train_indices"] maps into),
    # relative to the data folder: what names an image to its owner (a folder, Animal-10N); None for CIFAR's arrays
    train_files: list[str] | None = None

    def noise_rate(self) -> float | None:
        return None if self.is_noisy is None else float(self.is_noisy.mean())

    def subset(self, train_n: int | None, test_n: int | None, seed: int) -> "NoisyData":
        """A stratified, seeded subset of the training and/or test set (for quick experiments)."""
        out = NoisyData(**{**self.__dict__, "info": dict(self.info)})
        if train_n:
            idx = stratified_indices(self.labels, train_n, seed)
            out.images, out.labels = self.images[idx], self.labels[idx]
            out.clean_labels = None if self.clean_labels is None else self.clean_labels[idx]
            out.is_noisy = None if self.is_noisy is None else self.is_noisy[idx]
            out.info["train_indices"] = idx.tolist()
            out.info["noise_rate"] = out.noise_rate()
            if "report" in out.info and out.clean_labels is not None:
                replaced = out.is_noisy if out.info.get("noise_mode") == "openset" else None
                out.info["report"] = noise_report(out.clean_labels, out.labels, out.num_classes, replaced)
        if test_n:
            idx = stratified_indices(self.test_labels, test_n, seed)
            out.test_images, out.test_labels = self.test_images[idx], self.test_labels[idx]
        for flag, n, labels, what in (("train_subset", train_n, out.labels, "trained on"),
                                      ("test_subset", test_n, out.test_labels, "in the test accuracy")):
            missing = self.num_classes - len(np.unique(labels)) if n else 0     # only where a subset was taken
            if missing > 0:      # a smoke test may want that; a result from it says little
                print(f"note: --{flag} {n} leaves {missing} of the {self.num_classes} classes out: they are not "
                      f"{what}")
        return out

    def split_validation(self, val_size: float, seed: int) -> tuple["NoisyData", tuple[np.ndarray, np.ndarray]]:
        """(training set without the validation images, (validation images, their *noisy* labels)).

        The paper picks sigma on a held-out share of the noisy training set, labelled with the noisy
        labels (only those are known in practice); the split is stratified by noisy label and seeded.
        """
        n_val = int(round(val_size * len(self.labels)))
        if not 0 < n_val < len(self.labels):
            raise DataError(f"a validation share of {val_size} leaves {n_val} of {len(self.labels)} training images "
                            "for validation; use a --val_size that keeps at least one image on each side")
        val = stratified_indices(self.labels, n_val, seed)
        keep = np.setdiff1d(np.arange(len(self.labels)), val)
        out = NoisyData(**{**self.__dict__, "info": dict(self.info)})
        out.images, out.labels = self.images[keep], self.labels[keep]
        out.clean_labels = None if self.clean_labels is None else self.clean_labels[keep]
        out.is_noisy = None if self.is_noisy is None else self.is_noisy[keep]
        # indices into the full training set, so that the run records exactly which images it saw
        original = np.asarray(self.info.get("train_indices", np.arange(len(self.labels))))
        out.info.update(train_indices=original[keep].tolist(), val_indices=original[val].tolist(),
                        noise_rate=out.noise_rate(),
                        val_noise_rate=None if self.is_noisy is None else float(self.is_noisy[val].mean()))
        return out, (self.images[val], self.labels[val])


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices drawn without replacement so that every class keeps its share (sorted)."""
    if not 0 < n <= len(labels):
        raise DataError(f"a subset of {n} samples is impossible from {len(labels)}; use 1..{len(labels)}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * n / len(labels)).astype(int)
    # hand the remaining samples to the classes with the largest fractional parts
    rest = n - quota.sum()
    quota[np.argsort(-(counts * n / len(labels) - quota), kind="stable")[:rest]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def balanced_indices(labels: np.ndarray, per_class: int, seed: int | list[int]) -> np.ndarray:
    """A class-balanced random sample: `per_class` indices of every class (all of a smaller class), sorted.

    The authors' Clothing1M sampler (dataset.py, `num_per_class`): shuffle the whole set, then keep each class's
    first `per_class` samples in that order; the shuffle here comes from numpy's default_rng(seed).
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    grouped = order[np.argsort(labels[order], kind="stable")]        # by class, shuffled within each class
    sorted_labels = labels[grouped]
    rank = np.arange(len(grouped)) - np.searchsorted(sorted_labels, sorted_labels)   # position within its class
    return np.sort(grouped[rank < per_class])


def load_cifar_noisy(dataset: str, root: Path, noise_mode: str, p: float, seed: int,
                     custom_noise: bool = False, make_new_custom_noise: bool = False,
                     sym_variant: str | None = None, asym_variant: str | None = None) -> NoisyData:
    """CIFAR-10/100 with the requested training-label noise, ready for training.

    Paper noise comes from the authors' files; custom noise from `<mode><p>_custom.csv`, generated when
    missing (see `load_custom_noise`). Open-set noise without --custom_noise is drawn in memory from `seed`.
    info["report"] is the noise report, also saved as `<noise file>_report.json` beside a noise file.
    """
    spec = CIFAR[dataset]
    check_noise_options(dataset, noise_mode, custom_noise, sym_variant, asym_variant)
    x, y, tx, ty = load_cifar(dataset, root)
    x100 = load_cifar("cifar100", root)[0] if noise_mode == "openset" else None
    info: dict = {"noise_mode": noise_mode, "p": p, "custom_noise": custom_noise,
                  "official_files": cifar_files_official(dataset, root)}
    path = None
    if custom_noise:
        noisy, source, meta, path = load_custom_noise(root, dataset, noise_mode, p, seed, y, spec.num_classes, x,
                                                 None if x100 is None else len(x100), make_new_custom_noise,
                                                 sym_variant, asym_variant)
        info.update(noise_file=str(path), noise_file_sha256=file_digest(path), noise_seed=meta.get("seed"),
                    noise_generator=meta.get("generator"), noise_variant=meta.get("variant"),
                    noise_file_edited=bool(meta.get("edited")))
        if noise_mode == "openset":
            replaced = np.flatnonzero(source >= 0)
            source = source[replaced]
    elif noise_mode == "openset":
        replaced, source = openset_indices(len(x), len(x100), p, seed)
        noisy = y
    else:
        path = paper_noise_file(root, dataset, noise_mode, p)
        clean, noisy = read_label_csv(path, len(y), spec.num_classes)
        if not np.array_equal(clean, y):
            raise DataError(f"the clean labels in {path} do not match the training set in {root / spec.folder}: "
                            "the images are in a different order than torchvision's; re-download the dataset")
        info["noise_file"] = str(path)
    clean = y
    if noise_mode == "openset":
        x = x.copy()
        x[replaced] = x100[source]
        is_noisy = np.zeros(len(y), dtype=bool)
        is_noisy[replaced] = True
        info.update(openset_replaced=replaced.tolist(), openset_source=source.tolist(),
                    seed=info.get("noise_seed", seed))
    else:
        is_noisy = clean != noisy
    data = NoisyData(dataset, x, noisy, clean, is_noisy, tx, ty, spec.num_classes,
                     cifar_class_names(dataset, root), spec.mean, spec.std, info=info)
    data.info["noise_rate"] = data.noise_rate()
    data.info["report"] = noise_report(clean, noisy, spec.num_classes, is_noisy if noise_mode == "openset" else None)
    if path is not None:
        save_report_beside(path, data.info["report"])
    return data


def save_report_beside(noise_file: Path, report: dict) -> None:
    """Keep `<noise file stem>_report.json` next to a noise file. It is derived from the labels alone, so
    rewriting it when it is out of date loses nothing; a read-only data folder only costs the copy."""
    path = noise_file.with_name(f"{noise_file.stem}_report.json")
    content = _json_bytes(report)
    try:
        if not path.is_file() or path.read_bytes() != content:
            _write_bytes(path, content)
    except OSError as e:
        print(f"note: could not save the noise report next to {noise_file} ({e}); it is still saved with the run")
