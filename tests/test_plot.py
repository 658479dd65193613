"""plot.py on tiny train_cifar.py runs: every figure is written and decodable, the numbers behind the figures and
tables are the runs' own, and mistakes give one-line errors."""
import csv
import json
import math
import shutil
import statistics

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import data
import engine
import plot
import sweeps
import train_cifar
from models import make_model
from runs import write_metrics

BASE = ["--dataset_name", "cifar10", "--p", "0.4", "--batch_size", "50", "--n_epochs", "2", "--lr", "0.01",
        "--model", "wrn-16-1", "--device", "cpu", "--train_subset", "100", "--test_subset", "50"]
TRAINED = {  # the two runs trained for real: the reported network is the EMA one for "lc1", the plain one for "ce"
    "lc1": ["--noise_mode", "sym", "--sigma", "1.0", "--mo", "--lc_n_epoch", "1", "--seed", "1"],
    "ce": ["--noise_mode", "sym", "--sigma", "0", "--lc_n_epoch", "-1", "--seed", "1"],
}
# Tables and the ablation read only config.yaml and metrics.csv, so further runs are copies of those two with
# another seed / sigma / noise mode and other test accuracies (per epoch) in their files.
DERIVED = {
    "lc2": ("lc1", {"seed": 2}, [0.31, 0.27]),
    "sln": ("ce", {"sigma": 0.5, "variant": "SLN"}, [0.22, 0.36]),
    "ce_asym": ("ce", {"noise_mode": "asym"}, [0.4, 0.35]),
    "sln_asym": ("ce", {"noise_mode": "asym", "sigma": 0.3, "variant": "SLN"}, [0.3, 0.33]),
}


