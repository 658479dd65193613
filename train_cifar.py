"""Train CE, SLN, SLN+MO or SLN+MO+LC (or a baseline, --method) on CIFAR-10/100 with synthetic label noise.

    python train_cifar.py --dataset_name cifar10 --noise_mode sym --p 0.4 --sigma 1.0 --mo --lc_n_epoch 250
    python train_cifar.py --dataset_name cifar10 --noise_mode sym --p 0.4 --method NAME    # docs/methods.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import deps  # (first: a Python without the packages gets one line, not a traceback)

deps.exit_on_sigterm()    # before the heavy imports: a SIGTERM in the first seconds gets its line too

import cli  # noqa: E402
import engine  # noqa: E402
from models import make_model  # noqa: E402
from noise import format_noise_report  # noqa: E402


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=Path(__file__).name, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_cifar_args(p)
    cli.add_training_args(p, default_model="wrn-28-2")
    return p


def check_args(args: argparse.Namespace) -> cli.Method:
    """Every flag check, before anything is loaded or written (the docs test runs it on documented commands); returns
    the run's method."""
    cli.check_noise_args(args, args.dataset_name)
    cli.resolve_sigma(args)
    return cli.check_training_args(args)


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_training_args(build_parser(), argv)
    method = check_args(args)
    data = cli.training_data(args)
    print(format_noise_report(data.info["report"], data.class_names,
                              f"{args.noise_mode} p={args.p}, {'custom' if args.custom_noise else 'paper'}"))
    with cli.exits_on_error():
        _, summary = engine.run(args, method, data, lambda c: make_model(args.model, c), "train_cifar.py",
                                resume_id=args.resume, hparams=cli.hparams())
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
