"""How fast is training here? Input pipeline, training steps and FLOP utilisation, measured side by side in one run.

    python bench.py --data_dir /tmp/sln-data --json /tmp/bench.json

Every figure comes from this one process on one machine, so the ratios between them hold even where
the absolute rates move with the machine's load. Rates are images per second on --device.

- `pipeline_img_s`: the project's input pipeline, as `engine.train_epoch` runs it: a seeded permutation
  of the whole training set (one uint8 tensor on the device), then per batch a gather, random crop
  (zero padding 4) and horizontal flip, and normalisation to float, all batched on the device.
- `dataloader_img_s`: the usual alternative with the same augmentation: a torchvision `Dataset` that
  makes a PIL image per sample (as `torchvision.datasets.CIFAR10` does), `transforms` RandomCrop(32,
  padding=4), RandomHorizontalFlip, ToTensor, Normalize, and a shuffling `DataLoader` with
  num_workers = os.cpu_count(), batches moved to the device. Timed after the first batch, so worker
  start-up is not counted (in its favour). `pipeline_speedup` is the quotient of the two.
- `train_img_s[model]`: `engine.train_epoch` itself, the training loop of every run (SLN with sigma 1
  and the EMA, i.e. SLN-MO), over --steps batches after one warm-up batch; images / wall time.
- `non_model_fraction[model]`: the share of that epoch's wall time spent outside the network's forward
  pass, its backward pass and the optimiser step. Timed inside the same epoch with hooks that only
  read the clock (on CUDA: record events): forward pre/post hooks on the network, a backward pre-hook on
  it (gradient of its output ready) to the last parameter's post-accumulate-grad hook, and the
  optimiser's step pre/post hooks. Everything else in the epoch counts as outside: permutation,
  gather, crop, flip, normalisation, SLN noise, the loss, zero_grad, the EMA update, metric sums and
  the one read of them per epoch. The per-epoch label-correction bookkeeping (loss of every training
  sample against its target, min-max weights, new soft targets; measured on the whole training set)
  is added, prorated to the epoch's images. Its forward passes and the per-epoch test evaluation are
  not training steps and are left out.
- `flop_utilisation[model]`: training FLOPs per image, counted by `torch.utils.flop_counter` over one
  forward and backward pass (convolutions and the linear layer), times `train_img_s`, over the FLOP/s
  of a large float32 matrix multiply (`matmul_flop_s`, --matmul_size, the mean of one measurement
  before and one after the training measurements, so both see the same load).
- `eval_img_s`: `engine.predict` (the per-epoch test evaluation and the label-correction pass) of
  --option_model over --eval_images images, in batches of 1024 (the earlier default), in batches of this
  device's default (`engine.default_eval_batch_size`: 128 on a CPU) and in those batches with channels_last;
  best of two alternating rounds. `eval_speedup` is each over the first.
- with --options: `train_img_s` of --option_model with each of --channels_last, --amp and --compile, or of
  several joined by + (`channels_last+amp`: bf16 in the channels-last layout), measured in alternation with the
  default settings, and the speed-up of each over the default. `cpu_bf16_units`: whether the CPU has bf16
  instructions (AVX512_BF16, AMX, Arm BF16), where the training scripts accept --precision bf16 on the CPU;
  e.g. `--options channels_last,channels_last+amp --threads 1` measures float32 against bf16 side by side.
- `clothing_pipeline_img_s`: the Clothing1M input pipeline as a run uses it (`datasets.images.FileImages`):
  --file_images synthetic JPEGs of --file_size px, each opened, resized (shorter side 256), randomly cropped
  (224) and flipped in --workers DataLoader processes, batches of 32 moved to the device and normalised; timed
  after the first batch. `clothing_train_img_s`: `engine.train_epoch` of resnet50 on 224-px images already on
  the device (the training step alone, --clothing_steps batches of 32), so that the two show whether the
  pipeline keeps up. With --quick: 32-px crops after a 37-px resize, batches of 4.

On CUDA, convolutions run in TF32 by default (cudnn.allow_tf32) while the reference matmul is strict
float32, so utilisation there can read high; this was written and checked on a CPU.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Idle OpenMP threads spin by default, which on a machine shared with other work takes the cores from
    # the threads that have work: on the shared 2-core machine of docs/performance.md, passive waiting
    # made the input pipeline 10-30x and training 2-3x faster. Set here, before torch loads OpenMP; an
    # OMP_WAIT_POLICY already in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "--gpu_check" in sys.argv:
        # the GPU check's log is a file: no progress bars in it (tqdm reads this once, when torch imports it)
        os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import tempfile
import time
from pathlib import Path

import deps  # noqa: F401  (first: a Python without the packages gets one line, not a traceback)

import numpy as np
import torch
from PIL import Image
from torch import nn

import cli
import datasets
import engine
import files
import methods
import sln
import timing
from data import CIFAR, default_data_dir, load_cifar
from datasets.augment import normalise, random_crop_flip
from datasets.clothing1m import MEAN, RESIZE_PER_CROP, STD
from datasets.images import FileImages, ImageFiles, default_workers
from models import MODELS
from timing import Trainer, sync, time_eval, train_flops_per_image

TARGETS = {"pipeline_speedup": (">=", 10.0), "non_model_fraction/wrn-16-1": ("<=", 0.05),
           "flop_utilisation/wrn-28-2": (">=", 0.45)}
OPTIONS = ("channels_last", "amp", "compile")


def build_parser() -> cli.Parser:
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", type=Path, default=default_data_dir(),
                   help="root holding cifar-10-batches-py/ (default: $SLN_DATA_DIR or data/); "
                        "random uint8 images of the same shape are used when there is no CIFAR-10 there")
    p.add_argument("--device", default="auto", help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--batch_size", type=int, default=None, help="training batch size in images (default 128)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per model (default 10)")
    p.add_argument("--models", default="wrn-28-2,wrn-16-1",
                   help=f"comma-separated networks to time (of {', '.join(MODELS)})")
    p.add_argument("--loader_batches", type=int, default=None,
                   help="batches timed through the DataLoader baseline (default 40)")
    p.add_argument("--matmul_size", type=int, default=None, help="side of the square reference matmul (default 4096)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch CPU threads for everything timed (default: os.cpu_count())")
    p.add_argument("--options", default="",
                   help=f"comma-separated speed options to time against the default ({', '.join(OPTIONS)}; "
                        "several joined by +, e.g. channels_last,channels_last+amp)")
    p.add_argument("--option_model", choices=list(MODELS), default="wrn-16-1",
                   help="network timed for --options, --methods and the evaluation batch sizes")
    p.add_argument("--methods", default="",
                   help="comma-separated training methods to time against CE, or all (of "
                        f"{', '.join(methods.METHODS)}; docs/methods.md), with --option_model and --option_steps")
    p.add_argument("--eval_images", type=int, default=None, help="images per timed evaluation pass (default 4096)")
    p.add_argument("--option_steps", type=int, default=None,
                   help="timed steps per setting and round for --options (default 3; bf16 on a CPU is slow)")
    p.add_argument("--file_images", type=int, default=None,
                   help="synthetic JPEGs read through the Clothing1M pipeline (default 256)")
    p.add_argument("--file_size", type=int, default=500,
                   help="side in px of those JPEGs (square; the pipeline resizes them first)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the Clothing1M pipeline (default: as train_real.py, one per core, "
                        "at most 16)")
    p.add_argument("--clothing_steps", type=int, default=None,
                   help="timed resnet50 training steps on 224-px images (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings for tests (batch 16, 2 steps, 512 random images, small matmul); "
                        "explicit flags still win")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    g = p.add_argument_group("the GPU check (gpu_check.py; the flags above do not apply to it)")
    g.add_argument("--gpu_check", type=Path, default=None, metavar="OUT_DIR",
                   help="instead of the figures above, run the prepared GPU check (numerics against the CPU, the four "
                        "models, resume across devices, a shared-GPU sweep, throughput, a full run cut off at the "
                        "deadline; within 8 minutes) and write OUT_DIR/gpu_check.json and gpu_check.log; needs a CUDA "
                        "GPU and a new or empty OUT_DIR; real CIFAR-10 is used when --data_dir has it")
    g.add_argument("--dry_run", action="store_true",
                   help="with --gpu_check: every phase at toy size on the CPU (synthetic data, wrn-16-1, a few steps; "
                        "no time budgets; about two minutes), to rehearse the check where there is no GPU")
    return p


def resolve(args) -> None:
    """Fill unset sizes from --quick or the full defaults; reject impossible values."""
    quick = {"batch_size": 16, "steps": 2, "loader_batches": 3, "matmul_size": 256, "option_steps": 1,
             "eval_images": 256, "file_images": 16, "clothing_steps": 1}
    full = {"batch_size": 128, "steps": 10, "loader_batches": 40, "matmul_size": 4096, "option_steps": 3,
            "eval_images": 4096, "file_images": 256, "clothing_steps": 2}
    for k in quick:
        if getattr(args, k) is None:
            setattr(args, k, (quick if args.quick else full)[k])
        if getattr(args, k) <= 0:
            cli.fail(f"--{k} must be positive, got {getattr(args, k)}")
    if args.threads <= 0:
        cli.fail(f"--threads must be positive, got {args.threads}")
    if args.workers is None:
        args.workers = default_workers(datasets.MAX_DEFAULT_WORKERS)
    if args.workers < 0 or args.file_size < 8:
        cli.fail(f"--workers must be 0 or more and --file_size at least 8, got {args.workers} and {args.file_size}")
    if args.json is not None:
        if args.json.is_dir():
            cli.fail(f"--json {args.json} is a folder; give a file name, e.g. --json {args.json / 'bench.json'}")
        if args.json.exists():
            cli.fail(f"--json {args.json} already exists; give a new file name (or delete it): results are never "
                     "written over")
        cli.check_out_dir(args.json.parent, "--json")
    args.models = [m for m in args.models.split(",") if m]
    args.options = [o for o in args.options.split(",") if o]
    args.methods = list(methods.METHODS) if args.methods == "all" else [m for m in args.methods.split(",") if m]
    try:
        args.methods = [methods.get(m).name for m in args.methods]
    except ValueError as e:
        cli.fail(f"--methods: {e}")
    for m in args.models:
        if m not in MODELS:
            cli.fail(f"unknown model {m!r} in --models; choose from {', '.join(MODELS)}")
    for o in args.options:
        for part in o.split("+"):
            if part not in OPTIONS:
                cli.fail(f"unknown option {part!r} in --options; choose from {', '.join(OPTIONS)}, or join them "
                         "with + (e.g. channels_last+amp)")
    if not args.models:
        cli.fail("--models is empty; name at least one network, e.g. --models wrn-16-1")


def training_images(root: Path, quick: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """CIFAR-10's training images and labels from `root`; or seeded random ones of the same shape, 512 of
    them with --quick, 50,000 when `root` has no CIFAR-10. Plus a line saying which."""
    if (root / CIFAR["cifar10"].folder).is_dir() and not quick:
        with cli.exits_on_error():
            x, y, _, _ = load_cifar("cifar10", root, download=False)
        return x, y, f"CIFAR-10 training set from {root / CIFAR['cifar10'].folder}"
    rng = np.random.default_rng(seed)
    n = 512 if quick else 50000
    why = "--quick" if quick else f"no CIFAR-10 under {root}"
    return (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n),
            f"{n} random uint8 images of CIFAR-10's shape ({why})")


# ----------------------------------------------------------------------------------------------------
# Reference FLOP/s and FLOP counts

def matmul_flop_s(device: torch.device, n: int, reps: int = 3) -> float:
    """Mean FLOP/s of `reps` float32 (n x n) @ (n x n) products after one warm-up product."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


