"""Images: where a run's batches come from (the whole set on the device, or image files decoded batch by batch), and
the helpers the loaders share to read image files.

Both kinds of source give the training loop (engine.py) uint8 (B, 3, H, W) batches on the device, which it
normalises:

- `DeviceImages`: one uint8 tensor on the device (CIFAR, Animal-10N, CIFAR-N, folder). Batches are gathered,
  cropped and flipped there (augment.py), with no per-sample Python between them.
- `FileImages`: a list of image files (`ImageFiles`) too large to hold in memory (Clothing1M: a million JPEGs).
  DataLoader worker processes open, resize and crop each image with torchvision's transforms on PIL images, as
  the authors' script does, and only the batches in flight are in memory. The crop positions and flips are
  drawn in the main process from the run's seeded generator and sent to the workers with each index, so a run
  is the same for any number of workers and resumes exactly.

The loaders decode a file with `decode_image`, take the normalisation of a set from `channel_mean_std`, keep a
listed path inside the data folder with `inside` and check that a set fits in memory with `check_images_fit`.
"""
from __future__ import annotations

import hashlib
import os
import resource
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.augment import random_crop_flip
from errors import DataError

# What Pillow raises for a file that is not a readable image: OSError (UnidentifiedImageError, truncation),
# ValueError or, for some corrupt headers, SyntaxError.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class UnreadableImage(DataError):
    """An image file that could not be read in the middle of training (its header was read at the start)."""


@dataclass(frozen=True)
class ImageFiles:
    """N image files under `root`, each resized (shorter side to `resize`, bilinear) and cropped to `crop` x `crop`
    when read. Indexing with an index array gives the subset, like a numpy array of images."""

    root: Path
    # UTF-8 paths relative to root, as one numpy bytes array rather than a list of str: forked DataLoader workers
    # then share its memory, where touching a million Python objects' reference counts would copy their pages.
    paths: np.ndarray
    resize: int
    crop: int

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx) -> "ImageFiles":
        return replace(self, paths=self.paths[idx])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of the uint8 images it delivers, as for an array of images."""
        return (len(self), 3, self.crop, self.crop)

    def path(self, i: int) -> Path:
        return self.root / self.paths[i].decode()

    def digest(self) -> str:
        """SHA-256 of the file list (the files themselves are not read: a million of them)."""
        return hashlib.sha256(b"\n".join(self.paths.tolist())).hexdigest()


def default_workers(max_workers: int) -> int:
    """One DataLoader worker per CPU core this process may use, at most `max_workers`."""
    return max(1, min(max_workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def available_memory() -> int:
    """Bytes this process could allocate now: the kernel's MemAvailable (Linux; else all the physical memory), less
    where a container's memory limit (cgroup v2) or `ulimit -v` is lower."""
    limits = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    for file, key in ((Path("/proc/meminfo"), "MemAvailable:"), (Path("/sys/fs/cgroup/memory.max"), "")):
        try:
            text = file.read_text()
        except OSError:
            continue
        value = next((line[len(key):].split() for line in text.splitlines() if line.startswith(key)), [])
        if value and value[0].isdigit():
            limits.append(int(value[0]) * (1024 if value[1:] == ["kB"] else 1))
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return min(limits + ([soft] if soft != resource.RLIM_INFINITY else []))


def check_images_fit(n: int, height: int, width: int, what: str, fix: str, bytes_per_value: int = 1) -> None:
    """A DataError when `n` RGB images of height x width (uint8, or float32 with bytes_per_value 4) would not fit
    in the memory available now: said before the buffer is asked for, which would raise MemoryError (or overflow
    numpy's sizes) once the run has begun."""
    need, have = n * 3 * height * width * bytes_per_value / 2**30, available_memory() / 2**30
    if need > have:
        shown = f"{need:,.1f}" if need < 1e6 else f"{need:.2g}"
        raise DataError(f"{what} would take {shown} GiB, more than the {have:,.1f} GiB of memory available; {fix}")


EXTRACT_AGAIN = "delete it (and the archive it came from) and extract the dataset again"


