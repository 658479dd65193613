"""The GPU check that `python bench.py --gpu_check OUT_DIR` runs: five phases (a numerics against the CPU, b the four
models with a resume across devices and plots, c a shared-GPU sweep, d throughput, e a full run cut off at the
deadline) within 8 minutes on one GPU; `--dry_run` runs them at toy size on the CPU, without time budgets. OUT_DIR
gets gpu_check.json and gpu_check.log. docs/performance.md ("The GPU check") says what each phase runs and reports.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import io
import json
import logging
import math
import os
import pickle
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

import cli
import engine
import files
import methods
import runs
import timing
from augment import random_crop_flip
from data import CIFAR, NoisyData, load_cifar_noisy
from models import make_model

CODE_DIR = Path(__file__).resolve().parent
JSON_NAME, LOG_NAME = "gpu_check.json", "gpu_check.log"
SEED = 1
# On a GPU: seconds from the start by which every phase must be done (8 minutes less room for start-up, a last
# SIGTERM's grace and the summary), and the most each phase may take (None: whatever is left). A dry run has none.
DEADLINE_S = 440
BUDGETS_S = {"a_numerics": 45, "b_models": 140, "c_tune": 75, "d_throughput": 130, "e_full_run": None}
MIN_PHASE_S = 5          # a phase with less time than this is skipped
GRACE_S = 15             # after SIGTERM, how long a process may take to stop before it is killed
STOP_S = 5               # time kept for a run to stop on SIGTERM (its current step, its last lines) within a phase
DRY_RUN_EPOCHS = 2       # a dry run's phase e is stopped after this many epochs (on a GPU, at the deadline)
POLL_S = 0.02
LOG = logging.getLogger("gpu_check")

VARIANT_FLAGS = {name: methods.argv(name) for name, m in methods.METHODS.items() if m.by_flags}  # the paper's four
NOISE_FLAGS = ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--custom_noise"]
# phase d's settings: (precision, extra training flags)
SETTINGS = {"fp32": ("fp32", []), "tf32": ("tf32", []), "bf16+channels_last": ("bf16", ["--channels_last"]),
            "bf16+channels_last+compile": ("bf16", ["--channels_last", "--compile"])}
# phase a's verdict: the largest relative loss difference and relative error of the updates that count as correct.
# On a CPU, bf16 autocast changed one step's update by ~0.12 (tests/test_bench.py); TF32 keeps 10 mantissa bits to
# bf16's 7; strict float32 differs only by the order of its sums, which BatchNorm's backward lifts to ~1e-3.
TOLERANCE = {"fp32": {"loss": 1e-4, "update": 1e-2}, "tf32": {"loss": 1e-2, "update": 0.1},
             "bf16": {"loss": 5e-2, "update": 0.3}}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each phase is: the GPU check's sizes, or the dry run's toy ones."""
    model: str                  # network of phases a-d
    batch: int                  # batch of phases a and d
    numerics_test: int          # test images evaluated in phase a
    synthetic: tuple[int, int]  # training and test images written when there is no CIFAR-10
    train_subset: int           # phase b
    test_subset: int
    resume_subset: int          # phase b's interrupted run
    train_batch: int            # batch of phases b, c and e
    tune_subset: tuple[int, int]
    tune_epochs: int
    gpus_per_trial: float
    cpus_per_trial: float
    steps: int                  # phase d: timed steps per setting and round
    rounds: int
    warmup_batches: int
    profile_steps: int
    eval_images: int
    processes: int              # concurrent training processes
    compile: bool               # time the compiled setting (minutes of compiling on a CPU)
    full_model: str             # phase e


GPU_SIZES = Sizes(model="wrn-28-2", batch=128, numerics_test=512, synthetic=(50000, 10000), train_subset=5000,
                  test_subset=1000, resume_subset=2000, train_batch=128, tune_subset=(1000, 500), tune_epochs=2,
                  gpus_per_trial=0.33, cpus_per_trial=1, steps=100, rounds=2, warmup_batches=3, profile_steps=5,
                  eval_images=10000, processes=4, compile=True, full_model="wrn-28-2")
DRY_SIZES = Sizes(model="wrn-16-1", batch=16, numerics_test=32, synthetic=(400, 100), train_subset=160,
                  test_subset=60, resume_subset=160, train_batch=32, tune_subset=(120, 60), tune_epochs=1,
                  gpus_per_trial=0, cpus_per_trial=0.5, steps=2, rounds=1, warmup_batches=1, profile_steps=1,
                  eval_images=64, processes=4, compile=False, full_model="wrn-16-1")


class Stopped(BaseException):
    """The check got SIGTERM: the phase under way stops, the rest are skipped, the summary is written."""


def raise_stopped(signum, frame):
    raise Stopped


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:600] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------------
# Phases and their parts, the log, and the commands the check starts

@dataclasses.dataclass
class Check:
    """What every phase needs: the folder, the device, the sizes, the clock, and the results so far."""
    out: Path
    device: torch.device
    dry_run: bool
    sizes: Sizes
    deadline: float                                  # time.monotonic() by which all is done (inf in a dry run)
    child_env: dict = dataclasses.field(default_factory=dict)  # for the commands it starts (None: unset)
    data: dict = dataclasses.field(default_factory=dict)       # the data root and what it holds
    phases: dict = dataclasses.field(default_factory=dict)     # the JSON's phases so far (phase e reads a and d)
    phase: str = "setup"                             # the phase under way, its end and the parts it lost
    phase_end: float = math.inf
    failures: list = dataclasses.field(default_factory=list)
    skips: list = dataclasses.field(default_factory=list)
    last_error: str = ""                             # the last "error: ..." line printed (cli.fail's one line)

    def note(self, line: str, source: str = "") -> None:
        LOG.info("[%s%s] %s", self.phase, f"/{source}" if source else "", line)

    def left(self) -> float:
        return self.phase_end - time.monotonic()