# ----------------------------------------------------------------------------------------------------
# Input pipelines

def pipeline_img_s(x: torch.Tensor, batch_size: int, mean: torch.Tensor, std: torch.Tensor, pad: int = 4) -> float:
    """Images/s of the data part of engine.train_epoch over one epoch of `x` (uint8, on its device)."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    normalise(random_crop_flip(x[:batch_size], pad, gen), mean, std)  # warm-up
    sync(x.device)
    t = time.perf_counter()
    order = torch.randperm(len(x), generator=gen, device=x.device)
    for i in range(0, len(x), batch_size):
        normalise(random_crop_flip(x.index_select(0, order[i:i + batch_size]), pad, gen).contiguous(), mean, std)
    sync(x.device)
    return len(x) / (time.perf_counter() - t)


def dataloader_img_s(images: np.ndarray, labels: np.ndarray, batch_size: int, batches: int,
                     mean: tuple, std: tuple, device: torch.device) -> float:
    """Images/s of torchvision Dataset + transforms + DataLoader(num_workers=os.cpu_count()), steady state."""
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import VisionDataset

    class ArrayCifar(VisionDataset):
        """Per sample what torchvision.datasets.CIFAR10 does: a PIL image from an HWC array, then `transform`."""

        def __init__(self, hwc: np.ndarray, targets: np.ndarray, transform):
            super().__init__(root=None, transform=transform)
            self.hwc, self.targets = hwc, targets

        def __getitem__(self, i: int):
            return self.transform(Image.fromarray(self.hwc[i])), int(self.targets[i])

        def __len__(self) -> int:
            return len(self.hwc)

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    dataset = ArrayCifar(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels, transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=os.cpu_count(),
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    if len(loader) < batches + 1:
        cli.fail(f"--loader_batches {batches} needs {(batches + 1) * batch_size} images, have {len(images)}")
    it = iter(loader)
    next(it)  # worker start-up is not timed
    t = time.perf_counter()
    for _ in range(batches):
        xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    sync(device)
    seconds = time.perf_counter() - t
    del it  # shuts the workers down
    return batches * batch_size / seconds


def clothing_pipeline_img_s(folder: Path, n: int, side: int, crop: int, batch_size: int, workers: int,
                            device: torch.device) -> float:
    """Images/s of datasets.images.FileImages' training batches (decode, resize, crop, flip in workers; to the device;
    normalise) over `n` synthetic side x side JPEGs written to `folder`, after the first batch."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        # smooth colour fields with noise: JPEG sizes and decode times closer to photos than pure noise
        base = np.linspace(0, 255, side)[None, :, None] * rng.random(3) + rng.normal(0, 12, (side, side, 3))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
        names.append(f"{i}.jpg".encode())
    files = ImageFiles(folder, np.array(names), round(crop * RESIZE_PER_CROP), crop)
    source = FileImages(files, device, workers)
    mean, std = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(device)
    batches = source.train_batches(order, batch_size, torch.Generator(device=device).manual_seed(0))
    next(batches)   # worker start-up is not timed
    t = time.perf_counter()
    count = 0
    for _, xb in batches:
        normalise(xb, mean, std)
        count += len(xb)
    sync(device)
    return count / (time.perf_counter() - t)


