"""The GPU check of `python bench.py --gpu_check OUT_DIR`, done within 8 minutes on one GPU (`--dry_run`: the same
phases at toy size on the CPU, without a clock). docs/performance.md ("The GPU check") says what each phase runs and
reports; timing.py measures, this module runs the phases, their clock and the commands they start."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
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

import torch

import cli
import engine
import files
import methods
import runs
import timing
from data import CIFAR, load_cifar_noisy, write_synthetic_cifar

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
# How big each phase is: (the GPU check's size, the dry run's toy size). Phases a-d train `model`, a and d in batches
# of `batch`, b, c and e of `train_batch`; d times `steps` per setting and round, and `processes` side by side.
SIZES = {"model": ("wrn-28-2", "wrn-16-1"), "batch": (128, 16), "train_batch": (128, 32), "numerics_test": (512, 32),
         "synthetic": ((50000, 10000), (400, 100)),          # training and test images written without CIFAR-10
         "train_subset": (5000, 160), "test_subset": (1000, 60), "resume_subset": (2000, 160),
         "tune_subset": ((1000, 500), (120, 60)), "tune_epochs": (2, 1), "gpus_per_trial": (0.33, 0),
         "cpus_per_trial": (1, 0.5), "steps": (100, 2), "rounds": (2, 1), "warmup_batches": (3, 1),
         "profile_steps": (5, 1), "eval_images": (10000, 64), "processes": (4, 4),
         "compile": (True, False),                           # time the compiled setting (minutes on a CPU)
         "full_model": ("wrn-28-2", "wrn-16-1")}             # phase e
GPU_SIZES, DRY_SIZES = (SimpleNamespace(**{k: v[dry] for k, v in SIZES.items()}) for dry in (False, True))
VARIANT_FLAGS = {name: methods.argv(name) for name, m in methods.METHODS.items() if m.by_flags}  # the paper's four
NOISE_FLAGS = ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--custom_noise"]
# phase d's settings: (precision, extra training flags); the compiled one is timed last, as compiling takes long
SETTINGS = {"fp32": ("fp32", []), "tf32": ("tf32", []), "bf16+channels_last": ("bf16", ["--channels_last"]),
            "bf16+channels_last+compile": ("bf16", ["--channels_last", "--compile"])}
COMPILED = "bf16+channels_last+compile"
DRY_RUN_MEANING = ("dry run: no GPU was used. 'ok' says a phase ran to the end at toy size; the CUDA-against-CPU "
                   "differences compare the CPU with itself (0 by construction), and the speeds and the projected "
                   "run time are this CPU's at toy size, not a GPU's")


# ----------------------------------------------------------------------------------------------------
# Phases and their parts, the log, and the commands the check starts

@dataclasses.dataclass
class Check:
    """What every phase needs: the folder, the device, the sizes, the clock (time.monotonic(); inf in a dry run),
    the environment of the commands it starts (None: unset), the data, and the results so far (phase e reads a, d)."""
    out: Path
    device: torch.device
    dry_run: bool
    sizes: SimpleNamespace
    deadline: float
    child_env: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    phases: dict = dataclasses.field(default_factory=dict)
    phase: str = "setup"                            # the phase under way, its end, and its parts not ok
    phase_end: float = math.inf
    failures: list = dataclasses.field(default_factory=list)
    skips: list = dataclasses.field(default_factory=list)

    def note(self, text: str, source: str = "", say: bool = False) -> None:
        """Lines to the log (and with `say`, to the terminal)."""
        if say:
            print(text, flush=True)
        for line in filter(str.strip, re.split(r"[\r\n]", text)):
            LOG.info("[%s%s] %s", self.phase, f"/{source}" if source else "", line)


@contextlib.contextmanager
def recorded(check: Check, res: dict):
    """What the block raises as res's status: failed with the error on one line (its traceback to the log), or
    skipped when a SIGTERM stops the check (which goes on up); and res's seconds."""
    t0 = time.monotonic()
    try:
        yield
    except runs.Terminated:
        res.update(status="skipped", reason="cut off: the check was stopped by SIGTERM")
        raise
    except (Exception, SystemExit) as e:
        check.note(traceback.format_exc())
        text = " ".join(str(e).split())
        res.update(status="failed", error=f"{type(e).__name__}: {text}"[:600] if text else type(e).__name__)
    finally:
        res["seconds"] = round(time.monotonic() - t0, 1)


