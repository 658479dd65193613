"""The GPU check that `python bench.py --gpu_check OUT_DIR` runs within 8 minutes on one GPU (`--dry_run`: the same
phases at toy size on the CPU, without a clock): numerics against the CPU, the four models, a shared-GPU sweep,
throughput, a full run cut off at the deadline. docs/performance.md ("The GPU check") says what each one reports."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.metadata
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
from types import SimpleNamespace

import numpy as np
import torch

import cli
import engine
import files
import methods
import runs
import timing
from data import CIFAR, load_cifar_noisy
from datasets.augment import random_crop_flip

CODE_DIR = Path(__file__).resolve().parent
JSON_NAME, LOG_NAME = "gpu_check.json", "gpu_check.log"
SEED = 1
# The clock of a GPU run (a dry run has none): seconds from the start by which every phase is done (8 minutes less
# room for start-up, a last SIGTERM's grace and the summary), and the most each phase may take (None: what is left)
DEADLINE_S = 440
BUDGETS_S = {"a_numerics": 45, "b_models": 140, "c_tune": 75, "d_throughput": 130, "e_full_run": None}
MIN_PHASE_S = 5          # a phase with less time than this is skipped
GRACE_S = 15             # after SIGTERM, how long a command may take to stop before it is killed
STOP_S = 5               # time kept within a phase for a run to stop on SIGTERM (its current step, its last lines)
DRY_RUN_EPOCHS = 2       # a dry run's phase e is stopped after this many epochs (on a GPU, at the deadline)
LOG = logging.getLogger("gpu_check")
# How big each phase is: (the GPU check's size, the dry run's toy size)
SIZES = {"model": ("wrn-28-2", "wrn-16-1"),                  # network of phases a-d
         "batch": (128, 16),                                 # batch of phases a and d
         "numerics_test": (512, 32),                         # test images evaluated in phase a
         "synthetic": ((50000, 10000), (400, 100)),          # training and test images written without CIFAR-10
         "train_subset": (5000, 160), "test_subset": (1000, 60),     # phase b
         "resume_subset": (2000, 160),                       # phase b's interrupted run
         "train_batch": (128, 32),                           # batch of phases b, c and e
         "tune_subset": ((1000, 500), (120, 60)), "tune_epochs": (2, 1),
         "gpus_per_trial": (0.33, 0), "cpus_per_trial": (1, 0.5),
         "steps": (100, 2), "rounds": (2, 1),                # phase d: timed steps per setting and round
         "warmup_batches": (3, 1), "profile_steps": (5, 1), "eval_images": (10000, 64),
         "processes": (4, 4),                                # concurrent training processes
         "compile": (True, False),                           # time the compiled setting (minutes on a CPU)
         "full_model": ("wrn-28-2", "wrn-16-1")}             # phase e
GPU_SIZES, DRY_SIZES = (SimpleNamespace(**{k: v[dry] for k, v in SIZES.items()}) for dry in (False, True))
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
DRY_RUN_MEANING = ("dry run: no GPU was used. 'ok' says a phase ran to the end at toy size; the CUDA-against-CPU "
                   "differences compare the CPU with itself (0 by construction), and the speeds and the projected "
                   "run time are this CPU's at toy size, not a GPU's")


# ----------------------------------------------------------------------------------------------------
# Phases and their parts, the log, and the commands the check starts

@dataclasses.dataclass
class Check:
    """What every phase needs: the folder, the device, the sizes, the clock, and the results so far."""
    out: Path
    device: torch.device
    dry_run: bool
    sizes: SimpleNamespace
    deadline: float                                 # time.monotonic() by which all is done (inf in a dry run)
    child_env: dict = dataclasses.field(default_factory=dict)  # for the commands it starts (None: unset)
    data: dict = dataclasses.field(default_factory=dict)       # the data root and what it holds
    phases: dict = dataclasses.field(default_factory=dict)     # the JSON's phases so far (phase e reads a and d)
    phase: str = "setup"                            # the phase under way, its end, and its parts not ok
    phase_end: float = math.inf
    failures: list = dataclasses.field(default_factory=list)
    skips: list = dataclasses.field(default_factory=list)

    def note(self, text: str, source: str = "") -> None:
        for line in filter(str.strip, re.split(r"[\r\n]", text)):
            LOG.info("[%s%s] %s", self.phase, f"/{source}" if source else "", line)

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.note(line)

    def left(self) -> float:
        return self.phase_end - time.monotonic()

    def error(self, e: BaseException) -> str:
        """The error on one line, for the JSON; its traceback goes to the log."""
        self.note(traceback.format_exc())
        text = " ".join(str(e).split())
        return f"{type(e).__name__}: {text}"[:600] if text else type(e).__name__


def part(check: Check, where: dict, name: str, fn, need_s: float = 1.0) -> dict | None:
    """where[name] = {"status", "seconds", **fn()}, or skipped with less than `need_s` of the phase left, or failed
    with its one-line error; the phase's other parts still run. The dict when ok, else None."""
    if check.left() < need_s:
        where[name] = {"status": "skipped", "reason": f"{max(check.left(), 0):.0f} s of the phase's budget left, "
                                                      f"about {need_s:.0f} s needed"}
        check.skips.append(name)
        return None
    t0, stderr = time.monotonic(), io.StringIO()
    check.note(f"-- {name}")
    try:
        with contextlib.redirect_stderr(stderr):    # warnings, and the one line of a refusal (cli.fail), to the log
            figures = fn()
        where[name] = {"status": "failed" if figures.get("error") else "ok",
                       "seconds": round(time.monotonic() - t0, 1), **figures}
    except runs.Terminated:
        where[name] = {"status": "skipped", "reason": "cut off: the check was stopped by SIGTERM"}
        raise
    except (Exception, SystemExit) as e:
        said = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
        where[name] = {"status": "failed", "error": said[-1] if said else check.error(e)}
    finally:
        check.note(stderr.getvalue(), "stderr")
    if where[name]["status"] == "failed":
        check.failures.append(f"{name}: {where[name]['error']}")
    return where[name] if where[name]["status"] == "ok" else None


