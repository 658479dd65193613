"""What a flag is, said where it is declared (cli.add_flag): the lists of flags that tune.py needs and the columns of
TensorBoard's HParams tab are read off the declarations, equal the lists written out by hand before, and take a newly
declared flag by its declaration alone."""
from __future__ import annotations

from pathlib import Path

import cli
import datasets
import experiments
import methods
import train_real
import tune

# the lists as they were written out by hand, before they were read off the declarations
TUNE_ONLY = {"sigmas", "experiments", "resume", "reuse_runs", "address", "cpus_per_trial", "gpus_per_trial", "dry_run",
             "bench"}
NOT_TRAINING = {"data_dir", "out_dir", "device", "eval_batch_size", "tune_trial_id", "tune_config",
                "make_new_custom_noise"}
GRID_KEYS = {"variants", "noise_modes", "noise_labels", "seeds", "sigma"}
PER_RUN = {"sigma", "mo", "seed", "noise_mode", "noise_label", "method"}
NOT_IN_FILES = {"data_dir", "out_dir", "device", "make_new_custom_noise"}
HPARAMS = {"variant": str, **{name: f.type for name, f in methods.all_flags().items()}, "model": str,
           "dataset_name": str, "noise_mode": str, "noise_label": str, "p": float, "custom_noise": bool, "sigma": float,
           "mo": bool, "lc_n_epoch": int, "seed": int, "lr": float, "batch_size": int, "n_epochs": int,
           "train_subset": int, "test_subset": int}


def test_the_derived_lists_are_the_hand_made_ones():
    assert tune.TUNE_ONLY == TUNE_ONLY
    assert tune.NOT_TRAINING == NOT_TRAINING
    assert set(tune.PER_RUN) == PER_RUN
    assert set(experiments.grid_keys()) == GRID_KEYS and len(experiments.grid_keys()) == len(GRID_KEYS)
    assert cli.hparams() == HPARAMS
    p = cli.Parser()
    cli.add_cifar_args(p, human=True)
    cli.add_training_args(p, default_model="wrn-28-2", resumable=False)
    every = vars(p.parse_args([]))
    assert experiments.file_flags() == {k: v for k, v in every.items() if k not in PER_RUN | NOT_IN_FILES}


def add_new_flags(p, default_model, resumable=True, add=cli.add_training_args):
    """add_training_args with four flags more, each declared with what it is."""
    add(p, default_model, resumable)
    g = p.add_argument_group("new")
    cli.add_flag(g, "--new_cache", type=Path, default=None, roles={cli.NOT_TRAINING, cli.NOT_IN_FILES},
                 help="a folder of this machine's")
    cli.add_flag(g, "--new_log_every", type=int, default=1, roles={cli.NOT_TRAINING}, help="bookkeeping")
    cli.add_flag(g, "--new_rate", type=float, default=0.5, roles={cli.HPARAM}, help="a setting of the method")
    cli.add_flag(g, "--new_schedule", choices=["a", "b"], default="a", roles={cli.HPARAM}, grid_key="new_schedules",
                 help="set per trial by a grid")


def test_a_new_flag_lands_in_the_derived_lists_by_its_declaration(monkeypatch):
    monkeypatch.setattr(cli, "add_training_args", add_new_flags)
    assert set(tune.flags_of(cli.NOT_TRAINING)) == NOT_TRAINING - set(tune.TRIAL_KEYS) | {"new_cache", "new_log_every"}
    assert cli.per_run(tune.build_parser()) == {**tune.PER_RUN, "new_schedule": "new_schedules"}
    assert set(experiments.grid_keys()) == GRID_KEYS | {"new_schedules"}
    files = experiments.file_flags()
    assert {"new_log_every", "new_rate"} <= set(files) and not {"new_cache", "new_schedule"} & set(files)
    assert cli.hparams() == {**HPARAMS, "new_rate": float, "new_schedule": str}
    assert set(tune.flags_of(cli.TUNE_ONLY)) == TUNE_ONLY


def test_a_new_tune_flag_is_left_out_of_the_trials(monkeypatch):
    build = tune.build_parser

    def with_new_flag():
        p = build()
        cli.add_flag(p, "--new_sweep_option", default=None, roles={cli.TUNE_ONLY}, help="how the sweep runs")
        return p
    monkeypatch.setattr(tune, "build_parser", with_new_flag)
    assert set(tune.flags_of(cli.TUNE_ONLY)) == TUNE_ONLY | {"new_sweep_option"}


def test_a_dataset_recipe_sets_only_flags_the_scripts_leave_unset_and_names_itself(capsys):
    """A recipe (datasets.Dataset.recipe) fills flags that train_real.py leaves None; a key outside RECIPE_FLAGS would
    be silently ignored, so every declared recipe stays inside them. A new dataset's recipe is its entry's alone."""
    for d in datasets.DATASETS.values():
        assert set(d.recipe) <= {*cli.RECIPE_FLAGS, "image_size"}, d.name
    unset = vars(train_real.build_parser().parse_args(["--dataset_name", "animal-10n"]))
    assert all(unset[k] is None for k in cli.RECIPE_FLAGS)
    own = datasets.Dataset("mine", None, "train_real.py", 3, "wrn-16-1", {None: 0.5}, "", "no", "",
                           recipe={"n_epochs": 7})
    args = train_real.build_parser().parse_args(["--dataset_name", "animal-10n", "--batch_size", "16"])
    cli.apply_recipe(args, own)
    shared = cli.training_defaults()
    assert (args.n_epochs, args.batch_size, args.weight_decay) == (7, 16, shared["weight_decay"])
    assert capsys.readouterr().out.strip() == "mine: the authors' recipe for the flags not given: --n_epochs 7"
