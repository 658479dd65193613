"""Train CE, SLN, SLN+MO or SLN+MO+LC (or a baseline, --method) on real-world label noise: Animal-10N, CIFAR-N, Clothing1M or your own images.

    python train_real.py --dataset_name animal-10n --batch_size 128 --n_epochs 300 --lr 0.001 --sigma 0.5 --mo --lc_n_epoch 250 --seed 123
    python train_real.py --dataset_name cifar10n --noise_label worst --sigma 0.5 --mo --lc_n_epoch 250 --seed 123
    python train_real.py --dataset_name clothing1m --sigma 0.2 --mo --lc_n_epoch 1 --seed 123
    python train_real.py --dataset_name folder --data_dir my_images --image_size 32 --sigma 0.5 --mo --lc_n_epoch 250

Default network: vgg19-bn for animal-10n, resnet50 (ImageNet weights) for clothing1m, wrn-28-2 for cifar10n /
cifar100n / folder (change it with --model). clothing1m also takes the rest of the authors' Clothing1M recipe
as its defaults (CLOTHING1M_RECIPE); every flag given on the command line wins.
"""
from __future__ import annotations

import argparse
import sys

from pathlib import Path

import deps  # (first: a Python without the packages gets one line, not a traceback)

deps.exit_on_sigterm()    # before the heavy imports: a SIGTERM in the first seconds gets its line too

import cli  # noqa: E402
import datasets  # noqa: E402
import engine  # noqa: E402
from folder_data import MIN_IMAGE_SIZE  # noqa: E402
from models import IMAGENET_WEIGHTS, WeightsError, imagenet_state_dict, make_model  # noqa: E402

DATASETS = datasets.of_script("train_real.py")      # animal-10n, cifar10n, cifar100n, clothing1m, folder

# datasets.py declares each default network. VGG-19 with BN is the network of the Animal-10N benchmark (SELFIE, Song
# et al., ICML 2019); CIFAR-N keeps the reference's CIFAR network. The user's own images (folder) get wrn-28-2 as
# well: it pools globally, so it takes any image size from 8 px on, where VGG-19's five max-pools need at least 32 px.
DEFAULT_MODEL = {name: datasets.DATASETS[name].default_model for name in DATASETS}
VGG_MIN_SIZE = 32

# The authors' Clothing1M recipe (noise_clothing1m_train.py) where it differs from the shared defaults, which are
# their CIFAR recipe: batch 32, 10 epochs, weight decay 1e-3, lr / 10 after epoch 5, a fresh balanced sample of
# 18,976 images per class every epoch, soft label-correction targets, evaluation in batches of 4 x 32, 224-px
# crops (after resizing the shorter side to 256), ImageNet weights. A value is used when its flag is not given.
# (--lr_decay is the shared default, 0.1, as theirs.)
CLOTHING1M_RECIPE = {"batch_size": 32, "n_epochs": 10, "weight_decay": 1e-3, "lr_milestones": [5],
                     "num_per_class": 18976, "lc_soft": True, "eval_batch_size": 128, "image_size": 224}
RECIPE_FLAGS = [k for k in CLOTHING1M_RECIPE if k != "image_size"]   # shared training flags the recipe sets