def run_phase(check: Check, key: str, fn) -> dict:
    """Run one phase (on a GPU within its budget and the deadline); its dict for the JSON, also check.phases[key]
    from the start, so that a phase stopped by SIGTERM keeps what it had."""
    now, check.phase, check.failures, check.skips = time.monotonic(), key, [], []
    budget = None if check.dry_run else max(min(BUDGETS_S[key] or math.inf, check.deadline - now), 0)
    res = check.phases[key] = {"status": "ok", "budget_s": None if budget is None else round(budget, 1)}
    if budget is not None and budget < MIN_PHASE_S:
        res.update(status="skipped", reason=f"{budget:.0f} s left before the deadline, {MIN_PHASE_S} s needed at least")
        check.note(f"skipped: {res['reason']}")
        return res
    check.phase_end = now + (math.inf if budget is None else budget)
    check.say(f"gpu check: phase {key}" + ("" if budget is None else f" (budget {budget:.0f} s)"))
    try:
        fn(check, res)
    except runs.Terminated:
        res.update(status="skipped", reason="cut off: the check was stopped by SIGTERM")
        raise
    except Exception as e:
        res.update(status="failed", error=check.error(e))
    finally:
        res["seconds"] = round(time.monotonic() - now, 1)
    if res["status"] == "ok" and check.failures:
        res.update(status="failed", error=check.failures[0])
    if check.skips:
        res["incomplete"] = f"not run for lack of time: {', '.join(check.skips)}"
    check.say(f"gpu check: phase {key} {res['status']} in {res['seconds']:.0f} s"
              + (f": {res.get('error') or res.get('reason')}" if res["status"] != "ok" else ""))
    return res


