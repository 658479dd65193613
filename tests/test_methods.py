"""The method declarations (methods/): exact values of each baseline's objective on hand-worked examples, and how
cli reads the declarations (flags refused with other methods, ranges, defaults)."""
import argparse
import math

import pytest
import torch

import cli
import methods
from methods import coteaching, elr, forward_t, gce, sce

LN3 = math.log(3.0)
# two classes, logits (0, ln 3): softmax (0.25, 0.75)
LOGITS = torch.tensor([[0.0, LN3]])


def test_every_method_is_declared_once_with_the_paper_models_first():
    names = list(methods.METHODS)
    assert names[:4] == ["CE", "SLN", "SLN-MO", "SLN-MO-LC"]
    assert {"GCE", "SCE", "Forward-T", "Co-teaching", "Co-teaching-SLN", "ELR"} <= set(names)
    assert methods.get("co-teaching").name == "Co-teaching"        # any case, as --method takes it
    with pytest.raises(ValueError, match="unknown method 'mixup'; choose from CE, SLN"):
        methods.get("mixup")
    # the earlier flags select the paper's models, and only them
    assert methods.from_flags(0.0, False, -1).name == "CE"
    assert methods.from_flags(0.5, True, 3).name == "SLN-MO-LC"
    assert methods.from_flags(0.0, True, -1) is None
    assert methods.of({"sigma": 1.0, "mo": True, "lc_n_epoch": -1}).name == "SLN-MO"     # a config without --method
    assert methods.of({"method": "ELR", "sigma": 0.0}).name == "ELR"


def test_gce_hand_value():
    # q = 0.5: label 1: (1 - 0.75^0.5) / 0.5 = 0.267949; label 0: (1 - 0.25^0.5) / 0.5 = 1; mean 0.633975
    logits = LOGITS.repeat(2, 1)
    assert gce.gce_loss(logits, torch.tensor([1, 0]), 0.5).item() == pytest.approx(0.6339746, abs=1e-6)
    # q = 1 is the MAE-like 1 - p_y
    assert gce.gce_loss(LOGITS, torch.tensor([1]), 1.0).item() == pytest.approx(0.25, abs=1e-6)


def test_sce_hand_value():
    # CE -ln 0.75 = 0.287682; reverse CE -(0.25 ln 1e-4 + 0.75 ln 1) = 2.302585; 0.1 CE + 1.0 RCE
    assert sce.sce_loss(LOGITS, torch.tensor([1]), 0.1, 1.0).item() == pytest.approx(0.0287682 + 2.3025851, abs=1e-5)
    # CIFAR-100's defaults are the authors' other pair
    args = argparse.Namespace(dataset_name="cifar100")
    flags = {f.name: f.default_for(args) for f in methods.get("SCE").flags}
    assert flags == {"sce_alpha": 6.0, "sce_beta": 0.1}


def test_forward_transition_matrix_and_loss_hand_value():
    clean, given = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 0, 1])
    t = forward_t.transition_matrix(clean, given, 3)
    # class 0: 2 of 3 kept, 1 flipped to 1; class 1 kept; class 2 has no images: identity row
    assert torch.allclose(t, torch.tensor([[2 / 3, 1 / 3, 0], [0, 1, 0], [0, 0, 1]]))
    t2 = t[:2, :2]
    # p T for p = (0.25, 0.75): (1/6, 5/6); label 0: -ln(1/6) = 1.791759
    assert forward_t.forward_loss(LOGITS, torch.tensor([0]), t2).item() == pytest.approx(math.log(6), abs=1e-5)
    # with T = I it is the plain cross-entropy
    assert forward_t.forward_loss(LOGITS, torch.tensor([1]), torch.eye(2)).item() == pytest.approx(-math.log(0.75), abs=1e-5)