def build_parser() -> cli.Parser:
    p = cli.Parser(prog=Path(__file__).name, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("dataset and noise")
    d.add_argument("--dataset_name", choices=DATASETS, default="animal-10n",
                   help="animal-10n: <data_dir>/animal-10n/ (no clean labels); cifar10n / cifar100n: CIFAR images with "
                        "the human labels of <data_dir>/cifar-n/CIFAR-10_human.pt / CIFAR-100_human.pt; clothing1m: "
                        "<data_dir>/clothing1m/ (images/ and the owners' or the SLN authors' list files; the authors' "
                        "recipe becomes the default); folder: your "
                        "own images in --data_dir itself, as train/<class>/ and test/<class>/ folders or train.csv and "
                        "test.csv with columns path,label[,clean_label] (docs/real-world-data.md)")
    cli.add_noise_label_arg(d)
    d.add_argument("--image_size", type=int, default=None, metavar="N",
                   help="folder: resize every image to N x N (bilinear); default: the images' own size, which all "
                        "must then share. clothing1m: crops of N x N after resizing the shorter side to N x 256/224 "
                        "(default 224, the authors')")
    w = p.add_argument_group("pretrained weights")
    w.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help=f"start {' / '.join(IMAGENET_WEIGHTS)} from ImageNet weights, downloaded once by torchvision "
                        "(which checks their hash) into torch.hub's cache; default: on for clothing1m with resnet50, "
                        "as the authors, off otherwise")
    w.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="load the pretrained weights from this state-dict file instead (e.g. torchvision's "
                        "resnet50-0676ba61.pth copied from another machine; loaded with weights_only=True; its final "
                        "layer is replaced); implies --pretrained")
    cli.add_training_args(p, default_model=DEFAULT_MODEL["animal-10n"])
    # resolved per dataset in check_args
    p.set_defaults(model=None, **{k: None for k in RECIPE_FLAGS})
    return p


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill the flags not given with the dataset's recipe: the authors' Clothing1M one, or the shared defaults."""
    recipe = CLOTHING1M_RECIPE if args.dataset_name == "clothing1m" else cli.training_defaults()
    taken = []
    for key in (*RECIPE_FLAGS, "image_size"):
        if getattr(args, key) is None and recipe.get(key) is not None:
            setattr(args, key, recipe[key])
            value = recipe[key]
            shown = "" if value is True else " ".join(map(str, value)) if isinstance(value, list) else value
            taken.append(f"--{key} {shown}".rstrip())
    if args.dataset_name == "clothing1m" and taken:
        print(f"clothing1m: the authors' recipe for the flags not given: {' '.join(taken)}")
    recipe_milestones = any(t.startswith("--lr_milestones") for t in taken)
    if recipe_milestones and args.n_epochs is not None:
        # a recipe milestone past the run's end never applies (a short trial run); only typed ones are checked
        past = [m for m in args.lr_milestones if m >= args.n_epochs]
        if past:
            args.lr_milestones = [m for m in args.lr_milestones if m < args.n_epochs] or None
            print(f"note: the recipe's --lr_milestones {' '.join(map(str, past))} is past the run's end "
                  f"(--n_epochs {args.n_epochs}), so the learning rate "
                  + ("stays constant" if args.lr_milestones is None else "changes after epoch "
                     + " ".join(map(str, args.lr_milestones)) + " only"))


def check_args(args: argparse.Namespace) -> None:
    """Every flag check, before anything is loaded or written."""
    if args.image_size is not None and args.dataset_name not in ("folder", "clothing1m"):
        cli.fail(f"--image_size is for --dataset_name folder and clothing1m only; {args.dataset_name} has a fixed size "
                 "(drop the flag)")
    if args.image_size is not None and args.image_size < MIN_IMAGE_SIZE:
        cli.fail(f"--image_size must be at least {MIN_IMAGE_SIZE}, got {args.image_size}")
    cli.check_noise_label(args)
    if args.model is None:
        args.model = DEFAULT_MODEL[args.dataset_name]
    apply_recipe(args)
    check_pretrained(args)
    cli.resolve_sigma(args)
    cli.check_training_args(args)


def check_pretrained(args: argparse.Namespace) -> None:
    """--pretrained / --weights: ImageNet weights exist for IMAGENET_WEIGHTS' networks; on by default for clothing1m
    with resnet50 (None, i.e. off, elsewhere, so that other datasets' configs stay as they were)."""
    if args.weights is not None:
        if args.pretrained is False:
            cli.fail("--weights loads pretrained weights, --no-pretrained asks for none; drop one of them")
        args.pretrained = True
    if args.pretrained is None and args.dataset_name == "clothing1m" and args.model in IMAGENET_WEIGHTS:
        args.pretrained = True
    if args.pretrained and args.model not in IMAGENET_WEIGHTS:
        cli.fail(f"--pretrained: {args.model} has no ImageNet weights here; use --model "
                 f"{' | '.join(IMAGENET_WEIGHTS)} or --no-pretrained")


def pretrained_weights(args: argparse.Namespace) -> dict | None:
    """The state dict to start from, fetched and tried on the network before any data is read (a resumed run takes
    its checkpoint's)."""
    if not args.pretrained or args.resume:
        return None
    try:
        backbone = imagenet_state_dict(args.model, args.weights)
        make_model(args.model, 1, backbone)
    except WeightsError as e:
        cli.fail(str(e))
    return backbone


def check_image_size(args: argparse.Namespace, size: tuple[int, ...]) -> None:
    """VGG-19's five 2x2 max-pools shrink an image below 1 px under 32 px: say so before training starts."""
    if args.model == "vgg19-bn" and min(size) < VGG_MIN_SIZE:
        cli.fail(f"--model vgg19-bn needs images of at least {VGG_MIN_SIZE}x{VGG_MIN_SIZE}, these are "
                 f"{size[1]}x{size[0]}; use --model wrn-28-2 or --image_size {VGG_MIN_SIZE}")


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_training_args(build_parser(), argv)
    check_args(args)
    backbone = pretrained_weights(args)
    data = cli.training_data(args)
    check_image_size(args, data.images.shape[2:])
    info = data.info
    if "realised_noise_rate" in info:
        print(f"{args.dataset_name} '{args.noise_label}' labels: realised noise rate {info['realised_noise_rate']:.2%} "
              f"on all {info['n_full']:,} training images; published {info['published_noise_rate']:.1%}"
              f"{'' if info['matches_published'] else ' (DIFFERENT: check the label file)'}")
    if args.dataset_name == "folder":
        print(f"folder ({info['layout']} layout): {len(data.labels):,} training and {len(data.test_labels):,} test "
              f"images of {data.images.shape[3]}x{data.images.shape[2]}, {data.num_classes} classes; "
              + ("clean labels: none" if data.noise_rate() is None else f"noise rate {data.noise_rate():.2%} "
                 "(label != clean_label)"))
    if args.dataset_name == "clothing1m":
        print(f"clothing1m (the {info['layout']}' lists): {len(data.labels):,} noisy training, "
              f"{len(data.val[1]):,} clean validation and {len(data.test_labels):,} clean test images, {info['resize']}-px resize, "
              f"{info['crop']}-px crops"
              + ("" if info["val_test_lines_match_published"] else " (val/test sizes differ from the authors' "
                 "14,313 / 10,526 lines)"))
    _, summary = engine.run(args, data, lambda c: make_model(args.model, c, backbone), "train_real.py",
                            val=data.val, resume_id=args.resume)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
