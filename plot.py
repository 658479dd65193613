"""The paper's analysis figures and result tables, made from what runs saved (never from console output).

    python plot.py --exp_id <id> --plot_type pred_probs       # confidence on clean vs noisy training samples
    python plot.py --exp_id <id> --plot_type sample_dissect   # training samples by loss: label / prediction right?
    python plot.py --exp_id <id> --plot_type curves           # per epoch: test accuracy (network, EMA), train loss
    python plot.py --table --filter dataset_name=cifar10,p=0.4          # mean ± std over seeds, paper layout
    python plot.py --plot_type ablation --filter noise_mode=sym,mo=false # test accuracy vs sigma
    python plot.py --plot_type hp --hp_dir hp/hp_2026-01-31_12-00-00    # validation accuracy vs sigma (tune.py)

A run is read from <runs_dir>/<exp_id>/ (config.yaml, metrics.csv, noise.json, summary.json, model_final.pt,
ema_final.pt, targets_final.pt), so this works on another machine than the one that trained, on CPU.
pred_probs and sample_dissect rebuild the run's training set from its config and pass it through the saved
network. Figures of one run go to <assets_dir>/<exp_id>/, figures and tables of several runs to <assets_dir>/;
an existing file is never replaced without --overwrite (the new one is called name-2, name-3, ...).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import sys
import textwrap
from pathlib import Path

import deps  # noqa: F401  (first: a Python without the packages gets one line, not a traceback)

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

import cli  # noqa: E402
import datasets  # noqa: E402
import engine  # noqa: E402
import files  # noqa: E402
import methods  # noqa: E402
import runs  # noqa: E402
import sweeps  # noqa: E402
from data import NoisyData  # noqa: E402
from datasets.cifar_n import CIFARN  # noqa: E402
from datasets.images import ImageFiles, image_source  # noqa: E402
from files import mean_std  # noqa: E402
from models import make_model  # noqa: E402
from errors import DataError  # noqa: E402
from tables import (ACCURACY_COLUMN, COLUMN_ORDER, VARIANT_ORDER, Run, headline, load_run, make_table,  # noqa: E402
                    of_network, one_run_per_seed, one_table, order_key, row_labels, run_ids, settings, whole_runs, with_derived)

SINGLE_RUN_PLOTS = ["pred_probs", "sample_dissect", "curves"]
PLOT_TYPES = SINGLE_RUN_PLOTS + ["compare", "dissect_compare", "ablation", "hp"]
METHOD_COLOURS = {name: m.colour for name, m in methods.METHODS.items() if m.colour}
BASELINES = {name for name, m in methods.METHODS.items() if not m.by_flags}   # drawn dashed beside the paper's models

STYLE = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10.5,  # used by main()
         "xtick.labelsize": 11, "ytick.labelsize": 11, "figure.dpi": 100, "savefig.dpi": 150,
         "savefig.bbox": "tight", "axes.grid": True, "grid.alpha": 0.3}


# ----------------------------------------------------------------------------------------------------
# Reading runs

def runs_folder(path: Path) -> Path:
    """--runs_dir itself, or its runs/ subfolder when it is a training --out_dir (which holds configs/ and runs/)."""
    if not path.is_dir():
        raise DataError(f"--runs_dir {path} does not exist; pass the folder that holds the run folders <exp_id>/")
    if not run_ids(path) and (path / "runs").is_dir():
        return path / "runs"
    return path


def find_run(runs_dir: Path, exp_id: str) -> Run:
    """The run called exp_id, or an error naming the nearest existing ids."""
    return load_run(runs.find_run(runs_dir, exp_id))


def parse_filter(text: str) -> dict[str, list[str]]:
    """'dataset_name=cifar10,noise_mode=sym|asym' -> {'dataset_name': ['cifar10'], 'noise_mode': ['sym', 'asym']}."""
    wanted: dict[str, list[str]] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataError(f"--filter {text!r}: {part!r} is not key=value; "
                            "write e.g. dataset_name=cifar10,noise_mode=sym|asym")
        wanted[key.strip()] = [v.strip() for v in value.split("|")]
    return wanted


def value_matches(actual, wanted: str) -> bool:
    """A config value against filter text, read as YAML reads it (0.40 == 0.4, 1 == 1.0, false, null) or as text,
    names in any case (method=gce, noise_mode=Sym), as the scripts take them."""
    try:
        parsed = yaml.safe_load(wanted)
    except yaml.YAMLError:
        parsed = wanted
    return actual == parsed or str(actual).lower() == wanted.lower()


FILTER_BY_METHOD = ("method", "variant")    # both mean the run's method, also where --sigma/--mo chose it


def filter_value(run: Run, key: str):
    """What --filter compares for `key`: the config's value; for method and variant, the method the run trained (a
    run started with --sigma 0.5 has no --method in its config, yet it trained SLN)."""
    return run_method(run).name if key in FILTER_BY_METHOD else run.config.get(key)


def select_runs(runs_dir: Path, exp_ids: list[str] | None, filter_text: str | None) -> list[Run]:
    """The finished runs named by --exp_ids (default: all in runs_dir) that match --filter, with the rows that
    other methods read off them (tables.with_derived: CE-MO of each CE run)."""
    runs = with_derived([find_run(runs_dir, i) for i in (exp_ids or run_ids(runs_dir))])
    if filter_text:
        wanted = parse_filter(filter_text)
        known = set().union(*(r.config for r in runs)) if runs else set()
        unknown = sorted(set(wanted) - known - set(FILTER_BY_METHOD))
        if unknown:
            raise DataError(f"--filter key {unknown[0]!r} is in no run's config; keys are: {', '.join(sorted(known))}")
        finished = [r for r in runs if r.summary is not None]
        runs = [r for r in runs if all((k in r.config or k in FILTER_BY_METHOD)
                                       and any(value_matches(filter_value(r, k), v) for v in vals)
                                       for k, vals in wanted.items())]
        if finished and not any(r.summary is not None for r in runs):
            present = "; ".join(f"{k}: " + ", ".join(sorted({str(filter_value(r, k)) for r in finished}))
                                for k in wanted)
            raise DataError(f"no finished run in {runs_dir} matches --filter {filter_text}; the finished runs have "
                            f"{present}")
    unfinished = [r.exp_id for r in runs if r.summary is None]
    if unfinished:
        print(f"note: skipping {len(unfinished)} unfinished run(s) (no summary.json): {', '.join(unfinished)}",
              file=sys.stderr)
    runs, broken = whole_runs([r for r in runs if r.summary is not None])
    for note in broken:          # a run whose files disagree is never reported as if it were whole
        print(f"note: {note}", file=sys.stderr)
    if not runs:
        if filter_text or exp_ids:
            raise DataError(f"no finished run in {runs_dir} matches"
                            + (f" --filter {filter_text}" if filter_text else "") + (" --exp_ids" if exp_ids else ""))
        below = sorted({c.parent.parent for pattern in ("*/runs/*/config.yaml", "*/*/runs/*/config.yaml")
                        for c in runs_dir.glob(pattern)})     # e.g. a sweep's runs under <out_dir>/hp/hp_.../runs
        raise DataError(f"no finished run in {runs_dir}"
                        + (f"; runs are further down: pass --runs_dir {below[0]}"
                           + (f" (or one of {len(below) - 1} more such folders)" if len(below) > 1 else "") if below else
                           "; pass --runs_dir, the folder that holds the run folders (<out_dir>/runs)"))
    return runs


# ----------------------------------------------------------------------------------------------------
# Grouping runs into the paper's tables

# ----------------------------------------------------------------------------------------------------
# Passing the training set through a saved network

def has_clean_labels(run: Run) -> bool:
    """engine.py records the loss on clean and noisy samples only when clean labels exist."""
    return not np.all(np.isnan(run.metrics.get("train/loss_clean", np.array([np.nan]))))


def rebuild_training_set(run: Run, data_dir: Path | None, need_clean: bool = True) -> NoisyData:
    """The run's training set as it trained on it: noisy labels, clean labels, subset; checked against what it saved.
    `need_clean`: for pred_probs and sample_dissect, which tell clean from noisy samples (--label_issues does not)."""
    cfg = run.config
    name = cfg.get("dataset_name")
    if not run.metrics:     # nothing to judge clean labels by, nor weights to pass the images through
        raise DataError(f"run {run.exp_id} has not finished an epoch yet; nothing to draw")
    if need_clean and not has_clean_labels(run):
        raise DataError(f"run {run.exp_id} ({name}) has no clean labels, and pred_probs and sample_dissect need "
                        "clean labels to tell clean from noisy samples; use --plot_type curves or --label_issues "
                        "for this run")
    if name not in datasets.DATASETS or (need_clean and not datasets.DATASETS[name].rebuildable):
        raise DataError(f"pred_probs and sample_dissect rebuild CIFAR-10/100, CIFAR-N and folder runs only; "
                        f"run {run.exp_id} trained on {name}")
    root = data_dir or Path(cfg.get("data_dir", "data"))
    if not root.is_dir():
        holding = ("the train/ and test/ folders or train.csv and test.csv of the run" if name == "folder" else
                   f"the CIFAR images and {'cifar-n/' if name in CIFARN else f'{name}/label_noisy/'}")
        raise DataError(f"data folder {root} does not exist here; pass --data_dir <folder holding {holding}>")
    # the noise files the run wrote are read back, never made anew
    data, _ = datasets.split_data({**cfg, "data_dir": root, "make_new_custom_noise": False})
    check_same_training_set(run, data, root)
    return data


def check_same_training_set(run: Run, data: NoisyData, root: Path) -> None:
    """Compare the rebuilt set with noise.json, config.yaml and, for models without label correction, the
    labels the run trained on (targets_final.pt is then their one-hot encoding)."""
    noise_path = run.folder / "noise.json"
    saved = json.loads(noise_path.read_text()) if noise_path.is_file() else {}
    differ = [k for k in ("noise_mode", "p", "custom_noise", "train_indices", "openset_replaced", "openset_source")
              if k in saved and k in data.info and saved[k] != data.info[k]]
    if saved.get("noise_rate") is not None and not math.isclose(saved["noise_rate"], data.noise_rate()):
        differ.append(f"noise rate {data.noise_rate():.4f} instead of {saved['noise_rate']:.4f}")
    if run.config.get("n_train", len(data.labels)) != len(data.labels):
        differ.append(f"{len(data.labels)} images instead of {run.config['n_train']}")
    targets_path = run.folder / "targets_final.pt"
    if not differ and not run_method(run).lc and targets_path.is_file():
        targets = runs.load_final(run.folder, "targets_final.pt", run.summary)
        if targets.shape != (len(data.labels), data.num_classes) or \
                not torch.equal(targets.argmax(1), torch.from_numpy(data.labels)):
            differ.append("the noisy labels (targets_final.pt)")
    if differ:
        raise DataError(f"the training set rebuilt from {root} is not the one run {run.exp_id} trained on "
                        f"({'; '.join(differ)}); pass the --data_dir (with its noise files) that the run used")


def run_method(run: Run) -> methods.Method:
    """The method a run trained (its config's variant; --method, or what its SLN flags select)."""
    try:
        return methods.get(run.config["variant"]) if run.config.get("variant") else methods.of(run.config)
    except ValueError as e:
        raise DataError(f"{run.folder / 'config.yaml'}: {e}")


def reported_network(run: Run) -> str:
    if run.summary and run.summary.get("reported_network") in ("net", "ema"):
        return run.summary["reported_network"]
    return run_method(run).reported


def training_set_logits(run: Run, data: NoisyData, network: str, device: torch.device, batch_size: int) -> torch.Tensor:
    """Logits of the run's final network ("net" or "ema") on every training image, eval mode, no augmentation."""
    path = run.folder / ("ema_final.pt" if network == "ema" else "model_final.pt")
    if not path.is_file():
        raise DataError(f"{path} is missing: the run has not finished, or its files were not all copied here")
    model = make_model(run.config["model"], data.num_classes)
    try:
        model.load_state_dict(runs.load_final(run.folder, path.name, run.summary))
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError) as e:
        raise DataError(f"cannot load {path} into {run.config['model']} with {data.num_classes} classes: "
                        f"{str(e).splitlines()[0]}")
    model.to(device)
    mean, std = torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    # the images as the run's evaluation saw them: arrays on the device, or image files (Clothing1M) read by workers
    source = image_source(data.images, device, data.pad, data.flip, datasets.workers(run.config))
    batches = tqdm(source.eval_batches(batch_size), total=-(-len(data.labels) // batch_size), unit="batch",
                   desc=f"{network} network on {len(data.labels)} training images", dynamic_ncols=True)
    return engine.logits_of(model, batches, mean, std).cpu()


# ----------------------------------------------------------------------------------------------------
# What the figures show, as numbers

DISSECT_KINDS = ["label right, prediction right", "label right, prediction wrong",
                 "label wrong, prediction right", "label wrong, prediction wrong"]
# open-set noise keeps the CIFAR-10 label of a replaced image, so "right" means "predicts its given label"
DISSECT_KINDS_OPENSET = ["CIFAR-10 image, prediction right", "CIFAR-10 image, prediction wrong",
                         "open-set image, predicts its given label", "open-set image, predicts another class"]


def dissect_counts(losses: np.ndarray, label_wrong: np.ndarray, pred_right: np.ndarray, n_bins: int) -> np.ndarray:
    """Sample dissection: samples sorted by loss (ascending, ties by index), cut into n_bins bins of equal size
    (np.array_split: sizes differ by at most one), and per bin the count of each of the four DISSECT_KINDS."""
    if not 0 < n_bins <= len(losses):
        raise DataError(f"--bins {n_bins} is impossible for {len(losses)} samples; use 1..{len(losses)}")
    order = np.argsort(losses, kind="stable")
    kind = 2 * label_wrong.astype(int) + (~pred_right.astype(bool)).astype(int)
    return np.stack([np.bincount(kind[b], minlength=4) for b in np.array_split(order, n_bins)])


def prob_histograms(probs: np.ndarray, noisy: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin edges over [0, 1], counts of clean samples, counts of noisy samples)."""
    edges = np.linspace(0, 1, n_bins + 1)
    return edges, np.histogram(probs[~noisy], edges)[0], np.histogram(probs[noisy], edges)[0]


def confident_label_issues(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which given labels are likely wrong, by confident learning (Northcutt, Jiang and Chuang, JAIR 2021; cleanlab's
    find_label_issues with filter_by="confident_learning"): class j's threshold t_j is the mean probability of j over
    the images labelled j; an image is likely mislabelled when the most probable class whose probability reaches its
    threshold is not its given label. Returns (likely wrong, self-confidence: the probability of the given label, the
    ranking score; lower is more likely wrong)."""
    n, k = probs.shape
    counts = np.bincount(given, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, given, probs[np.arange(n), given])
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)    # no image labelled j: j is never confident
    confident = np.where(probs >= thresholds, probs, -1.0)
    best = confident.argmax(1)
    wrong = (confident.max(1) >= 0) & (best != given)
    return wrong, probs[np.arange(n), given]


