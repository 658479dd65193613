"""A run's folder: its id, config, metrics.csv, TensorBoard log, checkpoints, final weights and summary; resume.

A run `<exp_id>` leaves
  configs/<exp_id>.yaml          every resolved setting, code version, library versions, noise rate, data checksums
  runs/<exp_id>/                 config.yaml (the same), TensorBoard scalars, metrics.csv (one row per epoch),
                                 noise.json, checkpoint.pt (+ checkpoint.prev.pt), model_final.pt, ema_final.pt,
                                 targets_final.pt, summary.json
Everything is written whole or not at all, and nothing that exists is replaced (files.py).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import difflib
import hashlib
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import torch
import yaml

import methods
from data import NoisyData
from files import write_atomic, write_new
from errors import DataError

CODE_DIR = Path(__file__).resolve().parent


class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss, disk full); the message says where and what to do."""

    def __init__(self, message: str, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


# ----------------------------------------------------------------------------------------------------
# Ids and configs

def new_exp_id(out_dir: Path, prefix: str = "exp") -> str:
    """A fresh id, unique even for runs started in the same instant (the folder is created exclusively)."""
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    while True:
        exp_id = f"{prefix}_{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"
        try:
            (out_dir / "runs" / exp_id).mkdir()
            return exp_id
        except FileExistsError:
            continue


def code_version() -> dict:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=CODE_DIR, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"git_commit": git("rev-parse", "HEAD") or "unknown",
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def library_versions() -> dict:
    import torchvision
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(np.__version__)}


def save_config(path: Path, config: dict) -> None:
    """Write a YAML file whole or not at all, and never over an existing one (FileExistsError)."""
    write_new(path, yaml.safe_dump(config, sort_keys=False))


AGAIN = "restore it from a copy of the run, or start the run again"
# flags a run of human labels (CIFAR-N) records as None though they have defaults (cli.check_noise_args unsets them)
UNSET_BY_HUMAN_LABELS = ("noise_mode", "p", "sym_variant", "asym_variant")


def read_run_config(run_dir: Path) -> dict:
    """A run's config.yaml as plain YAML (yaml.safe_load: a tag that would build a Python object is refused), or a
    DataError in one line: unreadable, not YAML, or not a mapping of settings. Every reader of a run's config
    (resume, plot.py, tune.py) goes through here."""
    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); {AGAIN}") from None
    except yaml.YAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise DataError(f"{path} is damaged: not plain YAML{where} ({getattr(e, 'problem', None) or e}); "
                        f"{AGAIN}") from None
    if not isinstance(config, dict):
        held = "nothing" if config is None else f"a {type(config).__name__}"
        raise DataError(f"{path} is damaged: it holds {held}, not a run's settings; {AGAIN}")
    return config


def is_number(x) -> bool:
    """A finite int or float, not a bool."""
    return not isinstance(x, bool) and (isinstance(x, int) or (isinstance(x, float) and np.isfinite(x)))


def flag_value_problem(parser: argparse.ArgumentParser, values: dict) -> str | None:
    """The first of `values` (flag name -> value, as a run's config.yaml or tune.py's sweep.yaml records them) that
    its flag in `parser` would not take, in words: a wrong type, or a choice it does not offer. None when all fit.
    Keys that are no flag of `parser` are not looked at."""
    for action in parser._actions:
        key = action.dest
        if key not in values or action.default == argparse.SUPPRESS:
            continue
        value = values[key]
        if value is None and (action.default is None or key in UNSET_BY_HUMAN_LABELS):
            continue
        if action.nargs == 0:                                   # store_true, --x/--no-x
            fits = lambda v: isinstance(v, bool)  # noqa: E731
        elif action.type in (None, str, Path):
            fits = lambda v: isinstance(v, str)  # noqa: E731
        else:
            fits = lambda v: is_number(v) and (action.type is not int or isinstance(v, int))  # noqa: E731
        items = value if action.nargs in ("*", "+") and isinstance(value, list) else [value]
        if not all(fits(v) and (action.choices is None or v in action.choices) for v in items):
            return f"{key} is {value!r}, which --{key} does not take"
    return None