class Tee(io.TextIOBase):
    """sys.stdout or sys.stderr while the check runs: text still reaches the terminal, and each line the log."""

    def __init__(self, stream, check: Check, source: str = ""):
        self.stream, self.check, self.source = stream, check, source

    def write(self, text: str) -> int:
        self.stream.write(text)
        for line in filter(str.strip, re.split(r"[\r\n]", text)):
            self.check.note(line, self.source)
            if line.startswith("error:"):
                self.check.last_error = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()


def part(check: Check, where: dict, name: str, fn, need_s: float = 1.0) -> dict | None:
    """where[name] = {"status", "seconds", **fn()}, or skipped with less than `need_s` of the phase left, or failed
    with its one-line error; the phase's other parts still run. The dict when ok, else None."""
    if check.left() < need_s:
        where[name] = {"status": "skipped", "reason": f"{max(check.left(), 0):.0f} s of the phase's budget left, "
                                                      f"about {need_s:.0f} s needed"}
        check.skips.append(name)
        return None
    t0, check.last_error = time.monotonic(), ""
    check.note(f"-- {name}")
    try:
        figures = fn()
    except Stopped:
        where[name] = {"status": "skipped", "reason": "cut off: the check was stopped by SIGTERM"}
        raise
    except SystemExit as e:         # a one-line refusal (cli.fail) of the code it called
        where[name] = {"status": "failed", "error": check.last_error or f"exit status {e.code}"}
    except Exception as e:
        check.note(traceback.format_exc().rstrip().replace("\n", "\n    "))
        where[name] = {"status": "failed", "error": one_line(e)}
    else:
        where[name] = {"status": "failed" if figures.get("error") else "ok",
                       "seconds": round(time.monotonic() - t0, 1), **figures}
    if where[name]["status"] == "failed":
        check.failures.append(f"{name}: {where[name]['error']}")
    return where[name] if where[name]["status"] == "ok" else None


def run_phase(check: Check, key: str, fn) -> dict:
    """Run one phase (on a GPU within its budget and the deadline); its dict for the JSON, also check.phases[key]
    from the start, so that a phase stopped by SIGTERM keeps what it had."""
    now, check.phase, check.failures, check.skips = time.monotonic(), key, [], []
    budget = None if check.dry_run else min(BUDGETS_S[key] or math.inf, check.deadline - now)
    res = check.phases[key] = {"status": "ok", "budget_s": None if budget is None else round(max(budget, 0), 1)}
    if budget is not None and budget < MIN_PHASE_S:
        res.update(status="skipped", reason=f"{max(budget, 0):.0f} s left before the deadline, {MIN_PHASE_S} s "
                                            "needed at least")
        check.note(f"skipped: {res['reason']}")
        return res
    check.phase_end = math.inf if budget is None else now + budget
    print(f"gpu check: phase {key}" + ("" if budget is None else f" (budget {budget:.0f} s)"), flush=True)
    try:
        fn(check, res)
    except Stopped:
        res.update(status="skipped", reason="cut off: the check was stopped by SIGTERM")
        raise
    except Exception as e:
        check.note(traceback.format_exc().rstrip().replace("\n", "\n    "))
        res.update(status="failed", error=one_line(e))
    finally:
        res["seconds"] = round(time.monotonic() - now, 1)
    if res["status"] == "ok" and check.failures:
        res.update(status="failed", error=check.failures[0])
    if check.skips:
        res["incomplete"] = f"not run for lack of time: {', '.join(check.skips)}"
    print(f"gpu check: phase {key} {res['status']} in {res['seconds']:.0f} s"
          + (f": {res.get('error') or res.get('reason')}" if res["status"] != "ok" else ""), flush=True)
    return res