# ----------------------------------------------------------------------------------------------------
# Training steps

class ModelClock:
    """Sums the time spent in a network's forward pass, its backward pass and the optimiser step.

    Hooks only read the clock (CPU) or record events (CUDA), so the loop being timed runs unchanged
    and never waits for the device; `seconds()` synchronises once at the end.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list[tuple] = []
        self.start = self.last = None
        self.handles = [
            model.register_forward_pre_hook(lambda *_: self._open()),
            model.register_forward_hook(lambda *_: self._close()),
            model.register_full_backward_pre_hook(lambda *_: self._open()),
            optimizer.register_step_pre_hook(lambda *_: self._backward_done_then_open()),
            optimizer.register_step_post_hook(lambda *_: self._close()),
        ] + [p.register_post_accumulate_grad_hook(lambda _: self._mark()) for p in model.parameters()]

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _open(self) -> None:
        self.start = self._now()

    def _mark(self) -> None:
        self.last = self._now()   # the last parameter's gradient ends the backward pass

    def _close(self) -> None:
        self.spans.append((self.start, self._now()))

    def _backward_done_then_open(self) -> None:
        self.spans.append((self.start, self.last))
        self._open()

    def seconds(self) -> float:
        for h in self.handles:
            h.remove()
        if not self.cuda:
            return sum(b - a for a, b in self.spans)
        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in self.spans) / 1000


def lc_bookkeeping_s(n: int, num_classes: int, device: torch.device) -> float:
    """Seconds of one label correction's bookkeeping over `n` samples (engine.train, without the forward pass)."""
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(n, num_classes, generator=g, device=device)
    labels = torch.randint(0, num_classes, (n,), generator=g, device=device)
    given = sln.onehot(labels, num_classes)
    sync(device)
    t = time.perf_counter()
    losses = sln.soft_cross_entropy(logits, given, reduction="none")
    targets = sln.corrected_targets(losses, given, logits)
    float((targets.argmax(1) != labels).float().mean())
    return time.perf_counter() - t