def device_name(device: str) -> str:
    """The processor that does the arithmetic: the GPU's name, or the CPU model."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU features that decide which kernels torch (ATen's vectorised loops) and oneDNN (convolutions) run on a CPU
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16")
# environment variables that override those choices (or the thread count)
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_isa(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's instruction-set extensions among ISA_FLAGS, as Linux lists them ([] where it lists none)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def runtime(device: str) -> dict:
    """What decides a run's numbers beyond its flags and seed: two runs with equal flags, seed, code, data and this
    record (and --deterministic) are bit-identical (docs/training.md). Torch's intra-op thread count changes how
    sums are split; on a CPU, the instruction set picks the kernels (ATen's `cpu_capability`, e.g. AVX2 or AVX512,
    and oneDNN's convolutions by `cpu_isa`), and either changes the last bits from the first step on."""
    env = {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "torch": str(torch.__version__), "cuda": torch.version.cuda, "device_name": device_name(device),
            "cpu_name": device_name("cpu"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_isa": cpu_isa(), **({"kernel_env": env} if env else {})}


def config_dict(args: argparse.Namespace, **extra) -> dict:
    plain = {k: (str(v.resolve()) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {**plain, **extra, "code": code_version(), "versions": library_versions(), "host": platform.node()}


def data_provenance(data: NoisyData) -> dict:
    """Which copy of the data a run trained on: SHA-256 of the training and test images and labels exactly
    as loaded (after subsets and splits), and whether the files were the official archive (None: unknown).
    Images read from files (Clothing1M) are hashed as their list of paths."""
    def sha(a) -> str:
        if hasattr(a, "digest"):
            return a.digest()
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    return {"train_images_sha256": sha(data.images), "train_labels_sha256": sha(data.labels.astype("<i8")),
            "test_images_sha256": sha(data.test_images), "test_labels_sha256": sha(data.test_labels.astype("<i8")),
            "official_files": data.info.get("official_files")}


def create_run(out: Path, args: argparse.Namespace, data: NoisyData, variant: str, device: str,
               n_val: int | None = None) -> str:
    """A new run folder out/runs/<exp_id>/ with its config.yaml (also as out/configs/<exp_id>.yaml) and
    noise.json; returns the id. The config holds every flag, the code and library versions and the data's
    provenance; lists (indices) and dicts (the noise report) of data.info go to noise.json only."""
    exp_id = new_exp_id(out)
    noise_info = {k: v for k, v in data.info.items() if not isinstance(v, (list, dict))}
    config = config_dict(args, exp_id=exp_id, variant=variant, dataset=data.name, device_used=device,
                         runtime=runtime(device),
                         n_train=len(data.labels), n_test=len(data.test_labels), noise=noise_info,
                         data_provenance=data_provenance(data), **({} if n_val is None else {"n_val": n_val}))
    written = []
    try:
        (out / "configs").mkdir(parents=True, exist_ok=True)
        for path in (out / "configs" / f"{exp_id}.yaml", out / "runs" / exp_id / "config.yaml"):
            save_config(path, config)
            written.append(path)
        write_new(out / "runs" / exp_id / "noise.json", json.dumps(data.info))
    except OSError:    # a full disk: take back what this call made, so that no half run folder stays behind
        for path in written:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (out / "runs" / exp_id).rmdir()
        raise
    return exp_id


def remove_new_run(out: Path, exp_id: str) -> None:
    """Delete what create_run and the first moments of training made (the run folder, created exclusively by this
    process, and configs/<exp_id>.yaml), for a run stopped before its first epoch was checkpointed: nothing of value
    is in it, and a folder left behind would only be one more to resume or delete."""
    shutil.rmtree(out / "runs" / exp_id, ignore_errors=True)
    (out / "configs" / f"{exp_id}.yaml").unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run(run_dir: Path, held: contextlib.ExitStack) -> None:
    """Hold an exclusive lock on the run folder until `held` closes, or raise DataError if another process holds
    it: a --resume typed while the run still trains, or a sweep resumed beside a live one, would otherwise train
    the same folder twice over. The OS drops the lock when the process ends, however it ends (kill -9 included)."""
    lock_folder(run_dir, held, f"run {run_dir.name} is being trained")


def lock_folder(folder: Path, held: contextlib.ExitStack, busy: str) -> None:
    """lock_run's lock on any folder (tune.py: a sweep's); `busy` begins the refusal, e.g. "sweep hp_x is being run"."""
    try:
        import fcntl
    except ImportError:      # Windows: no advisory locks, no check
        return
    f = held.enter_context(open(folder / ".lock", "a+"))
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip()
        raise DataError(f"{busy} by another process ({f'pid {pid}' if pid else 'still running'}); "
                        "wait for it to end, or stop it first, then resume") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Delete what a killed process left half-written in a run folder (`.<name>.tmp<pid>` of a process that is
    gone, and the checkpoint's `.checkpoint.pt.tmp`); return their names. Called when a run is resumed."""
    stale = []
    for path in run_dir.glob(".*.tmp*"):
        pid = path.name.rsplit(".tmp", 1)[1]
        if path.name == ".checkpoint.pt.tmp" or (pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))):
            path.unlink(missing_ok=True)
            stale.append(path.name)
    return sorted(stale)


def check_same_data(run_dir: Path, data: NoisyData) -> None:
    """Refuse, in one line naming what changed, to resume a run on data other than it trained on: the SHA-256 of
    the images and labels (after subsets and splits) and of the noise file, as its config.yaml recorded them."""
    saved = read_run_config(run_dir)
    before = {**(saved.get("data_provenance") or {}),
              "noise_file_sha256": (saved.get("noise") or {}).get("noise_file_sha256")}
    now = {**data_provenance(data), "noise_file_sha256": data.info.get("noise_file_sha256")}
    names = {"train_images_sha256": "the training images", "train_labels_sha256": "the training labels",
             "test_images_sha256": "the test images", "test_labels_sha256": "the test labels",
             "noise_file_sha256": f"the noise file {data.info.get('noise_file', '')}".rstrip()}
    changed = [what for key, what in names.items() if before.get(key) is not None and before[key] != now.get(key)]
    if changed:
        raise DataError(f"run {run_dir.name} cannot be resumed on this data: {', '.join(changed)} differ from what "
                        "it trained on (its config.yaml records their SHA-256); restore the data it used "
                        f"(--data_dir {shlex.quote(str(saved.get('data_dir')))}), or start a new run")


# ----------------------------------------------------------------------------------------------------
# metrics.csv and TensorBoard

def metric_cells(row: dict, fields: list[str]) -> list:
    """One metrics.csv line: a metric the epoch did not compute is an empty cell."""
    return ["" if row.get(k) is None else row[k] for k in fields]


def write_metrics(path: Path, fields: list[str], rows: list[dict]) -> None:
    """metrics.csv with these rows (not atomic: start_log wraps it)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(metric_cells(r, fields) for r in rows)


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv back as dicts of floats (None for empty cells); floats round-trip exactly. A damaged row (fewer
    or more fields than the header, or a field that is not a number, as a kill in the middle of a write leaves) is
    never read as data: it is skipped, with a one-line note naming the file and the row."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        for n, cells in enumerate(reader, start=2):
            try:
                if len(cells) != len(header):
                    raise ValueError(f"{len(cells)} fields, the header has {len(header)}")
                rows.append({k: (None if v == "" else int(v) if k == "epoch" else float(v))
                             for k, v in zip(header, cells)})
            except ValueError as e:
                print(f"note: {path} row {n} is damaged ({e}; cut off by a kill?): skipped", file=sys.stderr)
    return rows


def tensorboard_name(config: dict) -> str:
    """What TensorBoard calls a run below its id: the model, method, noise and seed, so that lines in the scalar
    dashboard say what they are (`exp_.../SLN-MO-LC_sigma1_wrn-16-1_cifar10_sym0.4_seed123`); filter on it with
    TensorBoard's run regex (e.g. `SLN-MO_`, `seed1$`)."""
    noise = (f"{config.get('noise_mode')}{config.get('p')}" + ("custom" if config.get("custom_noise") else "")
             if config.get("noise_mode") else config.get("noise_label") or "")
    sigma = config.get("sigma") or 0
    parts = [config.get("variant"), f"sigma{sigma:g}" if sigma else None, config.get("model"),
             config.get("dataset_name"), noise or None, f"seed{config.get('seed')}"]
    name = "_".join(str(p) for p in parts if p is not None)
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def tensorboard_dir(run_dir: Path, config: dict | None = None) -> Path:
    """Where a run's TensorBoard events go: runs/<exp_id>/<tensorboard_name>/, or the run folder itself for a run
    begun before names were given (its events are there), so that a resumed run stays one line. The run's
    settings come from `config`, else from its config.yaml."""
    if any(run_dir.glob("events.out.tfevents.*")):
        return run_dir
    if config is None:
        config = read_run_config(run_dir)
    return run_dir / tensorboard_name(config)


def start_log(run_dir: Path, fields: list[str], history: list[dict], config: dict):
    """metrics.csv with the rows so far (a resumed run's, up to its checkpoint) and a TensorBoard writer that
    drops any steps after them, so that nothing is counted twice after a resume."""
    from torch.utils.tensorboard import SummaryWriter
    write_atomic(run_dir / "metrics.csv", lambda tmp: write_metrics(tmp, fields, history))
    return SummaryWriter(str(tensorboard_dir(run_dir, config)), purge_step=len(history) + 1)


HPARAM_METRICS = {"last_test_acc": "final/last_test_acc", "best_test_acc": "final/best_test_acc",
                  "test_acc_at_best_val": "final/test_acc_at_best_val"}


def log_hparams(writer, config: dict, summary: dict, hparams: dict[str, type]) -> None:
    """The run's settings and final metrics for TensorBoard's HParams tab, in the run's own event file: the full
    declaration of every setting (`hparams`: name -> type, cli.hparams), this run's values of those it has, and its
    final metrics (every one of them declared, as every setting is)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    kinds = {str: "DATA_TYPE_STRING", bool: "DATA_TYPE_BOOL", int: "DATA_TYPE_FLOAT64", float: "DATA_TYPE_FLOAT64"}
    experiment = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=k, type=api_pb2.DataType.Value(kinds[t])) for k, t in hparams.items()],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in HPARAM_METRICS.values()])
    start = plugin_data_pb2.SessionStartInfo()
    for key, kind in hparams.items():
        value = config.get(key)
        if value is None:
            continue
        if kind is str:
            start.hparams[key].string_value = str(value)
        elif kind is bool:
            start.hparams[key].bool_value = bool(value)
        else:
            start.hparams[key].number_value = float(value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS"))
    for tag, part in ((metadata.EXPERIMENT_TAG, {"experiment": experiment}),
                      (metadata.SESSION_START_INFO_TAG, {"session_start_info": start}),
                      (metadata.SESSION_END_INFO_TAG, {"session_end_info": end})):
        content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **part)
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                     content=content.SerializeToString()))
        writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))
    for key, tag in HPARAM_METRICS.items():
        if summary.get(key) is not None:
            writer.add_scalar(tag, float(summary[key]), summary["epochs"])
    writer.flush()


def log_epoch(run_dir: Path, writer, fields: list[str], row: dict) -> None:
    """One epoch's metrics into TensorBoard and metrics.csv; a metric the epoch did not compute stays empty."""
    for k, v in row.items():
        if k != "epoch" and v is not None:
            writer.add_scalar(k, v, row["epoch"])
    writer.flush()
    with open(run_dir / "metrics.csv", "a", newline="") as f:
        csv.writer(f).writerow(metric_cells(row, fields))


def finish(run_dir: Path, final: dict[str, object], summary: dict) -> None:
    """The final tensors (name -> state dict or tensor) and summary.json, each written atomically; summary.json
    last, since its presence is what marks the run as finished. summary.json holds each final file's SHA-256
    (`sha256`), which load_final checks. A full disk stops the run with its last checkpoint kept."""
    digests = {}
    try:
        for name, obj in final.items():
            write_atomic(run_dir / name, lambda tmp, obj=obj: torch.save(obj, tmp))
            digests[name] = file_sha256(run_dir / name)
        write_atomic(run_dir / "summary.json",
                     lambda tmp: tmp.write_text(json.dumps({**summary, "sha256": digests}, indent=2)))
    except (OSError, RuntimeError) as e:
        raise TrainingStopped(f"could not write the run's final files to {run_dir} ({write_error(e)}); the "
                              "checkpoint of the last epoch is kept; free disk space, then resume", resumable=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_final(run_dir: Path, name: str, summary: dict | None):
    """A final file (model_final.pt, ...) after checking it against the SHA-256 its summary.json recorded (runs
    finished before checksums were recorded are loaded as they are)."""
    path = run_dir / name
    expected = (summary or {}).get("sha256", {}).get(name)
    if expected is not None and file_sha256(path) != expected:
        raise DataError(f"{path} is damaged: its SHA-256 is not the one summary.json recorded when the run "
                        "finished; copy it again from where the run was trained")
    return torch.load(path, map_location="cpu", weights_only=True)


def write_error(e: BaseException) -> str:
    """An OSError or torch's RuntimeError from a write, in plain words: a full disk says 'No space left on
    device', whatever torch's writer made of it (`[enforce fail at inline_container.cc...] ... file write failed`)."""
    errno_ = getattr(e, "errno", None)
    text = str(e)
    if errno_ == 28 or "No space left" in text or (isinstance(e, RuntimeError) and "write failed" in text):
        return "No space left on device"
    if errno_ is not None:
        return os.strerror(errno_)
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------------------------------
# Checkpoints

class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a job scheduler, docker stop), handled as Ctrl-C is, but exiting with 143."""


def raise_terminated(signum, frame):
    raise Terminated


class on_sigterm:
    """While active (main thread only), SIGTERM raises Terminated, so that a run stops as on Ctrl-C: with its
    last complete epoch checkpointed and the command that resumes it."""

    def __enter__(self):
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            self.old = signal.signal(signal.SIGTERM, raise_terminated)
        return self

    def __exit__(self, *exc):
        if self.main:
            signal.signal(signal.SIGTERM, self.old)


class DeferSignals:
    """Hold Ctrl-C and SIGTERM back while a checkpoint is written, so an interrupt never leaves half a file
    behind; the one that came is raised afterwards."""

    def __enter__(self):
        self.caught = None
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            self.old = {sig: signal.signal(sig, lambda n, f: setattr(self, "caught", self.caught or n))
                        for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        if self.main:
            for sig, handler in self.old.items():
                signal.signal(sig, handler)
            if self.caught == signal.SIGTERM and self.old[signal.SIGTERM] is raise_terminated:
                raise Terminated
            if self.caught == signal.SIGTERM:   # not in a run: do what SIGTERM would have done
                signal.raise_signal(signal.SIGTERM)
            if self.caught == signal.SIGINT:
                raise KeyboardInterrupt


CHECKPOINT_KEYS = ("epoch", "model", "ema", "optimizer", "targets", "sigma", "generator", "torch_rng")


def content_sha256(obj) -> str:
    """SHA-256 of a checkpoint's content (tensors by dtype, shape and bytes; everything else by repr), in a fixed
    order: what a flipped byte in the tensor data changes, though the file still loads."""
    h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"D")
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"L")
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())
    feed(obj)
    return h.hexdigest()


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write checkpoint.pt atomically, with its content's SHA-256 inside; the previous one stays (as
    checkpoint.prev.pt) until the new one is whole."""
    path, prev = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    tmp = run_dir / ".checkpoint.pt.tmp"
    with DeferSignals():
        try:
            torch.save({**state, "sha256": content_sha256(state)}, tmp)
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            epoch = state["epoch"]
            kept = (f"the checkpoint of epoch {epoch - 1} is kept; free disk space, then resume" if epoch > 1 else
                    "no epoch was checkpointed yet; free disk space, delete the run folder and start the run again")
            raise TrainingStopped(f"could not write the checkpoint of epoch {epoch} to {run_dir} "
                                  f"({write_error(e)}); {kept}", resumable=epoch > 1)
        if path.exists():
            os.replace(path, prev)
        os.replace(tmp, path)


def check_checkpoint(ckpt) -> None:
    """Raise ValueError saying what is wrong with a loaded checkpoint: not this project's, or altered."""
    if not isinstance(ckpt, dict):
        raise ValueError("not a checkpoint of this project (not a dict)")
    absent = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if absent:
        raise ValueError(f"not a checkpoint of this project: it has no {', '.join(absent)}")
    if "sha256" in ckpt and content_sha256({k: v for k, v in ckpt.items() if k != "sha256"}) != ckpt["sha256"]:
        raise ValueError("its content does not match the checksum stored with it")


def other_run(ckpt: dict, identity: dict) -> str | None:
    """Which other run wrote `ckpt`, in words, or None where it is this run's: a checkpoint records the id of its
    run folder (`exp_id`) and its method (`variant`); `identity` holds this run's. A key the checkpoint lacks (one
    written before it was recorded) is not held against it."""
    differ = {k: ckpt[k] for k, v in identity.items() if k in ckpt and ckpt[k] != v}
    if not differ:
        return None
    theirs = ", ".join(str(ckpt.get(k)) for k in identity if ckpt.get(k) is not None)
    ours = ", ".join(str(v) for v in identity.values())
    return f"written by another run: {theirs}; this run is {ours}"


def load_checkpoint(run_dir: Path, identity: dict | None = None) -> dict:
    """The newest sound checkpoint of a run: checkpoint.pt, or checkpoint.prev.pt if that one is torn, altered,
    foreign, or another run's (its exp_id or variant differ from `identity`'s). A checkpoint.pt that failed is renamed
    checkpoint.damaged.pt at once, so that the next save cannot rotate it over the sound checkpoint.prev.pt."""
    problems = []
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            check_checkpoint(ckpt)
        except Exception as e:  # a torn file raises whatever the zip/pickle reader trips on
            problems.append(f"{name} is damaged ({e if isinstance(e, ValueError) else type(e).__name__})")
            continue
        other = other_run(ckpt, identity or {})
        if other:
            problems.append(f"{name} is not this run's ({other})")
            continue
        if problems:
            damaged = run_dir / "checkpoint.pt"
            if name != "checkpoint.pt" and damaged.is_file():
                os.replace(damaged, run_dir / "checkpoint.damaged.pt")
                problems[0] += " (set aside as checkpoint.damaged.pt)"
            print(f"warning: {'; '.join(problems)}; using {name} (epoch {ckpt['epoch']})")
        ckpt.pop("sha256", None)
        return ckpt
    raise DataError(f"no usable checkpoint in {run_dir}: {'; '.join(problems)}; nothing can be resumed: delete "
                    "the folder and start the run again")


# ----------------------------------------------------------------------------------------------------
# Starting and resuming runs

def run_folder_path(exp_id: str) -> Path | None:
    """A run given as its folder's path (`runs/exp_...`, what tab completion gives, or an absolute path) rather
    than its id: that folder, when it is a run folder; else None."""
    path = Path(exp_id.rstrip("/")) if exp_id else None
    if path is None or (len(path.parts) < 2 and not path.is_absolute()):
        return None
    return path.resolve() if (path / "config.yaml").is_file() else None


def find_run(runs: Path, exp_id: str) -> Path:
    """The run folder runs/<exp_id> (one with a config.yaml), or the run folder whose path `exp_id` is, or an
    error naming the closest existing ids."""
    if exp_id and (runs / exp_id / "config.yaml").is_file():
        return runs / exp_id
    if (folder := run_folder_path(exp_id)) is not None:
        return folder
    known = sorted(p.name for p in runs.iterdir() if (p / "config.yaml").is_file()) if runs.is_dir() else []
    if not known:
        raise DataError(f"no run {exp_id!r}: there are no runs in {runs}; pass the folder that holds them")
    near = difflib.get_close_matches(Path(exp_id.rstrip("/")).name, known, n=3, cutoff=0.0)
    raise DataError(f"no run {exp_id!r} in {runs}; closest: {', '.join(near)}")


def shown(value) -> str:
    """A flag's value as a user types it (a list as its items)."""
    if isinstance(value, list):
        return " ".join(map(str, value)) or "(none)"
    return str(value)


def resolve_resume(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace) -> argparse.Namespace:
    """For --resume: the run's saved flags, after checking that no flag given now contradicts them."""
    defaults = vars(parser.parse_args([]))       # every flag's name, from a parse of no arguments
    unset = object()    # argparse fills in a default only for a name the namespace lacks: what is left was given
    given = {k: v for k, v in vars(parser.parse_args(argv, argparse.Namespace(**{k: unset for k in defaults}))).items()
             if v is not unset}
    run_dir = find_run(args.out_dir.resolve() / "runs", args.resume)
    if run_dir.parent != args.out_dir.resolve() / "runs":    # --resume <path of a run folder>
        if "out_dir" in given:
            raise DataError(f"--resume {args.resume} is not under --out_dir {args.out_dir} (its runs/ folder); "
                            "drop --out_dir, or give the run's id")
        if run_dir.parent.name != "runs":
            raise DataError(f"--resume {args.resume}: a run folder lives in <out_dir>/runs/, this one does not; "
                            "move it back there")
        args.out_dir = run_dir.parent.parent
    args.resume = run_dir.name
    saved = read_run_config(run_dir)
    datasets_here = next((a.choices for a in parser._actions if a.dest == "dataset_name"), None)
    if datasets_here and saved.get("dataset_name") not in datasets_here:
        other = {"train_cifar.py": "train_real.py", "train_real.py": "train_cifar.py"}.get(parser.prog, "the other script")
        raise DataError(f"run {args.resume} trained {saved.get('dataset_name')}, which {parser.prog} does not take "
                        f"({', '.join(datasets_here)}); resume it with the script that started it: "
                        f"python {other} --resume {args.resume}")
    problem = flag_value_problem(parser, saved)
    if problem:
        raise DataError(f"{run_dir / 'config.yaml'} is damaged: {problem}; {AGAIN}")
    allowed_to_differ = {"resume", "device", "out_dir", "eval_batch_size", "workers", "weights"}
    # the data moved: engine.run checks by SHA-256 that it is the same; not given, the saved folder is used
    moved = {"data_dir"} & set(given) if saved.get("data_provenance") else set()
    diffs = []
    for key, value in given.items():
        if key in allowed_to_differ | moved:
            continue
        if key == "method":       # what the flags resolve to: --method gce is GCE, --method SLN is --sigma 0.5
            try:
                typed, trained = methods.get(value).name, methods.of(saved).name
            except ValueError as e:
                raise DataError(f"--method: {e}") from None
            if typed != trained:
                diffs.append(f"--method {typed} (run trained {trained})")
            continue
        new = str(Path(value).resolve()) if isinstance(value, Path) else value
        if new != saved.get(key):
            old = saved.get(key)
            diffs.append(f"--{key} {shown(new)} ({'the run has none' if old is None else f'run has {shown(old)}'})")
    if given.get("make_new_custom_noise"):
        raise DataError("--make_new_custom_noise cannot be used with --resume: a resumed run keeps its labels")
    if diffs:
        raise DataError(f"run {args.resume} was started with other flags: {'; '.join(diffs)}; "
                        "drop these flags to resume it, or start a new run")
    if (run_dir / "summary.json").is_file():
        raise DataError(f"run {args.resume} has already finished (--n_epochs {saved.get('n_epochs')}); nothing to resume "
                        f"(its results are in {run_dir}; to train longer, start a new run)")
    resumed = argparse.Namespace(**vars(args))
    for key, default in defaults.items():
        if key in saved and key not in allowed_to_differ | moved:
            value = saved[key]
            setattr(resumed, key, Path(value) if isinstance(default, Path) and value is not None else value)
    if hasattr(resumed, "make_new_custom_noise"):
        resumed.make_new_custom_noise = False   # the noise file written at the start is reused as it is
    return resumed
