"""The prepared GPU check (issue 19): is this GPU set up right, and how fast does it train? One command that is
done within 8 minutes on one current NVIDIA GPU:

    python bench.py --gpu_check OUT_DIR              # needs a CUDA GPU; refuses in one line without one
    python bench.py --gpu_check OUT_DIR --dry_run    # every phase at toy size on the CPU (the tests run this)

Five phases, each with a time budget (BUDGETS_S) inside one deadline (DEADLINE_S). A phase that would start with
too little time left is skipped, and one that runs past its budget is cut off (SIGALRM); both are recorded as
skipped with the reason, so something always comes back:

(a) numerics: three training steps (each with its EMA step), one label-correction pass and one evaluation, on the
    GPU and on the CPU from the same draws, all made on the CPU: initial weights, augmented batches, SLN noise.
    Per precision (fp32, tf32, bf16) the largest absolute and relative differences of the loss, the weights and
    the EMA weights; and the same steps twice with --deterministic on the GPU, compared bit for bit.
(b) models: CE, SLN, SLN-MO and SLN-MO-LC trained for 2 epochs on 5,000 images by `train_cifar.py`; a run stopped
    by SIGTERM after its first checkpoint and resumed once on the GPU and once on the CPU; `plot.py` curves and
    pred_probs of a GPU-trained run.
(c) tune: a three-trial `tune.py` sigma search sharing the GPU (--gpus_per_trial 0.33), where Ray is installed.
(d) throughput: WRN-28-2 training images/s at batch 128 for fp32, tf32, bf16+channels_last and
    bf16+channels_last+compile (timing.Trainer: engine.setup and engine.train_epoch, as every run), host syncs and
    kernels per step, evaluation images/s, and four training processes sharing the GPU.
(e) full run: the 300-epoch CIFAR-10 SLN-MO-LC run of the paper with the fastest setting whose precision phase (a)
    found correct, stopped (SIGTERM) at the deadline: its epoch times give the time of a whole run.

The project's own commands (train_cifar.py, plot.py, tune.py) run as processes of their own, as a user runs them,
each in a session of its own so that a process the check has to kill takes what it started with it. Labels are
CIFAR-10 with 40 % symmetric noise generated from the seed (--custom_noise), so no checksummed file of the paper is
needed; the images are the real CIFAR-10 when --data_dir has it (linked, never written to), else synthetic ones in
CIFAR-10's pickle layout in OUT_DIR/synthetic_data.

OUT_DIR gets gpu_check.json (rewritten after every phase; "finished" is true once all are done) and gpu_check.log
(every line printed by this process and by the ones it starts, time-stamped); the runs, plots and sweeps stay
below it. A folder that holds a gpu_check.json, or anything else, is refused: nothing is ever overwritten.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
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
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

import timing
import cli
import methods
import engine
import files
import runs
from augment import random_crop_flip
from data import CIFAR, NoisyData, load_cifar_noisy
from models import make_model

CODE_DIR = Path(__file__).resolve().parent
JSON_NAME, LOG_NAME = "gpu_check.json", "gpu_check.log"
SEED = 1
# seconds from the start by which every phase must be done: 8 minutes less room for start-up, a last SIGTERM's
# grace and the summary. The dry run takes about 75 s on an idle 2-core CPU; its budgets leave room for a busy one.
DEADLINE_S = {"gpu": 440, "dry_run": 300}
# the most each phase may take (None: whatever is left before the deadline)
BUDGETS_S = {"gpu": {"a_numerics": 45, "b_models": 140, "c_tune": 75, "d_throughput": 130, "e_full_run": None},
             "dry_run": {"a_numerics": 30, "b_models": 120, "c_tune": 100, "d_throughput": 60, "e_full_run": 15}}
MIN_PHASE_S = 5          # a phase with less time than this is skipped
GRACE_S = 15             # after SIGTERM, how long a process may take to stop before it is killed
STOP_S = 5               # time kept for a run to stop on SIGTERM (its current step, its last lines) within a phase
POLL_S = 0.02

# the paper's four models, with train_cifar.py's flags
VARIANT_FLAGS = {name: methods.argv(name) for name, m in methods.METHODS.items() if m.by_flags}
NOISE_FLAGS = ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--custom_noise"]
# phase d's settings: (precision, extra training flags)
SETTINGS = {"fp32": ("fp32", []), "tf32": ("tf32", []), "bf16+channels_last": ("bf16", ["--channels_last"]),
            "bf16+channels_last+compile": ("bf16", ["--channels_last", "--compile"])}
# phase a's verdict per precision: the largest relative loss difference and relative error of the weight and EMA
# updates that count as correct. On a CPU, bf16 autocast changed one step's update by ~0.12 (tests/test_bench.py);
# TF32 keeps 10 mantissa bits to bf16's 7; strict float32 differs only by the order of its sums, which BatchNorm's
# backward (a difference of nearly equal terms) lifts to ~1e-3.
TOLERANCE = {"fp32": {"loss": 1e-4, "update": 1e-2}, "tf32": {"loss": 1e-2, "update": 0.1},
             "bf16": {"loss": 5e-2, "update": 0.3}}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each phase is: the GPU check's sizes, or the dry run's toy ones."""
    model: str                 # network of phases a-d
    batch: int                 # batch of phases a and d
    numerics_test: int         # test images evaluated in phase a
    synthetic: tuple[int, int]  # training and test images written when there is no CIFAR-10
    train_subset: int          # phase b
    test_subset: int
    resume_subset: int         # phase b's interrupted run
    train_batch: int           # batch of phases b, c and e
    tune_subset: tuple[int, int]
    tune_epochs: int
    gpus_per_trial: float
    cpus_per_trial: float
    steps: int                 # phase d: timed steps per setting and round
    rounds: int
    warmup_batches: int
    profile_steps: int
    eval_images: int
    processes: int             # concurrent training processes
    compile: bool              # time the compiled setting (minutes of compiling on a CPU)
    full_model: str            # phase e