def image_keys(data: NoisyData) -> tuple[str, list]:
    """What names each training image to its owner: its file (a folder, Animal-10N, Clothing1M; relative to the data
    folder) or, for CIFAR's arrays, its index in the dataset's whole training set (before the run's subset)."""
    positions = data.info.get("train_indices") or list(range(len(data.labels)))
    if isinstance(data.images, ImageFiles):
        return "path", [p.decode() if isinstance(p, bytes) else str(p) for p in data.images.paths]
    if data.train_files is not None:
        return "path", [data.train_files[i] for i in positions]
    return "index", [int(i) for i in positions]


def label_issue_rows(run: Run, data: NoisyData, logits: torch.Tensor, network: str) -> tuple[list[list], str]:
    """The CSV of --label_issues, one row per training image, most likely wrong first, and its Markdown summary
    (with precision and recall against the clean labels, where they are known)."""
    probs = torch.softmax(logits.float(), 1).numpy()
    given, names = data.labels, data.class_names
    wrong, confidence = confident_label_issues(probs, given)
    predicted = probs.argmax(1)
    corrected = None
    if run_method(run).lc and (run.folder / "targets_final.pt").is_file():
        targets = runs.load_final(run.folder, "targets_final.pt", run.summary)
        if targets.shape == probs.shape:
            corrected = targets.argmax(1).numpy()
    key, ids = image_keys(data)
    order = np.lexsort((confidence, ~wrong))     # likely wrong first, each part by self-confidence, lowest first
    header = [key, "given_label", "given_label_prob", "predicted_label", "predicted_prob", "corrected_label",
              "likely_wrong", "rank"] + (["clean_label"] if data.clean_labels is not None else [])
    rows = [header]
    for rank, i in enumerate(order, 1):
        rows.append([ids[i], names[given[i]], round(float(confidence[i]), 6), names[predicted[i]],
                     round(float(probs[i, predicted[i]]), 6), "" if corrected is None else names[corrected[i]],
                     int(wrong[i]), rank] + ([names[data.clean_labels[i]]] if data.clean_labels is not None else []))
    lines = [f"# Label issues of run {run.exp_id} ({describe(run.config)})", "",
             f"{NETWORK_NAME[network]} on the {len(given):,} training images it trained on, without augmentation; "
             "likely wrong: confident learning's per-class thresholds (plot.confident_label_issues); rows ranked by "
             "the probability of the given label, lowest first.", "",
             f"- likely wrong: {int(wrong.sum()):,} of {len(given):,} ({wrong.mean():.2%})"]
    if data.is_noisy is not None:
        hits = int((wrong & data.is_noisy).sum())
        precision = hits / wrong.sum() if wrong.any() else float("nan")
        recall = hits / data.is_noisy.sum() if data.is_noisy.any() else float("nan")
        lines += [f"- against the clean labels ({int(data.is_noisy.sum()):,} wrong, {data.is_noisy.mean():.2%}): "
                  f"precision {precision:.4f}, recall {recall:.4f}"]
    else:
        lines += ["- no clean labels for this dataset: precision and recall cannot be measured"]
    return rows, "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# Figures