def part(check: Check, where: dict, name: str, fn, need_s: float = 1.0) -> dict | None:
    """where[name] = {"status", "seconds", **fn()}; skipped with less than `need_s` of the phase left; failed with
    its one-line error (a refusal's own line, cli.fail), the phase's other parts still running. The dict when ok."""
    left = check.phase_end - time.monotonic()
    if left < need_s:
        where[name] = {"status": "skipped", "reason": f"{max(left, 0):.0f} s of the phase's budget left, "
                                                      f"about {need_s:.0f} s needed"}
        check.skips.append(name)
        return None
    res = where[name] = {"status": "ok"}
    stderr = io.StringIO()
    check.note(f"-- {name}")
    try:
        with recorded(check, res), contextlib.redirect_stderr(stderr):     # warnings and refusals: to the log
            res.update(fn())
    finally:
        check.note(stderr.getvalue(), "stderr")
    said = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    if res.get("error"):
        res.update(status="failed", error=said[-1] if said and res["status"] == "failed" else res["error"])
        check.failures.append(f"{name}: {res['error']}")
    return res if res["status"] == "ok" else None


def run_phase(check: Check, key: str, fn) -> dict:
    """Run one phase (on a GPU within its budget and the deadline) into check.phases[key], which holds its dict from
    the start, so that a phase stopped by SIGTERM keeps what it had."""
    now, check.phase, check.failures, check.skips = time.monotonic(), key, [], []
    budget = None if check.dry_run else max(min(BUDGETS_S[key] or math.inf, check.deadline - now), 0)
    res = check.phases[key] = {"status": "ok", "budget_s": None if budget is None else round(budget, 1)}
    if budget is not None and budget < MIN_PHASE_S:
        res.update(status="skipped", reason=f"{budget:.0f} s left before the deadline, {MIN_PHASE_S} s needed at least")
        return res
    check.phase_end = now + (math.inf if budget is None else budget)
    check.note(f"gpu check: phase {key}" + ("" if budget is None else f" (budget {budget:.0f} s)"), say=True)
    with recorded(check, res):
        fn(check, res)
    if res["status"] == "ok" and check.failures:
        res.update(status="failed", error=check.failures[0])
    if check.skips:
        res["incomplete"] = f"not run for lack of time: {', '.join(check.skips)}"
    check.note(f"gpu check: phase {key} {res['status']} in {res['seconds']:.0f} s"
               + (f": {res.get('error') or res.get('reason')}" if res["status"] != "ok" else ""), say=True)
    return res


def command(check: Check, cmd: list[str], name: str, until: float = math.inf, stop_when=lambda: False,
            env: dict | None = None) -> tuple[int, list[str], bool]:
    """Run `cmd` in a session of its own, as a user runs it, until it ends, time.monotonic() reaches `until` or
    `stop_when()` holds; then SIGTERM (a run keeps its last checkpoint and exits 143), and GRACE_S later SIGKILL to
    its process group. Its output goes to the log. Returns (exit status, output lines, ended by itself)."""
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


def script(check: Check, name: str, *args: str, key: str = "", stop_when=None, env: dict | None = None):
    """`python <name> <args>` through command() until the phase's end (less STOP_S); with `stop_when` its
    (exit status, lines, ended), else its lines once it has ended with exit status 0, or RuntimeError."""
    rc, lines, ended = command(check, [sys.executable, str(CODE_DIR / name), *args], key or name,
                               check.phase_end - STOP_S, stop_when or (lambda: False), env)
    if stop_when:
        return rc, lines, ended
    if not ended or rc != 0:
        raise RuntimeError(error_of(rc, lines) if ended else f"{key or name} did not finish within the phase's budget")
    return lines


# ----------------------------------------------------------------------------------------------------
# (a) numerics: the GPU against the CPU from the same draws; the data of phases b, c and e

def phase_numerics(check: Check, res: dict) -> None:
    z, t0 = check.sizes, time.monotonic()
    d = timing.draws(z.batch, z.numerics_test, SEED)
    reference = timing.numerics_run(torch.device("cpu"), "fp32", d, z.model, SEED)
    need = time.monotonic() - t0
    res.update(model=z.model, batch=z.batch, steps=len(d["batches"]), device=str(check.device),
               reference=f"cpu, strict float32, {torch.get_num_threads()} torch threads",
               what=("3 x engine.train_epoch of one batch (SGD + EMA step), engine.correct_labels on un-augmented "
                     "images, engine.logits_of of the network and the EMA on test images; initial weights, batches "
                     "and SLN noise drawn on the CPU"), tolerance=timing.TOLERANCE, precisions={})
    for p in cli.PRECISIONS:
        part(check, res["precisions"], p, lambda p=p: timing.compare(
            timing.numerics_run(check.device, p, d, z.model, SEED), reference, p), need)
    part(check, res, "deterministic_twice", lambda: timing.deterministic_twice(check.device, d, z.model, SEED),
         2 * need)


