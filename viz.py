"""Look at a noisy training set: uniformly drawn training images titled with their given and true labels
(noisy ones in red), beside the class-to-class transition matrix of the whole training set.

    python viz.py cifar10 --noise_mode asym --custom_noise --p 0.4 --seed 123
    python viz.py cifar100 --noise_mode sym --p 0.4 --seed 123
    python viz.py cifar10n --noise_label worst --seed 123              # CIFAR-10N's human labels against the clean ones
    python viz.py animal-10n --seed 123
    python viz.py folder --data_dir my_images --image_size 32          # your own images (and their clean_label column)

Writes viz/<dataset>_<mode>_p_<p>_<paper|custom|seed<N>>.png (viz/cifar10n_worst.png, viz/animal-10n.png,
viz/folder_<folder name>.png). An existing figure with other content is never replaced unless --overwrite is given:
the new one gets a -2, -3, ... suffix.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import deps  # noqa: F401  (first: a Python without the packages gets one line, not a traceback)

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

import cli  # noqa: E402
import data  # noqa: E402
import datasets  # noqa: E402
import files  # noqa: E402
import noise  # noqa: E402

# every dataset held in memory (datasets/): the CIFARs with their label noise, and those with labels as given (CIFAR-N's
# human labels, Animal-10N, a folder); Clothing1M's million files are read batch by batch and are not drawn here.
# Data comes from datasets.dataset_from_config, as in training.
SYNTHETIC = datasets.of_script("train_cifar.py")
DATASETS = [name for name in datasets.DATASETS if name != "clothing1m"]
MAX_IMAGES = 256        # the largest grid viz.py draws: 32 rows
COLUMNS = 8             # images per row of the grid
CELL_IN = (1.5, 1.75)   # width, height of one image and its two-line title, in inches
MATRIX_IN = 8.5         # width of the transition-matrix panel, in inches
DPI = 100
NOISY_COLOUR = "#d62728"


def build_parser() -> cli.Parser:
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=DATASETS, help="which training set to show (folder: --data_dir is the folder)")
    cli.add_noise_args(p)      # the same noise flags and checks as train_cifar.py and tune.py
    cli.add_noise_label_arg(p)
    p.add_argument("--image_size", type=int, default=None, metavar="N",
                   help="folder: resize every image to N x N, as train_real.py --image_size does (default: their size)")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn; also seeds generated noise")
    p.add_argument("--n_images", type=int, default=32, help=f"number of training images in the grid (1..{MAX_IMAGES})")
    cli.add_data_dir(p)
    p.add_argument("--out_dir", type=Path, default=Path("viz"), help="folder for the figure")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure of the same name")
    return p


def figure_name(dataset: str, mode: str, p: float, custom: bool, seed: int, labels: str | None = None) -> str:
    """viz/<dataset>_<mode>_p_<p>_<origin>.png: origin is custom (a generated file), paper (the authors' file) or
    seed<N> (open-set noise drawn from the seed: the paper ships no open-set file). A dataset with its labels as
    given: viz/<dataset>[_<labels>].png, `labels` naming the label set (CIFAR-N) or the folder."""
    if dataset not in SYNTHETIC:
        return f"{dataset}{f'_{labels}' if labels else ''}.png"
    origin = "custom" if custom else f"seed{seed}" if mode == "openset" else "paper"
    return f"{dataset}_{mode}_p_{p}_{origin}.png"


def figure_size(n_images: int) -> tuple[float, float]:
    """Width and height in inches: the image grid, the matrix panel, and a header line."""
    rows = -(-n_images // COLUMNS)
    return COLUMNS * CELL_IN[0] + MATRIX_IN, max(rows * CELL_IN[1], MATRIX_IN * 0.8) + 0.9


def transition_table(report: dict, openset: bool = False) -> tuple[np.ndarray, int]:
    """% of each true class (rows) per given label (columns), from the counts of a noise report
    (noise.noise_report); for open-set noise one more column holds the images replaced by CIFAR-100 images. Also
    returns the number of columns that are labels."""
    counts = np.array(report["transition_counts"], dtype=np.int64)
    if openset:   # a replaced image keeps its label: the report counts it on the diagonal, the table in its own column
        replaced = np.rint(np.multiply(report["per_class_noise_rate"], report["per_class_count"])).astype(np.int64)
        counts = np.column_stack([counts - np.diag(replaced), replaced])
    return 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1), report["num_classes"]


def draw(images: np.ndarray, given: np.ndarray, clean: np.ndarray | None, class_names: list[str], title: str,
         n_images: int, seed: int, replaced: np.ndarray | None = None, replaced_names: dict[int, str] | None = None,
         report: dict | None = None):
    """The figure: a grid of n_images uniformly drawn training images (uint8 (N, 3, H, W)), then the
    transition matrix (or, with no true labels, the count of each given label) of `report`, the loader's noise
    report of the whole set (made here from the labels when the loader made none)."""
    n_images = min(n_images, len(given))
    picked = np.random.default_rng(seed).choice(len(given), n_images, replace=False)
    rows = -(-n_images // COLUMNS)
    fig = plt.figure(figsize=figure_size(n_images), dpi=DPI, layout="constrained")
    fig.suptitle(title, fontsize=13)
    grid_fig, matrix_fig = fig.subfigures(1, 2, width_ratios=[COLUMNS * CELL_IN[0], MATRIX_IN])
    axes = np.atleast_1d(grid_fig.subplots(rows, COLUMNS)).reshape(-1)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for ax, i in zip(axes, picked):
        ax.axis("on")
        ax.imshow(images[i].transpose(1, 2, 0), interpolation="nearest")
        label = f"given: {class_names[given[i]]}"
        if replaced is not None and replaced[i]:
            label += f"\nimage: {replaced_names[i]}"
            noisy = True
        elif clean is not None:
            label += f"\ntrue: {class_names[clean[i]]}"
            noisy = given[i] != clean[i]
        else:
            noisy = False
        longest = max(len(line) for line in label.splitlines())
        ax.set_title(label, fontsize=9 if longest <= 22 else 7.5, color=NOISY_COLOUR if noisy else "black",
                     fontweight="bold" if noisy else "normal")
        for spine in ax.spines.values():
            spine.set_color(NOISY_COLOUR if noisy else "#bbbbbb")
            spine.set_linewidth(4 if noisy else 0.5)

    ax = matrix_fig.subplots()
    c = len(class_names)
    names = class_names if c <= 20 else None
    if clean is None:
        ax.bar(range(c), np.bincount(given, minlength=c), color="#4c72b0")
        ax.set_title("training images per given label\n(no true labels exist: noise cannot be measured)", fontsize=11)
        ax.set_xticks(range(c), class_names, rotation=45, ha="right")
        return fig
    report = report or noise.noise_report(clean, given, c, replaced)
    table, n_labels = transition_table(report, openset=replaced is not None)
    shown = ax.imshow(table, cmap="Blues", norm=PowerNorm(0.4, vmin=0, vmax=100), aspect="auto")
    matrix_fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.02, label="% of the true class")
    ax.set_title("transition matrix of the whole training set\n(rows: true class, columns: given label)", fontsize=11)
    columns = (names or []) + (["CIFAR-100\nimage"] if replaced is not None else [])
    if names:
        ax.set_yticks(range(c), names)
        ax.set_xticks(range(table.shape[1]), columns, rotation=45, ha="right")
    else:
        ax.set_yticks(range(0, c, 10))
        ax.set_xticks(range(0, n_labels, 10))
    ax.set_xlabel("given label")
    ax.set_ylabel("true class")
    if c <= 10:
        for (r, k), v in np.ndenumerate(table):
            if v >= 0.05:
                ax.text(k, r, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 30 else "black")
    return fig


def save_new(fig, path: Path, overwrite: bool) -> Path:
    """Save as PNG. An existing file with the same content is left as it is; one with other content is kept and the
    figure goes to <name>-2.png, <name>-3.png, ... (files.free_stem, as plot.py names its outputs)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches=None)  # fixed size, whatever the global rcParams say
    plt.close(fig)
    content = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and files.already_written({path: content}):
        print(f"{path} is already this figure: unchanged")
        return path
    target = Path(f"{files.free_stem(path.parent, path.stem, [path.suffix], overwrite)}{path.suffix}")
    if target != path:
        print(f"{path} exists with other content: kept it, writing {target.name} (--overwrite replaces it)")
    files.write_atomic(target, lambda tmp: tmp.write_bytes(content))
    return target