def decode_image(path: Path, size: int | None = None, fix: str = EXTRACT_AGAIN, where: str = "") -> np.ndarray:
    """uint8 (3, H, W) RGB pixels of an image file, resized to size x size (bilinear) if a size is given,
    or a DataError naming the file (after `where`, e.g. a CSV row) and what to do about it (`fix`)."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if size is not None:
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    except IMAGE_ERRORS as e:
        raise DataError(f"{where}{path} does not decode as an image ({e}); {fix}")
    return np.asarray(rgb).transpose(2, 0, 1)


def channel_mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images scaled to [0, 1], as
    Normalize(mean, std) after ToTensor() expects them."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    chunk = min(chunk, max(1, 2**30 // (8 * images[0].size)))   # large images: float64 chunks of at most 1 GiB
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].astype(np.float64) / 255
        total += x.sum(axis=(0, 2, 3))
        squares += (x * x).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def inside(root: Path, relative: str, where: str) -> Path:
    """`root / relative`, refused when the path leaves `root` (`..` or an absolute path elsewhere): a CSV
    must not make a run read, and record as its data, files from anywhere on the machine."""
    base = Path(os.path.normpath(root.absolute()))
    path = Path(os.path.normpath(base / relative))
    if not path.is_relative_to(base):
        raise DataError(f"{where}path {relative!r} leaves the data folder {root}; use paths inside it")
    return path


def load_crop(path: Path, resize: int, crop: int, params: tuple[float, float, float] | None) -> np.ndarray:
    """uint8 (3, crop, crop) RGB pixels of one image file: Resize(resize) (shorter side, bilinear, antialiased as in
    torchvision), then CenterCrop(crop) when `params` is None, else RandomCrop(crop) at fractions (top, left) of
    the free range and a horizontal flip when the third value is below 0.5 (the authors' Clothing1M transforms)."""
    import torchvision.transforms.functional as TF   # here, not at the top: its import costs every script ~2 s
    with Image.open(path) as img:
        img = TF.resize(img.convert("RGB"), resize)
    if params is None:
        img = TF.center_crop(img, crop)
    else:
        width, height = img.size
        top, left = int(params[0] * (height - crop + 1)), int(params[1] * (width - crop + 1))
        img = TF.crop(img, top, left, crop, crop)
        if params[2] < 0.5:
            img = TF.hflip(img)
    return np.asarray(img).transpose(2, 0, 1).copy()


class _Decoded(Dataset):
    """What a DataLoader worker does with one (index, crop parameters) key: the image, or a zero image and the
    reason it could not be read (raised by the main process, so that the message stays one line)."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, tuple[float, float, float] | None]) -> tuple[torch.Tensor, str]:
        i, params = key
        path = self.files.path(i)
        try:
            return torch.from_numpy(load_crop(path, self.files.resize, self.files.crop, params)), ""
        except IMAGE_ERRORS as e:
            empty = torch.zeros(3, self.files.crop, self.files.crop, dtype=torch.uint8)
            return empty, f"{path} does not decode as an image ({' '.join(str(e).split())})"


class _Header(Dataset):
    """Opens one file's image header: '' or why the file is not a readable image."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> str:
        path = self.files.path(i)
        try:
            with Image.open(path) as img:
                img.size
        except FileNotFoundError:
            return f"image {path} does not exist"
        except IMAGE_ERRORS as e:
            return f"{path} does not decode as an image ({' '.join(str(e).split())})"
        return ""


def check_readable(files: ImageFiles, workers: int, listed_in: str, fix: str) -> None:
    """A DataError naming the first file that is missing or whose header does not read as an image, before any
    training starts. Only headers are read (a full decode of a million images would take far longer); a file
    that is damaged further in is found when a batch reads it (UnreadableImage)."""
    loader = DataLoader(_Header(files), batch_size=256, num_workers=workers, collate_fn=list)
    for problems in tqdm(loader, desc=f"checking {len(files):,} images of {listed_in}", unit="batch", leave=False,
                         dynamic_ncols=True):
        bad = next((p for p in problems if p), None)
        if bad:
            raise DataError(f"{bad} (listed in {listed_in}); {fix}")


class DeviceImages:
    """The whole image set as one uint8 (N, C, H, W) tensor on the device; random crops with zero padding `pad`
    and flips are made there (augment.py), as the reference's CIFAR pipeline does."""

    def __init__(self, images: torch.Tensor, pad: int, flip: bool):
        self.images, self.pad, self.flip = images, pad, flip

    def __len__(self) -> int:
        return len(self.images)

    def train_batches(self, order: torch.Tensor, batch_size: int,
                      gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, augmented images) per batch of `order`; each batch is made when it is asked for."""
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            # index_select copies whole images (x[idx] gathers them byte by byte on a CPU)
            yield idx, random_crop_flip(self.images.index_select(0, idx), self.pad, gen, flip=self.flip)

    def eval_batches(self, batch_size: int, augment: bool = False, gen: torch.Generator | None = None,
                     indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """The images (of `indices`, else all) in order; with `augment`, the training crop and flip."""
        images = self.images if indices is None else self.images.index_select(0, indices)
        for start in range(0, len(images), batch_size):
            xb = images[start:start + batch_size]
            yield random_crop_flip(xb, self.pad, gen, flip=self.flip) if augment and self.pad else xb


class FileImages:
    """Image files read batch by batch in `workers` DataLoader processes (0: in this process) and moved to
    `device`. Training and augmented passes use the authors' Resize + RandomCrop + flip, evaluation their
    Resize + CenterCrop."""

    def __init__(self, files: ImageFiles, device: torch.device, workers: int, flip: bool = True):
        self.files, self.device, self.workers, self.flip = files, device, workers, flip

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, keys: list, batch_size: int) -> Iterator[torch.Tensor]:
        loader = DataLoader(_Decoded(self.files), batch_size=batch_size, sampler=keys, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda")
        for images, problems in loader:
            bad = next((p for p in problems if p), None)
            if bad:
                raise UnreadableImage(f"{bad}; replace the file")
            yield images.to(self.device, non_blocking=True)

    def _crop_params(self, n: int, gen: torch.Generator) -> list:
        # one draw for the whole pass: top and left as fractions of the free range, and the flip
        params = torch.rand(n, 3, generator=gen, device=gen.device)
        if not self.flip:
            params[:, 2] = 1.0
        return params.tolist()

    def train_batches(self, order: torch.Tensor, batch_size: int,
                      gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        keys = list(zip(order.tolist(), self._crop_params(len(order), gen)))
        for start, images in zip(range(0, len(order), batch_size), self._read(keys, batch_size)):
            yield order[start:start + batch_size], images

    def eval_batches(self, batch_size: int, augment: bool = False, gen: torch.Generator | None = None,
                     indices: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        index = list(range(len(self))) if indices is None else indices.tolist()
        params = self._crop_params(len(index), gen) if augment else [None] * len(index)
        return self._read(list(zip(index, params)), batch_size)


def image_source(images, device: torch.device, pad: int, flip: bool,
                 workers: int) -> DeviceImages | FileImages:
    """The batch source of a dataset's images: a uint8 array goes to the device whole, a file list is read."""
    if isinstance(images, ImageFiles):
        return FileImages(images, device, workers, flip)
    return DeviceImages(torch.from_numpy(images).to(device), pad, flip)