def command(check: Check, cmd: list[str], name: str, until: float = math.inf, stop_when=None,
            env: dict | None = None) -> tuple[int, list[str], bool]:
    """Run `cmd` in a session of its own, as a user runs it, until it ends, the clock (time.monotonic) reaches
    `until` or `stop_when()` holds; then SIGTERM (a run keeps its last checkpoint and exits 143), and GRACE_S later
    SIGKILL to its process group. Its output goes to the log. Returns (exit status, output lines, ended by itself)."""
    check.note("$ " + " ".join(cmd), name)
    env = {k: v for k, v in {**os.environ, "TQDM_DISABLE": "1", **check.child_env, **(env or {})}.items()
           if v is not None}
    proc = subprocess.Popen(cmd, cwd=CODE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, ended = "", False
    try:
        while time.monotonic() < until and not (stop_when and stop_when()):
            wait = min(until - time.monotonic(), POLL_S if stop_when else math.inf)
            with contextlib.suppress(subprocess.TimeoutExpired):     # a retried communicate loses no output
                out, ended = proc.communicate(timeout=None if wait == math.inf else max(wait, 0))[0], True
                break
    finally:
        if not ended:
            proc.send_signal(signal.SIGTERM)
            try:
                out = proc.communicate(timeout=GRACE_S)[0]
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out = proc.communicate()[0]
        lines = out.splitlines()
        for line in lines:
            check.note(line, name)
    return proc.returncode, lines, ended


def error_of(rc: int, lines: list[str]) -> str:
    """A command's own one-line error, else its last line, for the JSON."""
    errors = [line for line in lines if line.startswith("error:")]
    return f"exit status {rc}: {errors[-1] if errors else (lines[-1] if lines else 'no output')}"[:600]


def run_to_end(check: Check, cmd: list[str], name: str) -> list[str]:
    """Run a command to its end (on a GPU, within the phase's budget); raises when it fails."""
    rc, lines, ended = command(check, cmd, name, until=check.phase_end - STOP_S)
    if not ended:
        raise RuntimeError(f"{name} did not finish within the phase's budget")
    if rc != 0:
        raise RuntimeError(error_of(rc, lines))
    return lines


def script(name: str) -> list[str]:
    return [sys.executable, str(CODE_DIR / name)]


# ----------------------------------------------------------------------------------------------------
# (a) numerics: the GPU against the CPU from the same draws

def draws(batch: int, n_test: int, steps: int = 3) -> dict:
    """Everything random in phase a, drawn once on the CPU: images, labels, three augmented batches, the SLN noise
    of every image, and test images."""
    g = torch.Generator().manual_seed(SEED)
    n = steps * batch
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    batches = [(idx, random_crop_flip(images[idx], 4, g)) for idx in torch.arange(n).view(steps, batch)]
    noise = torch.randn(n, 10, generator=g)
    test_images = torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    return {"images": images, "labels": labels, "batches": batches, "noise": noise, "test_images": test_images,
            "test_labels": torch.randint(0, 10, (n_test,), generator=g)}


class FixedBatch:
    """A batch source for engine.train_epoch that yields one batch made beforehand: the same crops and flips on
    every device, where the device's own generator would draw different ones."""

    def __init__(self, idx: torch.Tensor, xb: torch.Tensor):
        self.idx, self.xb = idx, xb

    def __len__(self) -> int:
        return len(self.idx)

    def train_batches(self, order: torch.Tensor, batch_size: int, gen: torch.Generator):
        yield self.idx, self.xb


def numerics_run(device: torch.device, precision: str, d: dict, model: str,
                 deterministic: bool = False) -> dict[str, list[torch.Tensor]]:
    """Three engine.train_epoch steps (SGD and EMA step each), one label correction (engine.correct_labels, on
    un-augmented images so that no device draws) and one evaluation of both networks, all from the draws `d`.

    SLN noise is drawn in train_epoch from the device's generator, which differs between devices; here it is the
    CPU's draw, added to the targets beforehand, and train_epoch runs with sigma 0 (noisy_targets then returns the
    targets as they are): the loss is the same as with sigma 1 and that noise. Returns the tensors to compare, on
    the CPU. Sets torch's deterministic kernels and cudnn.benchmark as engine.run does for --deterministic or not."""
    batch = len(d["batches"][0][0])
    parser = cli.Parser()
    cli.add_training_args(parser, default_model=model)
    args = parser.parse_args(["--batch_size", str(batch), "--sigma", "1.0", "--mo", "--n_epochs", "2", "--lc_n_epoch",
                              "1", "--no-lc_augment", "--eval_batch_size", str(batch), "--precision", precision,
                              "--seed", str(SEED)])
    engine.resolve_precision(args)
    engine.set_precision(args.precision)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    y, spec = d["labels"].numpy(), CIFAR["cifar10"]
    data = NoisyData("gpu_check", d["images"].numpy(), y, y, np.zeros(len(y), dtype=bool), d["test_images"].numpy(),
                     d["test_labels"].numpy(), 10, [str(c) for c in range(10)], spec.mean, spec.std)
    torch.manual_seed(SEED)
    s = engine.setup(args, data, make_model(model, 10), device)   # made on the CPU: the same weights everywhere
    initial = [t.detach().cpu().clone() for t in s.model_tensors]
    images = s.x
    s.targets, s.sigma = (s.given.cpu() + args.sigma * d["noise"]).to(device), 0.0
    losses = []
    for idx, xb in d["batches"]:
        s.x = FixedBatch(idx.to(device), xb.to(device))
        losses.append(engine.train_epoch(s)[0] / len(idx))
    s.x, s.targets, s.sigma = images, s.given.clone(), args.sigma
    engine.correct_labels(s)
    logits = [engine.logits_of(net, s.test_x.eval_batches(s.eval_bs), s.mean, s.std, args.amp)
              for net in (s.model, s.ema)]
    # the state's float tensors (sln.ema_tensors) split into parameters and BatchNorm's running statistics
    params = dict(s.model.named_parameters())
    is_param = [k in params for k, v in s.model.state_dict().items() if v.is_floating_point()]

    def split(tensors: list[torch.Tensor], want_params: bool) -> list[torch.Tensor]:
        return [t.detach().float().cpu() for t, p in zip(tensors, is_param) if p == want_params]
    return {"loss": [t.cpu() for t in losses], "weights": split(s.model_tensors, True),
            "buffers": split(s.model_tensors, False), "ema": split(s.ema_tensors, True),
            "ema_buffers": split(s.ema_tensors, False), "initial_weights": split(initial, True),
            "initial_buffers": split(initial, False), "targets": [s.targets.cpu()],
            "logits": [t.cpu() for t in logits]}


def differences(got: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    """max_abs: the largest |got - ref| of any element; max_rel: the largest over tensors of that tensor's max_abs
    over its largest |ref| (elementwise quotients blow up where values cross zero)."""
    diffs = [(g.double() - r.double()).abs().max() for g, r in zip(got, ref)]
    scales = [r.double().abs().max().clamp_min(1e-30) for r in ref]
    return {"max_abs": max(float(d) for d in diffs), "max_rel": max(float(d / s) for d, s in zip(diffs, scales))}


def update_error(got: list[torch.Tensor], ref: list[torch.Tensor], initial: list[torch.Tensor]) -> float | None:
    """|| (got - initial) - (ref - initial) || / || ref - initial ||: how far the step taken is from the reference's
    (the weights themselves barely move in three steps, so their own differences say little)."""
    num = sum(float((g.double() - r.double()).pow(2).sum()) for g, r in zip(got, ref))
    den = sum(float((r.double() - i.double()).pow(2).sum()) for r, i in zip(ref, initial))
    return math.sqrt(num / den) if den > 0 else None


def compare(got: dict, ref: dict, precision: str) -> dict:
    """Phase a's figures of one precision against the CPU's strict float32, and whether they are within TOLERANCE.
    `buffers` are the BatchNorm running statistics (which the EMA averages too). The label-correction targets are
    reported, not judged: after three steps the predictions are nearly uniform, so tiny differences move argmaxes."""
    out = {name: differences(got[name], ref[name]) for name in ("loss", "weights", "ema", "buffers", "ema_buffers")}
    for name, key, initial in (("weight", "weights", "initial_weights"), ("ema", "ema", "initial_weights"),
                               ("buffer", "buffers", "initial_buffers")):
        out[f"{name}_update_rel_error"] = update_error(got[key], ref[key], ref[initial])
    out["eval_logits"] = differences(got["logits"], ref["logits"])
    out["lc_targets_max_abs"] = differences(got["targets"], ref["targets"])["max_abs"]
    out["lc_argmax_agreement"] = float((got["targets"][0].argmax(1) == ref["targets"][0].argmax(1)).float().mean())
    out["loss_values"] = [float(v) for v in got["loss"]]
    loss, update = TOLERANCE[precision]["loss"], TOLERANCE[precision]["update"]
    bounds = {f"loss max_rel <= {loss:g}": (out["loss"]["max_rel"], loss),
              f"weight update rel error <= {update:g}": (out["weight_update_rel_error"], update),
              f"EMA update rel error <= {update:g}": (out["ema_update_rel_error"], update),
              f"BatchNorm statistics update rel error <= {update:g}": (out["buffer_update_rel_error"], update),
              f"eval logits max_rel <= {update:g}": (out["eval_logits"]["max_rel"], update)}
    out["checks"] = {"all finite": all(bool(torch.isfinite(t).all()) for ts in got.values() for t in ts),
                     **{k: value is not None and value <= bound for k, (value, bound) in bounds.items()}}
    out["correct"] = all(out["checks"].values())
    return out


def phase_numerics(check: Check, res: dict) -> None:
    z = check.sizes
    d = draws(z.batch, z.numerics_test)
    t0 = time.monotonic()
    reference = numerics_run(torch.device("cpu"), "fp32", d, z.model)
    need = time.monotonic() - t0
    res.update(model=z.model, batch=z.batch, steps=len(d["batches"]), device=str(check.device),
               reference=f"cpu, strict float32, {torch.get_num_threads()} torch threads",
               what=("3 x engine.train_epoch of one batch (SGD + EMA step), engine.correct_labels on un-augmented "
                     "images, engine.logits_of of the network and the EMA on test images; initial weights, batches "
                     "and SLN noise drawn on the CPU"), tolerance=TOLERANCE, precisions={})
    for precision in cli.PRECISIONS:
        part(check, res["precisions"], precision,
             lambda p=precision: compare(numerics_run(check.device, p, d, z.model), reference, p), need)

    def twice() -> dict:
        a, b = (numerics_run(check.device, "tf32", d, z.model, deterministic=True) for _ in range(2))
        differ = [k for k in a if not all(torch.equal(x, y) for x, y in zip(a[k], b[k]))]
        return {"precision": "tf32", "bit_identical": not differ, "differing": differ,
                **({"error": f"the two --deterministic runs differ in {', '.join(differ)}"} if differ else {})}
    try:
        part(check, res, "deterministic_twice", twice, 2 * need)
    finally:
        torch.use_deterministic_algorithms(False)


# ----------------------------------------------------------------------------------------------------
# The data of phases b, c and e

def write_synthetic_cifar10(root: Path, n_train: int, n_test: int) -> None:
    """CIFAR-10's on-disk layout (five pickled training batches and test_batch) with images whose colour depends on
    their class, plus Gaussian noise: the networks have something to learn."""
    spec = CIFAR["cifar10"]
    rng = np.random.default_rng(SEED)
    palette = rng.integers(0, 256, (spec.num_classes, 3, 1, 1)).astype(np.float32)
    folder = root / spec.folder
    folder.mkdir(parents=True)
    y = rng.permutation(np.arange(n_train) % spec.num_classes)
    parts = list(zip(spec.train_files, np.array_split(y, len(spec.train_files))))
    for name, labels in [*parts, (spec.test_files[0], np.arange(n_test) % spec.num_classes)]:
        noise = rng.standard_normal((len(labels), 3, 32, 32), dtype=np.float32) * 50
        images = np.clip(palette[labels] + noise, 0, 255).astype(np.uint8).reshape(len(labels), -1)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images, spec.label_key: labels.tolist()}, f, protocol=2)