def time_model(name: str, x: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int,
               lc_s_per_image: float) -> dict:
    """train_img_s and non_model_fraction of `name` from one instrumented engine epoch of `steps` batches."""
    trainer = Trainer(name, x, labels, batch_size)
    trainer.epoch(batch_size)                      # warm-up: allocator, kernel choice
    clock = ModelClock(trainer.state.model, trainer.state.optimizer, x.device)
    n = steps * batch_size
    wall = trainer.epoch(n)
    model_s = clock.seconds()
    lc = lc_s_per_image * n
    return {"train_img_s": n / wall, "non_model_fraction": min(max((wall - model_s + lc) / (wall + lc), 0.0), 1.0),
            "non_model_ms_per_step": 1000 * (wall - model_s) / steps, "epoch_s": wall, "model_s": model_s}


def time_options(name: str, x: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int,
                 options: list[str], rounds: int = 2) -> dict:
    """Images/s of the default settings and of each option alone, best of `rounds` alternating epochs."""
    settings = {"default": [], **{o: [f"--{part}" for part in o.split("+")] for o in options}}
    trainers = {k: Trainer(name, x, labels, batch_size, flags) for k, flags in settings.items()}
    n = steps * batch_size
    for k, t in trainers.items():
        print(f"  warming up {name} {k}" + (" (compiling)" if k == "compile" else ""), flush=True)
        t.epoch(2 * batch_size)
    best = {k: float("inf") for k in settings}
    for _ in range(rounds):
        for k, t in trainers.items():
            best[k] = min(best[k], t.epoch(n))
    out = {k: {"train_img_s": n / s} for k, s in best.items()}
    for k in options:
        out[k]["speedup"] = out[k]["train_img_s"] / out["default"]["train_img_s"]
    return out