GPU_SIZES = Sizes(model="wrn-28-2", batch=128, numerics_test=512, synthetic=(50000, 10000), train_subset=5000,
                  test_subset=1000, resume_subset=2000, train_batch=128, tune_subset=(1000, 500), tune_epochs=2, gpus_per_trial=0.33,
                  cpus_per_trial=1, steps=100, rounds=2, warmup_batches=3, profile_steps=5, eval_images=10000,
                  processes=4, compile=True, full_model="wrn-28-2")
DRY_SIZES = Sizes(model="wrn-16-1", batch=16, numerics_test=32, synthetic=(400, 100), train_subset=160,
                  test_subset=60, resume_subset=160, train_batch=32, tune_subset=(120, 60), tune_epochs=1, gpus_per_trial=0,
                  cpus_per_trial=0.5, steps=2, rounds=1, warmup_batches=1, profile_steps=1, eval_images=64,
                  processes=4, compile=False, full_model="wrn-16-1")


class OutOfTime(BaseException):
    """A phase ran past its budget (raised by SIGALRM). Not an Exception, so that no handler in the code a phase
    calls takes it for an error of its own."""


class Stopped(BaseException):
    """The check itself got SIGTERM: the phase under way stops, the rest are skipped, the summary is written."""


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:600] if text else type(error).__name__


def finite(x: float) -> float | None:
    """A number for the JSON: non-finite values (which JSON cannot hold) become None."""
    return float(x) if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------------
# The log, and the processes the check starts