def prepare_data(out: Path, data_dir: Path, sizes: Sizes, dry_run: bool) -> dict:
    """A data root below OUT_DIR: CIFAR-10 linked from `data_dir` when it is there (not in a dry run), else
    synthetic images; plus its label noise, generated once here (runs started side by side must not all write it)."""
    spec = CIFAR["cifar10"]
    real = data_dir / spec.folder
    if not dry_run and all((real / f).is_file() for f in spec.train_files + spec.test_files):
        root = out / "data"
        root.mkdir()
        try:
            (root / spec.folder).symlink_to(real.resolve(), target_is_directory=True)
            source = f"CIFAR-10 from {real.resolve()} (linked)"
        except OSError:
            shutil.copytree(real, root / spec.folder)
            source = f"CIFAR-10 from {real.resolve()} (copied)"
    else:
        root = out / "synthetic_data"
        write_synthetic_cifar10(root, *sizes.synthetic)
        why = "--dry_run" if dry_run else f"no CIFAR-10 under {data_dir}"
        source = (f"synthetic: {sizes.synthetic[0]} training and {sizes.synthetic[1]} test images in CIFAR-10's "
                  f"layout ({why})")
    data = load_cifar_noisy("cifar10", root, "sym", 0.4, SEED, custom_noise=True)
    return {"source": source, "root": str(root), "n_train": len(data.labels), "n_test": len(data.test_labels),
            "noise": f"sym p=0.4, generated from seed {SEED} (--custom_noise), {data.noise_rate():.1%} of the labels "
                     "wrong"}