CLEAN, NOISY = "#1f77b4", "#d62728"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]     # a marker per method of a compare panel
NETWORK_NAME = {"reported": "reported network", "net": "network", "ema": "EMA network"}


def describe(config: dict) -> str:
    """A run in a title: 'SLN-MO-LC, cifar10 sym p=0.4, wrn-16-1', 'CE, cifar10n worst labels, wrn-28-2', 'CE, folder
    my_images (labels as given), wrn-28-2'."""
    dataset = config.get("dataset_name", "?")
    if config.get("noise_mode"):
        custom = " custom" if config.get("custom_noise") else ""
        data = f"{dataset} {config['noise_mode']}" + (f" p={config['p']}" if "p" in config else "") + custom
    elif config.get("noise_label"):
        data = f"{dataset} {config['noise_label']} labels"
    else:      # the dataset's own labels (Animal-10N, Clothing1M, a folder, named by its folder)
        where = f" {Path(config['data_dir']).name}" if dataset == "folder" and config.get("data_dir") else ""
        data = f"{dataset}{where} (labels as given)"
    return f"{config.get('variant', '?')}, {data}, {config.get('model', '?')}"


def figure_pred_probs(run: Run, network: str, logits: torch.Tensor, data: NoisyData,
                      n_bins: int) -> tuple[plt.Figure, list[list]]:
    """Histograms of the maximum softmax probability and of the probability of the given label, clean and noisy
    training samples overlaid; returns the figure and its numbers as CSV rows."""
    probs = torch.softmax(logits.float(), 1).numpy()
    noisy = data.is_noisy
    given = probs[np.arange(len(probs)), data.labels]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, layout="constrained")
    rows = [["bin_low", "bin_high", "clean_max_prob", "noisy_max_prob",
             "clean_given_label_prob", "noisy_given_label_prob"]]
    columns = []
    for ax, values, xlabel in ((axes[0], probs.max(1), "maximum softmax probability"),
                               (axes[1], given, "softmax probability of the given (noisy) label")):
        edges, clean_n, noisy_n = prob_histograms(values, noisy, n_bins)
        columns += [clean_n, noisy_n]
        ax.stairs(clean_n, edges, fill=True, alpha=0.45, color=CLEAN, label=f"clean ({int((~noisy).sum())})")
        ax.stairs(noisy_n, edges, fill=True, alpha=0.45, color=NOISY, label=f"noisy ({int(noisy.sum())})")
        ax.stairs(clean_n, edges, color=CLEAN, linewidth=1.2)
        ax.stairs(noisy_n, edges, color=NOISY, linewidth=1.2)
        ax.set_xlim(0, 1)
        ax.set_xlabel(xlabel)
        ax.legend(title="training samples", loc="upper center")
    axes[0].set_ylabel("number of training samples")
    rows += [[edges[i], edges[i + 1], *(int(c[i]) for c in columns)] for i in range(n_bins)]
    fig.suptitle(f"{run.exp_id}: {describe(run.config)}\nfinal {NETWORK_NAME[network]} on the "
                 f"{len(probs)} training images (no augmentation)")
    return fig, rows


