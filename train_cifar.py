"""Train CE, SLN, SLN+MO or SLN+MO+LC on CIFAR-10/100 with synthetic label noise.

    python train_cifar.py --dataset_name cifar10 --noise_mode sym --p 0.4 --sigma 1.0 --mo --lc_n_epoch 250
"""
from __future__ import annotations

import sys

import engine
from data import ASYM_VARIANTS, CIFAR, SYM_VARIANTS, DataError, format_noise_report, load_cifar_noisy
from models import make_model

NOISE_MODES = ["sym", "asym", "dependent", "openset"]

# Sigma per setting, from the reference README (used when --sigma is not given).
PAPER_SIGMA = {("cifar10", "sym"): 1.0, ("cifar10", "asym"): 0.5, ("cifar10", "dependent"): 0.5,
               ("cifar10", "openset"): 0.5, ("cifar100", "sym"): 0.2, ("cifar100", "asym"): 0.2,
               ("cifar100", "dependent"): 0.1}


def build_parser() -> engine.Parser:
    p = engine.Parser(description=__doc__, formatter_class=engine.argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("dataset and noise")
    d.add_argument("--dataset_name", choices=list(CIFAR), default="cifar10", help="training dataset")
    d.add_argument("--noise_mode", choices=NOISE_MODES, default="sym",
                   help="sym/asym/dependent: label noise; openset: CIFAR-100 images inside CIFAR-10 (CIFAR-10 only)")
    d.add_argument("--p", type=float, default=0.4, help="noise rate, in [0, 1)")
    d.add_argument("--custom_noise", action="store_true",
                   help="use generated noise (<data_dir>/<dataset>/label_noisy/<mode><p>_custom.csv) instead of the paper's files")
    d.add_argument("--make_new_custom_noise", action="store_true",
                   help="regenerate the custom noise file from --seed (needs --custom_noise); a file with other "
                        "content is kept aside as <name>.old-<hash>.csv, never overwritten")
    d.add_argument("--sym_variant", choices=list(SYM_VARIANTS), default=None,
                   help="custom sym noise: " + "; ".join(f"{k}: {v}" for k, v in SYM_VARIANTS.items())
                        + " (default other, or what the existing file was made with)")
    d.add_argument("--asym_variant", choices=list(ASYM_VARIANTS), default=None,
                   help="custom asym noise: " + "; ".join(f"{k}: {v}" for k, v in ASYM_VARIANTS.items())
                        + " (default paper, or what the existing file was made with)")
    engine.add_training_args(p, default_model="wrn-28-2")
    return p


def check_args(args) -> None:
    if not 0 <= args.p < 1:
        engine.fail(f"--p must be in [0, 1), got {args.p}")
    if args.noise_mode == "openset" and args.dataset_name != "cifar10":
        engine.fail("open-set noise exists for CIFAR-10 only; use --dataset_name cifar10 or another --noise_mode")
    if args.make_new_custom_noise and not args.custom_noise:
        engine.fail("--make_new_custom_noise needs --custom_noise")
    if args.sigma is None:
        args.sigma = PAPER_SIGMA[(args.dataset_name, args.noise_mode)]
        print(f"--sigma not given: using the paper's {args.sigma} for {args.dataset_name} {args.noise_mode}")


def main(argv: list[str] | None = None) -> dict:
    args = engine.parse_training_args(build_parser(), argv)
    check_args(args)
    engine.check_training_args(args)
    try:
        data = load_cifar_noisy(args.dataset_name, args.data_dir, args.noise_mode, args.p, args.seed,
                                args.custom_noise, args.make_new_custom_noise, args.sym_variant, args.asym_variant)
        data = data.subset(args.train_subset, args.test_subset, args.seed)
    except DataError as e:
        engine.fail(str(e))
    print(format_noise_report(data.info["report"], data.class_names,
                              f"{args.noise_mode} p={args.p}, {'custom' if args.custom_noise else 'paper'}"))
    _, summary = engine.run(args, data, lambda c: make_model(args.model, c))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
