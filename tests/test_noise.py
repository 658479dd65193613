"""Custom label noise: the generators' rates and transition structure, their files, reports and a training
run on a generated file."""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import noise
import train_cifar
from conftest import ROOT, write_cifar

N = 50_000


def tolerance(n: int, p: float) -> float:
    """Five binomial standard deviations of a rate measured on n draws: fails by chance ~1 in 2 million."""
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-12


def fake_labels(num_classes: int, seed: int = 0) -> np.ndarray:
    labels = np.arange(N) % num_classes
    np.random.default_rng(seed).shuffle(labels)
    return labels


def transitions(clean, noisy, c):
    counts = np.zeros((c, c), dtype=np.int64)
    np.add.at(counts, (clean, noisy), 1)
    return counts


# ---------------------------------------------------------------------------------------------------- generators

def assert_uniform(values: np.ndarray, support: np.ndarray) -> None:
    """Every value in `support` occurs about equally often (5 Poisson standard deviations), no other value does."""
    counts = np.bincount(values, minlength=support.max() + 1)
    expected = len(values) / len(support)
    assert counts.sum() == counts[support].sum()
    assert np.all(np.abs(counts[support] - expected) < 5 * np.sqrt(expected)), counts[support]


@pytest.mark.parametrize("c, p", [(10, 0.4), (10, 0.83), (100, 0.4), (100, 0.05)])
def test_sym_other_flips_exactly_round_pn_uniformly_to_other_classes(c, p):
    clean = fake_labels(c)
    noisy = noise.sym_noise(clean, c, p, seed=7)
    flipped = noisy != clean
    assert flipped.sum() == round(p * N)                                 # exact count, true class never kept
    per_class = np.bincount(clean, minlength=c)
    rates = np.bincount(clean[flipped], minlength=c) / per_class
    assert np.all(np.abs(rates - p) < tolerance(per_class.min(), p))
    # the destination is uniform over the other classes: offsets 1..C-1 (mod C) equally often, 0 never
    assert_uniform((noisy[flipped] - clean[flipped]) % c, np.arange(1, c))
    # and it does not depend on the class: each class's flips spread over all others (pooled check above)
    counts = transitions(clean, noisy, c)
    if c == 10:
        off = counts[~np.eye(c, dtype=bool)].reshape(c, c - 1)
        assert np.all(np.abs(off - p * 5000 / 9) < 5 * np.sqrt(p * 5000 / 9))


@pytest.mark.parametrize("c, p", [(10, 0.4), (100, 0.6)])
def test_sym_any_redraws_round_pn_over_all_classes(c, p):
    clean = fake_labels(c)
    noisy = noise.sym_noise(clean, c, p, seed=7, variant="any")
    wrong = p * (c - 1) / c                                                # a redraw keeps the class w.p. 1/C
    assert abs((noisy != clean).mean() - wrong) < tolerance(N, wrong)
    # the same draw of which labels are touched as variant "other"; only the destinations differ
    touched = noise.sym_noise(clean, c, p, seed=7, variant="other") != clean
    assert touched.sum() == round(p * N) and np.all(noisy[~touched] == clean[~touched])
    assert_uniform((noisy[touched] - clean[touched]) % c, np.arange(c))  # offset 0 = kept, as likely as any


def test_asym_cifar10_paper_map_exact_per_class():
    clean = fake_labels(10)
    noisy = noise.asym_noise(clean, noise.asym_destinations("cifar10", 10), 0.4, seed=3)
    counts = transitions(clean, noisy, 10)
    expected = np.diag(np.bincount(clean, minlength=10))
    # truck->automobile, bird->airplane, cat<->dog, deer->horse: exactly 40 % of each source class
    for src, dst in [(9, 1), (2, 0), (3, 5), (5, 3), (4, 7)]:
        moved = round(0.4 * expected[src, src])
        expected[src, src] -= moved
        expected[src, dst] = moved
    assert np.array_equal(counts, expected)
    assert (noisy != clean).mean() == pytest.approx(0.2)


def test_asym_cifar100_paper_rule_is_next_class():
    clean = fake_labels(100)
    noisy = noise.asym_noise(clean, noise.asym_destinations("cifar100", 100), 0.4, seed=3)
    flipped = noisy != clean
    assert np.all(noisy[flipped] == (clean[flipped] + 1) % 100)
    assert np.array_equal(np.bincount(clean[flipped], minlength=100), np.full(100, 200))   # 40 % of 500