def draw_sample_dissect(ax: plt.Axes, run: Run, network: str, logits: torch.Tensor, data: NoisyData,
                        n_bins: int, legend: bool = True) -> list[list]:
    """Stacked counts of the four DISSECT_KINDS in n_bins equal bins of training samples sorted by loss against the
    given label, drawn into `ax`; returns the numbers as CSV rows."""
    losses = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(data.labels),
                                               reduction="none").numpy()
    pred = logits.argmax(1).numpy()
    counts = dissect_counts(losses, data.is_noisy, pred == data.clean_labels, n_bins)
    openset = run.config.get("noise_mode") == "openset"
    kinds = DISSECT_KINDS_OPENSET if openset else DISSECT_KINDS
    order = np.argsort(losses, kind="stable")
    bins = np.array_split(order, n_bins)
    x = np.arange(1, n_bins + 1)
    bottom = np.zeros(n_bins)
    for k, (name, colour) in enumerate(zip(kinds, ["#2ca02c", "#ff7f0e", "#1f77b4", "#d62728"])):
        ax.bar(x, counts[:, k], bottom=bottom, width=0.85, color=colour, label=name)
        bottom += counts[:, k]
    size = f"{len(bins[0])}" if len(bins[0]) == len(bins[-1]) else f"{len(bins[-1])}-{len(bins[0])}"
    ax.set_xlabel(f"bin of training samples sorted by loss on the given label (low → high), {size} samples per bin")
    ax.set_ylabel("number of samples")
    ax.set_xlim(0.3, n_bins + 0.7)
    ax.set_ylim(0, counts.sum(1).max() * 1.02)
    if legend:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.set_title(f"{run.exp_id}: {describe(run.config)}\nfinal {NETWORK_NAME[network]}: is the label right, "
                 "is the prediction right (vs the clean label)?")
    rows = [["bin", "n", "loss_min", "loss_max", *[k.replace(", ", "_").replace(" ", "_") for k in kinds]]]
    rows += [[i + 1, len(b), float(losses[b].min()), float(losses[b].max()), *counts[i].tolist()]
             for i, b in enumerate(bins)]
    return rows


def figure_sample_dissect(run: Run, network: str, logits: torch.Tensor, data: NoisyData,
                          n_bins: int) -> tuple[plt.Figure, list[list]]:
    """The sample dissection of one run; returns the figure and its numbers as CSV rows."""
    fig, ax = plt.subplots(figsize=(12, 5), layout="constrained")
    return fig, draw_sample_dissect(ax, run, network, logits, data, n_bins)


def figure_dissect_compare(panels: list[tuple[Run, str, torch.Tensor, NoisyData]],
                           n_bins: int) -> tuple[plt.Figure, list[list]]:
    """Sample dissections of several runs side by side (e.g. CE next to SLN-MO-LC), on one y scale; CSV rows with
    the run of each row in front."""
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 5.6), sharey=True, squeeze=False,
                             layout="constrained")
    rows: list[list] = []
    for i, (ax, (run, network, logits, data)) in enumerate(zip(axes[0], panels)):
        part = draw_sample_dissect(ax, run, network, logits, data, n_bins, legend=False)
        ax.set_title(f"{run.config.get('variant', '?')} ({run.exp_id})\nfinal {NETWORK_NAME[network]}", fontsize=12)
        ax.set_xlabel("training samples by loss on the given label (low → high), in bins")
        rows += ([["exp_id", "variant", *part[0]]] if i == 0 else []) + \
            [[run.exp_id, run.config.get("variant"), *r] for r in part[1:]]
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle(f"Sample dissection: is the label right, is the prediction right (vs the clean label)?\n"
                 f"{describe(panels[0][0].config).split(', ', 1)[1]}")
    return fig, rows