class Log:
    """gpu_check.log: every line, with the wall-clock time, the seconds since the start and where it came from."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8", buffering=1)
        self.start = time.time()
        self.lock = threading.Lock()
        self.phase = "setup"

    def write(self, line: str, source: str = "") -> None:
        stamp = f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S} +{time.time() - self.start:6.1f}s"
        where = self.phase + (f"/{source}" if source else "")
        with self.lock:
            self.file.write(f"{stamp} [{where}] {line}\n")

    def close(self) -> None:
        self.file.close()


class Tee:
    """Stands in for sys.stdout or sys.stderr while the check runs: text still reaches the terminal, and each line
    also goes to the log and to the lists of any `capture()` under way."""

    def __init__(self, stream, log: Log, name: str):
        self.stream, self.log, self.name = stream, log, name
        self.pending, self.captures = "", []

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.pending += text
        *lines, self.pending = re.split(r"[\r\n]", self.pending)
        for line in lines:
            if line.strip():
                self.log.write(line, "stderr" if self.name == "stderr" else "")
                for lines_of_call in self.captures:
                    lines_of_call.append(line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def capture():
    """The lines printed (stdout and stderr) while the block runs."""
    lines: list[str] = []
    tees = [s for s in (sys.stdout, sys.stderr) if isinstance(s, Tee)]
    for t in tees:
        t.captures.append(lines)
    try:
        yield lines
    finally:
        for t in tees:
            t.captures.remove(lines)


class Child:
    """A process the check starts, in a session of its own, its output copied line by line into the log.

    `stop` ends it as a user would: SIGTERM, which a training run answers by keeping its last checkpoint and
    exiting 143, and a tune.py sweep by stopping Tune. One still running after GRACE_S is killed with its process
    group (what it started and left in its session), while it is still alive, so the group is certainly its own.
    """

    def __init__(self, cmd: list[str], log: Log, name: str, env: dict | None = None, stdin: bool = False):
        """`env`: variables to set for it on top of this process's (None: to unset)."""
        self.name, self.lines, self.started = name, [], time.time()
        log.write("$ " + " ".join(cmd), name)
        env = {k: v for k, v in {**os.environ, "TQDM_DISABLE": "1", **(env or {})}.items() if v is not None}
        self.proc = subprocess.Popen(cmd, cwd=CODE_DIR, env=env,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self.reader = threading.Thread(target=self._read, args=(log,), daemon=True)
        self.reader.start()

    def _read(self, log: Log) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            log.write(line, self.name)

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def rc(self) -> int | None:
        return self.proc.poll()

    def send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def wait(self, until: float, condition: Callable[[], bool] | None = None) -> bool:
        """Wait until the process has ended (True), or `condition()` holds or the clock reaches `until` (False)."""
        while self.proc.poll() is None:
            if time.time() >= until or (condition is not None and condition()):
                return False
            time.sleep(POLL_S)
        self.reader.join(5)
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.reader.join(5)

    def error(self) -> str:
        """The process's own one-line error, else its last line, for the JSON."""
        errors = [line for line in self.lines if line.startswith("error:")]
        last = errors[-1] if errors else (self.lines[-1] if self.lines else "no output")
        return f"exit status {self.rc}: {last}"[:600]


def kill_processes_under(folder: Path) -> list[int]:
    """SIGKILL, by PID, the processes whose command line names `folder`: the Ray processes of phase c's own sweep
    (its private Ray temp folder), should any outlive the sweep."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if str(folder).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
                pids.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


# ----------------------------------------------------------------------------------------------------
# Phases and their parts

@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise OutOfTime in the main thread once `seconds` have passed."""
    def alarm(signum, frame):
        raise OutOfTime(f"ran {seconds:.0f} s, past its budget")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclasses.dataclass
class Check:
    """What every phase needs: the folder, the device, the sizes, the log, the clock and the results so far."""
    out: Path
    device: torch.device
    dry_run: bool
    sizes: Sizes
    log: Log
    deadline: float                      # time.time() by which the phases must be done
    data: dict = dataclasses.field(default_factory=dict)     # the data root and what it holds
    phases: dict = dataclasses.field(default_factory=dict)   # the JSON's phases so far (phase e reads a and d)
    child_env: dict = dataclasses.field(default_factory=dict)  # for the commands it starts (None: unset)

    def left(self) -> float:
        return self.deadline - time.time()

    def child(self, cmd: list[str], name: str, env: dict | None = None, stdin: bool = False) -> Child:
        return Child(cmd, self.log, name, {**self.child_env, **(env or {})}, stdin)


class Phase:
    """One phase under way: its JSON dict (`res`), the time it must end by, and its named parts (a model, a
    precision, a setting), each run unless too little time is left and recorded without stopping the others."""

    def __init__(self, res: dict, end: float, log: Log):
        self.res, self.end, self.log = res, end, log
        self.failures: list[str] = []
        self.skips: list[str] = []
        self.done = 0              # parts that ran to their end (ok or failed)

    def left(self) -> float:
        return self.end - time.time()

    def part(self, where: dict, name: str, fn: Callable[[], dict], need_s: float = 1.0) -> dict | None:
        """where[name] = {"status", "seconds", **fn()}; skipped with less than `need_s` of the phase left."""
        if self.left() < need_s:
            where[name] = {"status": "skipped",
                           "reason": f"{max(self.left(), 0):.0f} s of the phase's budget left, about "
                                     f"{need_s:.0f} s needed"}
            self.skips.append(name)
            return None
        t0 = time.time()
        self.log.write(f"-- {name}")
        try:
            with capture() as lines:
                figures = fn()
        except (OutOfTime, Stopped) as e:
            why = "the check was stopped by SIGTERM" if isinstance(e, Stopped) else f"the phase {e}"
            where[name] = {"status": "skipped", "reason": f"cut off: {why}", "seconds": round(time.time() - t0, 1)}
            self.skips.append(name)
            raise
        except SystemExit as e:     # a one-line refusal (cli.fail) of the code it called
            said = [line for line in lines if line.startswith("error:")]
            where[name] = {"status": "failed", "error": said[-1] if said else f"exit status {e.code}"}
        except Exception as e:
            self.log.write(traceback.format_exc().rstrip().replace("\n", "\n    "))
            where[name] = {"status": "failed", "error": one_line(e)}
        else:
            status = "failed" if figures.get("error") else "ok"
            where[name] = {"status": status, "seconds": round(time.time() - t0, 1), **figures}
        self.done += 1
        if where[name]["status"] == "failed":
            self.failures.append(f"{name}: {where[name]['error']}")
        return where[name] if where[name]["status"] == "ok" else None


def run_phase(check: Check, key: str, fn: Callable[[Check, Phase], dict], budgets: dict) -> dict:
    """Run one phase within its budget and the deadline; its dict for the JSON, also check.phases[key] (from the
    start, so that a phase that is cut off keeps what it had). The phase plans its parts and commands to end with
    its budget; SIGALRM cuts it off GRACE_S later, leaving time to stop a command it started."""
    check.log.phase = key
    cap = budgets[key]
    budget = check.left() if cap is None else min(cap, check.left())
    res: dict = {"status": "ok", "budget_s": round(max(budget, 0), 1)}
    check.phases[key] = res
    if budget < MIN_PHASE_S:
        res.update(status="skipped", reason=f"{max(check.left(), 0):.0f} s left before the deadline, "
                                            f"{MIN_PHASE_S} s needed at least")
        check.log.write(f"skipped: {res['reason']}")
        return res
    print(f"gpu check: phase {key} (budget {budget:.0f} s)", flush=True)
    phase = Phase(res, time.time() + budget, check.log)
    t0 = time.time()
    cut = None
    try:
        with time_limit(budget + GRACE_S):
            fn(check, phase)
    except OutOfTime as e:
        cut = f"cut off: {e}"
        if not phase.done:
            res.update(status="skipped", reason=cut)
    except Stopped:
        res.update(status="skipped", reason="cut off: the check was stopped by SIGTERM")
        raise
    except Exception as e:
        check.log.write(traceback.format_exc().rstrip().replace("\n", "\n    "))
        res.update(status="failed", error=one_line(e))
    finally:
        res["seconds"] = round(time.time() - t0, 1)
    if res["status"] == "ok" and phase.failures:
        res.update(status="failed", error=phase.failures[0])
    notes = ([cut] if cut and phase.done else []) + \
        ([f"not run, or cut off, for lack of time: {', '.join(phase.skips)}"] if phase.skips else [])
    if notes:
        res["incomplete"] = "; ".join(notes)
    print(f"gpu check: phase {key} {res['status']} in {res['seconds']:.0f} s"
          + (f": {res.get('error') or res.get('reason')}" if res["status"] != "ok" else ""), flush=True)
    return res


# ----------------------------------------------------------------------------------------------------
# (a) numerics: the GPU against the CPU from the same draws

@dataclasses.dataclass
class Draws:
    """Everything random in phase a, drawn once on the CPU: images, labels, three augmented batches, the SLN noise of
    every image, and test images."""
    images: torch.Tensor
    labels: torch.Tensor
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    noise: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @staticmethod
    def make(batch: int, n_test: int, steps: int = 3) -> "Draws":
        g = torch.Generator().manual_seed(SEED)
        n = steps * batch
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g)
        batches = [(idx, random_crop_flip(images[idx], 4, g)) for idx in torch.arange(n).view(steps, batch)]
        noise = torch.randn(n, 10, generator=g)
        test_images = torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
        return Draws(images, labels, batches, noise, test_images, torch.randint(0, 10, (n_test,), generator=g))


class FixedBatch:
    """A batch source for engine.train_epoch that yields one batch made beforehand: the same crops and flips on
    every device, where the device's own generator would draw different ones."""

    def __init__(self, idx: torch.Tensor, xb: torch.Tensor):
        self.idx, self.xb = idx, xb

    def __len__(self) -> int:
        return len(self.idx)

    def train_batches(self, order: torch.Tensor, batch_size: int, gen: torch.Generator):
        yield self.idx, self.xb


def training_args(argv: list[str]):
    """The training flags' namespace, as train_cifar.py would parse `argv`, with --amp and --precision agreeing."""
    parser = cli.Parser()
    cli.add_training_args(parser, default_model="wrn-28-2")
    args = parser.parse_args(argv)
    cli.resolve_precision(args)
    return args


