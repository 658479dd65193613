"""Train CE, SLN, SLN+MO or SLN+MO+LC on real-world label noise: Animal-10N or CIFAR-N.

    python train_real.py --dataset_name animal-10n --batch_size 128 --n_epochs 300 --lr 0.001 --sigma 0.5 --mo --lc_n_epoch 250 --seed 123
    python train_real.py --dataset_name cifar10n --noise_label worst --sigma 0.5 --mo --lc_n_epoch 250 --seed 123

Default network: vgg19-bn for animal-10n, wrn-28-2 for cifar10n / cifar100n (change it with --model).
"""
from __future__ import annotations

import argparse
import sys

import cli
import engine
from models import make_model
from real_data import CIFARN

DATASETS = ["animal-10n", *CIFARN]

# VGG-19 with BN is the network of the Animal-10N benchmark (SELFIE, Song et al., ICML 2019); CIFAR-N
# keeps the reference's CIFAR network.
DEFAULT_MODEL = {"animal-10n": "vgg19-bn", "cifar10n": "wrn-28-2", "cifar100n": "wrn-28-2"}

NOISE_LABELS = [label for spec in CIFARN.values() for label in spec.label_keys]


def build_parser() -> cli.Parser:
    p = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("dataset and noise")
    d.add_argument("--dataset_name", choices=DATASETS, default="animal-10n",
                   help="animal-10n: <data_dir>/animal-10n/ (no clean labels); cifar10n / cifar100n: CIFAR images with "
                        "the human labels of <data_dir>/cifar-n/CIFAR-10_human.pt / CIFAR-100_human.pt")
    d.add_argument("--noise_label", choices=NOISE_LABELS, default=None,
                   help="CIFAR-N label set; cifar10n (required): aggre (9.0%% noisy), worst (40.2%%), random1, random2, "
                        "random3 (17-18%%); cifar100n: noisy (40.2%%, the default)")
    cli.add_training_args(p, default_model=DEFAULT_MODEL["animal-10n"])
    p.set_defaults(model=None)  # resolved per dataset in check_args
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every flag check, before anything is loaded or written."""
    if args.dataset_name == "animal-10n":
        if args.noise_label is not None:
            cli.fail("--noise_label is for cifar10n / cifar100n only; Animal-10N's labels are fixed (drop the flag)")
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


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_training_args(build_parser(), argv)
    check_args(args)
    data = cli.training_data(args)
    info = data.info
    if "realised_noise_rate" in info:
        print(f"{args.dataset_name} '{args.noise_label}' labels: realised noise rate {info['realised_noise_rate']:.2%} "
              f"on all {info['n_full']:,} training images; published {info['published_noise_rate']:.1%}"
              f"{'' if info['matches_published'] else ' (DIFFERENT: check the label file)'}")
    _, summary = engine.run(args, data, lambda c: make_model(args.model, c), "train_real.py", resume_id=args.resume)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