def curve_columns(run: Run) -> list[str]:
    """The metrics.csv columns that figure_curves draws, in its order."""
    wanted = ["test/acc", "test/acc_ema", "val/acc", "train/loss_clean", "train/loss_noisy", "train/loss"]
    return [c for c in wanted if c in run.metrics and not np.all(np.isnan(run.metrics[c]))]


def figure_curves(run: Run) -> tuple[plt.Figure, list[list]]:
    """Per epoch: accuracy of the network and the EMA network, and the training loss on clean vs noisy samples.
    Epochs a metric was not computed in (--eval_every) are left out of its line. Returns the figure and its
    numbers as CSV rows (empty cells for those epochs)."""
    m = run.metrics
    if not m:
        raise DataError(f"run {run.exp_id} has not finished an epoch yet; nothing to draw")
    epochs = m["epoch"]

    def points(column: str) -> tuple[np.ndarray, np.ndarray]:
        keep = ~np.isnan(m[column])
        return epochs[keep], m[column][keep]
    marker = "o" if len(epochs) <= 30 else None
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    reported = reported_network(run)
    # val/acc: the reported network on tune.py's noisy validation split or on the dataset's clean one (Clothing1M)
    val_labels = "noisy labels" if run.config.get("val_size") else "clean labels"
    names = {"test/acc": ("net", "network, test"), "test/acc_ema": ("ema", "EMA network, test"),
             "val/acc": (None, f"reported network, validation ({val_labels})")}
    for column, (net, label) in names.items():
        if column in m and not np.all(np.isnan(m[column])):
            label += " (reported)" if net == reported else ""
            x, y = points(column)
            ax_acc.plot(x, 100 * y, "-" if net else "--", marker=marker if len(x) <= 30 else None, label=label)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    curves = [("train/loss_clean", "clean samples", CLEAN), ("train/loss_noisy", "noisy samples", NOISY)]
    if not has_clean_labels(run):
        curves = [("train/loss", "training objective (no clean labels)", "black")]
    for column, label, colour in curves:
        if column in m:
            ax_loss.plot(*points(column), marker=marker, color=colour, label=label)
    ax_loss.set_ylabel("cross-entropy vs the given label" if has_clean_labels(run) else "training loss")
    ax_loss.set_title("training loss (during each epoch's steps)")
    lc = m.get("lc/changed_fraction")
    lc_start = epochs[~np.isnan(lc)][0] if lc is not None and not np.all(np.isnan(lc)) else None
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        if lc_start is not None:
            ax.axvline(lc_start - 0.5, color="grey", ls=":", label="label correction from here")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    unfinished = "" if run.summary is not None else f" (unfinished: {len(epochs)} epochs so far)"
    fig.suptitle(f"{run.exp_id}: {describe(run.config)}{unfinished}")
    columns = curve_columns(run)
    rows = [["epoch", *columns]]
    rows += [[int(e), *("" if np.isnan(m[c][i]) else float(m[c][i]) for c in columns)] for i, e in enumerate(epochs)]
    return fig, rows


def compare_points(runs: list[Run], network: str = "reported") -> tuple[list[list], str]:
    """Test accuracy (%) of `network` (tables.ACCURACY_COLUMN; by default the reported one) over epochs, mean and
    sample std (ddof=1) over seeds, per method and noise mode, at the epochs that every seed evaluated (see
    --eval_every). CSV rows (with header), title."""
    cells, shared = one_table(one_run_per_seed(of_network(runs, network))[0])
    labels = row_labels(cells)
    rows = [["noise", "method", "epoch", "n_seeds", "mean", "std"]]
    for cell in sorted(cells, key=lambda c: (order_key(c.column, COLUMN_ORDER), order_key(c.variant, VARIANT_ORDER),
                                             labels[c.row])):
        series = []
        for run in cell.runs:
            acc = run.metrics.get(ACCURACY_COLUMN[network])
            if acc is None:
                raise DataError(f"{run.folder / 'metrics.csv'} has no {ACCURACY_COLUMN[network]} column")
            series.append(dict(zip(run.metrics["epoch"].astype(int), 100 * acc)))
        common = sorted(set.intersection(*({e for e, v in s.items() if not np.isnan(v)} for s in series)))
        for epoch in common:
            mean, std = mean_std([s[epoch] for s in series])
            rows.append([cell.column, labels[cell.row], epoch, len(series), round(mean, 4),
                         "" if std is None else round(std, 4)])
    return rows, headline(shared, [])


def figure_compare(rows: list[list], title: str, network: str = "reported") -> plt.Figure:
    """One panel per noise mode: each method's mean test accuracy over epochs with a band of ± one std; the paper's
    models drawn solid, the baselines dashed."""
    columns = list(dict.fromkeys(r[0] for r in rows[1:]))
    most = max(len({r[1] for r in rows[1:] if r[0] == column}) for column in columns)
    below = most > 5        # a legend of many methods goes under the axes, where it hides no curve
    fig, axes = plt.subplots(1, len(columns), figsize=(max(6.2 * len(columns), 7.5), 4.8 + (0.25 * most if below else 0)),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, column in zip(axes[0], columns):
        methods = list(dict.fromkeys(r[1] for r in rows[1:] if r[0] == column))
        # each line narrower than the one drawn before it and with its own marker, so that a method whose curve
        # equals another's (SLN-MO and SLN-MO-LC up to the correction epoch) shows as a rim around it, not under it
        widths = np.linspace(4.0, 1.6, len(methods)) if len(methods) > 1 else [2.0]
        for i, method in enumerate(methods):
            pts = [r for r in rows[1:] if r[0] == column and r[1] == method]
            epochs = np.array([r[2] for r in pts])
            mean = np.array([r[4] for r in pts])
            std = np.array([0.0 if r[5] == "" else r[5] for r in pts])
            name = method.split(" ")[0]      # the row label without its settings, e.g. "SLN (σ=0.5)"
            colour = METHOD_COLOURS.get(name, f"C{i + 4}")
            n = pts[-1][3]
            last = f"{mean[-1]:.1f}" + (f" ± {std[-1]:.1f}" if pts[-1][5] != "" else "")
            ax.plot(epochs, mean, color=colour, lw=widths[i], marker=MARKERS[i % len(MARKERS)] if len(epochs) <= 30
                    else None, ms=2.5 + widths[i], ls="--" if name in BASELINES else "-",
                    label=f"{method}: last {last} (n={n})")
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.18 if len(methods) <= 5 else 0.1, lw=0)
        ax.set_title(f"{column} labels" if column in cli.NOISE_LABELS else f"{column} noise")   # CIFAR-N: a label set
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))      # no epoch 1.5 on a short run
        if below:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        else:
            ax.legend(loc="lower right")
    axes[0][0].set_ylabel(f"test accuracy (%), {NETWORK_NAME[network]}")
    fig.suptitle("Test accuracy over training, mean ± std over seeds\n" + textwrap.fill(title, 110))
    return fig