# ----------------------------------------------------------------------------------------------------
# (b) the four models, a run interrupted and resumed on either device, plot.py; (c) a sigma search sharing the GPU

def only_run(out_dir: Path) -> Path:
    found = sorted((out_dir / "runs").glob("*/config.yaml"))
    if len(found) != 1:
        raise RuntimeError(f"expected one run folder in {out_dir / 'runs'}, found {len(found)}")
    return found[0].parent


def run_figures(run_dir: Path) -> dict:
    """The final test accuracy and the epoch times of a finished run, from its summary.json and metrics.csv."""
    summary = json.loads((run_dir / "summary.json").read_text())
    seconds = [r["seconds"] for r in runs.read_metrics(run_dir / "metrics.csv")]
    steady = seconds[1:] or seconds          # the first epoch also pays for start-up (cudnn.benchmark, allocator)
    return {"exp_id": run_dir.name, "test_acc": summary["last_test_acc"], "best_test_acc": summary["best_test_acc"],
            "epoch_seconds": [round(s, 2) for s in seconds], "seconds_per_epoch": round(sum(steady) / len(steady), 2)}


def phase_models(check: Check, res: dict) -> None:
    z, base, device = check.sizes, check.out / "b_models", check.device.type
    common = [*NOISE_FLAGS, "--model", z.model, "--batch_size", str(z.train_batch), "--n_epochs", "2",
              "--test_subset", str(z.test_subset), "--seed", str(SEED), "--data_dir", check.data["root"]]
    flags = [*common, "--train_subset", str(z.train_subset)]
    res.update(model=z.model, epochs=2, train_subset=z.train_subset, test_subset=z.test_subset, device=device,
               command="python train_cifar.py " + " ".join(flags) + " <variant flags> --device " + device, models={})
    for name, variant in VARIANT_FLAGS.items():
        def train(name=name, variant=variant) -> dict:
            run_to_end(check, [*script("train_cifar.py"), *flags, *variant, "--device", device,
                               "--out_dir", str(base / name)], name)
            return {"flags": " ".join(variant), **run_figures(only_run(base / name))}
        part(check, res["models"], name, train, need_s=10)

    def plots() -> dict:
        source = res["models"]["SLN-MO-LC"]
        if source["status"] != "ok":
            raise RuntimeError("the SLN-MO-LC run of this phase did not finish, so there is no run to plot")
        assets = base / "plots"
        run_to_end(check, [*script("plot.py"), "--exp_id", source["exp_id"], "--plot_type", "curves", "pred_probs",
                           "--runs_dir", str(base / "SLN-MO-LC" / "runs"), "--assets_dir", str(assets),
                           "--device", device], "plot")
        written = sorted(str(p.relative_to(assets)) for p in assets.rglob("*") if p.is_file())
        return {"exp_id": source["exp_id"], "files": written,
                **({} if any(f.endswith(".png") for f in written) else {"error": "plot.py wrote no figure"})}
    part(check, res, "plot", plots, need_s=5)

    def interrupt() -> dict:       # a smaller run: its resume on the CPU trains an epoch of WRN-28-2 there
        out = base / "interrupted"
        rc, lines, ended = command(check, [*script("train_cifar.py"), *common, "--train_subset", str(z.resume_subset),
                                           *VARIANT_FLAGS["SLN-MO-LC"], "--device", device, "--out_dir", str(out)],
                                   "interrupted", until=check.phase_end - STOP_S,
                                   stop_when=lambda: any((out / "runs").glob("*/checkpoint.pt")))
        if ended:
            raise RuntimeError("the run ended before its first checkpoint could be interrupted: " + error_of(rc, lines))
        ckpt = torch.load(only_run(out) / "checkpoint.pt", map_location="cpu", weights_only=True)
        wrong = {"error": f"SIGTERM after the first checkpoint gave exit status {rc}, not 143"} if rc != 143 else {}
        return {"rc": rc, "checkpointed_epoch": ckpt["epoch"], "variant": "SLN-MO-LC", **wrong}
    if not part(check, res, "interrupted", interrupt, need_s=10):
        return

    def resume(key: str, on: str) -> dict:
        out = base / f"resumed_{key}"
        shutil.copytree(base / "interrupted", out)
        lines = run_to_end(check, [*script("train_cifar.py"), "--resume", only_run(out).name, "--out_dir", str(out),
                                   "--device", on], f"resume_{key}")
        note = any("note: the checkpoint was written on" in line for line in lines)
        figures = {"device": on, "note_printed": note, **run_figures(only_run(out))}
        if note != (on != device):
            figures["error"] = ("resumed on another kind of device without the note that says so" if not note else
                                "resumed on the same kind of device, yet a note says the random stream differs")
        return figures
    # a dry run resumes twice on the CPU: the second resume then stands for the one on the CPU of a GPU machine
    res["resumed"] = {}
    for key, on in (("on_gpu", device), ("on_cpu", "cpu")):
        part(check, res["resumed"], key, lambda key=key, on=on: resume(key, on), need_s=10)


def kill_processes_under(folder: Path) -> int:
    """SIGKILL, by PID, the processes whose command line names `folder` (Ray's, of phase c's own temp folder)."""
    killed = 0
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and int(proc.name) != os.getpid() and \
                    str(folder).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed


def phase_tune(check: Check, res: dict) -> None:
    z, out = check.sizes, check.out / "c_tune"
    if importlib.util.find_spec("ray") is None:
        res.update(status="skipped", reason="Ray is not installed in this Python (requirements.txt pins it): no sweep")
        return
    cmd = [*script("tune.py"), *NOISE_FLAGS, "--lc_n_epoch", "-1", "--sigmas", "0.1", "0.5", "1.0",
           "--n_epochs", str(z.tune_epochs), "--train_subset", str(z.tune_subset[0]), "--test_subset",
           str(z.tune_subset[1]), "--model", z.model, "--batch_size", str(z.train_batch), "--seed", str(SEED),
           "--gpus_per_trial", f"{z.gpus_per_trial:g}", "--cpus_per_trial", f"{z.cpus_per_trial:g}",
           "--data_dir", check.data["root"], "--out_dir", str(out), *(["--device", "cpu"] if check.dry_run else [])]
    res.update(ray=importlib.metadata.version("ray"), gpus_per_trial=z.gpus_per_trial,
               command=" ".join(["python", "tune.py", *cmd[2:]]))
    # a short private temp folder: Ray's socket paths must stay below 107 characters, and whatever Ray leaves
    # running can be told from anyone else's by it
    ray_tmp = Path(tempfile.mkdtemp(prefix="sln-ray-", dir="/tmp"))
    try:
        rc, lines, ended = command(check, cmd, "tune", check.phase_end - GRACE_S, env={"RAY_TMPDIR": str(ray_tmp)})
    finally:
        killed = kill_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    res.update(rc=rc, **({"ray_processes_killed": killed} if killed else {}))
    if not ended:
        res.update(status="skipped",
                   reason=f"cut off: the sweep did not finish within the phase's budget ({error_of(rc, lines)})")
        return
    if rc != 0:
        res.update(status="failed", error=error_of(rc, lines))
        return
    (sweep,) = (out / "hp").glob("hp_*")
    with open(sweep / "sigma_search.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    trials = [{"sigma": float(row["sigma"]), "val_acc_last_pct": float(row["val_acc_last_pct"]),
               "exp_id": row["exp_id"], "device": yaml.safe_load(
                   (sweep / "runs" / row["exp_id"] / "config.yaml").read_text()).get("device_used")} for row in rows]
    res.update(sweep=sweep.name, trials=trials,
               best_sigma=re.search(r"best sigma: (\S+)", (sweep / "sigma_search.md").read_text()).group(1))


# ----------------------------------------------------------------------------------------------------
# (d) training and evaluation throughput

def time_setting(check: Check, setting: str, x: torch.Tensor, labels: torch.Tensor, flops: float) -> dict:
    """Images/s of engine.train_epoch (through timing.Trainer, which takes --amp for bf16) in one setting, best of
    `rounds` epochs of `steps` batches after a warm-up (which is where --compile compiles)."""
    z = check.sizes
    precision, extra = SETTINGS[setting]
    engine.set_precision(precision)
    trainer = timing.Trainer(z.model, x, labels, z.batch, (["--amp"] if precision == "bf16" else []) + extra)
    warmup = trainer.epoch(z.warmup_batches * z.batch)
    best = min(trainer.epoch(z.steps * z.batch) for _ in range(z.rounds))
    img_s = z.steps * z.batch / best
    return {"precision": precision, "flags": " ".join(["--precision", precision, *extra]),
            "train_img_s": round(img_s, 1), "ms_per_step": round(1000 * best / z.steps, 3),
            "warmup_s": round(warmup, 1), "achieved_tflop_s": round(img_s * flops / 1e12, 3),
            **timing.step_counts(trainer, z.profile_steps)}


def concurrent(check: Check, single_img_s: float | None) -> dict:
    """Total images/s of `processes` training processes (tf32) sharing the device, from the first start to the
    last end once all are warmed up."""
    z = check.sizes
    got = timing.concurrent_epochs(z.model, z.batch, z.steps, z.warmup_batches, check.device.type, z.processes,
                                   until=check.phase_end - STOP_S)
    for k, r in enumerate(got):
        check.note("result " + json.dumps(r), f"worker{k}")
    total = sum(r["images"] for r in got) / (max(r["end"] for r in got) - min(r["start"] for r in got))
    return {"processes": len(got), "precision": "tf32", "total_img_s": round(total, 1),
            "per_process_img_s": [round(r["img_s"], 1) for r in got],
            "vs_one_process": round(total / single_img_s, 2) if single_img_s else None}


def phase_throughput(check: Check, res: dict) -> None:
    z = check.sizes
    torch.backends.cudnn.benchmark = True       # as engine.run sets it for every run without --deterministic
    g = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, 256, (z.steps * z.batch, 3, 32, 32), generator=g, dtype=torch.uint8).to(check.device)
    labels = torch.randint(0, 10, (len(x),), generator=g).to(check.device)
    flops = timing.train_flops_per_image(z.model)
    res.update(model=z.model, batch=z.batch, steps=z.steps, rounds=z.rounds, device=str(check.device),
               train_flops_per_image=flops, settings={})
    for setting in [k for k in SETTINGS if "compile" not in k]:   # the compiled setting last: compiling takes long
        part(check, res["settings"], setting, lambda k=setting: time_setting(check, k, x, labels, flops), 2)
    engine.set_precision("tf32")
    n = min(z.eval_images, len(x))
    part(check, res, "eval", lambda: {"precision": "tf32", "images": n, **timing.time_eval(z.model, x, n)}, 2)
    single = res["settings"].get("tf32", {}).get("train_img_s")
    part(check, res, "concurrent", lambda: concurrent(check, single), 10)
    compiled = "bf16+channels_last+compile"
    if z.compile:
        part(check, res["settings"], compiled, lambda: time_setting(check, compiled, x, labels, flops), 30)
    else:
        res["settings"][compiled] = {"status": "skipped", "reason": "dry run: torch.compile takes minutes on a CPU; "
                                                                    "the GPU check times it"}
    engine.set_precision("tf32")


# ----------------------------------------------------------------------------------------------------
# (e) a full-scale run, cut off at the deadline

