"""Label noise as pure functions: seeded, vectorised generators for any rate 0 <= p < 1, the rules and
metadata that describe what they did, and the noise report (rate, per-class rates, transition matrix) of
any noise in use, generated or read from a file.

Labels in, labels out: nothing here reads or writes a file. data.py reads what a generator needs from
disk (CIFAR-100's superclasses, the images) and writes what it returns, so every function here can be
tested on plain arrays and gives the same labels for the same seed on any machine.
"""
from __future__ import annotations

import numpy as np

from errors import DataError


# ----------------------------------------------------------------------------------------------------
# Noise settings and their checks

SYM_VARIANTS = {
    "other": "a flipped label goes to a uniformly drawn other class, never the true one (as in the paper's files)",
    "any": "a chosen label is redrawn uniformly over all classes and may keep the true one (DivideMix-style)",
}
ASYM_VARIANTS = {
    "paper": "the paper's rule: CIFAR-10 truck->automobile, bird->airplane, cat<->dog, deer->horse; "
             "CIFAR-100 class i -> i+1 mod 100",
    "superclass": "CIFAR-100 only: each class -> the next class of its superclass, circularly",
    "blocks": "CIFAR-100 only: the superclass rule as much public code implements it, on blocks of 5 "
              "consecutive class indices (which are not the real superclasses)",
}
# Source -> destination classes of CIFAR-10 asymmetric noise (Patrini et al., CVPR 2017; the SLN paper's file).
CIFAR10_ASYM = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}

DEPENDENT_RATE_STD = 0.1   # Xia et al.'s default spread of the per-image flip rates


def check_rate(p: float) -> None:
    """Refuse a noise rate outside [0, 1): the project's one such check, so that the scripts' flags (cli.py) and
    every generator below give the same message (p = 1 would leave no correct label to learn from)."""
    if not 0 <= p < 1:
        raise DataError(f"noise rate p={p} is outside [0, 1); pass e.g. --p 0.4")


def check_noise_options(dataset: str, mode: str, custom: bool, sym_variant: str | None,
                        asym_variant: str | None) -> None:
    """Refuse contradictory noise options before anything is loaded or written. The rate is checked by the
    generator that uses it (and by the scripts, with the flags)."""
    if mode == "openset" and dataset != "cifar10":
        raise DataError("open-set noise exists for CIFAR-10 only (it inserts CIFAR-100 images); "
                        "use --dataset_name cifar10 or another --noise_mode")
    if not custom and (sym_variant or asym_variant):
        raise DataError("--sym_variant/--asym_variant choose how custom noise is generated; add --custom_noise")
    if sym_variant is not None and mode != "sym":
        raise DataError(f"--sym_variant applies to --noise_mode sym, not {mode}; drop it")
    if asym_variant is not None and mode != "asym":
        raise DataError(f"--asym_variant applies to --noise_mode asym, not {mode}; drop it")
    if asym_variant in ("superclass", "blocks") and dataset != "cifar100":
        raise DataError(f"--asym_variant {asym_variant} exists for CIFAR-100 only; use --asym_variant paper")


# ----------------------------------------------------------------------------------------------------
# Generators

def sym_noise(labels: np.ndarray, num_classes: int, p: float, seed: int, variant: str = "other") -> np.ndarray:
    """Symmetric noise: exactly round(p*n) labels, chosen uniformly without replacement, are redrawn.

    variant "other": the new label is uniform over the C-1 *other* classes, so it never keeps the true
    class and exactly round(p*n) labels are wrong. The SLN paper's sym files behave like this (their
    flipped labels never equal the true class); the noise code of Han et al. (NeurIPS 2018) also flips only to
    other classes, but each label independently with probability p.
    variant "any": the new label is uniform over all C classes and keeps the true class with probability
    1/C, so about p*(C-1)/C of the labels end up wrong (DivideMix, Li et al., ICLR 2020, and code derived
    from it).
    """
    check_rate(p)
    if variant not in SYM_VARIANTS:
        raise DataError(f"unknown symmetric-noise variant {variant!r}; use one of {', '.join(SYM_VARIANTS)}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), int(round(p * len(labels))), replace=False)
    noisy = labels.copy()
    if variant == "other":
        # adding 1..C-1 modulo C reaches every other class exactly once: uniform, never the true class
        noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, len(chosen))) % num_classes
    else:
        noisy[chosen] = rng.integers(0, num_classes, len(chosen))
    return noisy