def ablation_points(runs: list[Run]) -> tuple[list[list], str]:
    """Test accuracy vs sigma: one line per setting other than sigma (and the variant its value implies).
    Returns CSV rows (with header) and the settings all lines share."""
    runs = [r for r in runs if not r.derived]       # CE-MO's view of a CE run is CE's point at sigma 0
    baselines = sorted({run_method(r).name for r in runs if run_method(r).name in BASELINES})
    if baselines:     # sigma is the paper's models' (0 = CE); a baseline's point at sigma 0 would read as CE's
        print(f"note: ablation draws the paper's four models only; skipping the runs of {', '.join(baselines)}",
              file=sys.stderr)
        runs = [r for r in runs if run_method(r).name not in BASELINES]
        if not runs:
            raise DataError("ablation draws the paper's models against sigma, and these runs are all baselines; "
                            "use --plot_type compare or --table for them")
    groups: dict[tuple, dict[float, list[Run]]] = {}
    for run in one_run_per_seed(runs)[0]:
        s = settings(run.config)
        key = tuple(sorted((k, v) for k, v in s.items() if k not in ("sigma", "variant")))
        groups.setdefault(key, {}).setdefault(float(run.config["sigma"]), []).append(run)
    keys = sorted({k for g in groups for k, _ in g})
    varying = [k for k in keys if len({dict(g).get(k) for g in groups}) > 1]
    shared = {k: v for k, v in next(iter(groups)) if k not in varying}
    title = headline(shared, [])
    title += f", {shared['noise_mode']} noise" if "noise_mode" in shared else ""
    title += ", with MO" if shared.get("mo") else ""
    title += f", LC after epoch {shared['lc_n_epoch']}" if shared.get("lc_n_epoch", -1) != -1 else ""
    rows = [["line", "sigma", "n_seeds", "last_mean", "last_std", "best_mean", "best_std", "exp_ids"]]
    for g in sorted(groups, key=str):
        line = ", ".join(f"{k}={dict(g).get(k)}" for k in varying) or "all runs"
        for sigma in sorted(groups[g]):
            accs = [r.last_and_best() for r in groups[g][sigma]]
            stats = (*mean_std([a[0] for a in accs]), *mean_std([a[1] for a in accs]))
            rows.append([line, sigma, len(accs), *(None if v is None else round(v, 4) for v in stats),
                         " ".join(r.exp_id for r in groups[g][sigma])])
    return [[("" if v is None else v) for v in r] for r in rows], title


def figure_ablation(rows: list[list], title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    lines = list(dict.fromkeys(r[0] for r in rows[1:]))
    for i, line in enumerate(lines):
        pts = [r for r in rows[1:] if r[0] == line]
        sigma = [r[1] for r in pts]
        colour = f"C{i}"
        # best epoch first, so that the last epoch (the paper's number) stays visible where the two coincide
        for mean_i, std_i, style, what in ((5, 6, "--", "best epoch"), (3, 4, "-", "last epoch")):
            err = [r[std_i] if r[std_i] != "" else 0.0 for r in pts]
            ax.errorbar(sigma, [r[mean_i] for r in pts], yerr=err, fmt="o" + style, color=colour, capsize=4,
                        mfc=colour if style == "-" else "white", label=f"{line}, {what}" if len(lines) > 1 else what)
    n = sorted({r[2] for r in rows[1:]})
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}"
    ax.set_xlabel("σ (std of the stochastic label noise; 0 = CE)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy vs σ, mean ± std over seeds ({seeds} per point)\n"
                 + textwrap.fill(title, 90), fontsize=11.5)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda j: (j // 2, -(j % 2)))   # last epoch before best epoch
    ax.legend([handles[j] for j in order], [labels[j] for j in order])
    return fig


# ----------------------------------------------------------------------------------------------------
# tune.py sweeps (read by sweeps.read_hp_table)

def figure_hp(tables: list[tuple[Path, dict]]) -> tuple[plt.Figure, list[list]]:
    """Validation accuracy against sigma (log axis) per sweep, the chosen sigma starred; a CE reference trial
    (sigma 0, which a log axis cannot show) is a dotted horizontal line. The CSV rows name the sweeps as the
    legend does, so that a search run again (a new folder) writes the same file."""
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    rows = [["sweep", "sigma", "n_trials", "last_mean", "last_std", "best_mean", "best_std"]]
    names = sweeps.sweep_names([hp_dir for hp_dir, _ in tables])
    for i, (hp_dir, table) in enumerate(tables):
        colour = f"C{i}"
        name = names[i] + ": " if len(tables) > 1 else ""
        every = sorted(table)
        rows += [[names[i], s, len(table[s][0]), *mean_std(table[s][0]), *mean_std(table[s][1])] for s in every]
        if 0 in table:
            ax.axhline(mean_std(table[0][0])[0], ls=":", lw=1.8, color=colour, label=f"{name}CE (σ=0), last epoch")
        sigmas = [s for s in every if s > 0]
        stats = [(mean_std(table[s][0]), mean_std(table[s][1]), len(table[s][0])) for s in sigmas]
        # the chosen sigma: highest last-epoch validation accuracy, the smaller sigma on a tie (never CE)
        top = max(range(len(sigmas)), key=lambda j: (stats[j][0][0], -sigmas[j]))
        for k, style, what in ((0, "-", f"last epoch (best σ={sigmas[top]:g}, ★)"), (1, "--", "best epoch")):
            means = [st[k][0] for st in stats]
            if all(math.isnan(v) for v in means):
                continue
            ax.errorbar(sigmas, means, yerr=[st[k][1] or 0.0 for st in stats], fmt="o" + style, color=colour,
                        capsize=4, mfc=colour if k == 0 else "white", label=name + what)
        ax.plot(sigmas[top], stats[top][0][0], "*", ms=18, color=colour, mec="black", zorder=5)
    ax.set_xscale("log")
    all_sigmas = sorted({s for _, t in tables for s in t if s > 0})
    ax.set_xticks(all_sigmas, [f"{s:g}" for s in all_sigmas])
    ax.minorticks_off()
    ax.margins(x=0.08, y=0.1)
    ax.set_xlabel("σ (log scale)")
    ax.set_ylabel("validation accuracy (%), noisy labels")
    ax.set_title("Sigma search (SLN): accuracy on the noisy validation split"
                 + (f"\n{tables[0][0].name}" if len(tables) == 1 else ""))
    fig.legend(loc="outside lower center", ncol=2, fontsize=9)   # below the axes: never over a curve
    return fig, [[("" if v is None else v) for v in r] for r in rows]


# ----------------------------------------------------------------------------------------------------
# Writing

def save(folder: Path, name: str, fig: plt.Figure | None, args: argparse.Namespace, csv_rows: list[list] | None = None,
         markdown: str | None = None) -> list[Path]:
    """Write a figure (PNG, and PDF with --pdf) and the numbers behind it, under one free name. Outputs that are
    already there with the same content are left as they are (drawing the same runs twice makes no <name>-2)."""
    content: dict[str, bytes] = {}
    if fig is not None:
        for fmt in ["png"] + (["pdf"] if args.pdf else []):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, metadata={"CreationDate": None} if fmt == "pdf" else None)  # no timestamp
            content[f".{fmt}"] = buf.getvalue()
        plt.close(fig)
    if csv_rows is not None:
        content[".csv"] = files.csv_text(csv_rows).encode()
    if markdown is not None:
        content[".md"] = markdown.encode()
    same = {folder / f"{name}{s}": data for s, data in content.items()}
    if not args.overwrite and files.already_written(same):
        for path in same:
            print(f"{path} is already this output: unchanged")
        return list(same)
    folder.mkdir(parents=True, exist_ok=True)
    stem = files.free_stem(folder, name, list(content), args.overwrite)
    written = [Path(f"{stem}{s}") for s in content]
    for path in written:
        files.write_atomic(path, lambda tmp, data=content[path.suffix]: tmp.write_bytes(data))
        print(f"wrote {path}")
    return written


