"""Train CE, SLN, SLN+MO or SLN+MO+LC on CIFAR-10/100 with synthetic label noise.

    python train_cifar.py --dataset_name cifar10 --noise_mode sym --p 0.4 --sigma 1.0 --mo --lc_n_epoch 250
"""
from __future__ import annotations

import sys

import engine
from data import DataError, format_noise_report
from models import make_model


def build_parser() -> engine.Parser:
    p = engine.Parser(description=__doc__, formatter_class=engine.argparse.RawDescriptionHelpFormatter)
    engine.add_cifar_args(p)
    engine.add_training_args(p, default_model="wrn-28-2")
    return p


def check_args(args) -> None:
    engine.check_cifar_args(args)
    if args.sigma is None:
        args.sigma = engine.PAPER_SIGMA[(args.dataset_name, args.noise_mode)]
        print(f"--sigma not given: using the paper's {args.sigma} for {args.dataset_name} {args.noise_mode}")


def main(argv: list[str] | None = None) -> dict:
    args = engine.parse_training_args(build_parser(), argv)
    check_args(args)
    engine.check_training_args(args)
    try:
        data = engine.load_cifar_data(args).subset(args.train_subset, args.test_subset, args.seed)
    except DataError as e:
        engine.fail(str(e))
    print(format_noise_report(data.info["report"], data.class_names,
                              f"{args.noise_mode} p={args.p}, {'custom' if args.custom_noise else 'paper'}"))
    _, summary = engine.run(args, data, lambda c: make_model(args.model, c), resume_id=args.resume)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