def asym_destinations(dataset: str, num_classes: int, variant: str = "paper",
                      coarse: np.ndarray | None = None) -> np.ndarray:
    """dest[c]: the class that flipped labels of class c become, or -1 where class c is never flipped.

    "paper": CIFAR-10's map (CIFAR10_ASYM), otherwise class i -> i+1 mod C (the SLN paper's CIFAR-100
    file). "superclass": the rule described by Patrini et al. (CVPR 2017), each class goes to the next
    class (by fine-label index) of its own superclass, circularly; `coarse[c]` is class c's superclass.
    "blocks": the same on blocks of 5 consecutive indices, as the noisify_cifar100_asymmetric code that
    of Han et al. (NeurIPS 2018) and many later repositories share does (CIFAR-100's indices are alphabetical, so these
    blocks are not superclasses).
    """
    if variant == "paper":
        if dataset == "cifar10":
            dest = np.full(num_classes, -1, dtype=np.int64)
            dest[list(CIFAR10_ASYM)] = list(CIFAR10_ASYM.values())
            return dest
        return (np.arange(num_classes) + 1) % num_classes
    if variant == "blocks":
        variant, coarse = "superclass", np.arange(num_classes) // 5
    if variant == "superclass":
        if coarse is None or len(coarse) != num_classes:
            raise DataError(f"the superclass rule needs the superclass of each of the {num_classes} classes "
                            "(CIFAR-100 only); use --asym_variant paper")
        dest = np.empty(num_classes, dtype=np.int64)
        for group in np.unique(coarse):
            members = np.flatnonzero(coarse == group)
            dest[members] = np.roll(members, -1)
        return dest
    raise DataError(f"unknown asymmetric-noise variant {variant!r}; use one of {', '.join(ASYM_VARIANTS)}")


def asym_noise(labels: np.ndarray, dest: np.ndarray, p: float, seed: int) -> np.ndarray:
    """Asymmetric (class-conditional) noise: in every class c with dest[c] >= 0, exactly round(p*n_c) of
    its n_c labels, chosen uniformly, become dest[c]; so each label of such a class flips with probability p."""
    check_rate(p)
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    for c in np.flatnonzero(dest >= 0):
        members = np.flatnonzero(labels == c)
        noisy[rng.choice(members, int(round(p * len(members))), replace=False)] = dest[c]
    return noisy


def dependent_rate_std(p: float) -> float:
    """Spread of the per-image flip rates: Xia et al.'s 0.1, narrowed near p = 0 and p = 1 so that cutting
    the normal to [0, 1] (at >= 4 std) does not move its mean away from p (0.1 for 0.4 <= p <= 0.6)."""
    return min(DEPENDENT_RATE_STD, p / 4, (1 - p) / 4)


def dependent_noise(images: np.ndarray, labels: np.ndarray, num_classes: int, p: float, seed: int) -> np.ndarray:
    """Instance-dependent noise with the generator of Xia et al., "Part-dependent label noise: towards
    instance-dependent label noise", NeurIPS 2020 (its instance-dependent baseline); needs no trained network.

    1. each image i gets a flip rate q_i ~ N(p, s^2) cut to [0, 1] (s = dependent_rate_std(p));
    2. each class c gets a random projection W_c ~ N(0, 1) of shape (pixels, C);
    3. the flattened, standardised image x_i scores the classes as x_i W_{y_i}; its true class is
       excluded and a softmax turns the scores into destination probabilities;
    4. with probability q_i the label becomes a class drawn from those probabilities, else it is kept.
    So the realised rate is mean(q) ~ p, a flipped label never keeps its class, and where it goes depends
    on the image. `images`: uint8, one row (any shape) per label.
    """
    check_rate(p)
    rng = np.random.default_rng(seed)
    n = len(labels)
    s = dependent_rate_std(p)
    q = rng.normal(p, s, n)
    outside = (q < 0) | (q > 1)
    while outside.any():                     # resample until every rate lies in [0, 1] (truncated normal)
        q[outside] = rng.normal(p, s, int(outside.sum()))
        outside = (q < 0) | (q > 1)
    flat = images.reshape(n, -1)
    # one scalar mean and std over all pixels, from the 256-bin histogram (exact, no float copy of the set)
    hist = np.bincount(flat.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256.0)
    mean = (hist * values).sum() / hist.sum()
    std = np.sqrt((hist * (values - mean) ** 2).sum() / hist.sum()) or 1.0
    probs = np.zeros((n, num_classes))
    for c in range(num_classes):
        w = rng.standard_normal((flat.shape[1], num_classes))   # drawn for every class, present or not
        members = np.flatnonzero(labels == c)
        scores = ((flat[members] - mean) / std) @ w
        scores[:, c] = -np.inf
        scores -= scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        probs[members] = e / e.sum(axis=1, keepdims=True)
    flip = rng.random(n) < q
    cumulative = probs.cumsum(axis=1)
    # inverse-CDF draw; scaling u by the row total keeps rounding from ever reaching past the last class
    u = rng.random(n) * cumulative[:, -1]
    dest = (u[:, None] >= cumulative).sum(axis=1)
    return np.where(flip, dest, labels)