def given_labels_figure(args):
    """A dataset whose labels are given, not made: CIFAR-N's human labels against CIFAR's clean ones, Animal-10N (no
    clean labels), or a folder (against its CSV's clean_label column, where it has one)."""
    d = datasets.dataset_from_config({"dataset_name": args.dataset, "data_dir": args.data_dir,
                                 "noise_label": args.noise_label, "image_size": args.image_size})
    what = {"animal-10n": "Animal-10N training set (labels as given; about 8% are wrong)",
            "folder": f"folder {args.data_dir.resolve().name}: training images with their given labels"}.get(
        args.dataset, f"{args.dataset} '{args.noise_label}' human labels")
    rate = ("" if d.clean_labels is None else
            f": {d.noise_rate():.1%} of {len(d.labels)} wrong against the clean labels;  red frame = wrong")
    title = f"{what}{rate}, {min(args.n_images, len(d.labels))} random images, seed {args.seed}"
    return draw(d.images, d.labels, d.clean_labels, d.class_names, title, args.n_images, args.seed)


def cifar_figure(args):
    d = datasets.dataset_from_config({**vars(args), "dataset_name": args.dataset})
    kind = "custom" if args.custom_noise else "paper"
    print(noise.format_noise_report(d.info["report"], d.class_names, f"{args.noise_mode} p={args.p}, {kind}"))
    replaced, replaced_names = None, None
    if args.noise_mode == "openset":
        replaced = d.is_noisy
        y100 = data.load_cifar("cifar100", args.data_dir)[1]
        names100 = data.cifar_class_names("cifar100", args.data_dir)
        replaced_names = {i: f"C100 {names100[y100[s]]}"
                          for i, s in zip(d.info["openset_replaced"], d.info["openset_source"])}
    origin = (f"custom file: seed {d.info.get('noise_seed')}, variant {d.info.get('noise_variant')}"
              if args.custom_noise else f"drawn from seed {args.seed}" if args.noise_mode == "openset"
              else "the paper's file")
    what = "images replaced by CIFAR-100 images" if replaced is not None else "labels wrong"
    title = (f"{args.dataset} {args.noise_mode} noise p={args.p} ({origin}): {d.noise_rate():.1%} of "
             f"{len(d.labels)} training {what};  red frame = noisy")
    return draw(d.images, d.labels, d.clean_labels, d.class_names, title, args.n_images, args.seed,
                replaced, replaced_names, d.info["report"])


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.dataset in SYNTHETIC:
        cli.check_noise_args(args, args.dataset)
    else:
        cli.check_noise_label(args, args.dataset)
    if args.image_size is not None and args.dataset != "folder":
        cli.fail(f"--image_size is for folder only; {args.dataset} has a fixed size (drop the flag)")
    if not 0 < args.n_images <= MAX_IMAGES:   # beyond it the figure is unreadable and takes minutes and GBs to draw
        cli.fail(f"--n_images must be in 1..{MAX_IMAGES}, got {args.n_images}")
    cli.check_out_dir(args.out_dir)
    with cli.exits_on_error():
        fig = cifar_figure(args) if args.dataset in SYNTHETIC else given_labels_figure(args)
    labels = args.data_dir.resolve().name if args.dataset == "folder" else args.noise_label
    name = figure_name(args.dataset, args.noise_mode, args.p, args.custom_noise, args.seed, labels)
    path = save_new(fig, args.out_dir / name, args.overwrite)
    print(f"figure: {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
