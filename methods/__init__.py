"""Training methods, each declared once: CE, the paper's three SLN models and the baselines it is compared with.

A method is a `Method`: its name (the row label of tables), its own flags with their checks, its per-batch
objective, how many networks it trains, whether it reports the momentum (EMA) network, whether it corrects labels,
and its own metrics. cli.py, engine.py, tune.py, tables.py, plot.py and the tests read these declarations and list
no method themselves. Each module of this package declares `METHODS`; adding a method is one new module (or one
entry in a module) here, its tests and a line in docs/methods.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import torch


@dataclasses.dataclass(frozen=True)
class Flag:
    """A method's own command-line flag, `--<name>`. Its argparse default is None, so that a flag given with another
    method can be refused; `default` (a value, or a function of the run's flags) fills it in for its own method."""
    name: str
    type: type
    help: str
    default: Any = None                                   # a value, or (args) -> value; None: must be given
    valid: Callable[[Any], bool] = lambda v: True
    valid_text: str = ""                                  # says what `valid` accepts, e.g. "in (0, 1]"
    weighs_loss: bool = False                             # weighs a loss term: a smaller value cures a diverging loss

    def default_for(self, args: argparse.Namespace):
        return self.default(args) if callable(self.default) else self.default


@dataclasses.dataclass
class Batch:
    """What a method's objective sees of one training step, all on the training device."""
    logits: list[torch.Tensor]   # float32 logits of each network, in the order of `networks`
    labels: torch.Tensor         # the given (noisy) labels
    targets: torch.Tensor        # the current targets before SLN noise: one-hot given labels, or corrected ones
    index: torch.Tensor          # positions of the batch's images in the training set
    noisy: torch.Tensor          # the given label is known to be wrong (all False where clean labels are unknown)
    sigma: float                 # SLN's current sigma (0 once label correction has begun)
    gen: torch.Generator         # the run's generator, for any random draw (SLN noise)
    state: dict                  # the method's own tensors (`Method.init`), checkpointed with the run
    args: argparse.Namespace     # the run's flags, the method's own included


@dataclasses.dataclass(frozen=True)
class Method:
    name: str                    # the --method value and the row label of tables
    summary: str                 # one line for --help: what it does and where it comes from
    objective: Callable[[Batch], tuple[torch.Tensor, torch.Tensor | None]]
    # -> (the loss to minimise, whose gradient trains every network; sums of the method's own per-step metrics, or
    # None). The sums stay on the device; `epoch_row` turns the epoch's totals into metrics.csv values.
    flags: tuple[Flag, ...] = ()
    networks: int = 1            # networks trained side by side; the first one is reported
    sln: bool = False            # adds SLN noise (--sigma > 0) to its targets
    mo: bool = False             # reports the momentum (EMA) network, as SLN+MO
    lc: bool = False             # corrects labels before the epochs after --lc_n_epoch, as SLN+MO+LC
    by_flags: bool = False       # selected by --sigma / --mo / --lc_n_epoch alone, as in the earlier commands
    needs_clean: bool = False    # uses the clean labels of the training set (the true transition matrix)
    metrics: tuple[str, ...] = ()            # its own metrics.csv columns, namespaced
    prepare: Callable[[argparse.Namespace, dict], None] | None = None
    # (flags; what the data tells: noise_rate, None where clean labels are unknown) -> None: fills in flags that
    # depend on the data before the run's config is written; ValueError (one line) where the data cannot tell
    init: Callable[[dict, argparse.Namespace], dict] | None = None
    # (training-set tensors: labels, clean, num_classes; flags) -> the method's state, a dict of tensors
    start_epoch: Callable[[dict, int, argparse.Namespace], dict] | None = None   # (state, epoch, flags) -> metrics
    epoch_row: Callable[[list[float], bool], dict] | None = None      # (the epoch's sums, clean labels known)
    colour: str = ""             # its line in plot.py's figures ("" : the next free colour)
    same_training_as: str = ""   # trains exactly as this method and only reports another network (CE-MO: CE), so
    # that method's runs hold its numbers too: tables and figures show it for each of them (tables.with_derived)

    @property
    def reported(self) -> str:
        """The network its tables report: the momentum model's EMA ("ema") or the first trained network ("net")."""
        return "ema" if self.mo else "net"


def hundred_classes(args: argparse.Namespace) -> bool:
    """CIFAR-100 or CIFAR-100N: where the authors' CIFAR-100 defaults apply."""
    return str(getattr(args, "dataset_name", "")).startswith("cifar100")


def _discover() -> dict[str, Method]:
    found: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        for method in importlib.import_module(f"{__name__}.{info.name}").METHODS:
            if method.name.lower() in {n.lower() for n in found}:
                raise RuntimeError(f"method {method.name} is declared twice (methods/{info.name}.py)")
            found[method.name] = method
    # the paper's models first, in its order, then CE-MO, then the baselines by name
    return dict(sorted(found.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0])))