def choose_setting(check: Check) -> tuple[str, str]:
    """The fastest setting of phase d whose precision phase a found correct (without bf16 on a CPU, where the
    training scripts refuse it, and without compiling when it would take most of the time left); and why."""
    correct = {p for p, r in check.phases.get("a_numerics", {}).get("precisions", {}).items() if r.get("correct")}
    measured = check.phases.get("d_throughput", {}).get("settings", {})
    usable = {k: measured[k]["train_img_s"] for k in SETTINGS if measured.get(k, {}).get("status") == "ok"
              and SETTINGS[k][0] in correct and (check.device.type == "cuda" or SETTINGS[k][0] != "bf16")}
    if not usable:
        fallback = next((p for p in ("tf32", "fp32") if p in correct), None)
        return (fallback, f"phase d measured no usable setting; {fallback}, which phase a found correct") if fallback \
            else ("tf32", "neither phase a nor phase d gave a verdict; the default, tf32")
    best = max(usable, key=usable.get)
    why = f"the fastest in phase d ({usable[best]:.0f} img/s) of the settings whose precision phase a found correct"
    plain = {k: v for k, v in usable.items() if "compile" not in k}
    if "compile" in best and plain and check.deadline - time.monotonic() < measured[best]["warmup_s"] + 120:
        why += f"; not compiled, since compiling (measured {measured[best]['warmup_s']:.0f} s) would take most of " \
               "the time left"
        best = max(plain, key=plain.get)
    return best, why


def phase_full_run(check: Check, res: dict) -> None:
    z, out = check.sizes, check.out / "e_full_run"
    setting, why = choose_setting(check)
    precision, extra = SETTINGS[setting]
    n_epochs, lc_n_epoch = 300, 250
    flags = [*NOISE_FLAGS, "--sigma", "1.0", "--mo", "--lc_n_epoch", str(lc_n_epoch), "--n_epochs", str(n_epochs),
             "--model", z.full_model, "--batch_size", str(128 if not check.dry_run else z.train_batch), "--lr", "0.001",
             "--seed", str(SEED), "--precision", precision, *extra, "--data_dir", check.data["root"],
             "--device", check.device.type]
    res.update(setting=setting, why=why, command="python train_cifar.py " + " ".join(flags), data=check.data["source"])

    def epochs() -> list[float]:
        found = list((out / "runs").glob("*/metrics.csv"))
        return [r["seconds"] for r in runs.read_metrics(found[0])] if found else []
    # on a GPU it runs until the deadline; a dry run has none, and stops it after a few epochs instead
    rc, lines, ended = command(check, [*script("train_cifar.py"), *flags, "--out_dir", str(out)], "full_run",
                               until=check.phase_end - STOP_S,
                               stop_when=(lambda: len(epochs()) >= DRY_RUN_EPOCHS) if check.dry_run else None)
    res.update(rc=rc, stopped_at_deadline=not ended)
    if ended and rc != 0:
        res.update(status="failed", error=error_of(rc, lines))
        return
    seconds = epochs()
    res.update(epochs_done=len(seconds), epoch_seconds=[round(s, 2) for s in seconds])
    if not seconds:
        res.update(status="skipped", reason=f"no epoch was complete in the {res['budget_s']:.0f} s left")
        return
    steady = seconds[1:] or seconds      # the first epoch pays for start-up, cudnn.benchmark and compiling
    mean = sum(steady) / len(steady)
    # label correction adds, to each of the last n_epochs - lc_n_epoch epochs, one pass of the EMA network over the
    # training set: estimated from phase d's evaluation rate at this device's evaluation batch
    rates = check.phases.get("d_throughput", {}).get("eval", {}).get("eval_img_s", {})
    rate = rates.get(f"batch {engine.default_eval_batch_size(check.device)}")
    lc_extra = check.data["n_train"] / rate if rate else None
    res.update(mean_epoch_s=round(mean, 2), first_epoch_s=round(seconds[0], 2),
               lc_extra_s_per_epoch=None if lc_extra is None else round(lc_extra, 2),
               projected_run_s=round(mean * n_epochs + (n_epochs - lc_n_epoch) * (lc_extra or 0), 1),
               projection=(f"mean epoch seconds (after the first) x {n_epochs} + {n_epochs - lc_n_epoch} label-"
                           "correction epochs x (training images / phase d's evaluation images/s)"
                           + ("" if lc_extra else "; phase d gave no evaluation rate, so without label correction")))


# ----------------------------------------------------------------------------------------------------
# The check

PHASES = {"a_numerics": phase_numerics, "b_models": phase_models, "c_tune": phase_tune,
          "d_throughput": phase_throughput, "e_full_run": phase_full_run}
NEEDS_DATA = {"b_models", "c_tune", "e_full_run"}
DRY_RUN_MEANING = ("dry run: no GPU was used. 'ok' says a phase ran to the end at toy size; the CUDA-against-CPU "
                   "differences compare the CPU with itself (0 by construction), and the speeds and the projected "
                   "run time are this CPU's at toy size, not a GPU's")


def driver_version() -> dict:
    """The NVIDIA driver as nvidia-smi reports it, and the newest CUDA its driver API supports (cuda-bindings, which
    the torch wheels bring), or why they could not be told."""
    out: dict = {}
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            out.update(driver_version=lines[0].split(",")[0].strip(), nvidia_smi=[line.strip() for line in lines])
        else:
            out["nvidia_smi"] = f"exit status {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        out["nvidia_smi"] = "not found" if isinstance(e, FileNotFoundError) else "timed out"
    try:
        from cuda.bindings import driver
        err, version = driver.cuDriverGetVersion()
        out["cuda_driver_api"] = f"{version // 1000}.{version % 1000 // 10}" if int(err) == 0 else f"unknown ({err})"
    except Exception as e:     # a probe only: whatever a machine without the driver library raises
        out["cuda_driver_api"] = f"unknown ({one_line(e)[:120]})"
    return out