# ----------------------------------------------------------------------------------------------------

def build_parser() -> cli.Parser:
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("what to make")
    w.add_argument("--plot_type", nargs="+", choices=PLOT_TYPES, default=[], metavar="TYPE",
                   help="one or more of: pred_probs, sample_dissect, curves: figures of --exp_id (pred_probs and "
                        "sample_dissect together pass over the data once); compare: test accuracy over epochs of "
                        "the models, mean ± std over seeds, a panel per noise mode; ablation: test accuracy vs "
                        "sigma; both over --exp_ids/--filter; dissect_compare: sample_dissect of 2-4 --exp_ids side "
                        "by side; hp: validation accuracy vs sigma of --hp_dir")
    w.add_argument("--label_issues", action="store_true",
                   help="label_issues.csv of --exp_id: per training image (its file, or its index for CIFAR) the "
                        "given label, the network's prediction and probability, the corrected label where label "
                        "correction ran, and whether the given label is likely wrong (confident learning), ranked; "
                        "precision and recall against the clean labels where known (label_issues.md)")
    w.add_argument("--table", action="store_true",
                   help="Markdown and CSV tables of the runs of --exp_ids/--filter: mean ± std over seeds of the "
                        "last-epoch and best test accuracy, rows the models, columns the noise modes")
    s = p.add_argument_group("which runs")
    s.add_argument("--exp_id", help="the run of pred_probs, sample_dissect and curves (its folder name in --runs_dir)")
    s.add_argument("--exp_ids", nargs="+", help="the runs of --table, compare and ablation (default: every run in --runs_dir)")
    s.add_argument("--filter", help="keep the runs of --table, compare and ablation whose config has these values: "
                                    "key=value[,key=value ...], alternatives with |, e.g. "
                                    "dataset_name=cifar10,noise_mode=sym|asym,model=wrn-28-2")
    s.add_argument("--hp_dir", type=Path, nargs="+",
                   help="tune.py sweep folder(s) hp/hp_<timestamp>/ for --plot_type hp (a bare hp_<timestamp> is "
                        "looked up in hp/ beside --runs_dir)")
    s.add_argument("--runs_dir", type=Path, default=Path("runs"),
                   help="folder of the run folders <exp_id>/ (default: runs/); a training --out_dir works too")
    o = p.add_argument_group("output")
    o.add_argument("--assets_dir", type=Path, default=Path("assets"),
                   help="figures of one run go to <assets_dir>/<exp_id>/, of several runs to <assets_dir>/ "
                        "(default: assets/)")
    o.add_argument("--name", help="file name, without extension, of the table / compare / ablation / hp output "
                                  "(default: table, compare, ablation, hp or the sweep's folder name)")
    o.add_argument("--pdf", action="store_true", help="also save every figure as PDF")
    o.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: keep them and write name-2, name-3, ...)")
    o.add_argument("--network", choices=["reported", "net", "ema"], default="reported",
                   help="which network: the one each run reports (default; EMA for SLN-MO and SLN-MO-LC), the "
                        "trained network or the EMA network, which every method keeps. pred_probs and "
                        "sample_dissect analyse its final weights; --table and compare show its test accuracy")
    c = p.add_argument_group("pred_probs and sample_dissect")
    c.add_argument("--data_dir", type=Path, default=None,
                   help="dataset root, when not where the run had it (its config's data_dir)")
    c.add_argument("--device", default="cpu", help="where to run the network: cpu (default), cuda, cuda:1, mps, auto")
    c.add_argument("--batch_size", type=int, default=1024, help="images per forward pass")
    c.add_argument("--bins", type=int, default=50,
                   help="sample_dissect: number of equal-size loss bins (the paper: 50, i.e. 1000 CIFAR samples each)")
    c.add_argument("--hist_bins", type=int, default=50, help="pred_probs: number of histogram bins over [0, 1]")
    return p