def prepare_data(out: Path, data_dir: Path, sizes: SimpleNamespace, dry_run: bool) -> dict:
    """A data root below OUT_DIR: CIFAR-10 linked from `data_dir` when it is there (not in a dry run), else
    synthetic images; plus its label noise, generated once here (runs started side by side must not all write it)."""
    spec = CIFAR["cifar10"]
    real = data_dir / spec.folder
    if not dry_run and all((real / f).is_file() for f in spec.train_files + spec.test_files):
        root = out / "data"
        root.mkdir()
        (root / spec.folder).symlink_to(real.resolve(), target_is_directory=True)
        source = f"CIFAR-10 from {real.resolve()} (linked)"
    else:
        root = out / "synthetic_data"
        write_synthetic_cifar(root, "cifar10", *sizes.synthetic, seed=SEED)
        source = (f"synthetic: {sizes.synthetic[0]} training and {sizes.synthetic[1]} test images in CIFAR-10's "
                  f"layout ({'--dry_run' if dry_run else f'no CIFAR-10 under {data_dir}'})")
    data = load_cifar_noisy("cifar10", root, "sym", 0.4, SEED, custom_noise=True)
    return {"source": source, "root": str(root), "n_train": len(data.labels), "n_test": len(data.test_labels),
            "noise": f"sym p=0.4, generated from seed {SEED} (--custom_noise), {data.noise_rate():.1%} of the labels "
                     "wrong"}


# ----------------------------------------------------------------------------------------------------
# (b) the four models, a run interrupted and resumed on either device, plot.py; (c) a sigma search sharing the GPU

def epoch_seconds(out: Path) -> list[float]:
    """The seconds of each epoch that the run below `out` has logged so far."""
    found = list((out / "runs").glob("*/metrics.csv"))
    return [r["seconds"] for r in runs.read_metrics(found[0])] if found else []


def run_figures(out: Path) -> dict:
    """The final test accuracy and the epoch times of the one finished run below `out`."""
    (run_dir,) = [p.parent for p in (out / "runs").glob("*/summary.json")]
    summary, seconds = json.loads((run_dir / "summary.json").read_text()), epoch_seconds(out)
    steady = seconds[1:] or seconds          # the first epoch also pays for start-up (cudnn.benchmark, allocator)
    return {"exp_id": run_dir.name, "test_acc": summary["last_test_acc"], "best_test_acc": summary["best_test_acc"],
            "epoch_seconds": [round(s, 2) for s in seconds], "seconds_per_epoch": round(sum(steady) / len(steady), 2)}


def plot_run(check: Check, base: Path, source: dict) -> dict:
    if source["status"] != "ok":
        raise RuntimeError("the SLN-MO-LC run of this phase did not finish, so there is no run to plot")
    assets = base / "plots"
    script(check, "plot.py", "--exp_id", source["exp_id"], "--plot_type", "curves", "pred_probs", "--runs_dir",
           str(base / "SLN-MO-LC" / "runs"), "--assets_dir", str(assets), "--device", check.device.type)
    written = sorted(str(p.relative_to(assets)) for p in assets.rglob("*") if p.is_file())
    return {"exp_id": source["exp_id"], "files": written,
            **({} if any(f.endswith(".png") for f in written) else {"error": "plot.py wrote no figure"})}


def interrupt(check: Check, out: Path, flags: list[str]) -> dict:
    """A run stopped by SIGTERM once its first checkpoint is written: it must exit with 143, keeping it."""
    rc, lines, ended = script(check, "train_cifar.py", *flags, "--out_dir", str(out), key="interrupted",
                              stop_when=lambda: any(out.glob("runs/*/checkpoint.pt")))
    if ended:
        raise RuntimeError("the run ended before its first checkpoint could be interrupted: " + error_of(rc, lines))
    (ckpt,) = out.glob("runs/*/checkpoint.pt")
    epoch = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]
    wrong = {"error": f"SIGTERM after the first checkpoint gave exit status {rc}, not 143"} if rc != 143 else {}
    return {"rc": rc, "checkpointed_epoch": epoch, "variant": "SLN-MO-LC", **wrong}


