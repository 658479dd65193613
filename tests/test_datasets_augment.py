"""The on-device augmentation: crop and flip as torchvision does them, and the normalisation."""
import torch
import torchvision.transforms.functional as TF

import datasets.augment


def test_crop_flip_is_pixel_identical_to_torchvision():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 9, (6, 2), generator=g)
    flips = torch.tensor([True, False, True, False, True, False])
    out = datasets.augment.random_crop_flip(images, 4, offsets=offsets, flips=flips)
    for i in range(6):
        # torchvision's RandomCrop(32, padding=4): pad with zeros, crop at (top, left); then hflip
        ref = TF.crop(TF.pad(images[i], [4]), int(offsets[i, 0]), int(offsets[i, 1]), 32, 32)
        if flips[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref)


def test_crop_flip_draws_every_offset_and_both_flips():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(4000, 1, 3, 3, dtype=torch.uint8)
    images[:, 0, 1, 1] = 1          # a single lit pixel; where it lands reveals the offset drawn
    out = datasets.augment.random_crop_flip(images, 1, g)
    where = out.view(4000, -1).argmax(1)
    counts = torch.bincount(where, minlength=9).float() / 4000
    assert torch.all((counts > 0.08) & (counts < 0.15))      # 9 positions, ~1/9 each


def test_normalise_matches_to_tensor_normalize():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    ref = torch.stack([TF.normalize(TF.convert_image_dtype(im, torch.float32), mean.tolist(), std.tolist()) for im in x])
    assert torch.allclose(datasets.augment.normalise(x, mean, std), ref, atol=1e-6)