@contextlib.contextmanager
def deterministic_algorithms(on: bool):
    """torch's deterministic kernels and cudnn.benchmark as engine.run sets them for --deterministic (on) or not."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def numerics_run(device: torch.device, precision: str, draws: Draws, model: str,
                 deterministic: bool = False) -> dict[str, list[torch.Tensor]]:
    """Three engine.train_epoch steps (SGD and EMA step each), one label correction (engine.correct_labels, on
    un-augmented images so that no device draws) and one evaluation of both networks, all from `draws`.

    SLN noise is drawn in train_epoch from the device's generator, which differs between devices; here it is the
    CPU's draw, added to the targets beforehand, and train_epoch runs with sigma 0 (noisy_targets then returns the
    targets as they are): the loss is the same as with sigma 1 and that noise. Returns the tensors to compare, on
    the CPU."""
    batch = len(draws.batches[0][0])
    args = training_args(["--batch_size", str(batch), "--sigma", "1.0", "--mo", "--n_epochs", "2", "--lc_n_epoch", "1",
                          "--no-lc_augment", "--eval_batch_size", str(batch), "--precision", precision,
                          "--model", model, "--seed", str(SEED)])
    engine.set_precision(args.precision)
    y = draws.labels.numpy()
    spec = CIFAR["cifar10"]
    data = NoisyData("gpu_check", draws.images.numpy(), y, y, np.zeros(len(y), dtype=bool),
                     draws.test_images.numpy(), draws.test_labels.numpy(), 10, [str(c) for c in range(10)],
                     spec.mean, spec.std)
    with deterministic_algorithms(deterministic):
        torch.manual_seed(SEED)
        s = engine.setup(args, data, make_model(model, 10), device)   # made on the CPU: the same weights everywhere
        initial = [t.detach().cpu().clone() for t in s.model_tensors]
        images = s.x
        s.targets, s.sigma = (s.given.cpu() + args.sigma * draws.noise).to(device), 0.0
        losses = []
        for idx, xb in draws.batches:
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
    return {"max_abs": finite(max(float(d) for d in diffs)),
            "max_rel": finite(max(float(d / s) for d, s in zip(diffs, scales)))}


def update_error(got: list[torch.Tensor], ref: list[torch.Tensor], initial: list[torch.Tensor]) -> float | None:
    """|| (got - initial) - (ref - initial) || / || ref - initial ||: how far the step taken is from the reference's
    (the weights themselves barely move in three steps, so their own differences say little)."""
    num = sum(float((g.double() - r.double()).pow(2).sum()) for g, r in zip(got, ref))
    den = sum(float((r.double() - i.double()).pow(2).sum()) for r, i in zip(ref, initial))
    return finite(math.sqrt(num / den)) if den > 0 else None


def compare(got: dict, ref: dict, precision: str) -> dict:
    """Phase a's figures of one precision against the CPU's strict float32, and whether they are within
    TOLERANCE. `weights` and `ema` are the parameters of the network and of its EMA; `buffers` and `ema_buffers`
    their BatchNorm running statistics (which the EMA averages too). The label-correction targets are reported but
    not judged: after three steps the network's predictions are nearly uniform, so tiny differences may change
    their argmax."""
    out = {name: differences(got[name], ref[name]) for name in ("loss", "weights", "ema", "buffers", "ema_buffers")}
    out["weight_update_rel_error"] = update_error(got["weights"], ref["weights"], ref["initial_weights"])
    out["ema_update_rel_error"] = update_error(got["ema"], ref["ema"], ref["initial_weights"])
    out["buffer_update_rel_error"] = update_error(got["buffers"], ref["buffers"], ref["initial_buffers"])
    out["eval_logits"] = differences(got["logits"], ref["logits"])
    out["lc_targets_max_abs"] = differences(got["targets"], ref["targets"])["max_abs"]
    out["lc_argmax_agreement"] = float((got["targets"][0].argmax(1) == ref["targets"][0].argmax(1)).float().mean())
    out["loss_values"] = [finite(float(v)) for v in got["loss"]]
    tol = TOLERANCE[precision]
    def within(value: float | None, bound: float) -> bool:
        return value is not None and value <= bound
    checks = {"all finite": all(bool(torch.isfinite(t).all()) for ts in got.values() for t in ts),
              f"loss max_rel <= {tol['loss']:g}": within(out["loss"]["max_rel"], tol["loss"]),
              f"weight update rel error <= {tol['update']:g}": within(out["weight_update_rel_error"], tol["update"]),
              f"EMA update rel error <= {tol['update']:g}": within(out["ema_update_rel_error"], tol["update"]),
              f"BatchNorm statistics update rel error <= {tol['update']:g}": within(out["buffer_update_rel_error"],
                                                                                   tol["update"]),
              f"eval logits max_rel <= {tol['update']:g}": within(out["eval_logits"]["max_rel"], tol["update"])}
    out["checks"] = checks
    out["correct"] = all(checks.values())
    return out


def phase_numerics(check: Check, phase: Phase) -> dict:
    z = check.sizes
    draws = Draws.make(z.batch, z.numerics_test)
    cpu = torch.device("cpu")
    t0 = time.time()
    reference = numerics_run(cpu, "fp32", draws, z.model)
    need = time.time() - t0
    res = phase.res
    res.update(model=z.model, batch=z.batch, steps=len(draws.batches), device=str(check.device),
               reference=f"cpu, strict float32, {torch.get_num_threads()} torch threads",
               what=("3 x engine.train_epoch of one batch (SGD + EMA step), engine.correct_labels on un-augmented "
                     "images, engine.logits_of of the network and the EMA on test images; initial weights, batches "
                     "and SLN noise drawn on the CPU"),
               tolerance=TOLERANCE)
    res["precisions"] = {}
    for precision in cli.PRECISIONS:
        phase.part(res["precisions"], precision,
                   lambda p=precision: compare(numerics_run(check.device, p, draws, z.model), reference, p), need)

    def twice() -> dict:
        a, b = (numerics_run(check.device, "tf32", draws, z.model, deterministic=True) for _ in range(2))
        differ = [k for k in a if not all(torch.equal(x, y) for x, y in zip(a[k], b[k]))]
        return {"precision": "tf32", "bit_identical": not differ, "differing": differ,
                **({"error": f"the two --deterministic runs differ in {', '.join(differ)}"} if differ else {})}
    phase.part(res, "deterministic_twice", twice, 2 * need)
    return res


# ----------------------------------------------------------------------------------------------------
# The data of phases b, c and e

def write_synthetic_cifar10(root: Path, n_train: int, n_test: int, seed: int = SEED) -> None:
    """CIFAR-10's on-disk layout (cifar-10-batches-py/: five training batches and test_batch, each a pickled dict of
    uint8 image rows and labels) with images whose colour depends on their class, plus Gaussian noise: the
    networks have something to learn."""
    spec = CIFAR["cifar10"]
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (spec.num_classes, 3, 1, 1)).astype(np.float32)

    def images(labels: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((len(labels), 3, 32, 32), dtype=np.float32) * 50
        return np.clip(palette[labels] + noise, 0, 255).astype(np.uint8).reshape(len(labels), -1)

    folder = root / spec.folder
    folder.mkdir(parents=True)
    y = rng.permutation(np.arange(n_train) % spec.num_classes)
    parts = [(name, y[idx]) for name, idx in zip(spec.train_files, np.array_split(np.arange(n_train),
                                                                                 len(spec.train_files)))]
    parts.append((spec.test_files[0], np.arange(n_test) % spec.num_classes))
    for name, labels in parts:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images(labels), spec.label_key: labels.tolist()}, f, protocol=2)


def prepare_data(out: Path, data_dir: Path, sizes: Sizes, dry_run: bool) -> dict:
    """A data root below OUT_DIR for phases b, c and e: CIFAR-10 linked from `data_dir` when it is there (not in a
    dry run), else synthetic images; plus its label noise, generated once here (training runs started side by side
    must not all write the same file)."""
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
# (b) the four models, a run interrupted and resumed on either device, plot.py

def script(name: str) -> list[str]:
    return [sys.executable, str(CODE_DIR / name)]


def as_typed(cmd: list[str]) -> str:
    """A command of the check as a user would type it in the project's folder: python <script>.py ..."""
    return " ".join(["python", Path(cmd[1]).name, *cmd[2:]])


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