def test_superclass_table_and_rule():
    coarse = np.array(data.CIFAR100_COARSE)
    assert np.array_equal(np.bincount(coarse), np.full(20, 5))           # 20 superclasses of 5 classes
    # spot checks against the CIFAR-100 meta: apple, maple_tree, oak_tree, palm_tree, pine_tree, willow_tree
    assert coarse[0] == 4 and set(coarse[[47, 52, 56, 59, 96]]) == {17}
    dest = noise.asym_destinations("cifar100", 100, "superclass", coarse)
    assert np.all(coarse[dest] == coarse) and np.all(dest != np.arange(100))
    assert dest[47] == 52 and dest[96] == 47                            # trees: 47->52->56->59->96->47
    for members in (np.flatnonzero(coarse == g) for g in range(20)):    # each superclass is one 5-cycle
        k, seen = members[0], []
        for _ in range(5):
            seen.append(k)
            k = dest[k]
        assert k == members[0] and sorted(seen) == members.tolist()
    clean = fake_labels(100)
    noisy = noise.asym_noise(clean, dest, 0.3, seed=1)
    assert np.all(noisy[noisy != clean] == dest[clean[noisy != clean]])
    assert (noisy != clean).sum() == 100 * round(0.3 * 500)


def test_blocks_rule_cycles_within_five_consecutive_indices():
    dest = noise.asym_destinations("cifar100", 100, "blocks")
    assert dest[:10].tolist() == [1, 2, 3, 4, 0, 6, 7, 8, 9, 5] and np.all(dest // 5 == np.arange(100) // 5)


def test_superclasses_read_from_the_pickle_when_present(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    table = np.roll(np.array(data.CIFAR100_COARSE), 1)                   # differs from the built-in table
    fine = np.arange(300) % 100
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": np.zeros((300, 3072), np.uint8), "fine_labels": fine.tolist(),
                     "coarse_labels": table[fine].tolist()}, f)
    got, where = data.cifar100_coarse(tmp_path)
    assert np.array_equal(got, table) and "coarse_labels" in where
    got, where = data.cifar100_coarse(tmp_path / "elsewhere")
    assert np.array_equal(got, data.CIFAR100_COARSE) and where == "data.CIFAR100_COARSE"


def prototype_images(clean: np.ndarray, per_class: int = 4, seed: int = 0):
    """Tiny uint8 images: a few prototypes per class plus a little pixel noise; returns (images, prototype id)."""
    rng = np.random.default_rng(seed)
    c = clean.max() + 1
    protos = rng.integers(0, 256, (c * per_class, 3, 4, 4))
    which = clean * per_class + rng.integers(0, per_class, len(clean))
    images = np.clip(protos[which] + rng.normal(0, 3, (len(clean), 3, 4, 4)), 0, 255).astype(np.uint8)
    return images, which


