"""The command-line flags the scripts share, each declared once, with their checks.

train_cifar.py, train_real.py and tune.py take the training flags (`add_training_args`); train_cifar.py, tune.py
and viz.py the label-noise flags (`add_noise_args`). A bad value ends the script with one line (`fail`), never
a traceback; `exits_on_error` ends it the same way for the project's errors that the code below the scripts raises.
`training_data` builds a run's dataset from its flags through datasets.dataset_from_config, as plot.py, tune.py and
viz.py do.

A flag says what it is where it is declared (`add_flag`): tune.py-only, not a training setting, not in experiments
files, set per trial by an experiments grid, a column of TensorBoard's HParams tab. The lists of flags that tune.py
and its experiments files need, and the HParams columns, are read off these declarations (`flags_with`, `per_run`,
`hparams`), so that a new flag needs its declaration only.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path
from typing import Iterable, NoReturn


import datasets
import methods
from data import CIFAR, NoisyData, default_data_dir
from datasets import MAX_DEFAULT_WORKERS
from datasets.cifar_n import CIFARN
from datasets.folder import MIN_IMAGE_SIZE
from datasets.images import default_workers
from files import check_writable
from methods import Method
from models import IMAGENET_WEIGHTS, MODELS, WeightsError, imagenet_state_dict, make_model
from errors import ProjectError
from noise import ASYM_VARIANTS, SYM_VARIANTS, check_rate
from runs import lock_run, resolve_resume


class Parser(argparse.ArgumentParser):
    """argparse that answers a bad flag with one line (no usage dump) and exit status 2, and takes every name from a
    list of choices in any case (--noise_mode Sym, --dataset_name CIFAR10, --plot_type Curves), as --method does: the
    value becomes the declared spelling, so that configs, --filter and resume compare one name."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def _get_value(self, action: argparse.Action, arg_string: str):
        if action.type is None and action.choices is not None and isinstance(arg_string, str):
            arg_string = canonical_name(arg_string, action.choices)
        return super()._get_value(action, arg_string)


def canonical_name(text: str, names) -> str:
    """`text` as it is spelled in `names` when it is one of them in another case; else `text` unchanged (for the
    caller's own refusal). The project's one rule for every name a user types: methods, datasets, noise modes, CIFAR-N
    label sets, networks, plot types, --filter values."""
    for name in names:
        if isinstance(name, str) and name.lower() == text.lower():
            return name
    return text


FAIL_CONTEXT: list[str] = []     # where the values being checked came from (failing_in), said before the error


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a user-facing error on one line and exit without a traceback."""
    print(f"error: {''.join(FAIL_CONTEXT)}{message}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def exits_on_error():
    """The scripts' end for the project's errors (errors.py) raised inside: fail()'s one line and the error's exit
    status, no traceback."""
    try:
        yield
    except ProjectError as e:
        fail(str(e), e.status)


class failing_in:
    """While active, every fail() message starts with `where` (e.g. the experiments file and the experiment that a
    bad value came from)."""

    def __init__(self, where: str):
        self.where = where

    def __enter__(self):
        FAIL_CONTEXT.append(self.where)

    def __exit__(self, *exc):
        FAIL_CONTEXT.pop()


# ----------------------------------------------------------------------------------------------------
# What a flag is, said where it is declared (add_flag), and the lists of flags read off the declarations

TUNE_ONLY = "tune only"          # configures a tune.py sweep, not its trials: not among a trial's flags
NOT_TRAINING = "not training"    # changes nothing a run learns: a finished run is reused whatever it was
NOT_IN_FILES = "not in files"    # this machine's, or one-off: not a setting of a tune.py experiments file
HPARAM = "hparam"                # a column of TensorBoard's HParams tab, of the flag's type (hparam_type)


def add_flag(group, *names: str, roles: Iterable[str] = (), grid_key: str | None = None,
             **kwargs) -> argparse.Action:
    """group.add_argument(*names, **kwargs), and what the flag is: its `roles` and, for a flag that a tune.py
    experiments grid sets per trial, the key of the experiments file that sets it (`grid_key`)."""
    action = group.add_argument(*names, **kwargs)
    action.roles, action.grid_key = frozenset(roles), grid_key
    return action


def declared(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's flags in the order of their declaration (--help aside)."""
    return [a for a in parser._actions if a.dest != "help"]