def openset_indices(n: int, n_source: int, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Open-set noise (reference `dataset.py`): which round(p*n) of the n training images are replaced,
    and by which of the n_source CIFAR-100 training images. Both drawn without replacement, seeded
    (the reference leaves this unseeded)."""
    check_rate(p)
    rng = np.random.default_rng(seed)
    k = int(round(p * n))
    if k > n_source:
        raise DataError(f"open-set noise p={p} replaces {k} images but CIFAR-100 has only {n_source}; lower --p")
    return np.sort(rng.choice(n, k, replace=False)), rng.choice(n_source, k, replace=False)


def generate_noise(dataset: str, mode: str, p: float, seed: int, labels: np.ndarray, num_classes: int,
                   images: np.ndarray | None = None, n_source: int | None = None, sym_variant: str = "other",
                   asym_variant: str = "paper", coarse: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Noisy labels for one noise setting, plus (open-set only) per image the index of the CIFAR-100 training
    image that replaces it (-1 = kept), plus a description of the generator for the metadata file.
    `coarse` (superclass rule only) is the caller's to read from disk (data.cifar100_coarse). Each generator
    checks the rate."""
    meta: dict = {"dataset": dataset, "noise_mode": mode, "p": p, "seed": seed, "n": len(labels),
                  "num_classes": num_classes}
    source = None
    if mode == "sym":
        noisy = sym_noise(labels, num_classes, p, seed, sym_variant)
        meta.update(generator="noise.sym_noise", variant=sym_variant, description=SYM_VARIANTS[sym_variant])
    elif mode == "asym":
        dest = asym_destinations(dataset, num_classes, asym_variant, coarse)
        noisy = asym_noise(labels, dest, p, seed)
        meta.update(generator="noise.asym_noise", variant=asym_variant, description=ASYM_VARIANTS[asym_variant],
                    destinations=dest.tolist())
    elif mode == "dependent":
        if images is None or len(images) != len(labels):
            raise DataError("instance-dependent noise needs the training images, one per label")
        noisy = dependent_noise(images, labels, num_classes, p, seed)
        meta.update(generator="noise.dependent_noise", variant="xia2020", rate_std=dependent_rate_std(p),
                    description="instance-dependent noise of Xia et al., NeurIPS 2020 (part-dependent label "
                                "noise paper): per-image flip rate ~ truncated normal around p, destination "
                                "from a per-class random projection of the image")
    elif mode == "openset":
        if n_source is None:
            raise DataError("open-set noise needs the number of CIFAR-100 training images to draw from")
        replaced, picked = openset_indices(len(labels), n_source, p, seed)
        source = np.full(len(labels), -1, dtype=np.int64)
        source[replaced] = picked
        noisy = labels.copy()
        meta.update(generator="noise.openset_indices", variant="cifar100-images", n_source=n_source,
                    description="round(p*n) images replaced by distinct random CIFAR-100 training images; "
                                "labels kept")
    else:
        raise DataError(f"unknown noise mode {mode!r}; use sym, asym, dependent or openset")
    wrong = noisy != labels if source is None else source >= 0
    meta["realised_rate"] = float(wrong.mean())
    return noisy, source, meta


def noise_rules(mode: str, p: float, num_classes: int, meta: dict) -> list[tuple[int, str, float, str]]:
    """The rule behind generated noise, one row per source class: (source class, destination classes
    (space-separated), probability that a label of that class ends up in them, how)."""
    everyone = np.arange(num_classes)
    rows = []
    for c in range(num_classes):
        others = " ".join(map(str, everyone[everyone != c]))
        if mode == "sym" and meta["variant"] == "other":
            rows.append((c, others, p, "exactly round(p*n) labels of the set flipped, uniform over other classes"))
        elif mode == "sym":
            rows.append((c, " ".join(map(str, everyone)), p,
                         "exactly round(p*n) labels of the set redrawn uniformly over all classes (may keep c)"))
        elif mode == "asym" and meta["destinations"][c] >= 0:
            rows.append((c, str(meta["destinations"][c]), p, "exactly round(p*n_c) labels of the class flipped"))
        elif mode == "dependent":
            rows.append((c, others, p, f"per image: rate ~ truncated N(p, {meta['rate_std']:g}^2) on [0, 1], "
                                       "destination by a random projection of the image"))
        elif mode == "openset":
            rows.append((c, str(c), p, "image replaced by a CIFAR-100 training image (cifar100_index); label kept"))
    return rows


# ----------------------------------------------------------------------------------------------------
# Noise report: rate, per-class rates and the transition matrix of any noise in use

def noise_report(clean: np.ndarray, given: np.ndarray, num_classes: int,
                 replaced: np.ndarray | None = None) -> dict:
    """Overall and per-class noise rate and the class-to-class transition counts (rows: true class,
    columns: given label). A sample is noisy when its given label differs from the true class, or, for
    open-set noise (`replaced` given), when its image was replaced."""
    wrong = given != clean if replaced is None else replaced
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (clean, given), 1)
    per_class = np.bincount(clean, minlength=num_classes)
    per_class_wrong = np.bincount(clean[wrong], minlength=num_classes)
    return {"n": int(len(clean)), "num_classes": num_classes,
            "noise_rate": float(wrong.mean()) if len(clean) else 0.0,
            "noisy_means": "given label differs from the true class" if replaced is None
            else "image replaced by a CIFAR-100 image (label kept)",
            "per_class_count": per_class.tolist(),
            "per_class_noise_rate": [float(w / c) if c else 0.0 for w, c in zip(per_class_wrong, per_class)],
            "transition_counts": counts.tolist()}