def derive(runs_dir, src, name, changes, accs):
    dest = runs_dir / f"exp_derived_{name}"
    shutil.copytree(runs_dir / src, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    config.update(changes, exp_id=dest.name)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = read_csv(dest / "metrics.csv")
    for row, acc in zip(rows, accs, strict=True):
        row["test/acc_reported"] = acc
    with open(dest / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = json.loads((dest / "summary.json").read_text())     # the files of a run agree
    summary.update(last_test_acc=accs[-1], best_test_acc=max(accs))
    (dest / "summary.json").write_text(json.dumps(summary))
    return dest.name


@pytest.fixture(scope="module")
def runs(fake_root, tmp_path_factory):
    """Two trained runs and three derived ones in <out>/runs/; returns (out_dir, {name: exp_id})."""
    out = tmp_path_factory.mktemp("plot_runs")
    sums = {(n, m, 0.4): data.file_digest(data.noise_dir(fake_root, n) / f"{m}0.4.csv")
            for n in ("cifar10", "cifar100") for m in ("sym", "asym", "dependent")}
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "PAPER_NOISE_SHA256", sums)
        for name, flags in TRAINED.items():
            before = set(plot.run_ids(out / "runs")) if (out / "runs").is_dir() else set()
            train_cifar.main(BASE + ["--data_dir", str(fake_root), "--out_dir", str(out), *flags])
            (ids[name],) = set(plot.run_ids(out / "runs")) - before
    for name, (src, changes, accs) in DERIVED.items():
        ids[name] = derive(out / "runs", ids[src], name, changes, accs)
    return out, ids


def run_plot(out, assets, *flags):
    return plot.main(["--runs_dir", str(out / "runs"), "--assets_dir", str(assets), *flags])


def fails(capsys, out, assets, *flags) -> str:
    """Run plot.py expecting a user error: one line on stderr, non-zero exit, nothing written."""
    with pytest.raises(SystemExit) as exc:
        run_plot(out, assets, *flags)
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not assets.exists()
    return err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def decodable(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()
        return im.size


def last_best(run_dir, column="test/acc_reported") -> tuple[float, float]:
    acc = [100 * float(r[column]) for r in read_csv(run_dir / "metrics.csv")]
    return acc[-1], max(acc)


def test_pred_probs_and_sample_dissect_use_the_runs_ema_network(runs, fake_root, paper_sums, tmp_path):
    out, ids = runs
    exp_id = ids["lc1"]
    written = run_plot(out, tmp_path, "--exp_id", exp_id, "--plot_type", "pred_probs", "sample_dissect", "curves", "--pdf")
    folder = tmp_path / exp_id
    assert sorted(p.name for p in written) == sorted(
        ["pred_probs.png", "pred_probs.pdf", "pred_probs.csv", "sample_dissect.png", "sample_dissect.pdf",
         "sample_dissect.csv", "curves.png", "curves.pdf", "curves.csv"])
    # every figure has its numbers: the curves are the run's own metrics.csv columns
    metrics = read_csv(out / "runs" / exp_id / "metrics.csv")
    curves = read_csv(folder / "curves.csv")
    assert [int(r["epoch"]) for r in curves] == [int(r["epoch"]) for r in metrics]
    assert set(curves[0]) == {"epoch", "test/acc", "test/acc_ema", "train/loss_clean", "train/loss_noisy", "train/loss"}
    for c, m in zip(curves, metrics):
        assert all(float(c[k]) == pytest.approx(float(m[k])) for k in c)
    for name in ("pred_probs", "sample_dissect", "curves"):
        w, h = decodable(folder / f"{name}.png")
        assert w > 600 and h > 300
        assert (folder / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"

    # the same numbers, computed here from the run's files without plot.py
    config = yaml.safe_load((out / "runs" / exp_id / "config.yaml").read_text())
    d = data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, 1).subset(100, None, 1)
    assert json.loads((out / "runs" / exp_id / "noise.json").read_text())["train_indices"] == d.info["train_indices"]
    model = make_model("wrn-16-1", 10)
    model.load_state_dict(torch.load(out / "runs" / exp_id / "ema_final.pt", weights_only=True))
    logits = engine.predict(model, torch.from_numpy(d.images), torch.tensor(d.mean), torch.tensor(d.std), 64)
    probs = torch.softmax(logits, 1)
    n_noisy = int(d.is_noisy.sum())
    assert n_noisy == round(config["noise"]["noise_rate"] * 100)

    hist = read_csv(folder / "pred_probs.csv")
    assert len(hist) == 50
    edges = np.linspace(0, 1, 51)
    maxp = probs.max(1).values.numpy()
    assert [int(r["noisy_max_prob"]) for r in hist] == np.histogram(maxp[d.is_noisy], edges)[0].tolist()
    assert [int(r["clean_max_prob"]) for r in hist] == np.histogram(maxp[~d.is_noisy], edges)[0].tolist()
    given = probs[torch.arange(100), torch.from_numpy(d.labels)].numpy()
    assert [int(r["noisy_given_label_prob"]) for r in hist] == np.histogram(given[d.is_noisy], edges)[0].tolist()

    bins = read_csv(folder / "sample_dissect.csv")
    assert [int(r["n"]) for r in bins] == [2] * 50                        # 100 samples in 50 equal bins
    assert all(float(a["loss_max"]) <= float(b["loss_min"]) for a, b in zip(bins, bins[1:]))
    pred_right = (logits.argmax(1).numpy() == d.clean_labels)
    kinds = [c for c in bins[0] if c.startswith("label_")]
    totals = [sum(int(r[k]) for r in bins) for k in kinds]
    assert totals == [int((~d.is_noisy & pred_right).sum()), int((~d.is_noisy & ~pred_right).sum()),
                      int((d.is_noisy & pred_right).sum()), int((d.is_noisy & ~pred_right).sum())]


def test_confident_label_issues_exact():
    # class 0's threshold: mean p0 over images labelled 0 = (0.9 + 0.2) / 2 = 0.55; class 1's: (0.7 + 0.6) / 2 = 0.65
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    given = np.array([0, 0, 1, 1])
    wrong, confidence = plot.confident_label_issues(probs, given)
    # image 1: labelled 0, but class 1 reaches its threshold (0.8 >= 0.65) and class 0 does not: likely wrong.
    # image 3: labelled 1 with 0.6 < 0.65 and 0.4 < 0.55: no class is confident, so it is not flagged.
    assert wrong.tolist() == [False, True, False, False]
    assert confidence.tolist() == [0.9, 0.2, 0.7, 0.6]


def test_label_issues_of_a_cifar_run(runs, fake_root, paper_sums, tmp_path, capsys):
    """--label_issues: one row per training image, keyed by its index in CIFAR's training set, with the momentum
    network's numbers recomputed here, the corrected labels of label correction, and precision and recall against the
    clean labels as the CSV's own columns give them."""
    out, ids = runs
    exp_id = ids["lc1"]
    written = run_plot(out, tmp_path, "--exp_id", exp_id, "--label_issues")
    assert sorted(p.name for p in written) == ["label_issues.csv", "label_issues.md"]
    rows = read_csv(tmp_path / exp_id / "label_issues.csv")
    d = data.load_cifar_noisy("cifar10", fake_root, "sym", 0.4, 1).subset(100, None, 1)
    names = d.class_names
    assert sorted(int(r["index"]) for r in rows) == sorted(d.info["train_indices"])
    assert [int(r["rank"]) for r in rows] == list(range(1, 101))
    model = make_model("wrn-16-1", 10)
    model.load_state_dict(torch.load(out / "runs" / exp_id / "ema_final.pt", weights_only=True))
    probs = torch.softmax(engine.predict(model, torch.from_numpy(d.images), torch.tensor(d.mean), torch.tensor(d.std),
                                         64), 1).numpy()
    targets = torch.load(out / "runs" / exp_id / "targets_final.pt", weights_only=True).argmax(1).numpy()
    where = {idx: i for i, idx in enumerate(d.info["train_indices"])}
    for r in rows:
        i = where[int(r["index"])]
        assert r["given_label"] == names[d.labels[i]] and r["clean_label"] == names[d.clean_labels[i]]
        assert float(r["given_label_prob"]) == pytest.approx(probs[i, d.labels[i]], abs=1e-5)
        assert r["predicted_label"] == names[probs[i].argmax()] and r["corrected_label"] == names[targets[i]]
    flagged = [r["likely_wrong"] == "1" for r in rows]
    assert flagged == sorted(flagged, reverse=True)        # the likely wrong ones first
    wrong_given = [r["given_label"] != r["clean_label"] for r in rows]
    hits = sum(f and w for f, w in zip(flagged, wrong_given))
    md = (tmp_path / exp_id / "label_issues.md").read_text()
    assert f"likely wrong: {sum(flagged)} of 100" in md
    if sum(flagged):
        assert f"precision {hits / sum(flagged):.4f}, recall {hits / sum(wrong_given):.4f}" in md


def test_outputs_are_never_silently_replaced(runs, tmp_path):
    out, ids = runs
    run_plot(out, tmp_path, "--exp_id", ids["ce"], "--plot_type", "curves")
    first = (tmp_path / ids["ce"] / "curves.png").read_bytes()
    # the same figure again: left as it is, no curves-2 beside it
    assert [p.name for p in run_plot(out, tmp_path, "--exp_id", ids["ce"], "--plot_type", "curves")] == ["curves.png", "curves.csv"]
    assert not (tmp_path / ids["ce"] / "curves-2.png").exists()
    (tmp_path / ids["ce"] / "curves.png").write_bytes(b"keep me")
    assert [p.name for p in run_plot(out, tmp_path, "--exp_id", ids["ce"], "--plot_type", "curves")] == ["curves-2.png", "curves-2.csv"]
    assert (tmp_path / ids["ce"] / "curves.png").read_bytes() == b"keep me"
    assert (tmp_path / ids["ce"] / "curves-2.png").read_bytes()[:8] == first[:8]
    run_plot(out, tmp_path, "--exp_id", ids["ce"], "--plot_type", "curves", "--overwrite")
    assert decodable(tmp_path / ids["ce"] / "curves.png")
    assert not (tmp_path / ids["ce"] / "curves-3.png").exists()


def test_table_numbers_are_those_of_the_metrics_files(runs, tmp_path):
    out, ids = runs
    run_plot(out, tmp_path, "--table", "--filter", "dataset_name=cifar10,model=wrn-16-1", "--name", "t")
    rows = read_csv(tmp_path / "t.csv")
    # CE-MO: CE's runs, read at their momentum network
    assert sorted((r["variant"], r["noise"], r["sigma"], r["n_seeds"]) for r in rows) == [
        ("CE", "asym", "0.0", "1"), ("CE", "sym", "0.0", "1"), ("CE-MO", "asym", "0.0", "1"), ("CE-MO", "sym", "0.0", "1"),
        ("SLN", "asym", "0.3", "1"), ("SLN", "sym", "0.5", "1"), ("SLN-MO-LC", "sym", "1.0", "2")]
    ce = {r["noise"]: r["exp_ids"] for r in rows if r["variant"] == "CE"}
    assert {r["noise"]: r["exp_ids"] for r in rows if r["variant"] == "CE-MO"} == ce
    for r in rows:
        column = "test/acc_ema" if r["variant"] == "CE-MO" else "test/acc_reported"
        accs = [last_best(out / "runs" / i, column) for i in r["exp_ids"].split()]
        for k, which in enumerate(("last", "best")):
            values = [a[k] for a in accs]
            assert float(r[f"{which}_mean"]) == pytest.approx(statistics.mean(values), abs=1e-4)
            if len(values) > 1:
                assert float(r[f"{which}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
            else:
                assert r[f"{which}_std"] == ""
    lc = next(r for r in rows if r["variant"] == "SLN-MO-LC")
    assert sorted(lc["exp_ids"].split()) == sorted([ids["lc1"], ids["lc2"]]) and sorted(lc["seeds"].split()) == ["1", "2"]

    md = (tmp_path / "t.md").read_text()
    last = [last_best(out / "runs" / ids[n])[0] for n in ("lc1", "lc2")]
    assert f"| SLN-MO-LC | {statistics.mean(last):.2f} ± {statistics.stdev(last):.2f} (n=2) | – |" in md
    assert "| method | sym | asym |" in md                              # columns in the paper's order
    table = md.split("last epoch")[1].split("###")[0]
    assert table.index("| CE |") < table.index("| SLN |") < table.index("| SLN-MO-LC |")
    # like the paper, one SLN row although sigma differs per noise mode; the table says so below
    sln = [last_best(out / "runs" / ids[n])[0] for n in ("sln", "sln_asym")]
    assert f"| SLN | {sln[0]:.2f} (n=1) | {sln[1]:.2f} (n=1) |" in table
    assert "SLN: σ = 0.5 (sym), 0.3 (asym)" in table
    # sigma is not in a row's label, so every row that adds SLN noise has its line, even where it is one value
    assert "SLN-MO-LC: σ = 1.0 (sym)" in table and "CE: σ" not in table


def damage_last_row(run_dir) -> None:
    """Cut metrics.csv's last row short, as a kill in the middle of its write (or a bad copy) leaves it."""
    text = (run_dir / "metrics.csv").read_text()
    (run_dir / "metrics.csv").write_text(text[:text.rstrip("\n").rindex(",")] + "\n")


@pytest.mark.parametrize("fault", ["damaged last row", "summary disagrees"])
def test_a_run_whose_files_disagree_is_named_and_left_out_of_the_table(runs, tmp_path, capsys, fault):
    """A finished run whose metrics.csv lacks an epoch that summary.json counts (its last row damaged), or whose
    summary.json records another last accuracy, is never reported as if it were whole: a note names it and what
    is wrong, and the cells are those of the other runs."""
    out, ids = runs
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for name in ("lc1", "lc2"):
        shutil.copytree(out / "runs" / ids[name], runs_dir / ids[name])
    broken = runs_dir / ids["lc2"]
    if fault == "damaged last row":
        damage_last_row(broken)
        problem = "its metrics.csv has 1 readable epoch rows but its summary.json counts 2 epochs (epoch 2 missing or damaged)"
    else:
        summary = json.loads((broken / "summary.json").read_text())
        (broken / "summary.json").write_text(json.dumps({**summary, "last_test_acc": 0.99}))
        problem = "its summary.json's last_test_acc 0.99 is not its metrics.csv's last test/acc_reported 0.27"
    plot.main(["--table", "--runs_dir", str(runs_dir), "--assets_dir", str(tmp_path / "assets")])
    assert f"note: run {ids['lc2']} is left out: {problem}" in capsys.readouterr().err
    (row,) = read_csv(tmp_path / "assets" / "table.csv")
    assert row["exp_ids"] == ids["lc1"] and row["n_seeds"] == "1"
    assert float(row["last_mean"]) == pytest.approx(last_best(out / "runs" / ids["lc1"])[0], abs=1e-4)


def fake_run(exp_id, sigma, seed, accs):
    config = {"dataset_name": "cifar10", "model": "wrn-16-1", "p": 0.4, "n_epochs": 2, "noise_mode": "sym",
              "variant": "SLN" if sigma else "CE", "sigma": sigma, "mo": False, "lc_n_epoch": -1, "seed": seed}
    return plot.Run(exp_id, None, config, {"test/acc_reported": np.array(accs)}, {})


def test_bf16_runs_are_not_pooled_with_float32_seeds():
    """fp32, tf32 and runs from before --precision pool (the same arithmetic on a CPU); bf16 is a table of its own."""
    runs = [fake_run("a", 0.0, 1, [0.1, 0.2]), fake_run("b", 0.0, 2, [0.3, 0.4]), fake_run("c", 0.0, 3, [0.5, 0.6])]
    runs[1].config["precision"] = "tf32"
    runs[2].config.update(precision="bf16", amp=True)
    md, rows = plot.make_table(runs)
    header = rows[0]
    assert sorted((r[header.index("precision")], r[header.index("n_seeds")]) for r in rows[1:]) == [("", 2), ("bf16", 1)]
    assert "precision=bf16" in md


def test_two_sigmas_in_one_column_are_two_rows():
    md, rows = plot.make_table([fake_run("a", 0.5, 1, [0.1, 0.2]), fake_run("b", 1.0, 1, [0.3, 0.4]),
                                fake_run("c", 1.0, 2, [0.5, 0.3]), fake_run("d", 0.0, 1, [0.6, 0.5])])
    assert "| SLN (σ=0.5) | 20.00 (n=1) |" in md and "| SLN (σ=1.0) | 35.00 ± 7.07 (n=2) |" in md
    assert md.index("| CE |") < md.index("| SLN (σ=0.5) |") < md.index("| SLN (σ=1.0) |")
    header = rows[0]
    assert [r[header.index("method")] for r in rows[1:]] == ["CE", "SLN (σ=0.5)", "SLN (σ=1.0)"]
    assert [r[header.index("best_mean")] for r in rows[1:]] == [60.0, 20.0, 45.0]


def test_filter_selects_runs(runs, tmp_path, capsys):
    out, ids = runs
    run_plot(out, tmp_path, "--table", "--filter", "noise_mode=asym|dependent,sigma=0")
    # CE and CE-MO, its momentum network: one run
    assert [(r["variant"], r["exp_ids"]) for r in read_csv(tmp_path / "table.csv")] == [("CE", ids["ce_asym"]),
                                                                                        ("CE-MO", ids["ce_asym"])]
    run_plot(out, tmp_path / "mo", "--table", "--filter", "noise_mode=asym,variant=CE-MO")
    assert [(r["variant"], r["exp_ids"]) for r in read_csv(tmp_path / "mo" / "table.csv")] == [("CE-MO", ids["ce_asym"])]
    err = fails(capsys, out, tmp_path / "x", "--table", "--filter", "colour=red")
    assert "'colour'" in err and "noise_mode" in err


def test_filter_takes_names_in_any_case_and_the_method_a_run_trained(runs, tmp_path, capsys):
    """method= is the method each run trained (these were started with --sigma, no --method in their configs);
    names match in any case; a filter that matches nothing lists the values the runs have."""
    out, ids = runs
    run_plot(out, tmp_path, "--table", "--filter", "method=sln,noise_mode=SYM", "--name", "t")
    assert [r["exp_ids"] for r in read_csv(tmp_path / "t.csv")] == [ids["sln"]]
    err = fails(capsys, out, tmp_path / "x", "--table", "--filter", "method=gce,noise_mode=sym")
    assert err.endswith("the finished runs have method: CE, CE-MO, SLN, SLN-MO-LC; noise_mode: asym, sym"), err


def test_ablation_is_accuracy_vs_sigma(runs, tmp_path):
    out, ids = runs
    written = run_plot(out, tmp_path, "--plot_type", "ablation", "--filter", "noise_mode=sym,mo=false")
    assert [p.name for p in written] == ["ablation.png", "ablation.csv"]
    decodable(tmp_path / "ablation.png")
    rows = read_csv(tmp_path / "ablation.csv")
    assert [(float(r["sigma"]), r["exp_ids"]) for r in rows] == [(0.0, ids["ce"]), (0.5, ids["sln"])]
    for r in rows:
        assert float(r["last_mean"]) == pytest.approx(last_best(out / "runs" / r["exp_ids"])[0], abs=1e-4)


def write_hp_sweep(folder, name, header, rows):
    folder.mkdir(parents=True)
    with open(folder / name, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def test_hp_reads_sigma_tables_of_either_style(tmp_path, capsys):
    # the columns this issue assumed (fractions), and those tune.py writes (percent, extra columns)
    write_hp_sweep(tmp_path / "hp" / "hp_a", "results.csv", ["sigma", "last_val_acc", "best_val_acc"],
                   [[0.1, 0.5, 0.6], [1.0, 0.7, 0.75], [1.0, 0.8, 0.85]])
    write_hp_sweep(tmp_path / "hp" / "hp_b", "sigma_search.csv",
                   ["sigma", "val_acc_last_pct", "val_acc_best_pct", "best_epoch", "exp_id"],
                   [[0.2, 61.5, 62.0, 3, "exp_x"], [0.5, 66.0, 67.25, 2, "exp_y"]])
    path, table = sweeps.read_hp_table(tmp_path / "hp" / "hp_a")
    assert path.name == "results.csv"
    assert table == {0.1: ([50.0], [60.0]), 1.0: ([70.0, 80.0], [75.0, 85.0])}
    assert sweeps.read_hp_table(tmp_path / "hp" / "hp_b")[1] == {0.2: ([61.5], [62.0]), 0.5: ([66.0], [67.25])}

    assets = tmp_path / "assets"
    # a bare sweep id is looked up in hp/ beside the runs folder
    written = plot.main(["--plot_type", "hp", "--hp_dir", "hp_a", str(tmp_path / "hp" / "hp_b"),
                         "--runs_dir", str(tmp_path / "runs"), "--assets_dir", str(assets)])
    assert [p.name for p in written] == ["hp.png", "hp.csv"]
    decodable(assets / "hp.png")
    rows = read_csv(assets / "hp.csv")
    assert [(r["sweep"], float(r["sigma"]), int(r["n_trials"]), float(r["last_mean"])) for r in rows] == [
        ("hp_a", 0.1, 1, 50.0), ("hp_a", 1.0, 2, 75.0), ("hp_b", 0.2, 1, 61.5), ("hp_b", 0.5, 1, 66.0)]

    (tmp_path / "hp" / "hp_c").mkdir()
    (tmp_path / "hp" / "hp_c" / "other.csv").write_text("trial,loss\n1,0.5\n")
    err = fails(capsys, tmp_path, assets / "new", "--plot_type", "hp", "--hp_dir", str(tmp_path / "hp" / "hp_c"))
    assert "sigma table" in err and "other.csv (trial,loss)" in err


def test_unknown_exp_id_lists_the_nearest(runs, tmp_path, capsys):
    out, ids = runs
    typo = ids["lc1"][:-2] + "zz"
    err = fails(capsys, out, tmp_path / "assets", "--exp_id", typo, "--plot_type", "curves")
    assert f"no run {typo!r}" in err and ids["lc1"] in err.split("closest:")[1]
    err = fails(capsys, out, tmp_path / "assets", "--exp_ids", typo, "--table")
    assert "closest:" in err


def copy_run(out, exp_id, dest):
    shutil.copytree(out / "runs" / exp_id, dest / "runs" / exp_id)
    return dest / "runs" / exp_id


def test_runs_without_clean_labels_get_curves_but_not_dissection(runs, tmp_path, capsys):
    out, ids = runs
    run_dir = copy_run(out, ids["ce"], tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["dataset_name"] = "animal-10n"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = read_csv(run_dir / "metrics.csv")
    for r in rows:   # engine.py leaves these empty when there are no clean labels
        r["train/loss_clean"] = r["train/loss_noisy"] = ""
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for kind in ("pred_probs", "sample_dissect"):
        err = fails(capsys, tmp_path, tmp_path / "assets", "--exp_id", ids["ce"], "--plot_type", kind)
        assert "no clean labels" in err
    run_plot(tmp_path, tmp_path / "assets", "--exp_id", ids["ce"], "--plot_type", "curves")
    decodable(tmp_path / "assets" / ids["ce"] / "curves.png")


def test_a_different_training_set_is_refused(runs, paper_sums, tmp_path, capsys):
    out, ids = runs
    run_dir = copy_run(out, ids["ce"], tmp_path)
    noise = json.loads((run_dir / "noise.json").read_text())
    noise["train_indices"][0] += 1
    (run_dir / "noise.json").write_text(json.dumps(noise))
    err = fails(capsys, tmp_path, tmp_path / "assets", "--exp_id", ids["ce"], "--plot_type", "pred_probs")
    assert "is not the one run" in err and "train_indices" in err

    err = fails(capsys, tmp_path, tmp_path / "assets", "--exp_id", ids["ce"], "--plot_type", "pred_probs",
                "--data_dir", str(tmp_path / "nowhere"))
    assert "--data_dir" in err


def test_dissect_counts_exact():
    losses = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    label_wrong = np.array([True, False, True, False, False, True])
    pred_right = np.array([False, True, True, False, True, True])
    # sorted by loss: idx 1 (RR), 5 (WR), 3 (RW) | 2 (WR), 4 (RR), 0 (WW)
    assert plot.dissect_counts(losses, label_wrong, pred_right, 2).tolist() == [[1, 1, 1, 0], [1, 0, 1, 1]]
    assert plot.dissect_counts(losses, label_wrong, pred_right, 6).sum(1).tolist() == [1] * 6


@pytest.mark.parametrize("flags, message", [
    ([], "say what to make"),
    (["--plot_type", "sample_dissect"], "needs --exp_id"),
    (["--plot_type", "hp"], "needs --hp_dir"),
    (["--exp_id", "x", "--table"], "--exp_ids or --filter"),
    (["--table", "--filter", "noise_mode"], "not key=value"),
    (["--exp_id", "x", "--plot_type", "pred_probs", "--bins", "0"], "--bins must be positive"),
    (["--plot_type", "scatter"], "invalid choice"),
])
def test_bad_flags_give_one_line(runs, tmp_path, capsys, flags, message):
    out, _ = runs
    err = fails(capsys, out, tmp_path / "assets", *flags)
    assert message in err, err


def test_mean_std_single_and_several():
    assert plot.mean_std([80.0]) == (80.0, None)
    mean, std = plot.mean_std([80.0, 82.0, 84.0])
    assert mean == 82.0 and math.isclose(std, 2.0)


# ----------------------------------------------------------------------------------------------------
# Sweep folders: unfinished runs, sparse evaluation (--eval_every), the seed-averaged comparison

def synthetic_run(runs_dir, template, name, changes, accs, finished=True):
    """A run folder made from a real run's config, with `accs` as test/acc_reported per epoch (None: the epoch
    was not evaluated, as with --eval_every)."""
    dest = runs_dir / f"exp_syn_{name}"
    dest.mkdir(parents=True)
    config = yaml.safe_load((template / "config.yaml").read_text())
    config.update(changes, exp_id=dest.name)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    fields = ["epoch", "train/loss", "test/acc", "test/acc_ema", "test/acc_reported"]
    rows = [{"epoch": e + 1, "train/loss": 2.0 - 0.1 * e, "test/acc": a, "test/acc_ema": a, "test/acc_reported": a}
            for e, a in enumerate(accs)]
    write_metrics(dest / "metrics.csv", fields, rows)
    if finished:
        (dest / "summary.json").write_text(json.dumps({"variant": config["variant"]}))
    return dest


@pytest.fixture
def sparse_runs(runs, tmp_path):
    """Four-epoch CE and SLN runs on sym noise, two seeds each, evaluated at epochs 2 and 4 only; one SLN seed also
    at epoch 3. Plus a run that has finished no epoch and one without metrics.csv yet (a sweep still running)."""
    out, ids = runs
    runs_dir = tmp_path / "runs"
    template = out / "runs" / ids["ce"]
    sln = {"sigma": 0.5, "variant": "SLN"}
    for name, changes, accs in (("ce1", {"seed": 1}, [None, 0.30, None, 0.50]),
                                ("ce2", {"seed": 2}, [None, 0.40, None, 0.60]),
                                ("sln1", {**sln, "seed": 1}, [None, 0.50, 0.55, 0.70]),
                                ("sln2", {**sln, "seed": 2}, [None, 0.60, None, 0.80])):
        synthetic_run(runs_dir, template, name, {**changes, "n_epochs": 4, "eval_every": 2}, accs)
    synthetic_run(runs_dir, template, "running", {"seed": 3}, [], finished=False)
    bare = synthetic_run(runs_dir, template, "starting", {"seed": 4}, [], finished=False)
    (bare / "metrics.csv").unlink()
    return runs_dir


def test_compare_plot_averages_seeds_over_the_evaluated_epochs(sparse_runs, tmp_path, capsys):
    written = plot.main(["--runs_dir", str(sparse_runs), "--assets_dir", str(tmp_path / "a"), "--plot_type", "compare"])
    assert sorted(p.name for p in written) == ["compare.csv", "compare.png"]
    err = capsys.readouterr().err
    assert "skipping 2 unfinished run(s)" in err and "exp_syn_running" in err and "exp_syn_starting" in err
    rows = read_csv(tmp_path / "a" / "compare.csv")
    got = {(r["method"], int(r["epoch"])): (int(r["n_seeds"]), float(r["mean"]), float(r["std"])) for r in rows}
    # epoch 3 was evaluated by one SLN seed only, so no mean over seeds exists there
    assert sorted(got) == [("CE", 2), ("CE", 4), ("CE-MO", 2), ("CE-MO", 4), ("SLN", 2), ("SLN", 4)]
    for (method, epoch), (n, mean, std) in got.items():
        values = {("CE", 2): [30, 40], ("CE", 4): [50, 60], ("SLN", 2): [50, 60], ("SLN", 4): [70, 80],
                  ("CE-MO", 2): [30, 40], ("CE-MO", 4): [50, 60]}[(method, epoch)]   # acc_ema = acc here
        assert n == 2 and mean == pytest.approx(statistics.mean(values), abs=1e-4)
        assert std == pytest.approx(statistics.stdev(values), abs=1e-4)   # the CSV keeps 4 decimals
    assert {r["noise"] for r in rows} == {"sym"}
    w, h = decodable(tmp_path / "a" / "compare.png")
    assert w > 500 and h > 300


def test_compare_draws_the_papers_models_solid_and_the_baselines_dashed():
    rows = [["noise", "method", "epoch", "n_seeds", "mean", "std"]]
    for method in ["CE", "SLN-MO-LC", "GCE", "Co-teaching-SLN"]:
        rows += [["sym", method, e, 2, 40.0 + e, 1.0] for e in (5, 10)]
    fig = plot.figure_compare(rows, "a title")
    styles = {line.get_label().split(":")[0]: line.get_linestyle() for line in fig.axes[0].get_lines()}
    plot.plt.close(fig)
    assert styles == {"CE": "-", "SLN-MO-LC": "-", "GCE": "--", "Co-teaching-SLN": "--"}


def test_compare_keeps_identical_curves_visible_and_epochs_whole():
    """SLN-MO and SLN-MO-LC have the same curve up to the correction epoch: the one drawn over the other is narrower
    and has its own marker, so both show; a 3-epoch run has no tick at epoch 1.5."""
    rows = [["noise", "method", "epoch", "n_seeds", "mean", "std"]]
    for method in ["SLN-MO", "SLN-MO-LC"]:
        rows += [["sym", method, e, 2, 40.0 + e, 1.0] for e in (1, 2, 3)]
    fig = plot.figure_compare(rows, "a title")
    fig.canvas.draw()
    ax = fig.axes[0]
    under, over = ax.get_lines()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    plot.plt.close(fig)
    assert np.array_equal(under.get_ydata(), over.get_ydata())
    assert under.get_linewidth() > over.get_linewidth() and under.get_marker() != over.get_marker()
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_titles_say_what_a_run_trained_on():
    assert plot.describe({"variant": "SLN-MO-LC", "dataset_name": "cifar10", "noise_mode": "sym", "p": 0.4,
                          "model": "wrn-16-1"}) == "SLN-MO-LC, cifar10 sym p=0.4, wrn-16-1"
    assert plot.describe({"variant": "CE", "dataset_name": "cifar10n", "noise_label": "worst", "noise_mode": None,
                          "model": "wrn-28-2"}) == "CE, cifar10n worst labels, wrn-28-2"
    assert plot.describe({"variant": "CE", "dataset_name": "folder", "noise_mode": None, "data_dir": "/x/my_images",
                          "model": "wrn-28-2"}) == "CE, folder my_images (labels as given), wrn-28-2"


def test_table_and_ablation_skip_unfinished_runs_of_a_running_sweep(sparse_runs, tmp_path, capsys):
    plot.main(["--runs_dir", str(sparse_runs), "--assets_dir", str(tmp_path / "a"), "--table", "--plot_type", "ablation"])
    err = capsys.readouterr().err
    assert err.count("skipping 2 unfinished run(s)") == 1 and len(err.strip().splitlines()) == 1
    rows = read_csv(tmp_path / "a" / "table.csv")
    # last = the last evaluated epoch, best = the best evaluated one; the empty epochs count for neither
    got = {r["variant"]: (float(r["last_mean"]), float(r["best_mean"]), r["n_seeds"]) for r in rows}
    assert got == {"CE": (pytest.approx(55.0), pytest.approx(55.0), "2"), "SLN": (pytest.approx(75.0), pytest.approx(75.0), "2"),
                   "CE-MO": (pytest.approx(55.0), pytest.approx(55.0), "2")}     # CE's runs' EMA accuracy (= theirs here)
    ablation = read_csv(tmp_path / "a" / "ablation.csv")
    assert sorted(float(r["sigma"]) for r in ablation) == [0.0, 0.5]


def test_curves_of_a_run_in_progress_and_of_one_without_epochs(sparse_runs, tmp_path, capsys):
    running = sparse_runs / "exp_syn_running"
    write_metrics(running / "metrics.csv", ["epoch", "test/acc", "test/acc_reported"],
                         [{"epoch": 1, "test/acc": None, "test/acc_reported": None},
                          {"epoch": 2, "test/acc": 0.25, "test/acc_reported": 0.25}])
    written = plot.main(["--runs_dir", str(sparse_runs), "--assets_dir", str(tmp_path / "a"), "--exp_id",
                         running.name, "--plot_type", "curves"])
    assert [p.name for p in written] == ["curves.png", "curves.csv"]
    assert "is unfinished" in capsys.readouterr().err
    assert [(r["epoch"], r["test/acc"]) for r in read_csv(written[1])] == [("1", ""), ("2", "0.25")]
    with pytest.raises(SystemExit) as exc:
        plot.main(["--runs_dir", str(sparse_runs), "--assets_dir", str(tmp_path / "b"), "--exp_id", "exp_syn_starting",
                   "--plot_type", "curves"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has not finished an epoch yet" in err
    assert not (tmp_path / "b").exists()
    for plot_type in ("pred_probs", "sample_dissect"):     # the reason, not "no clean labels"
        with pytest.raises(SystemExit) as exc:
            plot.main(["--runs_dir", str(sparse_runs), "--assets_dir", str(tmp_path / "b"), "--exp_id",
                       "exp_syn_starting", "--plot_type", plot_type])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and "has not finished an epoch yet" in err, err


def test_compare_refuses_runs_of_several_tables(runs, sparse_runs, tmp_path, capsys):
    out, ids = runs
    synthetic_run(sparse_runs, out / "runs" / ids["ce"], "longer", {"n_epochs": 8, "lr": 0.1}, [0.1] * 8)
    with pytest.raises(SystemExit):
        plot.main(["--runs_dir", str(sparse_runs), "--assets_dir", str(tmp_path / "a"), "--plot_type", "compare"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "different tables (they differ in lr, n_epochs)" in err[-1] and "--filter" in err[-1]
    assert not (tmp_path / "a").exists()


def test_dissect_compare_puts_two_runs_side_by_side_with_their_own_numbers(runs, fake_root, paper_sums, tmp_path):
    out, ids = runs
    pair = [ids["ce"], ids["lc1"]]
    written = run_plot(out, tmp_path / "pair", "--plot_type", "dissect_compare", "--exp_ids", *pair, "--bins", "10")
    assert [p.name for p in written] == ["dissect_compare.png", "dissect_compare.csv"]
    w, h = decodable(written[0])
    assert w > 1200 and h > 400
    rows = read_csv(written[1])
    for exp_id in pair:
        run_plot(out, tmp_path / "single", "--exp_id", exp_id, "--plot_type", "sample_dissect", "--bins", "10")
        single = read_csv(tmp_path / "single" / exp_id / "sample_dissect.csv")
        mine = [{k: v for k, v in r.items() if k not in ("exp_id", "variant")} for r in rows if r["exp_id"] == exp_id]
        assert mine == single


def test_dissect_compare_needs_two_to_four_runs(runs, tmp_path, capsys):
    out, ids = runs
    with pytest.raises(SystemExit):
        run_plot(out, tmp_path, "--plot_type", "dissect_compare", "--exp_ids", ids["ce"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 to 4 runs" in err


def test_hp_figure_shows_a_ce_reference_as_a_line(tmp_path):
    """A sigma search with a CE trial (sigma 0): the log axis cannot place it, so it is a horizontal line; the star
    goes to the best sigma > 0 even where CE scored higher, as tune.py chooses."""
    table = {0.0: ([40.0], [41.0]), 0.1: ([32.0], [33.0]), 0.2: ([35.0], [36.0])}
    fig, rows = plot.figure_hp([(tmp_path / "hp_x", table)])
    ax = fig.axes[0]
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [40.0]
    (star,) = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (0.2, 35.0)
    assert [r[1] for r in rows[1:]] == [0.0, 0.1, 0.2]
    assert 0.0 not in list(ax.get_xticks())


@pytest.mark.parametrize("name, network", [("table", "reported"), ("table_ema", "ema")])
def test_committed_results_table_is_rebuilt_exactly_from_the_committed_runs(tmp_path, name, network):
    """results/mini_cifar10/table.md and table.csv are what plot.py --table makes from the committed run files, and
    table_ema.* what it makes of every run's momentum (EMA) network."""
    results = plot.runs.CODE_DIR / "results" / "mini_cifar10"
    plot.main(["--table", "--runs_dir", str(results / "runs"), "--assets_dir", str(tmp_path), "--name", name,
               "--network", network])
    assert (tmp_path / f"{name}.md").read_text() == (results / f"{name}.md").read_text()
    assert (tmp_path / f"{name}.csv").read_text() == (results / f"{name}.csv").read_text()


@pytest.mark.slow
def test_readme_results_table_shows_the_committed_table(tmp_path):
    """The README's Results block is what readme_table.py makes of results/mini_cifar10/table.csv, and a changed
    number in table.csv makes the check fail."""
    import subprocess
    import sys
    root = plot.runs.CODE_DIR
    script = root / "results" / "mini_cifar10" / "readme_table.py"
    check = [sys.executable, str(script), "--check"]
    assert subprocess.run(check, cwd=root).returncode == 0
    table = (root / "results" / "mini_cifar10" / "table.csv").read_text().splitlines()
    header, first = table[0].split(","), table[1].split(",")
    first[header.index("last_mean")] = "12.3456"
    changed = tmp_path / "table.csv"
    changed.write_text("\n".join([table[0], ",".join(first), *table[2:]]) + "\n")
    assert subprocess.run(check + ["--table", str(changed)], cwd=root).returncode == 1
    readme = tmp_path / "README.md"
    readme.write_text((root / "README.md").read_text())
    assert subprocess.run([sys.executable, str(script), "--table", str(changed), "--readme", str(readme)]).returncode == 0
    assert "| 12.35 ± " in readme.read_text()
    # a row per method of the three grids, planned cells without runs 'pending', cells no grid plans '–'
    def block_rows():
        text = readme.read_text()
        block = text[text.index("<!-- results-table"):text.index("<!-- end results-table -->")]
        return {line.split(" | ")[0][2:]: line.split(" | ") for line in block.splitlines()[3:]}
    assert list(block_rows()) == ["CE", "SLN", "SLN-MO", "SLN-MO-LC", "CE-MO", "GCE", "SCE", "Forward-T", "ELR", "Co-teaching",
                                  "Co-teaching-SLN"]
    without_ce_sym = [table[0]] + [line for line in table[1:] if not line.startswith(",".join(first[:10]) + ",CE,CE,sym,")]
    assert len(without_ce_sym) == len(table) - 1
    changed.write_text("\n".join(without_ce_sym) + "\n")
    assert subprocess.run([sys.executable, str(script), "--table", str(changed), "--readme", str(readme)]).returncode == 0
    ce, gce = block_rows()["CE"], block_rows()["GCE"]
    assert ce[1] == "pending" and gce[3] == "–" and gce[4] == "–"    # GCE's grid has sym and asym only


def test_dissect_pair_uses_weights_it_has_and_retrains_with_the_runs_own_flags(tmp_path, monkeypatch):
    """results/mini_cifar10/dissect_pair.py: a grid run with final weights is used as it is; one without is
    replaced by a finished retrain with the same training flags, or else trained again with exactly its flags."""
    import importlib.util
    import yaml
    path = plot.runs.CODE_DIR / "results" / "mini_cifar10" / "dissect_pair.py"
    spec = importlib.util.spec_from_file_location("dissect_pair", path)
    pair = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pair)

    flags = {"dataset_name": "cifar10", "noise_mode": "sym", "p": 0.4, "lr": 0.02, "batch_size": 32, "n_epochs": 3,
             "sigma": 0.0, "mo": False, "lc_n_epoch": -1, "seed": 1, "model": "wrn-16-1", "channels_last": True,
             "lc_augment": True}
    def make(folder, name, variant, weights, **changes):
        run = folder / name
        run.mkdir(parents=True)
        config = {**flags, **changes, "variant": variant, "exp_id": name, "out_dir": "/elsewhere", "device": "cuda",
                  "tune_trial_id": "t0", "data_dir": "/old"}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        (run / "summary.json").write_text('{"last_test_acc": 0.3, "best_test_acc": 0.4}')
        for name in pair.WEIGHTS if weights else ():
            (run / name).write_bytes(b"w")
        return run
    grid, work = tmp_path / "grid", tmp_path / "work"
    ce = make(grid, "exp_ce", "CE", weights=False)
    lc = make(grid, "exp_lc", "SLN-MO-LC", weights=True, sigma=0.1, mo=True, lc_n_epoch=2)
    make(work / "dissect" / "runs", "exp_other_lr", "CE", weights=True, lr=0.05)   # other flags: not the same run
    trained = []
    def fake_main(argv):
        trained.append(argv)
        make(work / "dissect" / "runs", "exp_retrained", "CE", weights=True)
    monkeypatch.setattr(pair.train_cifar, "main", fake_main)
    assert pair.with_weights(lc, yaml.safe_load((lc / "config.yaml").read_text()), work, tmp_path / "data") == lc
    again = pair.with_weights(ce, yaml.safe_load((ce / "config.yaml").read_text()), work, tmp_path / "data")
    assert again.name == "exp_retrained" and len(trained) == 1
    args = pair.train_cifar.build_parser().parse_args(trained[0])
    assert {k: getattr(args, k) for k in flags} == flags
    assert (args.data_dir, args.out_dir) == (tmp_path / "data", work / "dissect")
    # the retrain is found next time, so nothing is trained twice
    assert pair.with_weights(ce, yaml.safe_load((ce / "config.yaml").read_text()), work, tmp_path / "data") == again
    assert len(trained) == 1


def test_hp_legend_names_sweeps_by_their_noise_setting(tmp_path):
    """Two sigma searches in one figure are told apart by the noise setting in their sweep.yaml; folders without
    one, or with the same setting, keep their folder names."""
    import yaml
    folders = []
    for name, mode in (("hp_a", "sym"), ("hp_b", "asym"), ("hp_c", "sym")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sweep.yaml").write_text(yaml.safe_dump({"kind": "sigma_search",
                                                                    "base": {"noise_mode": mode, "p": 0.4}}))
        folders.append(tmp_path / name)
    assert sweeps.sweep_names(folders[:2]) == ["sym p=0.4", "asym p=0.4"]
    assert sweeps.sweep_names(folders) == ["hp_a", "hp_b", "hp_c"]                 # two sym searches: ambiguous
    assert sweeps.sweep_names([folders[0], tmp_path / "elsewhere"]) == ["hp_a", "elsewhere"]
    (tmp_path / "hp_n").mkdir()          # a CIFAR-N search: a label set, no noise mode or rate
    (tmp_path / "hp_n" / "sweep.yaml").write_text(yaml.safe_dump({"kind": "sigma_search", "base": {
        "dataset_name": "cifar10n", "noise_label": "worst", "noise_mode": None, "p": None}}))
    assert sweeps.sweep_names([folders[0], tmp_path / "hp_n"]) == ["sym p=0.4", "cifar10n worst labels"]
    table = {0.1: ([32.0], [33.0]), 0.2: ([35.0], [36.0])}
    fig, rows = plot.figure_hp([(folders[0], table), (folders[1], table)])
    assert [r[0] for r in rows] == ["sweep", "sym p=0.4", "sym p=0.4", "asym p=0.4", "asym p=0.4"]   # CSV as legend
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("sym p=0.4: last epoch") for t in labels)
    assert any(t.startswith("asym p=0.4: best epoch") for t in labels)


def test_a_seed_run_twice_counts_once_in_a_table():
    # the demo run and an identical rerun: one seed, so n=1 and no std; the newest run stands for the seed
    md, rows = plot.make_table([fake_run("exp_2026-12-02_10-00-00_aaaaaa", 1.0, 123, [0.1, 0.2]),
                                fake_run("exp_2026-12-02_11-00-00_bbbbbb", 1.0, 123, [0.3, 0.4]),
                                fake_run("exp_2026-12-02_09-00-00_cccccc", 1.0, 124, [0.5, 0.6])])
    assert "| SLN | 50.00 ± 14.14 (n=2) |" in md, md
    header, (row,) = rows[0], rows[1:]
    assert row[header.index("n_seeds")] == 2 and row[header.index("seeds")] in ("123 124", "124 123")
    assert "exp_2026-12-02_10-00-00_aaaaaa" not in row[header.index("exp_ids")]
    (note,) = [line for line in md.splitlines() if line.startswith("Note:")]
    assert "seed 123" in note and "exp_2026-12-02_11-00-00_bbbbbb, is used" in note \
        and "left out: exp_2026-12-02_10-00-00_aaaaaa" in note


def test_compare_and_ablation_count_distinct_seeds(sparse_runs, runs, tmp_path, capsys):
    out, ids = runs
    synthetic_run(sparse_runs, out / "runs" / ids["ce"], "ce1again",
                  {"seed": 1, "n_epochs": 4, "eval_every": 2}, [None, 0.90, None, 0.90])
    plot.main(["--runs_dir", str(sparse_runs), "--assets_dir", str(tmp_path / "a"), "--plot_type", "compare",
               "ablation"])
    printed = capsys.readouterr().out
    assert "note: seed 1 of CE (sym) has 2 runs: the newest, exp_syn_ce1again, is used; left out: exp_syn_ce1" in printed
    compare = {(r["method"], int(r["epoch"])): r for r in read_csv(tmp_path / "a" / "compare.csv")}
    assert compare[("CE", 4)]["n_seeds"] == "2" and float(compare[("CE", 4)]["mean"]) == pytest.approx(75.0)
    ablation = {float(r["sigma"]): r for r in read_csv(tmp_path / "a" / "ablation.csv")}
    assert ablation[0.0]["n_seeds"] == "2" and "exp_syn_ce1 " not in ablation[0.0]["exp_ids"] + " "


def test_network_picks_the_accuracy_of_table_and_compare(runs, tmp_path, capsys):
    """--network: the table and the compare figure of the trained or the EMA network instead of the reported one.
    Every method keeps an EMA network, so this sets a baseline's own momentum model beside SLN-MO's."""
    out, ids = runs
    runs_dir = tmp_path / "runs"
    for seed, accs in ((1, [0.30, 0.50]), (2, [0.40, 0.60])):
        # as an SLN-MO run writes them: the reported accuracy is the EMA network's, 20 points above the trained one
        dest = synthetic_run(runs_dir, out / "runs" / ids["lc1"], f"mo{seed}",
                             {"seed": seed, "variant": "SLN-MO", "lc_n_epoch": -1}, accs)
        write_metrics(dest / "metrics.csv", ["epoch", "test/acc", "test/acc_ema", "test/acc_reported"],
                      [{"epoch": e + 1, "test/acc": a, "test/acc_ema": a + 0.2, "test/acc_reported": a + 0.2}
                       for e, a in enumerate(accs)])
    for network, last in (("reported", 75.0), ("ema", 75.0), ("net", 55.0)):
        assets = tmp_path / network
        plot.main(["--runs_dir", str(runs_dir), "--assets_dir", str(assets), "--table", "--network", network])
        (row,) = read_csv(assets / "table.csv")
        assert (row["variant"], float(row["last_mean"]), float(row["best_mean"])) == ("SLN-MO", pytest.approx(last),
                                                                                    pytest.approx(last))
        assert ("momentum (EMA) network of every method" in (assets / "table.md").read_text()) == (network == "ema")
        plot.main(["--runs_dir", str(runs_dir), "--assets_dir", str(assets), "--plot_type", "compare", "--network", network])
        points = {int(r["epoch"]): float(r["mean"]) for r in read_csv(assets / "compare.csv")}
        assert points == {1: pytest.approx(last - 20), 2: pytest.approx(last)}
    capsys.readouterr()
    err = fails(capsys, out, tmp_path / "x", "--plot_type", "ablation", "--network", "ema")
    assert "--network" in err and "ablation" in err


def test_a_runs_dir_above_the_run_folders_names_where_they_are(tmp_path, capsys):
    """--runs_dir <out_dir>/hp (a sweep's runs are in hp/hp_.../runs): the one line names that folder."""
    run = tmp_path / "hp" / "hp_2026-01-31_12-00-00" / "runs" / "exp_a"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("dataset_name: cifar10\n")
    with pytest.raises(SystemExit) as exc:
        plot.main(["--runs_dir", str(tmp_path / "hp"), "--assets_dir", str(tmp_path / "a"), "--plot_type", "compare"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.endswith(f"runs are further down: pass --runs_dir {run.parent}"), err


def test_ablation_leaves_the_baselines_out(tmp_path, capsys):
    """On the committed mini runs (the paper's models and the baselines): accuracy vs sigma is the paper's models'
    alone, with a note naming the baselines it left out (a GCE run at sigma 0 is not a CE point)."""
    committed = plot.runs.CODE_DIR / "results" / "mini_cifar10" / "runs"
    plot.main(["--runs_dir", str(committed), "--assets_dir", str(tmp_path), "--plot_type", "ablation",
               "--filter", "noise_mode=sym,mo=false"])
    assert "skipping the runs of Co-teaching, Co-teaching-SLN, ELR, Forward-T, GCE, SCE" in capsys.readouterr().err
    rows = read_csv(tmp_path / "ablation.csv")
    variants = {yaml.safe_load((committed / i / "config.yaml").read_text())["variant"]
                for r in rows for i in r["exp_ids"].split()}
    assert variants == {"CE", "SLN"} and sorted(float(r["sigma"]) for r in rows) == [0.0, 0.1]
