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
from data import NoisyData  # noqa: E402
from models import make_model  # noqa: E402
from errors import DataError  # noqa: E402
from sources import check_images_fit  # noqa: E402

DATASETS = datasets.of_script("train_real.py")      # animal-10n, cifar10n, cifar100n, clothing1m, folder

# datasets.py declares each default network. VGG-19 with BN is the network of the Animal-10N benchmark (SELFIE, Song
# et al., ICML 2019); CIFAR-N keeps the reference's CIFAR network. The user's own images (folder) get wrn-28-2 as
# well: it pools globally, so it takes any image size from 8 px on, where VGG-19's five max-pools need at least 32 px.
DEFAULT_MODEL = {name: datasets.DATASETS[name].default_model for name in DATASETS}
VGG_MIN_SIZE = 32


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
    cli.add_image_args(p, d)
    cli.add_training_args(p, default_model=DEFAULT_MODEL["animal-10n"])
    # resolved per dataset in check_args
    p.set_defaults(model=None, **{k: None for k in cli.RECIPE_FLAGS})
    return p


def check_args(args: argparse.Namespace) -> cli.Method:
    """Every flag check, before anything is loaded or written; returns the run's method."""
    cli.check_noise_label(args)
    cli.check_image_args(args)
    cli.resolve_sigma(args)
    return cli.check_training_args(args)


def check_image_size(args: argparse.Namespace, size: tuple[int, ...]) -> None:
    """VGG-19's five 2x2 max-pools shrink an image below 1 px under 32 px: say so before training starts."""
    if args.model == "vgg19-bn" and min(size) < VGG_MIN_SIZE:
        cli.fail(f"--model vgg19-bn needs images of at least {VGG_MIN_SIZE}x{VGG_MIN_SIZE}, these are "
                 f"{size[1]}x{size[0]}; use --model wrn-28-2 or --image_size {VGG_MIN_SIZE}")


def check_batch_fits(args: argparse.Namespace, data: NoisyData) -> None:
    """Clothing1M is read batch by batch: the largest batch of --image_size crops (as float32 on the device) must
    fit in memory, else the first batch fails after the run has begun."""
    if args.dataset_name != "clothing1m":
        return
    batch = min(max(args.batch_size, args.eval_batch_size or 0), max(len(data.labels), len(data.test_labels)))
    try:
        check_images_fit(batch, args.image_size, args.image_size, f"--image_size {args.image_size} with batches of "
                         f"{batch:,} images", "give a smaller --image_size or --batch_size / --eval_batch_size",
                         bytes_per_value=4)
    except DataError as e:
        cli.fail(str(e))


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_training_args(build_parser(), argv)
    method = check_args(args)
    backbone = cli.pretrained_weights(args)
    data = cli.training_data(args)
    check_image_size(args, data.images.shape[2:])
    check_batch_fits(args, data)
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
    with cli.exits_on_error():
        _, summary = engine.run(args, method, data, lambda c: make_model(args.model, c, backbone), "train_real.py",
                                val=data.val, resume_id=args.resume)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