ORDER = ["CE", "SLN", "SLN-MO", "SLN-MO-LC", "CE-MO"]    # the paper's table rows, then CE's momentum-model control
METHODS: dict[str, Method] = _discover()


def get(name: str) -> Method:
    """The method called `name` (any case), or ValueError listing them."""
    for method in METHODS.values():
        if method.name.lower() == str(name).lower():
            return method
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def all_flags() -> dict[str, Flag]:
    """Every method's own flags by name (two methods may share one)."""
    return {f.name: f for m in METHODS.values() for f in m.flags}


def divergence_flags(method: Method) -> list[str]:
    """The flags to lower when `method`'s loss becomes NaN/Inf: the learning rate, SLN's sigma for a method that adds
    SLN noise, and the method's own loss weights (ELR's --elr_lambda, SCE's --sce_alpha and --sce_beta)."""
    return ["--lr", *(["--sigma"] if method.sln else []), *(f"--{f.name}" for f in method.flags if f.weighs_loss)]


def owners(flag: str) -> list[str]:
    return [m.name for m in METHODS.values() if any(f.name == flag for f in m.flags)]


def from_flags(sigma: float, mo: bool, lc_n_epoch: int) -> Method | None:
    """The paper's model that --sigma / --mo / --lc_n_epoch select without --method, or None."""
    for method in METHODS.values():
        if method.by_flags and (sigma > 0) == method.sln and bool(mo) == method.mo and (lc_n_epoch != -1) == method.lc:
            return method
    return None


def without_sln(method: Method) -> Method | None:
    """The declared method that trains as `method` does but adds no SLN noise (SLN: CE, Co-teaching-SLN:
    Co-teaching), or None where none is declared (SLN-MO: no method reports the momentum model without SLN)."""
    for other in METHODS.values():
        if not other.sln and (other.objective, other.flags, other.networks, other.mo, other.lc) == \
                (method.objective, method.flags, method.networks, method.mo, method.lc):
            return other
    return None


def of(config: dict | argparse.Namespace) -> Method:
    """The method of a run's flags or saved config: --method, or what --sigma / --mo / --lc_n_epoch select (runs
    made before --method existed record only those); ValueError if neither names one."""
    c = vars(config) if isinstance(config, argparse.Namespace) else config
    if c.get("method"):
        return get(c["method"])
    method = from_flags(c.get("sigma") or 0.0, c.get("mo", False), c.get("lc_n_epoch", -1))
    if method is None:
        raise ValueError("the flags select no method")
    return method


def argv(name: str, sigma: str = "1.0", lc_n_epoch: str = "1") -> list[str]:
    """Command-line flags that train method `name` (the paper's models by their earlier flags): for tests, bench.py
    and gpu_check.py."""
    m = get(name)
    flags = [] if m.by_flags else ["--method", m.name]
    flags += ["--sigma", sigma if m.sln else "0"]
    flags += ["--mo"] if m.mo and m.by_flags else []
    return flags + ["--lc_n_epoch", lc_n_epoch if m.lc else "-1"]