def run_command(check: Check, phase: Phase, cmd: list[str], name: str) -> Child:
    """Run a command to its end within the phase's time; raises when it fails."""
    with check.child(cmd, name) as child:
        if not child.wait(phase.end - STOP_S):
            raise RuntimeError(f"{name} did not finish within the phase's budget")
    if child.rc != 0:
        raise RuntimeError(child.error())
    return child


def phase_models(check: Check, phase: Phase) -> dict:
    z, res = check.sizes, phase.res
    base = check.out / "b_models"
    device = check.device.type
    common = [*NOISE_FLAGS, "--model", z.model, "--batch_size", str(z.train_batch), "--n_epochs", "2",
              "--test_subset", str(z.test_subset), "--seed", str(SEED), "--data_dir", check.data["root"]]
    models = [*common, "--train_subset", str(z.train_subset)]
    res.update(model=z.model, epochs=2, train_subset=z.train_subset, test_subset=z.test_subset, device=device,
               command="python train_cifar.py " + " ".join(models) + " <variant flags> --device " + device)
    res["models"] = {}
    for name, flags in VARIANT_FLAGS.items():
        def train(name=name, flags=flags) -> dict:
            out = base / name
            run_command(check, phase, [*script("train_cifar.py"), *models, *flags, "--device", device,
                                       "--out_dir", str(out)], name)
            return {"flags": " ".join(flags), **run_figures(only_run(out))}
        phase.part(res["models"], name, train, need_s=10)

    def plots() -> dict:
        source = res["models"].get("SLN-MO-LC", {})
        if source.get("status") != "ok":
            raise RuntimeError("the SLN-MO-LC run of this phase did not finish, so there is no run to plot")
        assets = base / "plots"
        run_command(check, phase, [*script("plot.py"), "--exp_id", source["exp_id"], "--plot_type", "curves",
                                   "pred_probs", "--runs_dir", str(base / "SLN-MO-LC" / "runs"), "--assets_dir",
                                   str(assets), "--device", device], "plot")
        written = sorted(str(p.relative_to(assets)) for p in assets.rglob("*") if p.is_file())
        return {"exp_id": source["exp_id"], "files": written,
                **({} if any(f.endswith(".png") for f in written) else {"error": "plot.py wrote no figure"})}
    phase.part(res, "plot", plots, need_s=5)

    # a smaller run to interrupt: its resume on the CPU trains an epoch of WRN-28-2 there
    interrupted = [*common, "--train_subset", str(z.resume_subset)]

    def interrupt() -> dict:
        out = base / "interrupted"
        cmd = [*script("train_cifar.py"), *interrupted, *VARIANT_FLAGS["SLN-MO-LC"], "--device", device,
               "--out_dir", str(out)]
        with check.child(cmd, "interrupted") as child:
            child.wait(phase.end - STOP_S, lambda: any((out / "runs").glob("*/checkpoint.pt")))
            signalled = child.rc is None
            child.stop()
        if not signalled:
            raise RuntimeError("the run ended before its first checkpoint could be interrupted: " + child.error())
        ckpt = torch.load(only_run(out) / "checkpoint.pt", map_location="cpu", weights_only=True)
        figures = {"rc": child.rc, "checkpointed_epoch": ckpt["epoch"], "variant": "SLN-MO-LC"}
        if child.rc != 143:
            figures["error"] = f"SIGTERM after the first checkpoint gave exit status {child.rc}, not 143"
        return figures
    if not phase.part(res, "interrupted", interrupt, need_s=10):
        return res

    def resume(key: str, on: str) -> dict:
        out = base / f"resumed_{key}"
        shutil.copytree(base / "interrupted", out)
        exp_id = only_run(out).name
        child = run_command(check, phase, [*script("train_cifar.py"), "--resume", exp_id, "--out_dir", str(out),
                                           "--device", on], f"resume_{key}")
        note = any("note: the checkpoint was written on" in line for line in child.lines)
        figures = {"device": on, "note_printed": note, **run_figures(only_run(out))}
        if note != (on != device):
            figures["error"] = ("resumed on another kind of device without the note that says so" if not note else
                                "resumed on the same kind of device, yet a note says the random stream differs")
        return figures
    # a dry run resumes twice on the CPU: the second resume then stands for the one on the CPU of a GPU machine
    res["resumed"] = {}
    for key, on in (("on_gpu", device), ("on_cpu", "cpu")):
        phase.part(res["resumed"], key, lambda key=key, on=on: resume(key, on), need_s=10)
    return res


