"""The training pipeline's augmentation, on the training device: random crop and flip, then normalisation.

The whole training set stays on the device as one uint8 tensor (N, C, H, W), and each batch is cropped,
flipped and normalised there as a handful of whole-batch kernels. So no PIL, DataLoader worker or Python
loop over samples stands between batches: on a network this small, such a pipeline cannot keep up and
the GPU waits (README 'Performance'). For the same offsets and flips the crop and flip are pixel-identical
to torchvision's RandomCrop(size, padding) + RandomHorizontalFlip(), and the normalisation equals
ToTensor() + Normalize(mean, std) up to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                     offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Batched RandomCrop(size, padding=pad) + RandomHorizontalFlip() on uint8 (B, C, H, W) images.

    Zero padding, then one crop window per image (offsets (B, 2) as (top, left) in [0, 2*pad]) and a
    horizontal flip where `flips` is true; both drawn from `generator` unless given (no flips at all
    with flip=False). Same result as torchvision's functional crop and hflip with those offsets and flips.
    """
    b, c, h, w = images.shape
    dev = images.device
    if offsets is None:
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=dev)
    if flips is None:
        flips = torch.rand(b, generator=generator, device=dev) < 0.5
        flips &= flip
    # Two passes that copy whole rows with index_select, first on the transposed images (choosing
    # columns), then the right way round (choosing rows): several times faster on a CPU than gathering
    # single pixels, and a handful of kernels on a GPU.
    planes = torch.arange(b * c, device=dev).view(b, c, 1)
    cols = offsets[:, 1:] + torch.arange(w, device=dev)                       # (B, W) source columns
    cols = torch.where(flips[:, None], cols.flip(1), cols)                    # flipping = reading them backwards
    padded = F.pad(images.transpose(2, 3), (0, 0, pad, pad)).reshape(-1, h)   # rows = columns of the padded images
    out = padded.index_select(0, (planes * (w + 2 * pad) + cols[:, None, :]).view(-1)).view(b, c, w, h)
    rows = offsets[:, :1] + torch.arange(h, device=dev)                       # (B, H) source rows
    padded = F.pad(out.transpose(2, 3), (0, 0, pad, pad)).reshape(-1, w)
    return padded.index_select(0, (planes * (h + 2 * pad) + rows[:, None, :]).view(-1)).view(b, c, h, w)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, as ToTensor() then Normalize(mean, std) (equal up to float rounding)."""
    # one new tensor, scaled and shifted in place: fewer passes over memory than (x / 255 - mean) / std
    scale, shift = (1 / (255 * std)).view(1, -1, 1, 1), (mean / std).view(1, -1, 1, 1)
    return images.to(torch.float32, copy=True).mul_(scale).sub_(shift)