def time_methods(name: str, x: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int,
                 names: list[str], rounds: int = 2) -> dict:
    """Training images/s of each method (engine.train_epoch with its networks and objective), best of `rounds`
    alternating epochs, and its ratio to CE's, measured in the same rounds."""
    names = ["CE", *[n for n in names if n != "CE"]]
    trainers = {m: Trainer(name, x, labels, batch_size, method=m) for m in names}
    n = steps * batch_size
    for t in trainers.values():
        t.epoch(batch_size)                      # warm-up
    best = {m: float("inf") for m in names}
    for _ in range(rounds):
        for m, t in trainers.items():
            best[m] = min(best[m], t.epoch(n))
    return {m: {"train_img_s": n / s, "vs_ce": best["CE"] / s} for m, s in best.items()}


# ----------------------------------------------------------------------------------------------------

def time_clothing(args, device: torch.device) -> dict:
    """The Clothing1M pipeline's images/s next to the resnet50 training step's, at the authors' sizes (--quick:
    tiny)."""
    crop, batch = (32, 4) if args.quick else (224, 32)
    with tempfile.TemporaryDirectory() as folder:
        pipeline = clothing_pipeline_img_s(Path(folder), max(args.file_images, 2 * batch), args.file_size, crop, batch,
                                           args.workers, device)
    n = batch * (args.clothing_steps + 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, crop, crop), generator=g, dtype=torch.uint8).to(device)
    trainer = Trainer("resnet50", x, torch.randint(0, 10, (n,), generator=g).to(device), batch)
    trainer.epoch(batch)                            # warm-up
    train = batch * args.clothing_steps / trainer.epoch(batch * args.clothing_steps)
    return {"clothing_pipeline_img_s": pipeline, "clothing_train_img_s": train, "clothing_crop": crop,
            "clothing_batch_size": batch, "workers": args.workers, "file_size": args.file_size}