# ----------------------------------------------------------------------------------------------------
# (c) a sigma search sharing the GPU

def phase_tune(check: Check, phase: Phase) -> dict:
    z, res = check.sizes, phase.res
    if importlib.util.find_spec("ray") is None:
        res.update(status="skipped", reason="Ray is not installed in this Python (requirements.txt pins it): no sweep")
        return res
    out = check.out / "c_tune"
    cmd = [*script("tune.py"), *NOISE_FLAGS, "--lc_n_epoch", "-1", "--sigmas", "0.1", "0.5", "1.0",
           "--n_epochs", str(z.tune_epochs), "--train_subset", str(z.tune_subset[0]), "--test_subset",
           str(z.tune_subset[1]), "--model", z.model, "--batch_size", str(z.train_batch), "--seed", str(SEED),
           "--gpus_per_trial", f"{z.gpus_per_trial:g}", "--cpus_per_trial", f"{z.cpus_per_trial:g}",
           "--data_dir", check.data["root"], "--out_dir", str(out), *(["--device", "cpu"] if check.dry_run else [])]
    res.update(ray=importlib.metadata.version("ray"), gpus_per_trial=z.gpus_per_trial, command=as_typed(cmd))
    # a short private temp folder: Ray's socket paths must stay below 107 characters, and whatever Ray leaves
    # running can be told from anyone else's by it
    ray_tmp = Path(tempfile.mkdtemp(prefix="sln-ray-", dir="/tmp"))
    try:
        with check.child(cmd, "tune", env={"RAY_TMPDIR": str(ray_tmp)}) as child:
            ended = child.wait(phase.end - GRACE_S)
    finally:
        left = kill_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if left:
        res["ray_processes_killed"] = len(left)
    res["rc"] = child.rc
    if not ended:
        res.update(status="skipped",
                   reason=f"cut off: the sweep did not finish within the phase's budget ({child.error()})")
        return res
    if child.rc != 0:
        res.update(status="failed", error=child.error())
        return res
    (sweep,) = (out / "hp").glob("hp_*")
    trials = []
    with open(sweep / "sigma_search.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        config = yaml.safe_load((sweep / "runs" / row["exp_id"] / "config.yaml").read_text())
        trials.append({"sigma": float(row["sigma"]), "val_acc_last_pct": float(row["val_acc_last_pct"]),
                       "exp_id": row["exp_id"], "device": config.get("device_used")})
    res.update(sweep=sweep.name, trials=trials,
               best_sigma=re.search(r"best sigma: (\S+)", (sweep / "sigma_search.md").read_text()).group(1))
    return res


# ----------------------------------------------------------------------------------------------------
# (d) training and evaluation throughput

def random_images(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device),
            torch.randint(0, 10, (n,), generator=g).to(device))


def trainer_flags(setting: str) -> list[str]:
    """A setting as timing.Trainer's flags (which, unlike the training scripts, take --amp for bf16)."""
    precision, extra = SETTINGS[setting]
    return (["--amp"] if precision == "bf16" else []) + extra


def step_counts(trainer: "timing.Trainer", steps: int) -> dict:
    """Per training step: host syncs (CUDA's sync debug mode warns at each) and the device kernels torch.profiler
    records (memory copies and sets not counted); on a CPU, the top-level aten operations instead."""
    s = trainer.state
    part = dataclasses.replace(s, members=torch.arange(steps * s.args.batch_size, device=s.labels.device))
    cuda = s.labels.device.type == "cuda"
    out: dict = {}
    if cuda:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sums = engine.train_epoch(part)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sums.tolist()
        out["host_syncs_per_step"] = sum("synchroniz" in str(w.message) for w in caught) / steps
    else:
        out["host_syncs_per_step"] = None
        out["note"] = "host syncs and kernels are counted on CUDA only; cpu_ops_per_step counts top-level aten ops"
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        engine.train_epoch(part).tolist()
    events = prof.events()
    if cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset"))]
        out["cuda_kernels_per_step"] = len(kernels) / steps
    out["cpu_ops_per_step"] = sum(e.name.startswith("aten::") and e.cpu_parent is None for e in events) / steps
    return out


def time_setting(check: Check, setting: str, x: torch.Tensor, labels: torch.Tensor, flops: float) -> dict:
    """Images/s of engine.train_epoch (through timing.Trainer) in one setting, best of `rounds` epochs of `steps`
    batches after a warm-up (which is where --compile compiles)."""
    z = check.sizes
    precision, extra = SETTINGS[setting]
    engine.set_precision(precision)
    trainer = timing.Trainer(z.model, x, labels, z.batch, trainer_flags(setting))
    warmup = trainer.epoch(z.warmup_batches * z.batch)
    n = z.steps * z.batch
    best = min(trainer.epoch(n) for _ in range(z.rounds))
    img_s = n / best
    return {"precision": precision, "flags": " ".join(["--precision", precision, *extra]),
            "train_img_s": round(img_s, 1),
            "ms_per_step": round(1000 * best / z.steps, 3), "warmup_s": round(warmup, 1),
            "achieved_tflop_s": round(img_s * flops / 1e12, 3), **step_counts(trainer, z.profile_steps)}