def resume(check: Check, base: Path, key: str, on: str) -> dict:
    """A copy of the interrupted run resumed with --device `on`, with the note on another kind of device only."""
    out = base / f"resumed_{key}"
    shutil.copytree(base / "interrupted", out)
    (run_dir,) = (out / "runs").iterdir()
    lines = script(check, "train_cifar.py", "--resume", run_dir.name, "--out_dir", str(out), "--device", on,
                   key=f"resume_{key}")
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
        script(check, "train_cifar.py", *flags, *VARIANT_FLAGS[name], "--device", device, "--out_dir",
               str(base / name), key=name)
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
    if timing.ray_version() is None:
        res.update(status="skipped", reason="Ray is not installed in this Python (requirements.txt pins it): no sweep")
        return
    args = [*NOISE_FLAGS, "--lc_n_epoch", "-1", "--sigmas", "0.1", "0.5", "1.0", "--n_epochs", str(z.tune_epochs),
            "--train_subset", str(z.tune_subset[0]), "--test_subset", str(z.tune_subset[1]), "--model", z.model,
            "--batch_size", str(z.train_batch), "--seed", str(SEED), "--gpus_per_trial", f"{z.gpus_per_trial:g}",
            "--cpus_per_trial", f"{z.cpus_per_trial:g}", "--data_dir", check.data["root"], "--out_dir", str(out),
            *(["--device", "cpu"] if check.dry_run else [])]
    res.update(ray=timing.ray_version(), gpus_per_trial=z.gpus_per_trial, command=" ".join(["python", "tune.py", *args]))
    # Ray's own temp folder, short (its socket paths must stay below 107 characters) and apart from any other Ray's;
    # its processes end with tune.py (cluster.ray_in_own_session)
    with tempfile.TemporaryDirectory(prefix="sln-ray-", dir="/tmp", ignore_cleanup_errors=True) as ray_tmp:
        rc, lines, ended = script(check, "tune.py", *args, key="tune", stop_when=lambda: False,
                                  env={"RAY_TMPDIR": ray_tmp})
    res["rc"] = rc
    if not ended:
        return res.update(status="skipped", reason=f"cut off: the sweep did not finish within the phase's budget "
                                                   f"({error_of(rc, lines)})")
    if rc != 0:
        return res.update(status="failed", error=error_of(rc, lines))
    (sweep,) = (out / "hp").glob("hp_*")
    with open(sweep / "sigma_search.csv", newline="") as f:
        res["trials"] = [{"sigma": float(row["sigma"]), "val_acc_last_pct": float(row["val_acc_last_pct"]),
                          "exp_id": row["exp_id"], "device": runs.read_run_config(
                              sweep / "runs" / row["exp_id"]).get("device_used")} for row in csv.DictReader(f)]
    res.update(sweep=sweep.name,
               best_sigma=re.search(r"best sigma: (\S+)", (sweep / "sigma_search.md").read_text()).group(1))


# ----------------------------------------------------------------------------------------------------
# (d) training and evaluation throughput; (e) a full-scale run, cut off at the deadline

