"""viz.py on tiny fake data: figures written, decodable, of the expected size, noisy images marked, never
overwritten silently."""
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

import cli
import data
import datasets
import datasets.animal10n
import noise
import viz
from conftest import write_cifar


def run_viz(fake_root, out_dir, *flags):
    return viz.main([*flags, "--seed", "123", "--data_dir", str(fake_root), "--out_dir", str(out_dir)])


def expected_pixels(n_images: int = 32) -> tuple[int, int]:
    w, h = viz.figure_size(n_images)
    return round(w * viz.DPI), round(h * viz.DPI)


@pytest.mark.parametrize("flags, name", [
    (["cifar10", "--noise_mode", "sym", "--p", "0.4"], "cifar10_sym_p_0.4_paper.png"),
    (["cifar10", "--noise_mode", "asym", "--custom_noise", "--p", "0.3"], "cifar10_asym_p_0.3_custom.png"),
    (["cifar10", "--noise_mode", "openset", "--custom_noise", "--p", "0.4"], "cifar10_openset_p_0.4_custom.png"),
    # as in train_cifar.py, open-set noise without --custom_noise is drawn from --seed (no file needed)
    (["cifar10", "--noise_mode", "openset", "--p", "0.4"], "cifar10_openset_p_0.4_seed123.png"),
    (["cifar100", "--noise_mode", "dependent", "--p", "0.4", "--n_images", "10"], "cifar100_dependent_p_0.4_paper.png"),
])
def test_figure_written_and_decodable(fake_root, paper_sums, tmp_path, flags, name):
    root = fake_root
    if "--custom_noise" in flags:                                 # generated files go to a fresh data root
        root = tmp_path / "data"
        write_cifar(root, "cifar10", 400, 20, seed=1)
        write_cifar(root, "cifar100", 600, 20, seed=2)
    path = run_viz(root, tmp_path / "viz", *flags)
    assert path == tmp_path / "viz" / name
    with Image.open(path) as im:
        im.load()                                                # decodes every pixel
        assert im.format == "PNG"
        n = int(flags[flags.index("--n_images") + 1]) if "--n_images" in flags else 32
        assert im.size == expected_pixels(n)
        assert np.asarray(im.convert("RGB")).std() > 10          # not a blank canvas


def test_noisy_images_are_titled_in_red(fake_root, paper_sums):
    d = data.load_cifar_noisy("cifar10", fake_root, "asym", 0.4, seed=0)
    fig = viz.draw(d.images, d.labels, d.clean_labels, d.class_names, "t", 24, seed=5)
    titles = [ax.title for ax in fig.subfigs[0].axes if ax.title.get_text()]
    assert len(titles) == 24
    noisy_seen = 0
    for t in titles:
        given, true = re.fullmatch(r"given: (\w+)\ntrue: (\w+)", t.get_text()).groups()
        assert (t.get_color() == viz.NOISY_COLOUR) == (given != true)
        noisy_seen += given != true
    assert noisy_seen > 0


def test_transition_table_with_openset_column():
    clean = np.array([0, 0, 1, 1, 1, 1])
    given = np.array([0, 1, 1, 1, 1, 1])
    table, n_labels = viz.transition_table(noise.noise_report(clean, given, 2))
    assert n_labels == 2 and np.allclose(table, [[50, 50], [0, 100]])
    replaced = np.array([0, 0, 1, 0, 0, 0], bool)
    table, _ = viz.transition_table(noise.noise_report(clean, clean, 2, replaced), openset=True)
    assert np.allclose(table, [[100, 0, 0], [0, 75, 25]])


def small_figure(colour: str):
    fig = plt.figure(figsize=(1, 1), dpi=viz.DPI)
    fig.patch.set_facecolor(colour)
    return fig


def test_existing_figure_is_never_replaced_silently(tmp_path, capsys):
    path = tmp_path / "cifar10_sym_p_0.4_paper.png"
    assert viz.save_new(small_figure("red"), path, overwrite=False) == path
    content = path.read_bytes()
    assert viz.save_new(small_figure("red"), path, overwrite=False) == path      # same figure: left as it is
    assert "unchanged" in capsys.readouterr().out and path.read_bytes() == content
    other = viz.save_new(small_figure("blue"), path, overwrite=False)
    assert other.name == "cifar10_sym_p_0.4_paper-2.png" and path.read_bytes() == content
    assert "kept it" in capsys.readouterr().out
    third = viz.save_new(small_figure("green"), path, overwrite=False)
    assert third.name == "cifar10_sym_p_0.4_paper-3.png"                       # plot.py's suffixes
    assert viz.save_new(small_figure("blue"), path, overwrite=True) == path
    assert path.read_bytes() == other.read_bytes()
    assert len(list(tmp_path.iterdir())) == 3