def check_targets(results: dict) -> dict:
    checks = {}
    for key, (op, bound) in TARGETS.items():
        name, _, model = key.partition("/")
        if model and model not in results[name]:
            continue
        value = results[name][model] if model else results[name]
        checks[f"{key} {op} {bound:g}"] = bool(value >= bound if op == ">=" else value <= bound)
    return checks


def table(results: dict) -> str:
    rows = [("data", results["data"]),
            ("device", f"{results['device']}, {results['threads']} threads, "
                       f"OMP_WAIT_POLICY {results['omp_wait_policy']}"),
            ("matmul_flop_s", f"{results['matmul_flop_s'] / 1e9:.1f} GFLOP/s ({results['matmul_size']}^2 float32)"),
            ("pipeline_img_s", f"{results['pipeline_img_s']:.0f}"),
            ("dataloader_img_s", f"{results['dataloader_img_s']:.0f}"),
            ("pipeline_speedup", f"{results['pipeline_speedup']:.1f}")]
    for m in results["train_img_s"]:
        rows += [(f"train_img_s {m}", f"{results['train_img_s'][m]:.1f}"),
                 (f"train_flops_per_image {m}", f"{results['train_flops_per_image'][m] / 1e9:.3f} GFLOP"),
                 (f"flop_utilisation {m}", f"{results['flop_utilisation'][m]:.3f}"),
                 (f"non_model_fraction {m}", f"{results['non_model_fraction'][m]:.4f} "
                                             f"({results['non_model_ms_per_step'][m]:.2f} ms/step)")]
        if "cpu_share" in results:
            rows.append((f"  per CPU-second {m}", f"utilisation {results['flop_utilisation_per_cpu_second'][m]:.3f}, "
                                                  f"cpu_share {results['cpu_share'][m]:.2f}"))
    if "cpu_share" in results:
        rows.append(("cpu_share (matmul, pipeline)", ", ".join(f"{results['cpu_share'][k]:.2f}" for k in
                                                              ("matmul_before", "matmul_after", "pipeline"))))
    for k, v in results.get("eval_img_s", {}).items():
        rows.append((f"eval_img_s {results['option_model']} {k}", f"{v:.0f} ({results['eval_speedup'][k]:.2f}x)"))
    if "cpu_bf16_units" in results:
        rows.append(("cpu_bf16_units (bf16 accepted on this CPU)", str(results["cpu_bf16_units"])))
    for k, v in results.get("options", {}).items():
        extra = f" ({v['speedup']:.2f}x default)" if "speedup" in v else ""
        rows.append((f"{results['option_model']} {k}", f"{v['train_img_s']:.1f} img/s{extra}"))
    for k, v in results.get("methods", {}).items():
        rows.append((f"method {k} ({results['option_model']})", f"{v['train_img_s']:.1f} img/s ({v['vs_ce']:.2f}x CE)"))
    rows += [(f"clothing_pipeline_img_s ({results['workers']} workers)", f"{results['clothing_pipeline_img_s']:.1f}"),
             (f"clothing_train_img_s resnet50 {results['clothing_crop']}px", f"{results['clothing_train_img_s']:.1f}")]
    # --quick's toy batches and matrices say nothing of the targets (a 256^2 matmul can even put "utilisation" above 1)
    toy = " at --quick's toy sizes, which do not judge it" if results.get("quick") else ""
    rows += [(f"target {k}", ("met" if ok else "missed" if toy else "MISSED") + toy)
             for k, ok in results["targets"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class CpuShare:
    """Share of the `threads` cores this process got during a block: process CPU time / (wall time x threads).

    About 1 on an otherwise idle machine (OpenMP threads that spin while waiting count as busy), lower
    where other work shares the cores. Only meaningful for --device cpu.
    """

    def __init__(self, threads: int):
        self.threads, self.value = threads, None

    def __enter__(self) -> "CpuShare":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.value = (time.process_time() - self.cpu) / ((time.perf_counter() - self.wall) * self.threads)


def measure(args, device: torch.device, argv: list[str]) -> dict:
    images, labels_np, source = training_images(args.data_dir, args.quick)
    print(f"bench: {source}; {device}, {args.threads} threads; batch {args.batch_size}, {args.steps} steps", flush=True)
    spec = CIFAR["cifar10"]
    x = torch.from_numpy(images).to(device)
    labels = torch.from_numpy(labels_np.astype(np.int64)).to(device)
    if args.steps * args.batch_size > len(x):
        cli.fail(f"--steps {args.steps} x --batch_size {args.batch_size} exceeds the {len(x)} training images")
    res: dict = {"data": source, "device": str(device), "threads": args.threads, "batch_size": args.batch_size,
                 "steps": args.steps, "matmul_size": args.matmul_size, "quick": args.quick,
                 "command": " ".join(["python", "bench.py", *argv]),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), **timing.machine()}
    share = {}

    with CpuShare(args.threads) as share["matmul_before"]:
        mm_before = matmul_flop_s(device, args.matmul_size)
    mean, std = torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device)
    with CpuShare(args.threads) as share["pipeline"]:
        res["pipeline_img_s"] = pipeline_img_s(x, args.batch_size, mean, std)
    res["dataloader_img_s"] = dataloader_img_s(images, labels_np, args.batch_size, args.loader_batches, spec.mean,
                                               spec.std, device)
    res["pipeline_speedup"] = res["pipeline_img_s"] / res["dataloader_img_s"]
    print(f"  pipeline {res['pipeline_img_s']:.0f} img/s, DataLoader {res['dataloader_img_s']:.0f} img/s", flush=True)

    lc_per_image = lc_bookkeeping_s(len(x), 10, device) / len(x)
    for key in ("train_img_s", "non_model_fraction", "non_model_ms_per_step", "train_flops_per_image"):
        res[key] = {}
    for name in args.models:
        with CpuShare(args.threads) as share[name]:
            timed = time_model(name, x, labels, args.batch_size, args.steps, lc_per_image)
        for key in ("train_img_s", "non_model_fraction", "non_model_ms_per_step"):
            res[key][name] = timed[key]
        res["train_flops_per_image"][name] = train_flops_per_image(name)
        print(f"  {name}: {res['train_img_s'][name]:.1f} img/s", flush=True)
    with CpuShare(args.threads) as share["matmul_after"]:
        mm_after = matmul_flop_s(device, args.matmul_size)
    res["matmul_flop_s"] = (mm_before + mm_after) / 2
    res["matmul_flop_s_before_after"] = [mm_before, mm_after]
    res["flop_utilisation"] = {m: res["train_img_s"][m] * res["train_flops_per_image"][m] / res["matmul_flop_s"]
                               for m in args.models}
    if device.type == "cpu":
        res["cpu_share"] = {k: v.value for k, v in share.items()}
        # the same quotient per CPU-second this process got, which other users of the cores disturb less
        mm_share = (share["matmul_before"].value + share["matmul_after"].value) / 2
        res["flop_utilisation_per_cpu_second"] = {m: u * mm_share / share[m].value
                                                  for m, u in res["flop_utilisation"].items()}
    res["option_model"] = args.option_model
    res["cpu_bf16_units"] = engine.cpu_bf16_units()
    res.update(time_eval(args.option_model, x, min(args.eval_images, len(x))))
    print("  eval " + ", ".join(f"{k}: {v:.0f} img/s" for k, v in res["eval_img_s"].items()), flush=True)
    if args.options:
        res["options"] = time_options(args.option_model, x, labels, args.batch_size, args.option_steps,
                                      args.options)
    if args.methods:
        res["methods"] = time_methods(args.option_model, x, labels, args.batch_size, args.option_steps, args.methods)
        print("  methods " + ", ".join(f"{m} {v['vs_ce']:.2f}x CE" for m, v in res["methods"].items()), flush=True)
    res.update(time_clothing(args, device))
    print(f"  clothing1m pipeline {res['clothing_pipeline_img_s']:.1f} img/s ({args.workers} workers), resnet50 "
          f"training step {res['clothing_train_img_s']:.1f} img/s", flush=True)
    res["targets"] = check_targets(res)
    return res


