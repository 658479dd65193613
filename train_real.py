"""Train CE, SLN, SLN+MO or SLN+MO+LC (or a baseline, --method) on real-world label noise: Animal-10N, CIFAR-N, Clothing1M or your own images.

--help adds each dataset's example command, default network and description, from its declaration in datasets/.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import deps  # (first: a Python without the packages gets one line, not a traceback)

deps.exit_on_sigterm()    # before the heavy imports: a SIGTERM in the first seconds gets its line too

import cli  # noqa: E402
import datasets  # noqa: E402
import engine  # noqa: E402
from datasets.images import ImageFiles, check_images_fit  # noqa: E402
from models import make_model  # noqa: E402

DATASETS = datasets.of_script("train_real.py")      # animal-10n, cifar10n, cifar100n, clothing1m, folder

# each dataset's default network, as datasets/ declares it (and says why)
DEFAULT_MODEL = {name: datasets.DATASETS[name].default_model for name in DATASETS}
VGG_MIN_SIZE = 32
HELP_WIDTH = 110        # the description's paragraphs are wrapped to lines of at most this many characters


def description() -> str:
    """This module's first line, then, from the datasets' declarations, their example commands and default networks."""
    declared = [datasets.DATASETS[name] for name in DATASETS]
    examples = "".join(f"    python {Path(__file__).name} {d.example}\n" for d in declared if d.example)
    networks: dict[str, list[str]] = {}
    for d in declared:
        networks.setdefault(d.default_model + d.model_note, []).append(d.name)
    # a network of one dataset first, then the one that several share
    shown = ", ".join(f"{model} for {' / '.join(names)}"
                      for model, names in sorted(networks.items(), key=lambda kv: len(kv[1])))
    defaults = "; ".join([*(d.defaults_note for d in declared if d.defaults_note),
                          "every flag given on the command line wins."])
    paragraph = f"Default network: {shown} (change it with --model). {defaults}"
    return (f"{__doc__.splitlines()[0]}\n\n{examples}\n"
            f"{textwrap.fill(paragraph, HELP_WIDTH, break_on_hyphens=False, break_long_words=False)}\n")


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=Path(__file__).name, description=description(),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("dataset and noise")
    d.add_argument("--dataset_name", choices=DATASETS, default="animal-10n",
                   help="; ".join(datasets.DATASETS[name].help for name in DATASETS if datasets.DATASETS[name].help)
                   + " (docs/real-world-data.md)")
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


def check_batch_fits(args: argparse.Namespace, data: datasets.NoisyData) -> None:
    """A dataset read from its files batch by batch (Clothing1M): the largest batch of --image_size crops (as float32
    on the device) must fit in memory, else the first batch fails after the run has begun."""
    if not isinstance(data.images, ImageFiles):
        return
    batch = min(max(args.batch_size, args.eval_batch_size or 0), max(len(data.labels), len(data.test_labels)))
    with cli.exits_on_error():
        check_images_fit(batch, args.image_size, args.image_size, f"--image_size {args.image_size} with batches of "
                         f"{batch:,} images", "give a smaller --image_size or --batch_size / --eval_batch_size",
                         bytes_per_value=4)


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_training_args(build_parser(), argv)
    method = check_args(args)
    backbone = cli.pretrained_weights(args)
    data = cli.training_data(args)
    check_image_size(args, data.images.shape[2:])
    check_batch_fits(args, data)
    summary = datasets.DATASETS[args.dataset_name].summary
    if summary is not None:
        print(summary(data, vars(args)))
    with cli.exits_on_error():
        _, summary = engine.run(args, method, data, lambda c: make_model(args.model, c, backbone), "train_real.py",
                                val=data.val, resume_id=args.resume, hparams=cli.hparams())
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