@pytest.mark.parametrize("p", [0.05, 0.4, 0.9])
def test_dependent_rate_and_instance_dependence(p):
    clean = fake_labels(10)
    images, proto = prototype_images(clean)
    noisy = noise.dependent_noise(images, clean, 10, p, seed=11)
    flipped = noisy != clean
    assert abs(flipped.mean() - p) < tolerance(N, p)
    per_class = np.bincount(clean[flipped], minlength=10) / np.bincount(clean, minlength=10)
    assert np.all(np.abs(per_class - p) < tolerance(N // 10, p))
    # where a label goes depends on the image: near-identical images mostly flip to the same class,
    # while different images of one class do not all go to one class
    majority = [np.bincount(noisy[flipped & (proto == k)]).max() / (flipped & (proto == k)).sum()
                for k in range(40)]
    assert np.median(majority) > 0.8
    per_class_destinations = [len(np.unique(noisy[flipped & (clean == c)])) for c in range(10)]
    assert max(per_class_destinations) >= 3


def test_dependent_rate_spread_and_zero_rate():
    assert noise.dependent_rate_std(0.4) == 0.1 and noise.dependent_rate_std(0.6) == 0.1
    assert noise.dependent_rate_std(0.02) == pytest.approx(0.005)
    clean = fake_labels(10)[:1000]
    images, _ = prototype_images(clean)
    assert np.array_equal(noise.dependent_noise(images, clean, 10, 0.0, seed=0), clean)


def test_openset_generator_replaces_round_pn_distinct_images():
    clean = fake_labels(10)
    noisy, source, meta = noise.generate_noise("cifar10", "openset", 0.3, 5, clean, 10, n_source=N)
    assert np.array_equal(noisy, clean)
    picked = source[source >= 0]
    assert len(picked) == 15_000 and len(np.unique(picked)) == 15_000 and picked.max() < N
    assert meta["realised_rate"] == 0.3
    replaced, src = noise.openset_indices(N, N, 0.3, 5)                   # the same mechanism as without a file
    assert np.array_equal(np.flatnonzero(source >= 0), replaced) and np.array_equal(source[replaced], src)


@pytest.mark.parametrize("mode", ["sym", "asym", "dependent", "openset"])
def test_generators_are_pure_and_seeded(mode):
    clean = fake_labels(10)[:5000]
    images, _ = prototype_images(clean)
    make = lambda seed: noise.generate_noise("cifar10", mode, 0.4, seed, clean, 10, images, 5000)  # noqa: E731
    a, b, c = make(1), make(1), make(2)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    differs = not np.array_equal(a[0], c[0]) if mode != "openset" else not np.array_equal(a[1], c[1])
    assert differs
    assert np.array_equal(clean, fake_labels(10)[:5000])                 # input untouched


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_rate_outside_unit_interval_is_refused(p):
    with pytest.raises(noise.DataError, match=r"outside \[0, 1\)"):
        noise.sym_noise(fake_labels(10), 10, p, seed=0)


# ---------------------------------------------------------------------------------------------------- reports

def test_noise_report_counts():
    clean = np.array([0, 0, 0, 1, 1, 2])
    given = np.array([0, 1, 1, 1, 2, 2])
    r = noise.noise_report(clean, given, 3)
    assert r["noise_rate"] == pytest.approx(0.5)
    assert r["per_class_noise_rate"] == pytest.approx([2 / 3, 0.5, 0.0])
    assert r["transition_counts"] == [[1, 2, 0], [0, 1, 1], [0, 0, 1]]
    opened = noise.noise_report(clean, clean, 3, replaced=np.array([1, 0, 0, 0, 0, 1], bool))
    assert opened["noise_rate"] == pytest.approx(1 / 3) and opened["per_class_noise_rate"] == [1 / 3, 0.0, 1.0]


def test_report_printing_is_compact_for_100_classes():
    clean = fake_labels(100)
    noisy = noise.asym_noise(clean, noise.asym_destinations("cifar100", 100), 0.4, seed=0)
    text = noise.format_noise_report(noise.noise_report(clean, noisy, 100), [f"c{i}" for i in range(100)])
    assert len(text.splitlines()) == 3
    assert "100 of 9900 off-diagonal transitions occur" in text and "c0->c1 40.0%" in text
    ten = noise.format_noise_report(noise.noise_report(clean % 10, clean % 10, 10), data.CIFAR10_CLASSES)
    assert "no label differs" in ten


# ---------------------------------------------------------------------------------------------------- files

@pytest.fixture
def root(tmp_path):
    """A fresh data root with tiny CIFAR-10 (400 / 50) and CIFAR-100 (600 / 50)."""
    write_cifar(tmp_path, "cifar10", 400, 50, seed=1)
    write_cifar(tmp_path, "cifar100", 600, 50, seed=2)
    return tmp_path


def listing(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("mode", ["sym", "asym", "dependent", "openset"])
def test_missing_file_is_generated_with_rules_metadata_and_report(root, capsys, mode):
    d = data.load_cifar_noisy("cifar10", root, mode, 0.3, seed=4, custom_noise=True)
    paths = data.custom_noise_paths(root, "cifar10", mode, 0.3)
    assert "it is missing" in capsys.readouterr().out
    clean, noisy = data.read_label_csv(paths["labels"], 400, 10)
    assert np.array_equal(clean, d.clean_labels) and np.array_equal(noisy, d.labels)
    meta = json.loads(paths["meta"].read_text())
    assert (meta["seed"], meta["p"], meta["noise_mode"]) == (4, 0.3, mode)
    assert meta["labels_sha256"] == data.file_digest(paths["labels"])
    assert callable(getattr(noise, meta["generator"].removeprefix("noise.")))   # it names the function that made it
    report = json.loads(paths["report"].read_text())
    assert report == d.info["report"] and report["noise_rate"] == pytest.approx(d.noise_rate())
    rules = paths["rules"].read_text().splitlines()
    assert rules[0] == "source_class,destination_classes,probability,rule"
    assert len(rules) == 1 + (5 if mode == "asym" else 10)
    if mode == "openset":
        x10 = data.load_cifar("cifar10", root, download=False)[0]
        x100 = data.load_cifar("cifar100", root, download=False)[0]
        rows = [line.split(",") for line in paths["labels"].read_text().splitlines()]
        assert rows[0] == ["label", "label_noisy", "cifar100_index"]
        source = np.array([int(r[2]) for r in rows[1:]])
        assert (source >= 0).sum() == 120
        for i in range(400):           # exactly the recorded images are replaced, by exactly those sources
            assert np.array_equal(d.images[i], x100[source[i]] if source[i] >= 0 else x10[i])


def generate_every_mode(root) -> None:
    for mode in ("sym", "asym", "dependent", "openset"):
        data.load_cifar_noisy("cifar10", root, mode, 0.45, 9, custom_noise=True)
    data.load_cifar_noisy("cifar100", root, "asym", 0.45, 9, custom_noise=True, asym_variant="superclass")


def test_same_seed_same_bytes_in_another_process(root, tmp_path_factory):
    """A fresh process writes byte-identical files for every mode (one set written there, one here)."""
    other = tmp_path_factory.mktemp("other_process")
    for name in ("cifar-10-batches-py", "cifar-100-python"):
        (other / name).symlink_to(root / name)
    code = ("import sys, pathlib; sys.path.insert(0, 'tests'); import test_noise; "
            "test_noise.generate_every_mode(pathlib.Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(other)], cwd=ROOT, check=True, capture_output=True)
    generate_every_mode(root)
    for ds, files in (("cifar10", 16), ("cifar100", 4)):
        here, there = listing(root / ds / "label_noisy"), listing(other / ds / "label_noisy")
        assert here == there and len(here) == files


def test_regenerating_keeps_the_old_file_aside(root, capsys):
    folder = data.noise_dir(root, "cifar10")
    data.load_cifar_noisy("cifar10", root, "sym", 0.4, seed=1, custom_noise=True)
    first = listing(folder)
    # same seed: nothing changes, nothing is set aside
    data.load_cifar_noisy("cifar10", root, "sym", 0.4, seed=1, custom_noise=True, make_new_custom_noise=True)
    assert listing(folder) == first and "unchanged" in capsys.readouterr().out
    # another seed: the previous files survive, renamed with their own hash
    d = data.load_cifar_noisy("cifar10", root, "sym", 0.4, seed=2, custom_noise=True, make_new_custom_noise=True)
    out = capsys.readouterr().out
    now = listing(folder)
    changed = [name for name in first if now[name] != first[name]]
    assert sorted(changed) == ["sym0.4_custom.csv", "sym0.4_custom.json", "sym0.4_custom_report.json"]
    for name in changed:
        stem, ext = name.rsplit(".", 1)
        aside = [n for n in now if n.startswith(stem + ".old-") and n.endswith("." + ext)]
        assert len(aside) == 1 and now[aside[0]] == first[name] and aside[0] in out
    assert len(now) == len(first) + 3                                   # the unchanged rules file stays as it is
    assert np.array_equal(data.read_label_csv(folder / "sym0.4_custom.csv", 400, 10)[1], d.labels)


def test_existing_file_is_used_as_is(root, capsys):
    first = data.load_cifar_noisy("cifar10", root, "sym", 0.4, seed=1, custom_noise=True)
    before = listing(data.noise_dir(root, "cifar10"))
    again = data.load_cifar_noisy("cifar10", root, "sym", 0.4, seed=5, custom_noise=True)
    assert np.array_equal(again.labels, first.labels) and again.info["noise_seed"] == 1
    assert "generated with seed 1" in capsys.readouterr().out
    assert listing(data.noise_dir(root, "cifar10")) == before


def test_contradicting_variant_is_refused_and_nothing_written(root):
    data.load_cifar_noisy("cifar10", root, "sym", 0.4, seed=1, custom_noise=True)
    before = listing(data.noise_dir(root, "cifar10"))
    with pytest.raises(noise.DataError, match="generated with variant 'other', not 'any'.*--make_new_custom_noise"):
        data.load_cifar_noisy("cifar10", root, "sym", 0.4, seed=1, custom_noise=True, sym_variant="any")
    assert listing(data.noise_dir(root, "cifar10")) == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(noise_mode="asym", sym_variant="any"), "--sym_variant applies to --noise_mode sym"),
    (dict(noise_mode="asym", asym_variant="superclass"), "CIFAR-100 only"),
    (dict(noise_mode="asym", asym_variant="blocks"), "CIFAR-100 only"),
    (dict(noise_mode="sym", sym_variant="any", custom_noise=False), "add --custom_noise"),
])
def test_bad_noise_options(root, kwargs, message):
    kwargs = {"custom_noise": True, **kwargs}
    with pytest.raises(noise.DataError, match=message):
        data.load_cifar_noisy("cifar10", root, p=0.4, seed=0, **kwargs)
    assert not (root / "cifar10").exists()


def test_hand_edited_file_is_used_and_flagged(root, capsys):
    data.load_cifar_noisy("cifar10", root, "asym", 0.4, seed=1, custom_noise=True)
    path = data.custom_noise_paths(root, "cifar10", "asym", 0.4)["labels"]
    lines = path.read_text().splitlines()
    clean0 = int(lines[1].split(",")[0])
    lines[1] = f"{clean0},{(clean0 + 3) % 10}"
    path.write_text("\n".join(lines) + "\n")
    d = data.load_cifar_noisy("cifar10", root, "asym", 0.4, seed=1, custom_noise=True)
    assert d.labels[0] == (clean0 + 3) % 10 and d.info["noise_file_edited"] is True
    assert "edited by hand" in capsys.readouterr().out
    report = json.loads(path.with_name("asym0.4_custom_report.json").read_text())
    assert report == d.info["report"]                        # the report beside the file follows the labels


def test_openset_file_without_source_column_is_refused(root):
    data.load_cifar_noisy("cifar10", root, "openset", 0.2, seed=1, custom_noise=True)
    path = data.custom_noise_paths(root, "cifar10", "openset", 0.2)["labels"]
    path.write_text("\n".join(",".join(line.split(",")[:2]) for line in path.read_text().splitlines()) + "\n")
    with pytest.raises(noise.DataError, match="no cifar100_index column"):
        data.load_cifar_noisy("cifar10", root, "openset", 0.2, seed=1, custom_noise=True)


def test_paper_noise_report_saved_beside_the_file(fake_root, paper_sums):
    d = data.load_cifar_noisy("cifar100", fake_root, "sym", 0.4, seed=0)
    beside = json.loads((data.noise_dir(fake_root, "cifar100") / "sym0.4_report.json").read_text())
    assert beside == d.info["report"] and beside["num_classes"] == 100
    assert beside["noise_rate"] == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------------- training

def test_training_uses_exactly_the_labels_in_the_written_file(tmp_path):
    root = tmp_path / "data"
    write_cifar(root, "cifar10", 100, 20, seed=1)          # one small batch keeps the run short
    argv = ["--dataset_name", "cifar10", "--noise_mode", "dependent", "--p", "0.35", "--custom_noise",
            "--make_new_custom_noise", "--sigma", "0", "--lc_n_epoch", "-1", "--n_epochs", "1", "--batch_size", "100",
            "--model", "wrn-16-1", "--seed", "3", "--data_dir", str(root), "--out_dir", str(tmp_path / "out"),
            "--device", "cpu"]
    train_cifar.main(argv)
    path = data.custom_noise_paths(root, "cifar10", "dependent", 0.35)["labels"]
    clean, noisy = data.read_label_csv(path, 100, 10)
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    targets = torch.load(run_dir / "checkpoint.pt", weights_only=True)["targets"]
    assert np.array_equal(targets.argmax(1).numpy(), noisy)              # CE trains on the given labels
    saved = json.loads((run_dir / "noise.json").read_text())
    assert saved["noise_file_sha256"] == data.file_digest(path) and saved["noise_seed"] == 3
    assert saved["report"]["transition_counts"] == noise.noise_report(clean, noisy, 10)["transition_counts"]