def throughput_worker(model: str, batch: str, steps: str, precision: str, device: str, warmup_batches: str) -> None:
    """One of phase d's concurrent training processes (started with python -c): warm up, print "ready", wait for a
    line on stdin, train `steps` batches and print them as one "result {json}" line."""
    torch.set_num_threads(1)
    dev, b, n = torch.device(device), int(batch), int(steps) * int(batch)
    engine.set_precision(precision)
    torch.backends.cudnn.benchmark = True
    x, labels = random_images(n, dev)
    trainer = timing.Trainer(model, x, labels, b, ["--amp"] if precision == "bf16" else [])
    trainer.epoch(int(warmup_batches) * b)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    seconds = trainer.epoch(n)
    print("result " + json.dumps({"images": n, "start": start, "end": time.time(), "img_s": n / seconds}), flush=True)


def concurrent(check: Check, phase: Phase, single_img_s: float | None) -> dict:
    """Total images/s of `processes` training processes (tf32, the default) sharing the device, timed from the first
    start to the last end once all are warmed up."""
    z = check.sizes
    cmd = [sys.executable, "-c", "import sys, gpu_check; gpu_check.throughput_worker(*sys.argv[1:])", z.model,
           str(z.batch), str(z.steps), "tf32", check.device.type, str(z.warmup_batches)]
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(check.child(cmd, f"worker{k}", stdin=True)) for k in range(z.processes)]
        for w in workers:
            w.wait(phase.end - STOP_S, lambda w=w: "ready" in w.lines)
        not_ready = [w for w in workers if "ready" not in w.lines]
        if not_ready:
            raise RuntimeError(f"{not_ready[0].name} was not ready in time: {not_ready[0].error()}")
        for w in workers:
            w.send("go\n")
        for w in workers:
            w.wait(phase.end - STOP_S)
    results = [json.loads(line.removeprefix("result ")) for w in workers for line in w.lines
               if line.startswith("result ")]
    if len(results) != len(workers):
        failed = next(w for w in workers if not any(line.startswith("result ") for line in w.lines))
        raise RuntimeError(f"{failed.name}: {failed.error()}")
    total = sum(r["images"] for r in results) / (max(r["end"] for r in results) - min(r["start"] for r in results))
    return {"processes": len(results), "precision": "tf32", "total_img_s": round(total, 1),
            "per_process_img_s": [round(r["img_s"], 1) for r in results],
            "vs_one_process": round(total / single_img_s, 2) if single_img_s else None}


def phase_throughput(check: Check, phase: Phase) -> dict:
    z, res = check.sizes, phase.res
    torch.backends.cudnn.benchmark = True       # as engine.run sets it for every run without --deterministic
    x, labels = random_images(z.steps * z.batch, check.device)
    flops = timing.train_flops_per_image(z.model)
    res.update(model=z.model, batch=z.batch, steps=z.steps, rounds=z.rounds, device=str(check.device),
               train_flops_per_image=flops, settings={})
    # the compiled setting last: its compiling may take the rest of the budget
    for setting in [k for k in SETTINGS if "compile" not in k]:
        phase.part(res["settings"], setting, lambda k=setting: time_setting(check, k, x, labels, flops), 2)
    engine.set_precision("tf32")

    def evaluation() -> dict:
        out = timing.time_eval(z.model, x, min(z.eval_images, len(x)))
        return {"precision": "tf32", "images": min(z.eval_images, len(x)), **out}
    phase.part(res, "eval", evaluation, 2)
    single = res["settings"].get("tf32", {}).get("train_img_s")
    phase.part(res, "concurrent", lambda: concurrent(check, phase, single), 10)
    compiled = "bf16+channels_last+compile"
    if z.compile:
        phase.part(res["settings"], compiled, lambda: time_setting(check, compiled, x, labels, flops), 30)
    else:
        res["settings"][compiled] = {"status": "skipped", "reason": "dry run: torch.compile takes minutes on a CPU; "
                                                                    "the GPU check times it"}
    engine.set_precision("tf32")
    return res


# ----------------------------------------------------------------------------------------------------
# (e) a full-scale run, cut off at the deadline

def choose_setting(check: Check) -> tuple[str, str]:
    """The fastest setting of phase d whose precision phase a found correct (without bf16 on a CPU, where the
    training scripts refuse it, and without compiling when it would take most of the time left); and why."""
    precisions = check.phases.get("a_numerics", {}).get("precisions", {})
    correct = {p for p, r in precisions.items() if r.get("correct")}
    measured = check.phases.get("d_throughput", {}).get("settings", {})
    usable = {k: measured[k] for k in SETTINGS if measured.get(k, {}).get("status") == "ok"
              and SETTINGS[k][0] in correct and (check.device.type == "cuda" or SETTINGS[k][0] != "bf16")}
    if usable:
        best = max(usable, key=lambda k: usable[k]["train_img_s"])
        why = (f"the fastest in phase d ({usable[best]['train_img_s']:.0f} img/s) of the settings whose precision "
               "phase a found correct")
        if "compile" in best and check.left() < usable[best]["warmup_s"] + 120:
            plain = {k: v for k, v in usable.items() if "compile" not in k}
            if plain:
                best = max(plain, key=lambda k: plain[k]["train_img_s"])
                why += f"; not compiled, since compiling (measured {usable[best]['warmup_s']:.0f} s) would take " \
                       "most of the time left"
        return best, why
    for fallback in ("tf32", "fp32"):
        if fallback in correct:
            return fallback, f"phase d measured no usable setting; {fallback}, which phase a found correct"
    return "tf32", "neither phase a nor phase d gave a verdict; the default, tf32"