def check_gpu_check_args(args) -> None:
    """One line and exit status 2 when the GPU check cannot start: other flags, an OUT_DIR that is not new or empty
    (nothing there is ever overwritten), no CUDA GPU without --dry_run."""
    out = args.gpu_check
    defaults = vars(build_parser().parse_args([]))
    ignored = [k for k, v in vars(args).items() if k not in ("gpu_check", "dry_run", "data_dir") and v != defaults[k]]
    if ignored:    # the check has its own fixed settings, the same on every GPU
        cli.fail(f"--gpu_check runs its own fixed settings; drop --{' --'.join(ignored)} (only --data_dir and "
                 "--dry_run go with it)")
    if (out / "gpu_check.json").exists():
        cli.fail(f"{out / 'gpu_check.json'} already holds a GPU check, which is never overwritten; give another "
                 "OUT_DIR")
    if out.exists() and not out.is_dir():
        cli.fail(f"--gpu_check {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        cli.fail(f"--gpu_check {out} is not empty; give a new or empty folder (nothing there is overwritten)")
    if not args.dry_run and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        cli.fail(f"--gpu_check needs a CUDA GPU, and torch {torch.__version__} ({build}) sees none here; run it on "
                 "the GPU machine, or add --dry_run to rehearse every phase at toy size on this CPU")
    try:
        files.check_writable(out, "--gpu_check")
    except ValueError as e:
        cli.fail(str(e))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.dry_run and args.gpu_check is None:
        cli.fail("--dry_run rehearses the GPU check: give it with --gpu_check OUT_DIR")
    if args.gpu_check is not None:
        check_gpu_check_args(args)
        import gpu_check   # only here: the check's phases import the training and tuning code, which bench needs not
        summary = gpu_check.main(args.gpu_check, args.data_dir, args.dry_run, argv)
        for key, phase in summary["phases"].items():
            why = phase.get("error") or phase.get("reason") or phase.get("incomplete") or ""
            print(f"  {key:<13} {phase['status']:<8} {phase.get('seconds', 0):6.1f} s  {why}")
        print((f"gpu check: {gpu_check.DRY_RUN_MEANING}\n" if args.dry_run else "")
              + f"gpu check: {summary['total_s']:.0f} s in all; summary in {args.gpu_check / gpu_check.JSON_NAME}, "
              f"log in {args.gpu_check / gpu_check.LOG_NAME}")
        if not summary["finished"]:
            sys.exit(143)        # stopped by SIGTERM
        if any(phase["status"] == "failed" for phase in summary["phases"].values()):
            sys.exit(1)
        return summary
    resolve(args)
    with cli.exits_on_error():
        device = engine.pick_device(args.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        res = measure(args, device, argv)
    finally:
        torch.set_num_threads(threads)
    print(table(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(res, indent=2)))
        print(f"written {args.json}")
    return res


if __name__ == "__main__":
    main()
