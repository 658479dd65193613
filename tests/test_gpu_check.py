"""bench.py --gpu_check: the dry run of every phase on the CPU, and the one-line refusals.

The dry run is run once, as its own process (the way a user runs it), bounded in time; if it overruns, the test
stops it by its PID: SIGTERM first, which the check answers by stopping what it started and writing its summary.
"""
import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bench
import cli
import gpu_check

pytestmark = pytest.mark.slow     # the GPU check's dry run (about two minutes): not in make test-fast

ROOT = Path(__file__).resolve().parent.parent
DRY_RUN_TIMEOUT_S = 900      # a safety net only: the dry run has no budgets; it took 237 s here with a load of 8
PHASES = ["a_numerics", "b_models", "c_tune", "d_throughput", "e_full_run"]


def run_bench(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)          # the check stops its own processes and writes its summary
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail(f"bench.py {' '.join(args)} ran past {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check"
    done = run_bench(["--gpu_check", str(out), "--dry_run"], DRY_RUN_TIMEOUT_S)
    return done, out


def numbers(tree) -> list:
    """Every number in a nested dict or list."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_the_dry_run_runs_every_phase_and_writes_one_summary_and_one_log(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert {p.name for p in out.iterdir() if p.is_file()} == {"gpu_check.json", "gpu_check.log"}
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["finished"] is True and summary["total_s"] > 0
    env = summary["environment"]
    for key in ("python", "torch", "torch_cuda", "gpu", "driver", "ray", "command", "started", "deadline_s",
                "budget_s"):
        assert key in env, key
    assert env["dry_run"] is True and env["command"] == f"python bench.py --gpu_check {out} --dry_run"
    # a dry run's "ok" says what it is worth, in the summary and on the terminal
    assert "no GPU was used" in env["dry_run_meaning"] and "gpu check: dry run: no GPU was used" in done.stdout
    assert set(env["budget_s"]) == set(PHASES)
    assert list(summary["phases"]) == PHASES
    for name, phase in summary["phases"].items():
        assert phase["status"] in ("ok", "skipped", "failed"), name
        assert phase["seconds"] >= 0, name
    log = (out / "gpu_check.log").read_text()
    assert log.strip()
    for source in ("[a_numerics]", "[b_models/CE]", "[b_models/interrupted]", "[d_throughput/worker3]",
                   "[e_full_run/full_run]"):
        assert source in log, source


def test_dry_run_numerics_compare_the_cpu_with_itself(dry_run):
    a = json.loads((dry_run[1] / "gpu_check.json").read_text())["phases"]["a_numerics"]
    assert a["status"] == "ok", a
    for precision in ("fp32", "tf32", "bf16"):
        p = a["precisions"][precision]
        assert p["status"] == "ok" and p["correct"] is True, (precision, p)
        figures = numbers({k: p[k] for k in ("loss", "weights", "ema", "weight_update_rel_error", "eval_logits")})
        assert figures and all(math.isfinite(x) for x in figures), (precision, p)
    # the CPU against itself: strict float32, and tf32 (no effect on a CPU), are the same to the last bit
    for precision in ("fp32", "tf32"):
        p = a["precisions"][precision]
        for key in ("loss", "weights", "ema", "buffers", "ema_buffers", "eval_logits"):
            assert p[key] == {"max_abs": 0.0, "max_rel": 0.0}, (precision, key)
        assert p["weight_update_rel_error"] == 0.0
    # bf16 autocast does change the steps, within its tolerance
    assert 0 < a["precisions"]["bf16"]["weight_update_rel_error"] < 0.3
    assert a["deterministic_twice"]["bit_identical"] is True


def test_dry_run_trains_the_four_models_resumes_and_plots(dry_run):
    b = json.loads((dry_run[1] / "gpu_check.json").read_text())["phases"]["b_models"]
    assert b["status"] == "ok", b
    assert set(b["models"]) == {"CE", "SLN", "SLN-MO", "SLN-MO-LC"}
    for name, m in b["models"].items():
        assert m["status"] == "ok" and 0 <= m["test_acc"] <= 1 and m["seconds_per_epoch"] > 0, (name, m)
        assert len(m["epoch_seconds"]) == 2
    assert b["interrupted"]["rc"] == 143 and b["interrupted"]["checkpointed_epoch"] == 1
    for key in ("on_gpu", "on_cpu"):
        r = b["resumed"][key]
        assert r["status"] == "ok" and r["device"] == "cpu" and 0 <= r["test_acc"] <= 1, r
        assert len(r["epoch_seconds"]) == 2
    assert {Path(f).name for f in b["plot"]["files"]} >= {"curves.png", "pred_probs.png"}


def test_dry_run_sweep_throughput_and_full_run(dry_run):
    phases = json.loads((dry_run[1] / "gpu_check.json").read_text())["phases"]
    c = phases["c_tune"]
    if importlib.util.find_spec("ray") is None:
        assert c["status"] == "skipped" and "Ray is not installed" in c["reason"]
    else:
        assert c["status"] == "ok", c
        assert [t["sigma"] for t in c["trials"]] == [0.0, 0.1, 0.5, 1.0]     # sigma 0: tune.py's reference trial
        assert all(t["device"] == "cpu" for t in c["trials"]) and c["gpus_per_trial"] == 0
    d = phases["d_throughput"]
    assert d["status"] == "ok", d
    for setting in ("fp32", "tf32", "bf16+channels_last"):
        assert d["settings"][setting]["train_img_s"] > 0 and d["settings"][setting]["cpu_ops_per_step"] > 0
    assert d["settings"]["bf16+channels_last+compile"]["status"] == "skipped"
    assert all(v > 0 for v in d["eval"]["eval_img_s"].values())
    assert d["concurrent"]["processes"] == 4 and d["concurrent"]["total_img_s"] > 0
    e = phases["e_full_run"]
    assert e["status"] == "ok", e
    assert e["setting"] in ("fp32", "tf32")          # bf16 is refused on a CPU by the training scripts
    assert e["rc"] == 143 and e["stopped_at_deadline"] is True and e["epochs_done"] >= 1
    assert e["projected_run_s"] >= 300 * min(e["epoch_seconds"]) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_without_a_gpu_the_check_refuses_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "check"
    done = run_bench(["--gpu_check", str(out)], timeout=120)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --gpu_check needs a CUDA GPU") and "--dry_run" in err
    assert not out.exists()


def test_an_earlier_check_is_never_overwritten(tmp_path):
    out = tmp_path / "check"
    out.mkdir()
    (out / "gpu_check.json").write_text('{"earlier": true}')
    done = run_bench(["--gpu_check", str(out), "--dry_run"], timeout=120)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "already holds a GPU check" in err, err
    assert (out / "gpu_check.json").read_text() == '{"earlier": true}'
    assert [p.name for p in out.iterdir()] == ["gpu_check.json"]


def test_a_folder_with_other_files_is_refused_and_dry_run_needs_the_check(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for argv, message in ((["--gpu_check", str(tmp_path), "--dry_run"], "is not empty"),
                          (["--dry_run"], "--dry_run rehearses the GPU check"),
                          (["--gpu_check", str(tmp_path / "new"), "--dry_run", "--models", "wrn-28-2"],
                           r"--gpu_check runs its own fixed settings; drop --models")):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_part_without_time_is_not_started_and_one_that_fails_does_not_stop_the_others(tmp_path, monkeypatch):
    check = gpu_check.Check(tmp_path, torch.device("cpu"), False, gpu_check.DRY_SIZES, time.monotonic() + 60)
    handler = logging.FileHandler(tmp_path / "gpu_check.log")
    gpu_check.LOG.addHandler(handler)
    gpu_check.LOG.setLevel(logging.INFO)
    monkeypatch.setitem(gpu_check.BUDGETS_S, "a_numerics", 6)

    def quick_then_long(check, res):
        gpu_check.part(check, res, "quick", lambda: {"figure": 1}, need_s=0.1)
        gpu_check.part(check, res, "long", lambda: pytest.fail("started"), need_s=30)
    try:
        res = gpu_check.run_phase(check, "a_numerics", quick_then_long)
    finally:
        gpu_check.LOG.removeHandler(handler)
        handler.close()
    assert res["status"] == "ok" and res["budget_s"] == 6
    assert res["quick"] == {"status": "ok", "seconds": 0.0, "figure": 1}
    assert res["long"]["status"] == "skipped" and "budget left" in res["long"]["reason"]
    assert "long" in res["incomplete"]
    assert "[a_numerics] -- quick" in (tmp_path / "gpu_check.log").read_text()
    # a part that fails is recorded, the others still run, and the phase says which failed
    def one_fails(check, res):
        gpu_check.part(check, res, "bad", lambda: 1 / 0, need_s=0.1)
        gpu_check.part(check, res, "good", lambda: {}, need_s=0.1)
    res = gpu_check.run_phase(check, "c_tune", one_fails)
    assert res["status"] == "failed" and res["error"] == "bad: ZeroDivisionError: division by zero"
    assert res["good"]["status"] == "ok"
    # too little time left before the deadline: not started at all
    check.deadline = time.monotonic() + 0.2
    res = gpu_check.run_phase(check, "e_full_run", lambda check, res: pytest.fail("started"))
    assert res["status"] == "skipped" and "left before the deadline" in res["reason"]
    assert check.phases["e_full_run"] is res
    # a dry run has no deadline and no budgets: its parts start however long the phase has taken
    dry = gpu_check.Check(tmp_path, torch.device("cpu"), True, gpu_check.DRY_SIZES, math.inf)
    res = gpu_check.run_phase(dry, "b_models", lambda check, res: gpu_check.part(check, res, "x", lambda: {}, 1e9))
    assert res["status"] == "ok" and res["budget_s"] is None and res["x"]["status"] == "ok"


def test_a_refusal_inside_a_part_is_its_one_line_error_and_its_stderr_is_logged(tmp_path):
    check = gpu_check.Check(tmp_path, torch.device("cpu"), True, gpu_check.DRY_SIZES, math.inf)
    handler = logging.FileHandler(tmp_path / "gpu_check.log")
    gpu_check.LOG.addHandler(handler)
    gpu_check.LOG.setLevel(logging.INFO)

    def refuses():
        print("a warning first", file=sys.stderr)
        cli.fail("--x 3 is not a choice")
    try:
        res = gpu_check.run_phase(check, "d_throughput", lambda check, res: gpu_check.part(check, res, "bad", refuses))
    finally:
        gpu_check.LOG.removeHandler(handler)
        handler.close()
    assert (res["bad"]["status"], res["bad"]["error"]) == ("failed", "error: --x 3 is not a choice")
    assert res["status"] == "failed" and res["error"] == "bad: error: --x 3 is not a choice"
    log = (tmp_path / "gpu_check.log").read_text()
    assert "[d_throughput/stderr] a warning first" in log and "[d_throughput/stderr] error: --x 3" in log


def test_sigterm_stops_the_check_keeps_what_it_had_and_exits_143(tmp_path, monkeypatch, capsys):
    def first(check, res):
        res["figure"] = 1

    def stopped(check, res):
        res["figure"] = 2
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        pytest.fail("not stopped")
    monkeypatch.setattr(gpu_check, "PHASES", dict.fromkeys(PHASES, first) | {"b_models": stopped})
    monkeypatch.setattr(gpu_check, "prepare_data", lambda *args: {"source": "none", "root": str(tmp_path)})
    out, before = tmp_path / "check", signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--gpu_check", str(out), "--dry_run"])
    assert exc.value.code == 143 and time.monotonic() - t0 < 30
    assert signal.getsignal(signal.SIGTERM) == before       # the check's handler is gone
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["finished"] is False
    a, b, *rest = summary["phases"].values()
    assert a == {"status": "ok", "budget_s": None, "figure": 1, "seconds": a["seconds"]}
    assert b["status"] == "skipped" and "stopped by SIGTERM" in b["reason"] and b["figure"] == 2
    assert [p["status"] for p in rest] == ["skipped"] * 3 and list(summary["phases"]) == PHASES
    assert "b_models      skipped" in capsys.readouterr().out


def test_a_command_is_stopped_by_sigterm_and_its_output_logged(tmp_path):
    check = gpu_check.Check(tmp_path, torch.device("cpu"), True, gpu_check.DRY_SIZES, math.inf)
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
            "print('up', flush=True); time.sleep(60)")
    t0 = time.monotonic()
    rc, lines, ended = gpu_check.command(check, [sys.executable, "-c", code], "sleeper",
                                         stop_when=lambda: time.monotonic() - t0 > 1)
    assert (rc, lines, ended) == (143, ["up"], False) and time.monotonic() - t0 < 30
    rc, lines, ended = gpu_check.command(check, [sys.executable, "-c", "print('done')"], "quick")
    assert (rc, lines, ended) == (0, ["done"], True)