def phase_throughput(check: Check, res: dict) -> None:
    z, device = check.sizes, check.device
    torch.backends.cudnn.benchmark = True       # as engine.run sets it for every run without --deterministic
    g = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, 256, (z.steps * z.batch, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (len(x),), generator=g).to(device)
    res.update(model=z.model, batch=z.batch, steps=z.steps, rounds=z.rounds, device=str(device),
               train_flops_per_image=timing.train_flops_per_image(z.model), settings={})

    def time_setting(setting: str) -> dict:
        return timing.time_setting(z.model, x, labels, z.batch, *SETTINGS[setting], z.warmup_batches, z.steps,
                                   z.rounds, z.profile_steps)

    def concurrent() -> dict:
        single = res["settings"].get("tf32", {}).get("train_img_s")
        figures, got = timing.concurrent_throughput(z.model, z.batch, z.steps, z.warmup_batches, device.type,
                                                    z.processes, single, until=check.phase_end - STOP_S)
        for k, r in enumerate(got):
            check.note("result " + json.dumps(r), f"worker{k}")
        return figures
    for setting in [k for k in SETTINGS if k != COMPILED]:
        part(check, res["settings"], setting, lambda k=setting: time_setting(k), 2)
    engine.set_precision("tf32")
    n = min(z.eval_images, len(x))
    part(check, res, "eval", lambda: {"precision": "tf32", "images": n, **timing.time_eval(z.model, x, n)}, 2)
    part(check, res, "concurrent", concurrent, 10)
    if z.compile:
        part(check, res["settings"], COMPILED, lambda: time_setting(COMPILED), 30)
    else:
        res["settings"][COMPILED] = {"status": "skipped", "reason": "dry run: torch.compile takes minutes on a CPU; "
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
        fallback = "fp32" if correct == {"fp32"} else "tf32"
        return fallback, f"phase d measured no setting whose precision phase a found correct; {fallback}"
    best = max(usable, key=usable.get)
    why = f"the fastest in phase d ({usable[best]:.0f} img/s) of the settings whose precision phase a found correct"
    plain = {k: v for k, v in usable.items() if k != COMPILED}
    if best == COMPILED and plain and check.deadline - time.monotonic() < measured[best]["warmup_s"] + 120:
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
    rc, lines, ended = script(check, "train_cifar.py", *flags, "--out_dir", str(out), key="full_run",
                              stop_when=lambda: check.dry_run and len(epoch_seconds(out)) >= DRY_RUN_EPOCHS)
    res.update(rc=rc, stopped_at_deadline=not ended)
    seconds = epoch_seconds(out)
    if ended and rc != 0:
        res.update(status="failed", error=error_of(rc, lines))
    elif not seconds:
        res.update(epochs_done=0, epoch_seconds=[], status="skipped", reason="no epoch was complete in the time left")
    else:
        res.update(epochs_done=len(seconds), epoch_seconds=[round(s, 2) for s in seconds],
                   **projection(check, seconds, n_epochs, lc_n_epoch))


# ----------------------------------------------------------------------------------------------------
# The check

PHASES = {"a_numerics": phase_numerics, "b_models": phase_models, "c_tune": phase_tune,
          "d_throughput": phase_throughput, "e_full_run": phase_full_run}
NEEDS_DATA = {"b_models", "c_tune", "e_full_run"}


def run_all(check: Check, summary: dict, data_dir: Path, save) -> None:
    """The data, then every phase in turn, saving the summary after each."""
    data = summary["data"] = {"status": "ok"}
    with recorded(check, data), contextlib.redirect_stdout(io.StringIO()):   # the label noise it makes, in words
        data.update(prepare_data(check.out, data_dir, check.sizes, check.dry_run))
    check.data = data if data["status"] == "ok" else {}
    check.note(f"gpu check: data: {data.get('source') or data['error']}", say=True)
    for key, fn in PHASES.items():
        if key in NEEDS_DATA and not check.data:
            check.phases[key] = {"status": "skipped", "reason": f"no data: {data['error']}"}
        else:
            run_phase(check, key, fn)
        save()


def main(out_dir: Path, data_dir: Path, dry_run: bool, argv: list[str]) -> dict:
    """Run the check into `out_dir` (which bench.py has checked); return the summary written to gpu_check.json. A
    SIGTERM stops the phase under way and the commands it started, skips the rest and writes the summary, which then
    says "finished": false."""
    # before the first cuBLAS call (which fixes its workspace): phase a's --deterministic steps need it; the
    # commands the check starts do not get it, so that their timings are those of ordinary runs
    child_env = {} if "CUBLAS_WORKSPACE_CONFIG" in os.environ else {"CUBLAS_WORKSPACE_CONFIG": None}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device, start = torch.device("cpu" if dry_run else "cuda"), time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    check = Check(out_dir, device, dry_run, DRY_SIZES if dry_run else GPU_SIZES,
                  math.inf if dry_run else start + DEADLINE_S, child_env)
    environment = {**timing.machine(), "device": str(device), "command": " ".join(["python", "bench.py", *argv]),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "dry_run": dry_run,
                   **({"dry_run_meaning": DRY_RUN_MEANING} if dry_run else {}),
                   # a dry run has no deadline and no budgets: on a busy machine it takes what it takes
                   "deadline_s": None if dry_run else DEADLINE_S,
                   "budget_s": {k: None if dry_run else v for k, v in BUDGETS_S.items()}, "sizes": vars(check.sizes)}
    summary = {"finished": False, "environment": environment, "data": None, "phases": check.phases, "total_s": None}

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
            check.note(f"gpu check{' (dry run)' if dry_run else ''} on {device}: writing {out_dir / JSON_NAME} and "
                       f"{out_dir / LOG_NAME}" + ("" if dry_run else f"; done within {DEADLINE_S} s"), say=True)
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
    return summary
