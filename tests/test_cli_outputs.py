"""Every script that writes checks its output folder before any expensive work: a file in the way, or a place
nothing can be written (under /proc), gives one line and exit 2, before any data is loaded."""
import re

import pytest

import bench
import plot
import train_cifar
import train_real
import tune
import viz

# data_dir points nowhere: a script that loaded data before checking its output folder would fail on the data
NOWHERE = "/nonexistent-data-root"
SCRIPTS = {
    "train_cifar.py": (train_cifar.main, ["--out_dir", "{out}", "--data_dir", NOWHERE, "--sigma", "0"]),
    "train_real.py": (train_real.main, ["--dataset_name", "cifar10n", "--noise_label", "worst", "--out_dir", "{out}",
                                        "--data_dir", NOWHERE]),
    "tune.py": (tune.main, ["--out_dir", "{out}", "--data_dir", NOWHERE]),
    "viz.py": (viz.main, ["cifar10", "--out_dir", "{out}", "--data_dir", NOWHERE]),
    "plot.py": (plot.main, ["--table", "--assets_dir", "{out}", "--runs_dir", NOWHERE]),
    "bench.py": (bench.main, ["--json", "{out}/bench.json", "--data_dir", NOWHERE, "--quick"]),
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_output_folder_is_refused_first(script, where, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = str(blocker / "out") if where == "file" else "/proc/sln-test/out"
    main, flags = SCRIPTS[script]
    with pytest.raises(SystemExit) as exc:
        main([f.format(out=out) for f in flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"--(out_dir|assets_dir|json) \S+: (.* is a file, not a folder|cannot write in)", err), err
    assert NOWHERE not in err                   # refused before the data was looked for
    assert blocker.read_text() == "not a folder"


def test_bench_json_that_is_a_folder_is_refused_first(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--device", "cpu", "--data_dir", NOWHERE, "--json", str(folder)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and f"--json {folder} is a folder" in err, err
    assert "img/s" not in captured.out                # nothing was timed
    assert list(folder.iterdir()) == []
    earlier = folder / "bench.json"
    earlier.write_text('{"earlier": "results"}')
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--device", "cpu", "--data_dir", NOWHERE, "--json", str(earlier)])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and f"--json {earlier} already exists" in captured.err and "img/s" not in captured.out
    assert earlier.read_text() == '{"earlier": "results"}'


@pytest.mark.parametrize("name", ["sub/table", "..", "", "/tmp/table"])
def test_plot_name_with_a_folder_is_refused_first(name, tmp_path, capsys):
    assets = tmp_path / "assets"
    with pytest.raises(SystemExit) as exc:
        plot.main(["--table", "--runs_dir", NOWHERE, "--assets_dir", str(assets), "--name", name])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--name" in err and "--assets_dir" in err, err
    assert NOWHERE not in err and not assets.exists()