def format_noise_report(report: dict, class_names: list[str], title: str = "") -> str:
    """A few lines for the console; the full matrix only for up to 10 classes."""
    c = report["num_classes"]
    names = class_names if len(class_names) == c else [str(i) for i in range(c)]
    rates = np.array(report["per_class_noise_rate"])
    counts = np.array(report["transition_counts"])
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    lines = [f"noise{' (' + title + ')' if title else ''}: {report['noise_rate']:.2%} of {report['n']} training "
             f"images noisy ({report['noisy_means']})"]
    off = rows * ~np.eye(c, dtype=bool)
    if c <= 10:
        lines.append("  per true class: " + ", ".join(f"{n} {r:.1%}" for n, r in zip(names, rates)))
        if not off.any():
            lines.append("  no label differs from its true class")
            return "\n".join(lines)
        lines.append("  transitions, % of each true class (rows) given each label (columns):")
        short = [n[:6] for n in names]
        lines.append("  " + " " * 8 + "".join(f"{s:>7}" for s in short))
        for name, row in zip(short, rows):
            lines.append(f"  {name:>8}" + "".join(f"{100 * v:7.1f}" for v in row))
    else:
        order = np.argsort(rates, kind="stable")
        lines.append(f"  per true class: min {rates.min():.1%} ({names[order[0]]}), median {np.median(rates):.1%}, "
                     f"max {rates.max():.1%} ({names[order[-1]]})")
        used = int((off > 0).sum())
        top = np.argsort(-off, axis=None, kind="stable")[:5]
        pairs = [f"{names[i]}->{names[j]} {off[i, j]:.1%}" for i, j in zip(*np.unravel_index(top, off.shape))
                 if off[i, j] > 0]
        lines.append(f"  {used} of {c * (c - 1)} off-diagonal transitions occur; largest: "
                     + (", ".join(pairs) or "none"))
    return "\n".join(lines)