def environment(argv: list[str], device: torch.device, dry_run: bool) -> dict:
    env = {"python": platform.python_version(), "torch": str(torch.__version__), "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cuda_available": torch.cuda.is_available(), "device": str(device), "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                      "memory_gib": round(props.total_memory / 2 ** 30, 1),
                      "compute_capability": f"{props.major}.{props.minor}"}
    env.update(driver=driver_version(),
               ray=importlib.metadata.version("ray") if importlib.util.find_spec("ray") else "not installed",
               command=" ".join(["python", "bench.py", *argv]),
               started=datetime.datetime.now().isoformat(timespec="seconds"), host=platform.node(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), code=runs.code_version(),
               dry_run=dry_run, **({"dry_run_meaning": DRY_RUN_MEANING} if dry_run else {}),
               # a dry run has no deadline and no budgets: on a busy machine it takes what it takes
               deadline_s=None if dry_run else DEADLINE_S, budget_s={k: None if dry_run else v for k, v in
                                                                     BUDGETS_S.items()},
               sizes=dataclasses.asdict(DRY_SIZES if dry_run else GPU_SIZES))
    return env


def refusal(out_dir: Path, dry_run: bool) -> str | None:
    """Why the check cannot start, in one line, or None."""
    if (out_dir / JSON_NAME).exists():
        return f"{out_dir / JSON_NAME} already holds a GPU check, which is never overwritten; give another OUT_DIR"
    if out_dir.exists() and not out_dir.is_dir():
        return f"--gpu_check {out_dir} is a file; give a folder"
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return f"--gpu_check {out_dir} is not empty; give a new or empty folder (nothing there is overwritten)"
    if not dry_run and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        return (f"--gpu_check needs a CUDA GPU, and torch {torch.__version__} ({build}) sees none here; run it on "
                "the GPU machine, or add --dry_run to rehearse every phase at toy size on this CPU")
    try:
        files.check_writable(out_dir, "--gpu_check")
    except ValueError as e:
        return str(e)
    return None


def failed(summary: dict) -> bool:
    return not summary.get("finished") or any(p.get("status") == "failed" for p in summary["phases"].values())


def run_all(check: Check, summary: dict, data_dir: Path, save) -> bool:
    """The data, then every phase in turn, saving the summary after each; True when SIGTERM stopped the check."""
    stopped = False
    try:
        check.data = summary["data"] = prepare_data(check.out, data_dir, check.sizes, check.dry_run)
        print(f"gpu check: data: {check.data['source']}", flush=True)
    except Exception as e:
        check.note(traceback.format_exc().rstrip().replace("\n", "\n    "))
        summary["data"] = {"error": one_line(e)}
    except Stopped:
        stopped = True
    for key, fn in PHASES.items():
        if stopped:
            check.phases[key] = {"status": "skipped", "reason": "the check was stopped by SIGTERM"}
        elif key in NEEDS_DATA and not check.data:
            check.phases[key] = {"status": "skipped", "reason": f"no data: {summary['data'].get('error')}"}
        else:
            try:
                run_phase(check, key, fn)
            except Stopped:
                stopped = True
        save()
    return stopped


def main(out_dir: Path, data_dir: Path, dry_run: bool, argv: list[str]) -> dict:
    """Run the check into `out_dir` (bench.py --gpu_check); return the summary written to gpu_check.json."""
    problem = refusal(out_dir, dry_run)
    if problem:
        cli.fail(problem)
    # before the first cuBLAS call (which fixes its workspace): phase a's --deterministic steps need it; the
    # commands the check starts do not get it, so that their timings are those of ordinary runs
    ours = "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = torch.device("cpu" if dry_run else "cuda")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    check = Check(out_dir, device, dry_run, DRY_SIZES if dry_run else GPU_SIZES,
                  math.inf if dry_run else start + DEADLINE_S, {"CUBLAS_WORKSPACE_CONFIG": None} if ours else {})
    summary = {"finished": False, "environment": environment(argv, device, dry_run), "data": None,
               "phases": check.phases, "total_s": None}

    def save() -> None:
        summary["total_s"] = round(time.monotonic() - start, 1)
        # JSON has no NaN: a non-finite figure is written as null
        text = json.dumps(json.loads(json.dumps(summary), parse_constant=lambda _: None), indent=2, allow_nan=False)
        files.write_atomic(out_dir / JSON_NAME, lambda tmp: tmp.write_text(text))

    handler = logging.FileHandler(out_dir / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    old_term = signal.signal(signal.SIGTERM, raise_stopped)
    try:
        with contextlib.redirect_stdout(Tee(sys.stdout, check)), contextlib.redirect_stderr(Tee(sys.stderr, check,
                                                                                                 "stderr")):
            print(f"gpu check{' (dry run)' if dry_run else ''} on {device}: writing {out_dir / JSON_NAME} and "
                  f"{out_dir / LOG_NAME}" + ("" if dry_run else f"; done within {DEADLINE_S} s"), flush=True)
            save()
            stopped = run_all(check, summary, data_dir, save)
            summary["finished"] = not stopped
            save()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        LOG.removeHandler(handler)
        handler.close()
    for key, p in check.phases.items():
        why = p.get("error") or p.get("reason") or p.get("incomplete") or ""
        print(f"  {key:<13} {p['status']:<8} {p.get('seconds', 0):6.1f} s  {why}")
    if dry_run:
        print(f"gpu check: {DRY_RUN_MEANING}")
    print(f"gpu check: {summary['total_s']:.0f} s in all; summary in {out_dir / JSON_NAME}, "
          f"log in {out_dir / LOG_NAME}")
    if stopped:
        sys.exit(143)
    return summary