def flags_with(parser: argparse.ArgumentParser, role: str) -> list[str]:
    """The flags of `parser` declared with `role` (add_flag), in the order of their declaration."""
    return [a.dest for a in declared(parser) if role in getattr(a, "roles", ())]


def per_run(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{flag: the experiments file's key that sets it per trial} of the flags of `parser` that a grid sets."""
    return {a.dest: a.grid_key for a in declared(parser) if getattr(a, "grid_key", None)}


def hparam_type(action: argparse.Action) -> type:
    """The type of a flag's HParams column: its declared type, bool for a switch, str for a choice of names."""
    return action.type or (bool if action.nargs == 0 else str)


def hparams() -> dict[str, type]:
    """The settings that TensorBoard's HParams tab shows beside each run's final metrics, with their types: the run's
    method (its config's variant) and every flag declared with HPARAM (each method's own flags among them). The tab
    takes its columns from one run's declaration, so every run declares all of them (runs.log_hparams): the columns
    are then the union over runs of every method, and a run shows an empty cell for a setting it has not."""
    p = argparse.ArgumentParser()
    add_cifar_args(p, human=True, given=True)
    add_training_args(p, default_model=None)
    return {"variant": str, **{a.dest: hparam_type(a) for a in declared(p) if HPARAM in getattr(a, "roles", ())}}


def add_data_dir(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--data_dir", type=Path, default=default_data_dir(), roles={NOT_TRAINING, NOT_IN_FILES},
             help="root of the datasets (default: $SLN_DATA_DIR or data/)")


# ----------------------------------------------------------------------------------------------------
# Training

# DataLoader workers decode images, CPU work: more than one per core helps only while files wait on a slow disk or
# network file system. A few per core leave room for that; a million would fork a million processes at once.
WORKERS_PER_CORE = 4

# The step schedule's factor: the authors' Clothing1M script divides the learning rate by 10.
DEFAULT_LR_DECAY = 0.1

def add_training_args(p: argparse.ArgumentParser, default_model: str, resumable: bool = True) -> None:
    """Flags of the method and the run, with the reference's defaults (SLN-REFERENCE.md)."""
    g = p.add_argument_group("training (defaults: the SLN reference code)")
    add_flag(g, "--batch_size", type=int, default=128, roles={HPARAM}, help="minibatch size in images")
    add_flag(g, "--n_epochs", type=int, default=300, roles={HPARAM}, help="number of training epochs")
    add_flag(g, "--lr", type=float, default=0.001, roles={HPARAM},
             help="SGD learning rate (constant unless --lr_milestones)")
    g.add_argument("--lr_milestones", type=int, nargs="*", default=None, metavar="EPOCH",
                   help="multiply the learning rate by --lr_decay after each of these epochs (the authors' Clothing1M "
                        "script: 5, i.e. epochs 6.. at a tenth); default, or given with no epochs: constant, as the "
                        "reference's CIFAR runs")
    g.add_argument("--lr_decay", type=float, default=None,
                   help=f"factor of the learning rate at each --lr_milestones epoch (default {DEFAULT_LR_DECAY})")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay (L2)")
    add_flag(g, "--sigma", type=float, default=None, roles={HPARAM}, grid_key="sigma",
             help="std of the Gaussian noise added to one-hot targets; 0 = plain cross-entropy (CE). "
                  "Default, by dataset and noise: " + sigma_table())
    add_flag(g, "--mo", action="store_true", roles={HPARAM}, grid_key="variants",
             help="SLN+MO: report the momentum (weight-EMA) model; needs sigma > 0")
    g.add_argument("--ema_alpha", type=float, default=0.999, help="decay of the momentum model per optimiser step")
    add_flag(g, "--lc_n_epoch", type=int, default=-1, roles={HPARAM},
             help="SLN+MO+LC: correct labels before every epoch after this one (reference 250); -1 = never")
    g.add_argument("--lc_augment", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the training augmentation in the label-correction pass, as the reference does; "
                        "--no-lc_augment predicts on un-augmented images")
    g.add_argument("--lc_soft", action=argparse.BooleanOptionalAction, default=None,
                   help="label correction towards the momentum model's softmax, as the authors' Clothing1M script, "
                        "instead of its argmax (their CIFAR script); default: argmax")
    g.add_argument("--num_per_class", type=int, default=None, metavar="N",
                   help="every epoch, train on a fresh seeded class-balanced sample of N training images per class "
                        "(all of a smaller class), labelled afresh with the given labels, as the authors' Clothing1M "
                        "script (N 18976); default, or 0: the whole training set every epoch")
    # the HParams tab shows the method as the run's variant (hparams)
    add_flag(g, "--method", default=None, metavar="NAME", grid_key="variants",
             help="the training method: " + ", ".join(methods.METHODS) + " (docs/methods.md); default: the "
                  "paper's model that --sigma, --mo and --lc_n_epoch select")
    add_flag(g, "--seed", type=int, default=0, roles={HPARAM}, grid_key="seeds",
             help="seeds the model init, data order, augmentation, SLN noise and generated label noise")
    add_flag(g, "--model", choices=list(MODELS), default=default_model, roles={HPARAM}, help="network architecture")
    add_method_flags(p)
    r = p.add_argument_group("data, device and output")
    add_data_dir(r)
    add_flag(r, "--train_subset", type=int, default=None, roles={HPARAM},
             help="train on a stratified, seeded subset of this many training images (quick runs)")
    add_flag(r, "--test_subset", type=int, default=None, roles={HPARAM},
             help="evaluate on a stratified, seeded subset of this many test images")
    add_flag(r, "--device", default="auto", roles={NOT_TRAINING, NOT_IN_FILES},
             help="cuda, cuda:1, cpu, mps ... (default: cuda if available)")
    r.add_argument("--deterministic", action="store_true",
                   help="bit-reproducible kernels (slower on GPU)")
    add_flag(r, "--eval_batch_size", type=int, default=None, roles={NOT_TRAINING},
             help="batch size of evaluation and label-correction passes (no autograd); default 1024 on a GPU, "
                  "128 on a CPU (large batches measured 2-3x slower there: docs/performance.md)")
    r.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes that decode and crop the images of a dataset read from its "
                        "files batch by batch (clothing1m); 0 = in the main process; default: the CPU cores, at most "
                        f"{MAX_DEFAULT_WORKERS}. Datasets held in memory do not use it")
    r.add_argument("--eval_every", type=int, default=1,
                   help="evaluate on the test set every this many epochs and at the last one (other epochs leave "
                        "the test columns empty); a validation split, if any, is evaluated every epoch")
    add_flag(r, "--out_dir", type=Path, default=Path("."), roles={NOT_TRAINING, NOT_IN_FILES},
             help="where configs/ and runs/ are written (default: current directory)")
    if resumable:
        r.add_argument("--resume", metavar="EXP_ID", default=None,
                       help="continue run EXP_ID (under --out_dir) from its last complete checkpoint, with its saved flags")
    s = p.add_argument_group("speed (all off by default: docs/performance.md says what each did where measured)")
    s.add_argument("--precision", choices=PRECISIONS, default="tf32",
                   help="arithmetic on CUDA GPUs (no effect on CPUs): tf32 (default: TensorFloat-32 convolutions and "
                        "matmuls on Ampere or newer, PyTorch's own default for convolutions), fp32 (strict float32 "
                        "everywhere: bit-for-bit comparisons, up to ~7x slower on an H100), bf16 (bf16 autocast, the "
                        "same as --amp). Recorded in config.yaml; docs/performance.md")
    s.add_argument("--amp", action="store_true",
                   help="bf16 autocast for forward passes, the same as --precision bf16, which it overrides "
                        "(CUDA only; on CPUs without bf16 units it is much slower)")
    s.add_argument("--channels_last", action="store_true",
                   help="NHWC memory layout for the network and its input batches")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the network and its EMA copy (the first epoch is slower while it compiles)")


PRECISIONS = ["fp32", "tf32", "bf16"]


def training_defaults() -> dict:
    """Every training flag's default as add_training_args declares it (before a script changes any)."""
    p = argparse.ArgumentParser()
    add_training_args(p, default_model=None)
    return vars(p.parse_args([]))


def add_method_flags(p: argparse.ArgumentParser) -> None:
    """Each method's own flags, in a group per method (a flag two methods share is listed with the first)."""
    added: set[str] = set()
    for m in methods.METHODS.values():
        own = [f for f in m.flags if f.name not in added]
        if not own:
            continue
        g = p.add_argument_group(f"--method {' / '.join(methods.owners(own[0].name))} only ({m.summary})")
        for f in own:
            add_flag(g, f"--{f.name}", type=f.type, default=None, roles={HPARAM}, help=f.help)
            added.add(f.name)


def paper_model(args: argparse.Namespace) -> Method:
    """Which of the paper's four models --sigma, --mo and --lc_n_epoch ask for (no --method), or an error listing
    the valid combinations."""
    method = methods.from_flags(args.sigma, args.mo, args.lc_n_epoch)
    if method is not None and (not method.lc or 0 < args.lc_n_epoch < args.n_epochs):
        return method
    given = f"--sigma {args.sigma} {'--mo ' if args.mo else ''}--lc_n_epoch {args.lc_n_epoch}"
    if args.sigma > 0 and args.mo and args.lc_n_epoch > 0 and args.n_epochs < 2:
        fail(f"{given} with --n_epochs {args.n_epochs}: SLN+MO+LC corrects labels before the epochs after "
             f"--lc_n_epoch, so it needs --n_epochs 2 or more and --lc_n_epoch below it (e.g. --n_epochs 2 --lc_n_epoch 1)")
    lc_range = f"in 1..{args.n_epochs - 1}" if args.n_epochs >= 2 else "below --n_epochs (which must be 2 or more)"
    fail(f"{given} is not one of the paper's models; use CE: --sigma 0 --lc_n_epoch -1 | SLN: --sigma >0 --lc_n_epoch -1 | "
         f"SLN+MO: --sigma >0 --mo --lc_n_epoch -1 | SLN+MO+LC: --sigma >0 --mo --lc_n_epoch {lc_range} "
         f"(other methods: --method NAME)")


def named_method(args: argparse.Namespace) -> Method:
    """The method --method names, with --sigma, --mo and --lc_n_epoch checked against it (--mo is implied)."""
    try:
        m = methods.get(args.method)
    except ValueError as e:
        fail(f"--method: {e}")
    args.method = m.name    # as declared, whatever the case typed: configs, --filter and resume compare names
    if not m.sln and args.sigma > 0:
        fail(f"--method {m.name} adds no SLN noise; drop --sigma {args.sigma:g} (SLN on top of it is a method of "
             "its own where declared, e.g. " + ", ".join(n for n, x in methods.METHODS.items() if x.sln) + ")")
    if m.sln and args.sigma == 0:
        fail(f"--method {m.name} needs --sigma > 0 (0 is no SLN noise)")
    if args.mo and not m.mo:
        fail(f"--mo reports the momentum model, which --method {m.name} does not; drop --mo")
    args.mo = m.mo
    if m.lc and not 0 < args.lc_n_epoch < args.n_epochs:
        fail(f"--method {m.name} corrects labels after --lc_n_epoch: give --lc_n_epoch in 1..{args.n_epochs - 1} "
             f"(--n_epochs {args.n_epochs})" if args.n_epochs >= 2 else
             f"--method {m.name} corrects labels after --lc_n_epoch, so it needs --n_epochs 2 or more")
    if not m.lc and args.lc_n_epoch != -1:
        fail(f"--method {m.name} corrects no labels; drop --lc_n_epoch {args.lc_n_epoch} (or use -1)")
    return m


def check_method(args: argparse.Namespace) -> Method:
    """The run's method, its flags checked: another method's flag is refused, and the method's own are filled in
    with their defaults where not given, then checked against their ranges. One line on a bad value."""
    m = paper_model(args) if getattr(args, "method", None) is None else named_method(args)
    own = {f.name for f in m.flags}
    for name in methods.all_flags():
        if name not in own and getattr(args, name, None) is not None:
            fail(f"--{name} is a flag of {' and '.join(methods.owners(name))}, not of {m.name}; drop it "
                 f"(or add --method {methods.owners(name)[0]})")
    for f in m.flags:
        if getattr(args, f.name, None) is None:
            setattr(args, f.name, f.default_for(args))
        value = getattr(args, f.name)
        if value is not None and not f.valid(value):
            fail(f"--{f.name} ({m.name}) must be {f.valid_text}, got {value:g}")
    return m


def check_training_args(args: argparse.Namespace) -> Method:
    """Validate the shared flags (the output folder included, before any data is loaded); return the method."""
    for name, value in vars(args).items():   # nan and inf pass every range check below; refuse them first
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"--{name} must be a finite number, got {value}")
    for name in ("batch_size", "n_epochs", "eval_batch_size", "eval_every"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            fail(f"--{name} must be positive, got {value}")
    if args.lr <= 0:
        fail(f"--lr must be positive, got {args.lr}")
    check_lr_schedule(args)
    for name in ("num_per_class", "workers"):
        if getattr(args, name, None) is not None and getattr(args, name) < 0:
            fail(f"--{name} must be 0 or more, got {getattr(args, name)}")
    cores = default_workers(math.inf)
    if getattr(args, "workers", None) is not None and args.workers > WORKERS_PER_CORE * cores:
        fail(f"--workers {args.workers} is more than this machine can run: it has {cores} CPU core"
             f"{'s' if cores > 1 else ''}; give at most {WORKERS_PER_CORE * cores} (the default: one per core)")
    if not 0 <= args.momentum < 1:
        fail(f"--momentum must be in [0, 1), got {args.momentum:g}")
    if args.weight_decay < 0:
        fail(f"--weight_decay must be >= 0, got {args.weight_decay:g}")
    if not 0 <= args.seed < 2**32:
        fail(f"--seed must be in 0..{2**32 - 1} (numpy's range), got {args.seed}")
    if args.sigma < 0:
        fail(f"--sigma must be >= 0, got {args.sigma}")
    if not 0 <= args.ema_alpha < 1:
        fail(f"--ema_alpha must be in [0, 1), got {args.ema_alpha}")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            fail(f"--{name} must be a positive number of images, got {getattr(args, name)}")
    check_out_dir(args.out_dir)
    method = check_method(args)
    check_method_fits_dataset(args, method)
    return method


def check_method_fits_dataset(args: argparse.Namespace, method: Method) -> None:
    """What a method needs of the data that its dataset's declaration already rules out (a dataset without clean
    labels: no true transition matrix, no noise rate to forget), refused before the data is loaded. A folder, whose
    CSV may or may not have clean labels, is checked by engine.run once it is loaded."""
    declared = datasets.DATASETS.get(getattr(args, "dataset_name", None))
    if declared is None or declared.clean_labels != "no":
        return
    if method.needs_clean:
        fail(f"--method {method.name} needs the clean labels of the training set, which {declared.name} does not "
             "have; choose another method")
    if method.prepare:
        try:
            method.prepare(argparse.Namespace(**vars(args)), {"noise_rate": None})   # a copy: engine.run prepares for real
        except ValueError as e:
            fail(str(e))


def check_lr_schedule(args: argparse.Namespace) -> None:
    """--lr_milestones: epochs in 1..n_epochs-1, increasing; --lr_decay only with them (filled in when not given)."""
    milestones = args.lr_milestones or []
    if not milestones:
        if args.lr_decay is not None:
            fail("--lr_decay needs --lr_milestones (the epochs after which it applies)")
        return
    if any(not 0 < m < args.n_epochs for m in milestones) or milestones != sorted(set(milestones)):
        fail(f"--lr_milestones must be increasing epochs {epochs_before_the_last(args.n_epochs)}, got "
             f"{' '.join(map(str, milestones))}")
    if args.lr_decay is None:
        args.lr_decay = DEFAULT_LR_DECAY
    if not 0 < args.lr_decay <= 1:
        fail(f"--lr_decay must be in (0, 1], got {args.lr_decay}")


def epochs_before_the_last(n_epochs: int) -> str:
    """Where an epoch after which something changes (label correction, an lr milestone) may lie, in words."""
    return f"in 1..{n_epochs - 1}" if n_epochs >= 2 else f"below n_epochs ({n_epochs}, too few: use 2 or more)"


def check_out_dir(folder: Path, flag: str = "--out_dir") -> None:
    """One line, before any expensive work, when the scripts could not write their outputs under `folder`."""
    try:
        check_writable(folder, flag)
    except ValueError as e:
        fail(str(e))


# Sigma when --sigma is not given, by (dataset, noise mode): the declarations' (datasets/ says where each comes from)
DEFAULT_SIGMA = {(name, mode): sigma for name, d in datasets.DATASETS.items() for mode, sigma in d.default_sigma.items()}


def sigma_table() -> str:
    """DEFAULT_SIGMA for --help: 'cifar10 sym 1.0, cifar10 asym 0.5, ..., animal-10n 0.5, ...'."""
    return ", ".join(f"{d}{' ' + m if m else ''} {s}" for (d, m), s in DEFAULT_SIGMA.items()) + \
        " (CIFAR: the paper's values; the others: docs/real-world-data.md)"


def sigma_source(dataset: str, noise_mode: str | None) -> str:
    """Where a default sigma comes from, for the line that says it was used."""
    d = datasets.DATASETS[dataset]
    return f"{d.sigma_source} for {dataset}" + (f" {noise_mode}" if noise_mode and None not in d.default_sigma else "") \
        + ("" if d.sigma_source == datasets.PAPER else ", docs/real-world-data.md")


default_sigma = datasets.default_sigma


def resolve_sigma(args: argparse.Namespace) -> None:
    """Fill in --sigma from DEFAULT_SIGMA when it was not given and the method adds SLN noise (0 for one that does
    not), and say so."""
    if args.sigma is not None:
        return
    if getattr(args, "method", None) is not None:
        try:
            if not methods.get(args.method).sln:
                args.sigma = 0.0
                return
        except ValueError as e:
            fail(f"--method: {e}")
    mode = getattr(args, "noise_mode", None)
    args.sigma = default_sigma(args.dataset_name, mode)
    if args.sigma is None:
        fail(f"no default sigma for {args.dataset_name} {mode}; give --sigma")
    print(f"sigma {args.sigma:g} ({sigma_source(args.dataset_name, mode)}; --sigma not given)")


# ----------------------------------------------------------------------------------------------------
# Label noise on CIFAR (train_cifar.py, tune.py, viz.py)

NOISE_MODES = ["sym", "asym", "dependent", "openset"]


def add_noise_args(p: argparse.ArgumentParser) -> None:
    """Flags that choose the label noise of a CIFAR training set."""
    d = p.add_argument_group("label noise")
    add_flag(d, "--noise_mode", choices=NOISE_MODES, default="sym", roles={HPARAM}, grid_key="noise_modes",
             help="sym/asym/dependent: label noise; openset: CIFAR-100 images inside CIFAR-10 (CIFAR-10 only)")
    add_flag(d, "--p", type=float, default=0.4, roles={HPARAM}, help="noise rate, in [0, 1)")
    add_flag(d, "--custom_noise", action="store_true", roles={HPARAM},
             help="use generated noise (<data_dir>/<dataset>/label_noisy/<mode><p>_custom.csv, made from --seed "
                  "when missing) instead of the paper's files")
    add_flag(d, "--make_new_custom_noise", action="store_true", roles={NOT_TRAINING, NOT_IN_FILES},
             help="regenerate the custom noise file from --seed (needs --custom_noise); a file with other "
                  "content is kept aside as <name>.old-<hash>.csv, never overwritten")
    d.add_argument("--sym_variant", choices=list(SYM_VARIANTS), default=None,
                   help="custom sym noise: " + "; ".join(f"{k}: {v}" for k, v in SYM_VARIANTS.items())
                        + " (default other, or what the existing file was made with)")
    d.add_argument("--asym_variant", choices=list(ASYM_VARIANTS), default=None,
                   help="custom asym noise: " + "; ".join(f"{k}: {v}" for k, v in ASYM_VARIANTS.items())
                        + " (default paper, or what the existing file was made with)")


NOISE_LABELS = [label for spec in CIFARN.values() for label in spec.label_keys]   # CIFAR-N's label sets


def add_noise_label_arg(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--noise_label", choices=NOISE_LABELS, default=None, roles={HPARAM}, grid_key="noise_labels",
             help="CIFAR-N label set; cifar10n (required): aggre (9.0%% noisy), worst (40.2%%), random1, random2, "
                  "random3 (17-18%%); cifar100n: noisy (40.2%%, the default)")


def add_cifar_args(p: argparse.ArgumentParser, human: bool = False, given: bool = False) -> None:
    """The CIFAR dataset and its label noise; with `human` (tune.py), also CIFAR-N's human labels; with `given`
    (tune.py), every dataset whose labels are given (CIFAR-N, Animal-10N, Clothing1M, a folder), with their image
    flags (--image_size, --pretrained, --weights)."""
    d = p.add_argument_group("dataset")
    names = list(CIFAR) + (list(CIFARN) if human else []) + ([n for n in datasets.DATASETS if n not in CIFAR and
                                                              n not in CIFARN] if given else [])
    add_flag(d, "--dataset_name", choices=names, default="cifar10", roles={HPARAM},
             help="training dataset" + ("; cifar10n / cifar100n: the CIFAR images with the human labels of "
                                        "--noise_label, instead of the label noise flags" if human else "")
             + ("; animal-10n, clothing1m, folder: their own labels, as train_real.py takes them "
                "(docs/real-world-data.md)" if given else ""))
    if human:
        add_noise_label_arg(d)
    if given:
        add_image_args(p, d)
    add_noise_args(p)


def check_noise_label(args: argparse.Namespace, dataset: str | None = None) -> None:
    """--noise_label: required for cifar10n (one of its label sets), filled in for cifar100n (its only one), refused
    for the datasets whose labels are fixed."""
    dataset = dataset or args.dataset_name
    if dataset not in CIFARN:
        if getattr(args, "noise_label", None) is not None:
            fail(f"--noise_label is for cifar10n / cifar100n only; {dataset}'s labels are "
                 + ("set by --noise_mode and --p" if dataset in CIFAR else "fixed") + " (drop the flag)")
        return
    labels = list(CIFARN[dataset].label_keys)
    if args.noise_label is None and len(labels) == 1:
        args.noise_label = labels[0]
    elif args.noise_label not in labels:
        fail(f"{dataset} needs --noise_label {' | '.join(labels)}"
             + (f" (got {args.noise_label})" if args.noise_label else ""))


def check_noise_args(args: argparse.Namespace, dataset: str) -> None:
    """Validate the label-noise flags for `dataset`. Open-set noise without --custom_noise is drawn from the seed
    (the paper ships no open-set file), for training and viz.py alike. CIFAR-N (tune.py) has human labels instead:
    its noise flags are unset, so that its runs' configs have no noise mode."""
    check_noise_label(args, dataset)
    if dataset not in CIFAR:        # labels as given (tune.py): no noise mode or rate in the runs' configs
        if args.custom_noise or args.make_new_custom_noise:
            fail(f"{dataset} has {'human labels (--noise_label)' if dataset in CIFARN else 'its labels as given'}; "
                 "drop --custom_noise and --make_new_custom_noise")
        args.noise_mode = args.p = args.sym_variant = args.asym_variant = None
        return
    with exits_on_error():
        check_rate(args.p)
    if args.noise_mode == "openset" and dataset != "cifar10":
        fail("open-set noise exists for CIFAR-10 only; use cifar10 or another --noise_mode")
    if args.make_new_custom_noise and not args.custom_noise:
        fail("--make_new_custom_noise needs --custom_noise")


# ----------------------------------------------------------------------------------------------------
# From flags (or a saved run config) to the dataset

def training_data(args: argparse.Namespace) -> NoisyData:
    """The dataset of the flags with their subsets applied, or one line and exit on a data problem."""
    with exits_on_error():
        return datasets.dataset_from_config(vars(args)).subset(args.train_subset, args.test_subset, args.seed)


def parse_training_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a training script's flags; with --resume, the resumed run's own flags (checked against argv)."""
    args = parser.parse_args(argv)
    if getattr(args, "resume", None):
        with exits_on_error():
            args = resolve_resume(parser, argv, args)
            # a run another process trains is refused now, not after minutes of loading data; engine.run takes the
            # lock for good once the data is there
            with contextlib.ExitStack() as probe:
                lock_run(args.out_dir.resolve() / "runs" / args.resume, probe)
    return args


# ----------------------------------------------------------------------------------------------------
# Datasets with their own images and labels: image size, the Clothing1M recipe, pretrained weights (train_real.py,
# tune.py)

# The shared training flags a dataset's recipe may set (datasets.Dataset.recipe): train_real.py and tune.py leave them
# unset, so that the recipe, or else the shared defaults, fills them in
RECIPE_FLAGS = ("batch_size", "n_epochs", "weight_decay", "lr_milestones", "num_per_class", "lc_soft", "eval_batch_size")


def add_image_args(p: argparse.ArgumentParser, d) -> None:
    """--image_size (into the dataset group `d`) and the pretrained-weights flags of train_real.py and tune.py."""
    d.add_argument("--image_size", type=int, default=None, metavar="N",
                   help="folder: resize every image to N x N (bilinear); default: the images' own size, which all "
                        "must then share. clothing1m: crops of N x N after resizing the shorter side to N x 256/224 "
                        "(default 224, the authors')")
    d.add_argument("--allow_unshared_classes", action="store_true", default=None,   # None: absent from other datasets' tables
                   help="folder: accept a class that only the training set or only the test set has (by default "
                        "refused, naming the nearest class of the other set: often a typo in a label)")
    w = p.add_argument_group("pretrained weights")
    w.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help=f"start {' / '.join(IMAGENET_WEIGHTS)} from ImageNet weights, downloaded once by torchvision "
                        "(which checks their hash) into torch.hub's cache; default: on for clothing1m with resnet50, "
                        "as the authors, off otherwise")
    w.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="load the pretrained weights from this state-dict file instead (e.g. torchvision's "
                        "resnet50-0676ba61.pth copied from another machine; loaded with weights_only=True; its final "
                        "layer is replaced); implies --pretrained")


def check_image_args(args: argparse.Namespace) -> None:
    """--image_size, the dataset's default network, its recipe and the pretrained weights, before anything is loaded
    (train_real.py, tune.py)."""
    dataset = datasets.DATASETS[args.dataset_name]
    if args.image_size is not None and not dataset.image_size:
        sized = " and ".join(d.name for d in datasets.DATASETS.values() if d.image_size)
        fail(f"--image_size is for --dataset_name {sized} only; {args.dataset_name} has a fixed size (drop the flag)")
    if args.image_size is not None and args.image_size < MIN_IMAGE_SIZE:
        fail(f"--image_size must be at least {MIN_IMAGE_SIZE}, got {args.image_size}")
    if getattr(args, "allow_unshared_classes", False) and not dataset.unshared_classes:
        fail(f"--allow_unshared_classes is for --dataset_name "
             f"{' and '.join(d.name for d in datasets.DATASETS.values() if d.unshared_classes)} only; "
             f"{args.dataset_name}'s classes are fixed (drop the flag)")
    if args.model is None:
        args.model = dataset.default_model
    apply_recipe(args, dataset)
    check_pretrained(args, dataset)


def apply_recipe(args: argparse.Namespace, dataset: datasets.Dataset) -> None:
    """Fill the flags not given with the dataset's recipe (its authors'), or the shared defaults."""
    recipe = {**training_defaults(), **dataset.recipe}
    taken = []
    for key in (*RECIPE_FLAGS, "image_size"):
        if getattr(args, key) is None and recipe.get(key) is not None:
            setattr(args, key, recipe[key])
            value = recipe[key]
            shown = "" if value is True else " ".join(map(str, value)) if isinstance(value, list) else value
            taken += [f"--{key} {shown}".rstrip()] if key in dataset.recipe else []
    if taken:
        print(f"{dataset.name}: the authors' recipe for the flags not given: {' '.join(taken)}")
    recipe_milestones = any(t.startswith("--lr_milestones") for t in taken)
    if recipe_milestones and args.n_epochs is not None:
        # a recipe milestone past the run's end never applies (a short trial run); only typed ones are checked
        past = [m for m in args.lr_milestones if m >= args.n_epochs]
        if past:
            args.lr_milestones = [m for m in args.lr_milestones if m < args.n_epochs] or None
            print(f"note: the recipe's --lr_milestones {' '.join(map(str, past))} is past the run's end "
                  f"(--n_epochs {args.n_epochs}), so the learning rate "
                  + ("stays constant" if args.lr_milestones is None else "changes after epoch "
                     + " ".join(map(str, args.lr_milestones)) + " only"))


def check_pretrained(args: argparse.Namespace, dataset: datasets.Dataset) -> None:
    """--pretrained / --weights: ImageNet weights exist for IMAGENET_WEIGHTS' networks; on by default where the
    dataset says so (clothing1m, with resnet50; None, i.e. off, elsewhere, so that other datasets' configs stay as
    they were)."""
    if args.weights is not None:
        if args.pretrained is False:
            fail("--weights loads pretrained weights, --no-pretrained asks for none; drop one of them")
        args.pretrained = True
    if args.pretrained is None and dataset.pretrained and args.model in IMAGENET_WEIGHTS:
        args.pretrained = True
    if args.pretrained and args.model not in IMAGENET_WEIGHTS:
        fail(f"--pretrained: {args.model} has no ImageNet weights here; use --model "
             f"{' | '.join(IMAGENET_WEIGHTS)} or --no-pretrained")


def pretrained_weights(args: argparse.Namespace) -> dict | None:
    """The state dict to start from, fetched and tried on the network before any data is read (a resumed run takes
    its checkpoint's)."""
    if not args.pretrained or getattr(args, "resume", None):
        return None
    try:
        backbone = imagenet_state_dict(args.model, args.weights)
        make_model(args.model, 1, backbone)
    except WeightsError as e:
        fail(str(e))
    return backbone