def test_elr_hand_value_and_history_update():
    history = torch.zeros(3, 2)
    # t = 0.3 p = (0.075, 0.225); <t, p> = 0.1875; CE -ln 0.75 + 3 ln(1 - 0.1875)
    loss = elr.elr_loss(LOGITS, torch.tensor([1]), history, torch.tensor([2]), beta=0.7, lam=3.0)
    assert loss.item() == pytest.approx(-math.log(0.75) + 3 * math.log(0.8125), abs=1e-5)
    assert torch.allclose(history, torch.tensor([[0, 0], [0, 0], [0.075, 0.225]]))
    # the second visit averages: 0.7 t + 0.3 p
    elr.elr_loss(LOGITS, torch.tensor([1]), history, torch.tensor([2]), beta=0.7, lam=3.0)
    assert torch.allclose(history[2], torch.tensor([0.7 * 0.075 + 0.075, 0.7 * 0.225 + 0.225]))


def test_coteaching_schedule_is_the_authors():
    # rate[epoch] with rate[:10] = linspace(0, 0.4, 10): epoch 1 -> 0.4/9, epoch 9 -> 0.4, then 0.4
    rates = [coteaching.forget_rate_at(e, 0.4, 10, 1.0) for e in (0, 1, 5, 9, 10, 50)]
    assert rates == pytest.approx([0.0, 0.4 / 9, 0.4 * 5 / 9, 0.4, 0.4, 0.4])
    assert coteaching.forget_rate_at(9, 0.25, 10, 2.0) == pytest.approx(0.0625)   # ramps to forget_rate^c


def test_coteaching_trains_each_network_on_its_peers_small_loss_samples():
    labels = torch.tensor([0, 0, 0, 0])
    # network 1 finds samples 0, 1 easy; network 2 finds 2, 3 easy
    l1 = torch.tensor([[3.0, 0], [2.0, 0], [0, 2.0], [0, 3.0]], requires_grad=True)
    l2 = torch.tensor([[0, 3.0], [0, 2.0], [2.0, 0], [3.0, 0]], requires_grad=True)
    targets = torch.nn.functional.one_hot(labels, 2).float()
    loss, kept1, kept2 = coteaching.coteaching_loss(l1, l2, labels, targets, rate=0.5)
    assert kept1.tolist() == [0, 1] and kept2.tolist() == [3, 2]
    loss.backward()
    # network 1 learns from network 2's picks (rows 2, 3), network 2 from network 1's (rows 0, 1)
    assert l1.grad[:2].abs().sum() == 0 and l1.grad[2:].abs().sum() > 0
    assert l2.grad[2:].abs().sum() == 0 and l2.grad[:2].abs().sum() > 0
    ce = torch.nn.functional.cross_entropy
    assert loss.item() == pytest.approx((ce(l1[[3, 2]], labels[:2]) + ce(l2[[0, 1]], labels[:2])).item(), abs=1e-6)
    # int((1 - rate) n) samples, at least one; ties in index order
    assert coteaching.small_loss(torch.tensor([0.5, 0.1, 0.3, 0.1]), 0.5).tolist() == [1, 3]
    assert coteaching.small_loss(torch.tensor([0.5, 0.1]), 0.9).tolist() == [1]
    assert coteaching.epoch_row([30.0, 40.0], True) == {"coteach/selected_precision": 0.75}
    assert coteaching.epoch_row([30.0, 40.0], False) == {"coteach/selected_precision": None}


def parsed(argv: list[str]) -> argparse.Namespace:
    p = cli.Parser()
    cli.add_training_args(p, default_model="wrn-16-1")
    args = p.parse_args(["--n_epochs", "3", *argv])
    args.dataset_name, args.noise_mode = "cifar10", "sym"
    cli.resolve_sigma(args)      # the dataset's sigma where the method adds SLN noise, 0 where it does not
    return args