def check_args(args: argparse.Namespace) -> None:
    if not args.plot_type and not args.table and not args.label_issues:
        cli.fail(f"say what to make: --plot_type {' | '.join(PLOT_TYPES)}, --table and/or --label_issues")
    if set(args.plot_type) & set(SINGLE_RUN_PLOTS) and not args.exp_id:
        cli.fail(f"--plot_type {' '.join(t for t in args.plot_type if t in SINGLE_RUN_PLOTS)} needs --exp_id <id>")
    if args.label_issues and not args.exp_id:
        cli.fail("--label_issues needs --exp_id <id> (the run whose network judges the labels)")
    if args.exp_id and not set(args.plot_type) & set(SINGLE_RUN_PLOTS) and not args.label_issues:
        cli.fail("--exp_id is for pred_probs, sample_dissect, curves and --label_issues; "
                    "--table and ablation take --exp_ids or --filter")
    if "dissect_compare" in args.plot_type and not (args.exp_ids and 2 <= len(args.exp_ids) <= 4):
        cli.fail("--plot_type dissect_compare draws 2 to 4 runs side by side: give them with --exp_ids A B ...")
    if "hp" in args.plot_type and not args.hp_dir:
        cli.fail("--plot_type hp needs --hp_dir hp/hp_<timestamp> (a tune.py sweep folder)")
    if args.hp_dir and "hp" not in args.plot_type:
        cli.fail("--hp_dir is for --plot_type hp")
    ignoring = [t for t in args.plot_type if t in ("curves", "ablation", "hp")]
    if args.network != "reported" and ignoring:
        cli.fail(f"--network is for --table, compare, pred_probs, sample_dissect and dissect_compare, not for "
                 f"{' '.join(ignoring)} (curves already shows both networks): make those in a separate call")
    for name in ("batch_size", "bins", "hist_bins"):
        if getattr(args, name) <= 0:
            cli.fail(f"--{name} must be positive, got {getattr(args, name)}")
    if args.name is not None and (args.name in ("", ".", "..") or Path(args.name).name != args.name):
        cli.fail(f"--name {args.name!r} must be a plain file name (no folder, no extension); "
                 "give the folder with --assets_dir")
    cli.check_out_dir(args.assets_dir, "--assets_dir")


def main(argv: list[str] | None = None) -> list[Path]:
    with plt.rc_context(STYLE):   # this script's look, without changing matplotlib for code that imports it
        return _main(argv)


def _main(argv: list[str] | None) -> list[Path]:
    args = build_parser().parse_args(argv)
    check_args(args)
    written: list[Path] = []
    with cli.exits_on_error():
        if args.exp_id:
            run = find_run(runs_folder(args.runs_dir), args.exp_id)
            folder = args.assets_dir / run.exp_id
            wanted = [t for t in ("pred_probs", "sample_dissect") if t in args.plot_type]
            if wanted:
                data = rebuild_training_set(run, args.data_dir)
                network = reported_network(run) if args.network == "reported" else args.network
                logits = training_set_logits(run, data, network, engine.pick_device(args.device), args.batch_size)
                figures = {"pred_probs": lambda: figure_pred_probs(run, network, logits, data, args.hist_bins),
                           "sample_dissect": lambda: figure_sample_dissect(run, network, logits, data, args.bins)}
                suffix = "" if args.network == "reported" else f"_{network}"
                for kind in wanted:
                    fig, rows = figures[kind]()
                    written += save(folder, kind + suffix, fig, args, rows)
            if args.label_issues:
                if run.summary is None:
                    raise DataError(f"run {run.exp_id} has not finished (no summary.json): its final networks, which "
                                    "judge the labels, are not written yet")
                data = rebuild_training_set(run, args.data_dir, need_clean=False)
                # by default the momentum (EMA) network, which every method keeps: the paper's least noisy predictor
                network = "ema" if args.network == "reported" else args.network
                logits = training_set_logits(run, data, network, engine.pick_device(args.device), args.batch_size)
                rows, markdown = label_issue_rows(run, data, logits, network)
                print(markdown)
                written += save(folder, "label_issues" + ("" if args.network == "reported" else f"_{network}"), None,
                                args, rows, markdown)
            if "curves" in args.plot_type:
                if run.summary is None and run.metrics:
                    print(f"note: run {run.exp_id} is unfinished (no summary.json); drawing its epochs so far",
                          file=sys.stderr)
                fig, rows = figure_curves(run)
                written += save(folder, "curves", fig, args, rows)
        if args.table or {"ablation", "compare"} & set(args.plot_type):
            runs = select_runs(runs_folder(args.runs_dir), args.exp_ids, args.filter)
            if not args.table:    # the table says it in its Markdown
                for note in one_run_per_seed(runs)[1]:
                    print(f"note: {note}")
            if args.table:
                markdown, rows = make_table(runs, args.network)
                print(markdown)
                written += save(args.assets_dir, args.name or "table", None, args, rows, markdown)
            if "compare" in args.plot_type:
                rows, title = compare_points(runs, args.network)
                written += save(args.assets_dir, args.name or "compare", figure_compare(rows, title, args.network),
                                args, rows)
            if "ablation" in args.plot_type:
                rows, title = ablation_points(runs)
                written += save(args.assets_dir, args.name or "ablation", figure_ablation(rows, title), args, rows)
        if "dissect_compare" in args.plot_type:
            panels = []
            for exp_id in args.exp_ids:
                run = find_run(runs_folder(args.runs_dir), exp_id)
                data = rebuild_training_set(run, args.data_dir)
                network = reported_network(run) if args.network == "reported" else args.network
                logits = training_set_logits(run, data, network, engine.pick_device(args.device), args.batch_size)
                panels.append((run, network, logits, data))
            fig, rows = figure_dissect_compare(panels, args.bins)
            written += save(args.assets_dir, args.name or "dissect_compare", fig, args, rows)
        if "hp" in args.plot_type:
            tables = [sweeps.read_hp_table(sweeps.hp_folder(d, args.runs_dir)) for d in args.hp_dir]
            tables = [(path.parent, table) for path, table in tables]
            fig, rows = figure_hp(tables)
            default = tables[0][0].name if len(tables) == 1 else "hp"
            written += save(args.assets_dir, args.name or default, fig, args, rows)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
