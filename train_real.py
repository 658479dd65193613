"""Train CE, SLN, SLN+MO or SLN+MO+LC on real-world label noise: Animal-10N, CIFAR-N or your own images.

    python train_real.py --dataset_name animal-10n --batch_size 128 --n_epochs 300 --lr 0.001 --sigma 0.5 --mo --lc_n_epoch 250 --seed 123
    python train_real.py --dataset_name cifar10n --noise_label worst --sigma 0.5 --mo --lc_n_epoch 250 --seed 123
    python train_real.py --dataset_name folder --data_dir my_images --image_size 32 --sigma 0.5 --mo --lc_n_epoch 250

Default network: vgg19-bn for animal-10n, wrn-28-2 for cifar10n / cifar100n / folder (change it with --model).
"""
from __future__ import annotations

import argparse
import sys

import cli
import engine
from folder_data import MIN_IMAGE_SIZE
from models import make_model
from real_data import CIFARN

DATASETS = ["animal-10n", *CIFARN, "folder"]

# VGG-19 with BN is the network of the Animal-10N benchmark (SELFIE, Song et al., ICML 2019); CIFAR-N
# keeps the reference's CIFAR network. The user's own images (folder) get wrn-28-2 as well: it pools globally,
# so it takes any image size from 8 px on, where VGG-19's five max-pools need at least 32 px.
DEFAULT_MODEL = {"animal-10n": "vgg19-bn", "cifar10n": "wrn-28-2", "cifar100n": "wrn-28-2", "folder": "wrn-28-2"}
VGG_MIN_SIZE = 32

NOISE_LABELS = [label for spec in CIFARN.values() for label in spec.label_keys]


def build_parser() -> cli.Parser:
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("dataset and noise")
    d.add_argument("--dataset_name", choices=DATASETS, default="animal-10n",
                   help="animal-10n: <data_dir>/animal-10n/ (no clean labels); cifar10n / cifar100n: CIFAR images with "
                        "the human labels of <data_dir>/cifar-n/CIFAR-10_human.pt / CIFAR-100_human.pt; folder: your "
                        "own images in --data_dir itself, as train/<class>/ and test/<class>/ folders or train.csv and "
                        "test.csv with columns path,label[,clean_label] (docs/real-world-data.md)")
    d.add_argument("--noise_label", choices=NOISE_LABELS, default=None,
                   help="CIFAR-N label set; cifar10n (required): aggre (9.0%% noisy), worst (40.2%%), random1, random2, "
                        "random3 (17-18%%); cifar100n: noisy (40.2%%, the default)")
    d.add_argument("--image_size", type=int, default=None, metavar="N",
                   help="folder only: resize every image to N x N (bilinear); default: the images' own size, "
                        "which all must then share")
    cli.add_training_args(p, default_model=DEFAULT_MODEL["animal-10n"])
    p.set_defaults(model=None)  # resolved per dataset in check_args
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every flag check, before anything is loaded or written."""
    if args.image_size is not None and args.dataset_name != "folder":
        cli.fail(f"--image_size is for --dataset_name folder only; {args.dataset_name} has a fixed size (drop the flag)")
    if args.image_size is not None and args.image_size < MIN_IMAGE_SIZE:
        cli.fail(f"--image_size must be at least {MIN_IMAGE_SIZE}, got {args.image_size}")
    if args.dataset_name in ("animal-10n", "folder"):
        if args.noise_label is not None:
            cli.fail(f"--noise_label is for cifar10n / cifar100n only; {args.dataset_name}'s labels are fixed "
                     "(drop the flag)")
    else:
        labels = list(CIFARN[args.dataset_name].label_keys)
        if args.noise_label is None and len(labels) == 1:
            args.noise_label = labels[0]
        elif args.noise_label not in labels:
            cli.fail(f"{args.dataset_name} needs --noise_label {' | '.join(labels)}"
                     + (f" (got {args.noise_label})" if args.noise_label else ""))
    if args.model is None:
        args.model = DEFAULT_MODEL[args.dataset_name]
    cli.resolve_sigma(args)
    cli.check_training_args(args)


def check_image_size(args: argparse.Namespace, size: tuple[int, ...]) -> None:
    """VGG-19's five 2x2 max-pools shrink an image below 1 px under 32 px: say so before training starts."""
    if args.model == "vgg19-bn" and min(size) < VGG_MIN_SIZE:
        cli.fail(f"--model vgg19-bn needs images of at least {VGG_MIN_SIZE}x{VGG_MIN_SIZE}, these are "
                 f"{size[1]}x{size[0]}; use --model wrn-28-2 or --image_size {VGG_MIN_SIZE}")


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_training_args(build_parser(), argv)
    check_args(args)
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
    _, summary = engine.run(args, data, lambda c: make_model(args.model, c), "train_real.py", resume_id=args.resume)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
