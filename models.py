"""Networks used in the SLN experiments.

`make_model(name, num_classes)` is the only entry point the scripts use:

- ``wrn-28-2``: the WideResNet-28-2 of the reference code (networks/wideresnet.py in chenpf1025/SLN),
  quirks included (see `WideResNet`).
- ``wrn-16-1``: the same architecture, depth 16 and width 1 (0.18 M parameters): for quick
  experiments and the test suite.
- ``vgg19-bn``: VGG-19 with batch normalisation, the network of the Animal-10N benchmark
  (Song et al., "SELFIE", ICML 2019, which introduced Animal-10N, trains VGG-19 with BN on it).
- ``resnet50``: torchvision's ResNet-50 with a new final layer, the network of the authors' Clothing1M script;
  `make_model(..., backbone=imagenet_state_dict("resnet50"))` starts it from ImageNet weights, as they do.
"""
from __future__ import annotations

import urllib.error
from pathlib import Path

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


class WeightsError(ValueError):
    """Pretrained weights that cannot be had or do not fit; the message says what to do."""


def resnet50(num_classes: int, backbone: dict | None = None) -> nn.Module:
    """torchvision's ResNet-50 with a new `num_classes`-way final layer (the authors' Clothing1M network). It is
    built 1000-way, as on ImageNet, so that `backbone` (a state dict of ImageNet weights) loads as it is; the
    backbone's own final layer, if any, is not used."""
    import torchvision   # imported here: torchvision's import costs every script ~2 s on a CPU
    net = torchvision.models.resnet50()
    if backbone is not None:
        kept = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = net.load_state_dict(kept, strict=False)
        except RuntimeError as e:   # a tensor of the wrong shape
            raise WeightsError(f"the weights do not fit resnet50: {str(e).splitlines()[-1].strip()}")
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise WeightsError(f"the weights are not a resnet50 state dict ({len(missing)} tensors missing, e.g. "
                               f"{(missing or ['-'])[0]}; {len(unexpected)} unexpected, e.g. "
                               f"{(unexpected or ['-'])[0]})")
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


MODELS = {
    "wrn-28-2": lambda c: WideResNet(28, 2, c),
    "wrn-16-1": lambda c: WideResNet(16, 1, c),
    "vgg19-bn": lambda c: VGG(VGG19_CFG, c),
    "resnet50": resnet50,
}
# ImageNet weights through torchvision's weights API, by the name torchvision.models.get_weight takes:
# IMAGENET1K_V1 are torchvision's original ResNet-50 weights, the ones the authors' script downloads (under their
# older file name resnet50-19c8e357.pth).
IMAGENET_WEIGHTS = {"resnet50": "ResNet50_Weights.IMAGENET1K_V1"}


def make_model(name: str, num_classes: int, backbone: dict | None = None) -> nn.Module:
    """Build the network called `name` (one of `MODELS`) with `num_classes` outputs; `backbone`: pretrained
    weights to start from (networks of IMAGENET_WEIGHTS only)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if backbone is None:
        return MODELS[name](num_classes)
    if name not in IMAGENET_WEIGHTS:
        raise WeightsError(f"{name} has no pretrained weights here; use --no-pretrained or --model "
                           f"{' | '.join(IMAGENET_WEIGHTS)}")
    return MODELS[name](num_classes, backbone)


def imagenet_state_dict(name: str, path: Path | None = None) -> dict:
    """The ImageNet weights of network `name`: from the file `path` (loaded with weights_only=True), else through
    torchvision's weights API, which downloads them once into torch.hub's cache and checks the download's hash."""
    if path is not None:
        if not path.is_file():
            raise WeightsError(f"--weights {path} does not exist; give the path of a saved state dict")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file raises whatever the zip/pickle reader trips on
            raise WeightsError(f"--weights {path} is not a PyTorch state dict ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:120] if str(e) else ''}); give a file saved with "
                               "torch.save(model.state_dict(), path)")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"--weights {path} holds a {type(state).__name__}, not a state dict of tensors; give "
                               "a file saved with torch.save(model.state_dict(), path)")
        return state
    import torchvision
    weights = torchvision.models.get_weight(IMAGENET_WEIGHTS[name])
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    file = cache / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"the ImageNet weights {file.name} of {name} are not in {cache}/ and cannot be downloaded "
                           f"({reason}); download {weights.url} into {cache}/ on a machine with internet access, or "
                           "pass --weights PATH, or train from scratch with --no-pretrained")
    except Exception as e:  # a failed hash check (RuntimeError) or a damaged cached file (whatever torch.load raises)
        if "hash" in str(e):   # torch.hub removes a download that fails the check
            raise WeightsError(f"the download of {weights.url} failed its hash check ({str(e).splitlines()[0]}); "
                               f"run again, or download the file into {cache}/ yourself")
        raise WeightsError(f"{file} is damaged ({str(e).splitlines()[0][:120]}); delete it and run again")
