"""Networks used in the SLN experiments.

`make_model(name, num_classes)` is the only entry point the scripts use:

- ``wrn-28-2``: the WideResNet-28-2 of the reference code (networks/wideresnet.py in chenpf1025/SLN),
  quirks included (see `WideResNet`).
- ``wrn-16-1``: the same architecture, depth 16 and width 1 (0.18 M parameters): for quick
  experiments and the test suite.
- ``vgg19-bn``: VGG-19 with batch normalisation, the network of the Animal-10N benchmark
  (Song et al., "SELFIE", ICML 2019, which introduced Animal-10N, trains VGG-19 with BN on it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus a 1x1-conv shortcut when the shape changes.

    As in the reference, the stride sits on the second convolution, every convolution has a bias and
    there is no dropout (the reference's default dropout_rate is 0).
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WideResNet-depth-width as in the SLN reference code.

    Quirks kept on purpose: the final BatchNorm uses PyTorch ``momentum=0.9`` (running statistics follow
    the latest batch almost entirely; the reference sets it so), convolutions have biases, and PyTorch's
    default initialisation is used (the reference defines `conv_init` but never applies it).
    The reference pools with ``avg_pool2d(out, 8)``; global average pooling is the same on 32x32 inputs
    and also works on Animal-10N's 64x64 images.
    """

    def __init__(self, depth: int = 28, width: int = 2, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        stages = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, stages[0], 3, padding=1, bias=True)
        layers, in_planes = [], stages[0]
        for planes, stride in zip(stages[1:], (1, 2, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(WideBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.bn1 = nn.BatchNorm2d(stages[3], momentum=0.9)  # reference quirk, see class docstring
        self.linear = nn.Linear(stages[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with batch normalisation after every convolution, global average pooling and one linear layer
    (the CIFAR-style VGG used for Animal-10N in SELFIE; 64x64 inputs end as 2x2 maps before pooling)."""

    def __init__(self, cfg: list, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


MODELS = {
    "wrn-28-2": lambda c: WideResNet(28, 2, c),
    "wrn-16-1": lambda c: WideResNet(16, 1, c),
    "vgg19-bn": lambda c: VGG(VGG19_CFG, c),
}


def make_model(name: str, num_classes: int) -> nn.Module:
    """Build the network called `name` (one of `MODELS`) with `num_classes` outputs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes)