def command(check: Check, cmd: list[str], name: str, until: float = math.inf, stop_when=lambda: False,
            env: dict | None = None) -> tuple[int, list[str], bool]:
    """Run `cmd` in a session of its own, as a user runs it, until it ends, the clock (time.monotonic) reaches
    `until` or `stop_when()` holds; then SIGTERM (a run keeps its last checkpoint and exits 143), and GRACE_S later
    SIGKILL to its process group. Its output goes to the log. Returns (exit status, output lines, ended by itself)."""
    check.note("$ " + " ".join(cmd), name)
    env = {k: v for k, v in {**os.environ, "TQDM_DISABLE": "1", **check.child_env, **(env or {})}.items()
           if v is not None}
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(cmd, cwd=CODE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None and time.monotonic() < until and not stop_when():
                time.sleep(0.02)
        finally:
            ended = proc.returncode is not None
            proc.terminate()
            try:
                proc.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            output.seek(0)
            lines = output.read().decode(errors="replace").splitlines()
            check.note("\n".join(lines), name)
    return proc.returncode, lines, ended


def error_of(rc: int, lines: list[str]) -> str:
    """A command's own one-line error, else its last line, for the JSON."""
    errors = [line for line in lines if line.startswith("error:")]
    return f"exit status {rc}: {errors[-1] if errors else (lines[-1] if lines else 'no output')}"[:600]


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(CODE_DIR / name), *args]


def run_to_end(check: Check, cmd: list[str], name: str) -> list[str]:
    """Run a command to its end (on a GPU, within the phase's budget); raises when it fails."""
    rc, lines, ended = command(check, cmd, name, check.phase_end - STOP_S)
    if not ended:
        raise RuntimeError(f"{name} did not finish within the phase's budget")
    if rc != 0:
        raise RuntimeError(error_of(rc, lines))
    return lines


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
    return {"images": images, "labels": labels, "batches": batches, "noise": torch.randn(n, 10, generator=g),
            "test_images": torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8)}


def numerics_run(device: torch.device, precision: str, d: dict, model: str, deterministic: bool = False) -> dict:
    """Three engine.train_epoch steps of SLN-MO-LC (SGD and EMA step each) set up as a run sets them up
    (timing.Trainer: engine.setup, weights made on the CPU), one label correction (engine.correct_labels, on
    un-augmented images so that no device draws) and one evaluation of both networks, all from the draws `d`.

    SLN noise is drawn in train_epoch from the device's generator, which differs between devices; here it is the
    CPU's draw, added to the targets beforehand, and train_epoch runs with sigma 0 (noisy_targets then returns the
    targets as they are): the loss is the same as with sigma 1 and that noise. Returns the tensors to compare, on
    the CPU. Sets torch's deterministic kernels and cudnn.benchmark as engine.run does for --deterministic or not."""
    engine.set_precision(precision)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    batch = str(len(d["batches"][0][0]))
    flags = ["--no-lc_augment", "--eval_batch_size", batch, "--seed", str(SEED), "--precision", precision]
    s = timing.Trainer(model, d["images"].to(device), d["labels"].to(device), int(batch),
                       flags + (["--amp"] if precision == "bf16" else []), method="SLN-MO-LC").state
    initial = [t.detach().cpu().clone() for t in s.model_tensors]
    images, sigma, s.targets, s.sigma = s.x, s.sigma, (s.given.cpu() + s.sigma * d["noise"]).to(device), 0.0
    losses = []
    for idx, xb in d["batches"]:
        # an epoch of one batch made beforehand: the same crops and flips on every device
        made = (idx.to(device), xb.to(device))
        s.members, s.x = made[0], SimpleNamespace(train_batches=lambda *_, made=made: [made])
        losses.append(engine.train_epoch(s)[0].cpu() / len(idx))
    s.x, s.members, s.targets, s.sigma = images, None, s.given.clone(), sigma
    engine.correct_labels(s)
    logits = [engine.predict(net, d["test_images"].to(device), s.mean, s.std, s.eval_bs, amp=s.args.amp).cpu()
              for net in (s.model, s.ema)]
    # the state's float tensors (sln.ema_tensors) split into parameters and BatchNorm's running statistics
    params = dict(s.model.named_parameters())
    is_param = [k in params for k, v in s.model.state_dict().items() if v.is_floating_point()]

    def split(tensors: list[torch.Tensor], want: bool) -> list[torch.Tensor]:
        return [t.detach().float().cpu() for t, p in zip(tensors, is_param) if p == want]
    return {"loss": losses, "weights": split(s.model_tensors, True), "buffers": split(s.model_tensors, False),
            "ema": split(s.ema_tensors, True), "ema_buffers": split(s.ema_tensors, False),
            "initial_weights": split(initial, True), "initial_buffers": split(initial, False),
            "targets": [s.targets.cpu()], "logits": logits}


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
    out.update(eval_logits=differences(got["logits"], ref["logits"]),
               lc_targets_max_abs=differences(got["targets"], ref["targets"])["max_abs"],
               lc_argmax_agreement=float((got["targets"][0].argmax(1) == ref["targets"][0].argmax(1)).float().mean()),
               loss_values=[float(v) for v in got["loss"]])
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
    spec, rng = CIFAR["cifar10"], np.random.default_rng(SEED)
    palette = rng.integers(0, 256, (spec.num_classes, 3, 1, 1)).astype(np.float32)
    (root / spec.folder).mkdir(parents=True)
    y = rng.permutation(np.arange(n_train) % spec.num_classes)
    parts = list(zip(spec.train_files, np.array_split(y, len(spec.train_files))))
    for name, labels in [*parts, (spec.test_files[0], np.arange(n_test) % spec.num_classes)]:
        noise = rng.standard_normal((len(labels), 3, 32, 32), dtype=np.float32) * 50
        images = np.clip(palette[labels] + noise, 0, 255).astype(np.uint8).reshape(len(labels), -1)
        (root / spec.folder / name).write_bytes(pickle.dumps({"data": images, spec.label_key: labels.tolist()}, 2))