@pytest.mark.parametrize("argv, message", [
    (["--sigma", "0", "--gce_q", "0.5"], "--gce_q is a flag of GCE, not of CE; drop it (or add --method GCE)"),
    (["--method", "SCE", "--elr_lambda", "3"], "--elr_lambda is a flag of ELR, not of SCE"),
    (["--method", "GCE", "--gce_q", "1.5"], "--gce_q (GCE) must be in (0, 1], got 1.5"),
    (["--method", "ELR", "--elr_beta", "1"], "--elr_beta (ELR) must be in [0, 1), got 1"),
    (["--method", "Co-teaching", "--num_gradual", "0"], "--num_gradual (Co-teaching) must be 1 or more, got 0"),
    (["--method", "Co-teaching", "--forget_rate", "1"], "--forget_rate (Co-teaching) must be in [0, 1), got 1"),
    (["--method", "GCE", "--sigma", "0.5"], "--method GCE adds no SLN noise; drop --sigma 0.5"),
    (["--method", "Co-teaching-SLN", "--sigma", "0"], "--method Co-teaching-SLN needs --sigma > 0"),
    (["--method", "ELR", "--mo"], "--mo reports the momentum model, which --method ELR does not; drop --mo"),
    (["--method", "SCE", "--lc_n_epoch", "1"], "--method SCE corrects no labels; drop --lc_n_epoch 1"),
    (["--method", "SLN-MO-LC"], "--method SLN-MO-LC corrects labels after --lc_n_epoch: give --lc_n_epoch in 1..2"),
    (["--method", "mixup"], "--method: unknown method 'mixup'; choose from CE, SLN, SLN-MO, SLN-MO-LC"),
])
def test_bad_method_flags_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.check_method(parsed(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_method_flags_get_their_defaults_and_earlier_flags_still_select():
    args = parsed(["--method", "gce", "--sigma", "0"])
    assert cli.check_method(args).name == "GCE" and args.gce_q == 0.7 and args.elr_lambda is None
    args = parsed(["--method", "SLN-MO", "--sigma", "0.5"])
    assert cli.check_method(args).name == "SLN-MO" and args.mo is True      # --mo implied
    assert cli.check_method(parsed(["--sigma", "0.5", "--mo", "--lc_n_epoch", "1"])).name == "SLN-MO-LC"
    args = parsed(["--method", "ELR", "--sigma", "0"])
    args.dataset_name = "cifar100"
    cli.check_method(args)
    assert (args.elr_lambda, args.elr_beta) == (7.0, 0.9)                  # the authors' CIFAR-100 values


def test_argv_trains_each_method():
    for name, m in methods.METHODS.items():
        args = parsed(methods.argv(name, "0.5"))
        assert cli.check_method(args).name == name


def test_coteaching_ramp_is_linspace_bit_for_bit_without_making_it():
    """The forget rate of an epoch equals the authors' linspace entry exactly, for any ramp length; a ramp of
    10^20 or 10^10 epochs (np.linspace: a ValueError, or 75 GiB) costs nothing."""
    import numpy as np
    for n in (1, 2, 3, 10, 11, 300):
        for rate, c in ((0.4, 1.0), (0.3281, 1.0), (0.2, 2.0), (0.45, 0.5)):
            ramp = np.linspace(0, rate ** c, n)
            assert [coteaching.forget_rate_at(e, rate, n, c) for e in range(1, n + 3)] == \
                [float(ramp[e]) if e < n else rate for e in range(1, n + 3)]
    assert coteaching.forget_rate_at(3, 0.4, 10**20, 1.0) == 3 * (0.4 / (10**20 - 1))
    assert coteaching.forget_rate_at(5, 0.4, 10**10, 1.0) == 5 * (0.4 / (10**10 - 1))


def test_a_ramp_longer_than_the_run_is_named_and_the_run_trains(fake_root, tmp_path, capsys):
    import train_cifar
    flags = ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--custom_noise", "--n_epochs", "1",
             "--batch_size", "64", "--model", "wrn-16-1", "--device", "cpu", "--train_subset", "64", "--test_subset",
             "20", "--method", "Co-teaching", "--forget_rate", "0.4", "--data_dir", str(tmp_path / "data"),
             "--out_dir", str(tmp_path)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-10-batches-py").symlink_to(fake_root / "cifar-10-batches-py")
    train_cifar.main([*flags, "--num_gradual", str(10**20)])
    out = capsys.readouterr().out
    assert ("note: the forget rate's ramp (--num_gradual 100000000000000000000) is longer than the run (1 epochs): "
            "the last epoch drops 4e-21 of each batch, not 0.4") in out, out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "summary.json").is_file()