def phase_full_run(check: Check, phase: Phase) -> dict:
    z, res = check.sizes, phase.res
    setting, why = choose_setting(check)
    precision, extra = SETTINGS[setting]
    batch = 128 if not check.dry_run else z.train_batch
    n_epochs, lc_n_epoch = 300, 250
    flags = [*NOISE_FLAGS, "--sigma", "1.0", "--mo", "--lc_n_epoch", str(lc_n_epoch), "--n_epochs", str(n_epochs),
             "--model", z.full_model, "--batch_size", str(batch), "--lr", "0.001", "--seed", str(SEED),
             "--precision", precision, *extra, "--data_dir", check.data["root"], "--device", check.device.type]
    out = check.out / "e_full_run"
    res.update(setting=setting, why=why, command="python train_cifar.py " + " ".join(flags), data=check.data["source"])
    with check.child([*script("train_cifar.py"), *flags, "--out_dir", str(out)], "full_run") as child:
        ended = child.wait(phase.end - STOP_S)
    res.update(rc=child.rc, stopped_at_deadline=not ended)
    if ended and child.rc != 0:
        res.update(status="failed", error=child.error())
        return res
    folders = list((out / "runs").glob("*/metrics.csv"))
    seconds = [r["seconds"] for r in runs.read_metrics(folders[0])] if folders else []
    res.update(epochs_done=len(seconds), epoch_seconds=[round(s, 2) for s in seconds])
    if not seconds:
        res.update(status="skipped", reason=f"no epoch was complete in the {res['budget_s']:.0f} s left")
        return res
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
    return res


# ----------------------------------------------------------------------------------------------------
# The check

PHASE_FUNCTIONS = {"a_numerics": phase_numerics, "b_models": phase_models, "c_tune": phase_tune,
                   "d_throughput": phase_throughput, "e_full_run": phase_full_run}
NEEDS_DATA = {"b_models", "c_tune", "e_full_run"}


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
    except FileNotFoundError:
        out["nvidia_smi"] = "not found"
    except subprocess.TimeoutExpired:
        out["nvidia_smi"] = "timed out"
    try:
        from cuda.bindings import driver
        err, version = driver.cuDriverGetVersion()
        out["cuda_driver_api"] = f"{version // 1000}.{version % 1000 // 10}" if int(err) == 0 else f"unknown ({err})"
    except Exception as e:     # a probe only: whatever a machine without the driver library raises
        out["cuda_driver_api"] = f"unknown ({one_line(e)[:120]})"
    return out


def environment(argv: list[str], device: torch.device, mode: str) -> dict:
    env = {"python": platform.python_version(), "torch": str(torch.__version__), "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cuda_available": torch.cuda.is_available(), "device": str(device), "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                      "memory_gib": round(props.total_memory / 2 ** 30, 1),
                      "compute_capability": f"{props.major}.{props.minor}"}
    env["driver"] = driver_version()
    env["ray"] = importlib.metadata.version("ray") if importlib.util.find_spec("ray") else "not installed"
    env.update(command=" ".join(["python", "bench.py", *argv]),
               started=datetime.datetime.now().isoformat(timespec="seconds"),
               host=platform.node(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               code=runs.code_version(), dry_run=mode == "dry_run",
               **({"dry_run_meaning": DRY_RUN_MEANING} if mode == "dry_run" else {}), deadline_s=DEADLINE_S[mode],
               budget_s=BUDGETS_S[mode], sizes=dataclasses.asdict(DRY_SIZES if mode == "dry_run" else GPU_SIZES))
    return env


DRY_RUN_MEANING = ("dry run: no GPU was used. 'ok' says a phase ran to the end at toy size; the CUDA-against-CPU "
                   "differences compare the CPU with itself (0 by construction), and the speeds and the projected "
                   "run time are this CPU's at toy size, not a GPU's")


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


def json_ready(obj):
    """The summary with every non-finite float as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float):
        return finite(obj)
    return obj


def failed(summary: dict) -> bool:
    return not summary.get("finished") or any(p.get("status") == "failed" for p in summary["phases"].values())


def raise_stopped(signum, frame):
    raise Stopped


def main(out_dir: Path, data_dir: Path, dry_run: bool, argv: list[str]) -> dict:
    """Run the check into `out_dir` (bench.py --gpu_check); return the summary written to gpu_check.json."""
    problem = refusal(out_dir, dry_run)
    if problem:
        cli.fail(problem)
    # before the first cuBLAS call (which fixes its workspace): phase a's --deterministic steps need it; the
    # commands the check starts do not get it, so that their timings are those of ordinary runs
    ours = "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    mode = "dry_run" if dry_run else "gpu"
    device = torch.device("cpu" if dry_run else "cuda")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log = Log(out_dir / LOG_NAME)
    check = Check(out_dir, device, dry_run, DRY_SIZES if dry_run else GPU_SIZES, log, start + DEADLINE_S[mode],
                  child_env={"CUBLAS_WORKSPACE_CONFIG": None} if ours else {})
    summary = {"finished": False, "environment": environment(argv, device, mode), "data": None,
               "phases": check.phases, "total_s": None}

    def save() -> None:
        summary["total_s"] = round(time.time() - start, 1)
        text = json.dumps(json_ready(summary), indent=2, allow_nan=False)
        files.write_atomic(out_dir / JSON_NAME, lambda tmp: tmp.write_text(text))

    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(streams[0], log, "stdout"), Tee(streams[1], log, "stderr")
    old_term = signal.signal(signal.SIGTERM, raise_stopped)
    stopped = False
    try:
        print(f"gpu check{' (dry run)' if dry_run else ''} on {device}: writing {out_dir / JSON_NAME} and "
              f"{out_dir / LOG_NAME}; done within {DEADLINE_S[mode]} s", flush=True)
        save()
        try:
            check.data = summary["data"] = prepare_data(out_dir, data_dir, check.sizes, dry_run)
            print(f"gpu check: data: {check.data['source']}", flush=True)
        except Exception as e:
            log.write(traceback.format_exc().rstrip().replace("\n", "\n    "))
            summary["data"] = {"error": one_line(e)}
        except Stopped:
            stopped = True
        for key, fn in PHASE_FUNCTIONS.items():
            if stopped:
                check.phases[key] = {"status": "skipped", "reason": "the check was stopped by SIGTERM"}
            elif key in NEEDS_DATA and not check.data:
                check.phases[key] = {"status": "skipped", "reason": f"no data: {summary['data'].get('error')}"}
            else:
                try:
                    run_phase(check, key, fn, BUDGETS_S[mode])
                except Stopped:
                    stopped = True
            save()
        summary["finished"] = not stopped
        save()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        sys.stdout, sys.stderr = streams
        log.close()
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