def prepare_data(out: Path, data_dir: Path, sizes: SimpleNamespace, dry_run: bool) -> dict:
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
        source = (f"synthetic: {sizes.synthetic[0]} training and {sizes.synthetic[1]} test images in CIFAR-10's "
                  f"layout ({'--dry_run' if dry_run else f'no CIFAR-10 under {data_dir}'})")
    data = load_cifar_noisy("cifar10", root, "sym", 0.4, SEED, custom_noise=True)
    return {"source": source, "root": str(root), "n_train": len(data.labels), "n_test": len(data.test_labels),
            "noise": f"sym p=0.4, generated from seed {SEED} (--custom_noise), {data.noise_rate():.1%} of the labels "
                     "wrong"}


# ----------------------------------------------------------------------------------------------------
# (b) the four models, a run interrupted and resumed on either device, plot.py; (c) a sigma search sharing the GPU

def only_run(out: Path) -> Path:
    found = sorted((out / "runs").glob("*/config.yaml"))
    if len(found) != 1:
        raise RuntimeError(f"expected one run folder in {out / 'runs'}, found {len(found)}")
    return found[0].parent


def epoch_seconds(out: Path) -> list[float]:
    """The seconds of each epoch that the run below `out` has logged so far."""
    found = list((out / "runs").glob("*/metrics.csv"))
    return [r["seconds"] for r in runs.read_metrics(found[0])] if found else []