def test_animal10n_without_data_says_what_to_get(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        viz.main(["animal-10n", "--seed", "123", "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "viz")])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "animal-10n" in line.lower() and str(tmp_path / "data") in line
    assert not (tmp_path / "viz").exists()


def test_animal10n_figure_from_loader(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    fake = data.NoisyData("animal-10n", rng.integers(0, 256, (60, 3, 64, 64), dtype=np.uint8), labels, None, None,
                          np.zeros((0, 3, 64, 64), np.uint8), np.zeros(0, np.int64), 10,
                          ["cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan",
                           "hamster", "guinea pig"], (0.5,) * 3, (0.25,) * 3)
    seen = []
    monkeypatch.setattr(datasets.animal10n, "load_animal10n", lambda root: seen.append(root) or fake)   # its declaration's loader
    path = viz.main(["animal-10n", "--seed", "123", "--data_dir", str(tmp_path), "--out_dir", str(tmp_path / "viz")])
    assert path == tmp_path / "viz" / "animal-10n.png" and seen == [tmp_path]
    with Image.open(path) as im:
        im.load()
        assert im.size == expected_pixels()


@pytest.mark.parametrize("flags, message", [
    (["cifar10", "--p", "1.5"], r"p=1.5 is outside \[0, 1\); pass e.g. --p 0.4"),
    (["cifar10", "--make_new_custom_noise"], "needs --custom_noise"),
    (["cifar10", "--noise_mode", "sym", "--p", "0.2"], "add --custom_noise"),
    (["cifar100", "--noise_mode", "openset", "--custom_noise"], "CIFAR-10 only"),
    (["svhn"], "invalid choice"),
    (["cifar10", "--n_images", "100000"], r"--n_images must be in 1\.\.256, got 100000"),   # no grid of hours
])
def test_bad_flags_one_line_nothing_written(fake_root, paper_sums, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        run_viz(fake_root, tmp_path / "viz", *flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "viz").exists()


@pytest.mark.parametrize("dataset, flags", [
    ("cifar10", ["--p", "1.5"]),
    ("cifar10", ["--p", "-0.1"]),
    ("cifar10", ["--make_new_custom_noise"]),
    ("cifar100", ["--noise_mode", "openset", "--p", "0.4"]),
])
def test_noise_flags_are_refused_alike_by_viz_train_cifar_and_tune(tmp_path, capsys, dataset, flags):
    """One declaration and one check of the noise flags (cli.add_noise_args, cli.check_noise_args): the three
    scripts give the same one line for the same bad noise, before any data is looked for."""
    import train_cifar
    import tune
    nowhere = str(tmp_path / "no-data")
    common = [*flags, "--data_dir", nowhere, "--out_dir", str(tmp_path / "out")]
    errors = []
    for main, argv in ((viz.main, [dataset, *common]),
                       (train_cifar.main, ["--dataset_name", dataset, "--sigma", "0", *common]),
                       (tune.main, ["--dataset_name", dataset, *common])):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        errors.append(capsys.readouterr().err.strip())
    assert len(errors[0].splitlines()) == 1 and errors[0].startswith("error: ") and nowhere not in errors[0]
    assert errors[0] == errors[1] == errors[2], errors
    assert not (tmp_path / "out").exists()


def test_openset_without_custom_noise_passes_the_same_checks_in_training(tmp_path):
    """The chosen behaviour: open-set noise without --custom_noise is drawn from --seed, in viz.py (above)
    and in train_cifar.py alike."""
    import train_cifar
    args = train_cifar.build_parser().parse_args(["--noise_mode", "openset", "--p", "0.4", "--out_dir", str(tmp_path)])
    train_cifar.check_args(args)       # no SystemExit
    assert args.sigma == cli.default_sigma("cifar10", "openset")


from test_datasets_real import cifarn_root  # noqa: E402,F401  (a fixture: fake CIFAR-N files)


def red_titles(fig) -> tuple[int, int]:
    """(images drawn, images titled in red) of a viz.draw figure."""
    titles = [ax.title for ax in fig.subfigs[0].axes if ax.title.get_text()]
    return len(titles), sum(t.get_color() == viz.NOISY_COLOUR for t in titles)


def test_cifar_n_shows_its_human_labels_against_the_clean_ones(cifarn_root, tmp_path, monkeypatch):
    root, table10, _ = cifarn_root
    drawn, real_draw = [], viz.draw
    monkeypatch.setattr(viz, "draw", lambda *a, **k: drawn.append(a) or real_draw(*a, **k))
    path = viz.main(["CIFAR10N", "--noise_label", "worst", "--seed", "1", "--data_dir", str(root), "--out_dir",
                     str(tmp_path / "viz"), "--n_images", "16"])
    assert path == tmp_path / "viz" / "cifar10n_worst.png"
    images, given, clean, names, title = drawn[0][:5]
    assert np.array_equal(given, table10["worse_label"]) and np.array_equal(clean, table10["clean_label"])
    assert "'worst' human labels: 40.0% of 400 wrong" in title
    with Image.open(path) as im:
        im.load()
        assert im.size == expected_pixels(16)



def test_a_folder_is_shown_with_its_clean_label_column_or_without(tmp_path):
    from test_datasets_folder import make_csv, make_tree
    with_clean = make_csv(tmp_path / "mine", clean=True, n_train=4, size=12)
    path = viz.main(["folder", "--data_dir", str(with_clean), "--out_dir", str(tmp_path / "viz"), "--n_images", "12"])
    assert path == tmp_path / "viz" / "folder_mine.png"
    d = datasets.dataset_from_config({"dataset_name": "folder", "data_dir": with_clean})
    fig = viz.draw(d.images, d.labels, d.clean_labels, d.class_names, "t", 12, seed=0)
    assert red_titles(fig) == (12, 3)          # make_csv: one wrong label in four
    plt.close(fig)
    tree = make_tree(tmp_path / "tree", size=12)
    path = viz.main(["folder", "--data_dir", str(tree), "--out_dir", str(tmp_path / "viz"), "--image_size", "16"])
    assert path.name == "folder_tree.png"
    with Image.open(path) as im:
        im.load()
        assert np.asarray(im.convert("RGB")).std() > 10