def run_figures(out: Path) -> dict:
    """The final test accuracy and the epoch times of the finished run below `out`."""
    run_dir, seconds = only_run(out), epoch_seconds(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    steady = seconds[1:] or seconds          # the first epoch also pays for start-up (cudnn.benchmark, allocator)
    return {"exp_id": run_dir.name, "test_acc": summary["last_test_acc"], "best_test_acc": summary["best_test_acc"],
            "epoch_seconds": [round(s, 2) for s in seconds], "seconds_per_epoch": round(sum(steady) / len(steady), 2)}


def plot_run(check: Check, base: Path, source: dict) -> dict:
    if source["status"] != "ok":
        raise RuntimeError("the SLN-MO-LC run of this phase did not finish, so there is no run to plot")
    assets = base / "plots"
    run_to_end(check, script("plot.py", "--exp_id", source["exp_id"], "--plot_type", "curves", "pred_probs",
                             "--runs_dir", str(base / "SLN-MO-LC" / "runs"), "--assets_dir", str(assets),
                             "--device", check.device.type), "plot")
    written = sorted(str(p.relative_to(assets)) for p in assets.rglob("*") if p.is_file())
    return {"exp_id": source["exp_id"], "files": written,
            **({} if any(f.endswith(".png") for f in written) else {"error": "plot.py wrote no figure"})}


def interrupt(check: Check, out: Path, flags: list[str]) -> dict:
    """A run stopped by SIGTERM once its first checkpoint is written: it must exit with 143, keeping it."""
    rc, lines, ended = command(check, script("train_cifar.py", *flags, "--out_dir", str(out)), "interrupted",
                               check.phase_end - STOP_S, lambda: any(out.glob("runs/*/checkpoint.pt")))
    if ended:
        raise RuntimeError("the run ended before its first checkpoint could be interrupted: " + error_of(rc, lines))
    ckpt = torch.load(only_run(out) / "checkpoint.pt", map_location="cpu", weights_only=True)
    wrong = {"error": f"SIGTERM after the first checkpoint gave exit status {rc}, not 143"} if rc != 143 else {}
    return {"rc": rc, "checkpointed_epoch": ckpt["epoch"], "variant": "SLN-MO-LC", **wrong}


def resume(check: Check, base: Path, key: str, on: str) -> dict:
    """A copy of the interrupted run resumed with --device `on`, with the note on another kind of device only."""
    out = base / f"resumed_{key}"
    shutil.copytree(base / "interrupted", out)
    lines = run_to_end(check, script("train_cifar.py", "--resume", only_run(out).name, "--out_dir", str(out),
                                     "--device", on), f"resume_{key}")
    note = any("note: the checkpoint was written on" in line for line in lines)
    figures = {"device": on, "note_printed": note, **run_figures(out)}
    if note != (on != check.device.type):
        figures["error"] = ("resumed on another kind of device without the note that says so" if not note else
                            "resumed on the same kind of device, yet a note says the random stream differs")
    return figures


def phase_models(check: Check, res: dict) -> None:
    z, base, device = check.sizes, check.out / "b_models", check.device.type
    common = [*NOISE_FLAGS, "--model", z.model, "--batch_size", str(z.train_batch), "--n_epochs", "2",
              "--test_subset", str(z.test_subset), "--seed", str(SEED), "--data_dir", check.data["root"]]
    flags = [*common, "--train_subset", str(z.train_subset)]
    res.update(model=z.model, epochs=2, train_subset=z.train_subset, test_subset=z.test_subset, device=device,
               command="python train_cifar.py " + " ".join(flags) + " <variant flags> --device " + device, models={})

    def train(name: str) -> dict:
        run_to_end(check, script("train_cifar.py", *flags, *VARIANT_FLAGS[name], "--device", device, "--out_dir",
                                 str(base / name)), name)
        return {"flags": " ".join(VARIANT_FLAGS[name]), **run_figures(base / name)}
    for name in VARIANT_FLAGS:
        part(check, res["models"], name, lambda name=name: train(name), need_s=10)
    part(check, res, "plot", lambda: plot_run(check, base, res["models"]["SLN-MO-LC"]), need_s=5)
    # a smaller run: its resume on the CPU trains an epoch of WRN-28-2 there
    interrupted = [*common, "--train_subset", str(z.resume_subset), *VARIANT_FLAGS["SLN-MO-LC"], "--device", device]
    if part(check, res, "interrupted", lambda: interrupt(check, base / "interrupted", interrupted), need_s=10):
        # a dry run resumes twice on the CPU: the second resume then stands for the one on the CPU of a GPU machine
        res["resumed"] = {}
        for key, on in (("on_gpu", device), ("on_cpu", "cpu")):
            part(check, res["resumed"], key, lambda key=key, on=on: resume(check, base, key, on), need_s=10)


def phase_tune(check: Check, res: dict) -> None:
    z, out = check.sizes, check.out / "c_tune"
    try:
        res.update(ray=importlib.metadata.version("ray"), gpus_per_trial=z.gpus_per_trial)
    except importlib.metadata.PackageNotFoundError:
        res.update(status="skipped", reason="Ray is not installed in this Python (requirements.txt pins it): no sweep")
        return
    args = [*NOISE_FLAGS, "--lc_n_epoch", "-1", "--sigmas", "0.1", "0.5", "1.0", "--n_epochs", str(z.tune_epochs),
            "--train_subset", str(z.tune_subset[0]), "--test_subset", str(z.tune_subset[1]), "--model", z.model,
            "--batch_size", str(z.train_batch), "--seed", str(SEED), "--gpus_per_trial", f"{z.gpus_per_trial:g}",
            "--cpus_per_trial", f"{z.cpus_per_trial:g}", "--data_dir", check.data["root"], "--out_dir", str(out),
            *(["--device", "cpu"] if check.dry_run else [])]
    res["command"] = " ".join(["python", "tune.py", *args])
    # Ray's own temp folder, short (its socket paths must stay below 107 characters) and apart from any other Ray's;
    # its processes end with tune.py (tune.ray_in_own_session)
    with tempfile.TemporaryDirectory(prefix="sln-ray-", dir="/tmp", ignore_cleanup_errors=True) as ray_tmp:
        rc, lines, ended = command(check, script("tune.py", *args), "tune", check.phase_end - GRACE_S,
                                   env={"RAY_TMPDIR": ray_tmp})
    res["rc"] = rc
    if not ended:
        res.update(status="skipped", reason=f"cut off: the sweep did not finish within the phase's budget "
                                            f"({error_of(rc, lines)})")
    elif rc != 0:
        res.update(status="failed", error=error_of(rc, lines))
    if not ended or rc != 0:
        return
    (sweep,) = (out / "hp").glob("hp_*")
    with open(sweep / "sigma_search.csv", newline="") as f:
        res["trials"] = [{"sigma": float(row["sigma"]), "val_acc_last_pct": float(row["val_acc_last_pct"]),
                          "exp_id": row["exp_id"], "device": runs.read_run_config(
                              sweep / "runs" / row["exp_id"]).get("device_used")} for row in csv.DictReader(f)]
    res.update(sweep=sweep.name,
               best_sigma=re.search(r"best sigma: (\S+)", (sweep / "sigma_search.md").read_text()).group(1))


# ----------------------------------------------------------------------------------------------------
# (d) training and evaluation throughput; (e) a full-scale run, cut off at the deadline

def time_setting(check: Check, setting: str, x: torch.Tensor, labels: torch.Tensor, flops: float) -> dict:
    """Images/s of engine.train_epoch (through timing.Trainer, which takes --amp for bf16) in one setting, best of
    `rounds` epochs of `steps` batches after a warm-up (which is where --compile compiles)."""
    z, (precision, extra) = check.sizes, SETTINGS[setting]
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
    for setting in list(SETTINGS)[:3]:      # the compiled setting last: compiling takes long
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


def projection(check: Check, seconds: list[float], n_epochs: int, lc_n_epoch: int) -> dict:
    """The time of the whole run from the epochs done: their mean (after the first, which pays for start-up,
    cudnn.benchmark and compiling) times n_epochs, plus label correction's pass of the EMA network over the training
    set before each of the last n_epochs - lc_n_epoch epochs, at phase d's evaluation rate and this device's batch."""
    steady = seconds[1:] or seconds
    mean = sum(steady) / len(steady)
    rates = check.phases.get("d_throughput", {}).get("eval", {}).get("eval_img_s", {})
    rate = rates.get(f"batch {engine.default_eval_batch_size(check.device)}")
    lc_extra = check.data["n_train"] / rate if rate else None
    return {"mean_epoch_s": round(mean, 2), "first_epoch_s": round(seconds[0], 2),
            "lc_extra_s_per_epoch": None if lc_extra is None else round(lc_extra, 2),
            "projected_run_s": round(mean * n_epochs + (n_epochs - lc_n_epoch) * (lc_extra or 0), 1),
            "projection": (f"mean epoch seconds (after the first) x {n_epochs} + {n_epochs - lc_n_epoch} label-"
                           "correction epochs x (training images / phase d's evaluation images/s)"
                           + ("" if lc_extra else "; phase d gave no evaluation rate, so without label correction"))}


def phase_full_run(check: Check, res: dict) -> None:
    z, out = check.sizes, check.out / "e_full_run"
    setting, why = choose_setting(check)
    n_epochs, lc_n_epoch = 300, 250
    flags = [*NOISE_FLAGS, "--sigma", "1.0", "--mo", "--lc_n_epoch", str(lc_n_epoch), "--n_epochs", str(n_epochs),
             "--model", z.full_model, "--batch_size", str(128 if not check.dry_run else z.train_batch), "--lr", "0.001",
             "--seed", str(SEED), "--precision", SETTINGS[setting][0], *SETTINGS[setting][1], "--data_dir",
             check.data["root"], "--device", check.device.type]
    res.update(setting=setting, why=why, command="python train_cifar.py " + " ".join(flags), data=check.data["source"])
    # on a GPU it runs until the deadline; a dry run has none, and stops it after a few epochs instead
    rc, lines, ended = command(check, script("train_cifar.py", *flags, "--out_dir", str(out)), "full_run",
                               check.phase_end - STOP_S,
                               lambda: check.dry_run and len(epoch_seconds(out)) >= DRY_RUN_EPOCHS)
    res.update(rc=rc, stopped_at_deadline=not ended)
    seconds = epoch_seconds(out)
    if ended and rc != 0:
        res.update(status="failed", error=error_of(rc, lines))
    elif not seconds:
        res.update(epochs_done=0, epoch_seconds=[], status="skipped",
                   reason="no epoch was complete in the time left")
    else:
        res.update(epochs_done=len(seconds), epoch_seconds=[round(s, 2) for s in seconds],
                   **projection(check, seconds, n_epochs, lc_n_epoch))


# ----------------------------------------------------------------------------------------------------
# The check

PHASES = {"a_numerics": phase_numerics, "b_models": phase_models, "c_tune": phase_tune,
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
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        out["nvidia_smi"] = "not found" if isinstance(e, FileNotFoundError) else "timed out"
    try:
        from cuda.bindings import driver
        err, version = driver.cuDriverGetVersion()
        out["cuda_driver_api"] = f"{version // 1000}.{version % 1000 // 10}" if int(err) == 0 else f"unknown ({err})"
    except Exception as e:     # a probe only: whatever a machine without the driver library raises
        out["cuda_driver_api"] = f"unknown ({type(e).__name__}: {' '.join(str(e).split())}"[:129] + ")"
    return out


def environment(argv: list[str], device: torch.device, dry_run: bool) -> dict:
    gpu = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    try:
        ray = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        ray = "not installed"
    return {"python": platform.python_version(), "torch": str(torch.__version__), "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": gpu is not None, "device": str(device),
            "gpu": gpu and {"name": gpu.name, "count": torch.cuda.device_count(), "memory_gib":
                            round(gpu.total_memory / 2 ** 30, 1), "compute_capability": f"{gpu.major}.{gpu.minor}"},
            "driver": driver_version(), "ray": ray, "command": " ".join(["python", "bench.py", *argv]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "code": runs.code_version(), "dry_run": dry_run,
            **({"dry_run_meaning": DRY_RUN_MEANING} if dry_run else {}),
            # a dry run has no deadline and no budgets: on a busy machine it takes what it takes
            "deadline_s": None if dry_run else DEADLINE_S,
            "budget_s": {k: None if dry_run else v for k, v in BUDGETS_S.items()},
            "sizes": vars(DRY_SIZES if dry_run else GPU_SIZES)}


def refuse(out_dir: Path, dry_run: bool) -> None:
    """One line and exit status 2 when the check cannot start."""
    if (out_dir / JSON_NAME).exists():
        cli.fail(f"{out_dir / JSON_NAME} already holds a GPU check, which is never overwritten; give another OUT_DIR")
    if out_dir.exists() and not out_dir.is_dir():
        cli.fail(f"--gpu_check {out_dir} is a file; give a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        cli.fail(f"--gpu_check {out_dir} is not empty; give a new or empty folder (nothing there is overwritten)")
    if not dry_run and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        cli.fail(f"--gpu_check needs a CUDA GPU, and torch {torch.__version__} ({build}) sees none here; run it on "
                 "the GPU machine, or add --dry_run to rehearse every phase at toy size on this CPU")
    try:
        files.check_writable(out_dir, "--gpu_check")
    except ValueError as e:
        cli.fail(str(e))


def failed(summary: dict) -> bool:
    return not summary.get("finished") or any(p.get("status") == "failed" for p in summary["phases"].values())


def run_all(check: Check, summary: dict, data_dir: Path, save) -> None:
    """The data, then every phase in turn, saving the summary after each."""
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:     # the label noise it generates, in words
            check.data = summary["data"] = prepare_data(check.out, data_dir, check.sizes, check.dry_run)
        check.say(f"{printed.getvalue()}gpu check: data: {check.data['source']}")
    except Exception as e:
        summary["data"] = {"error": check.error(e)}
    for key, fn in PHASES.items():
        if key in NEEDS_DATA and not check.data:
            check.phases[key] = {"status": "skipped", "reason": f"no data: {summary['data'].get('error')}"}
        else:
            run_phase(check, key, fn)
        save()


def main(out_dir: Path, data_dir: Path, dry_run: bool, argv: list[str]) -> dict:
    """Run the check into `out_dir` (bench.py --gpu_check); return the summary written to gpu_check.json. A SIGTERM
    stops the phase under way and the commands it started, skips the rest, writes the summary and exits 143."""
    refuse(out_dir, dry_run)
    # before the first cuBLAS call (which fixes its workspace): phase a's --deterministic steps need it; the
    # commands the check starts do not get it, so that their timings are those of ordinary runs
    child_env = {} if "CUBLAS_WORKSPACE_CONFIG" in os.environ else {"CUBLAS_WORKSPACE_CONFIG": None}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device, start = torch.device("cpu" if dry_run else "cuda"), time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    check = Check(out_dir, device, dry_run, DRY_SIZES if dry_run else GPU_SIZES,
                  math.inf if dry_run else start + DEADLINE_S, child_env)
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
    try:
        with runs.on_sigterm():
            check.say(f"gpu check{' (dry run)' if dry_run else ''} on {device}: writing {out_dir / JSON_NAME} and "
                      f"{out_dir / LOG_NAME}" + ("" if dry_run else f"; done within {DEADLINE_S} s"))
            save()
            run_all(check, summary, data_dir, save)
            summary["finished"] = True
    except runs.Terminated:
        for key in PHASES:
            check.phases.setdefault(key, {"status": "skipped", "reason": "the check was stopped by SIGTERM"})
    finally:
        save()
        LOG.removeHandler(handler)
        handler.close()
    for key, p in check.phases.items():
        why = p.get("error") or p.get("reason") or p.get("incomplete") or ""
        print(f"  {key:<13} {p['status']:<8} {p.get('seconds', 0):6.1f} s  {why}")
    if dry_run:
        print(f"gpu check: {DRY_RUN_MEANING}")
    print(f"gpu check: {summary['total_s']:.0f} s in all; summary in {out_dir / JSON_NAME}, "
          f"log in {out_dir / LOG_NAME}")
    if not summary["finished"]:
        sys.exit(143)
    return summary
