"""tune.py --address on a real two-node Ray cluster with token authentication on, started here as the README's
"On a Ray cluster" steps start one, and its one-line errors when joining fails.

The cluster runs in a temp dir of its own, with its own HOME (so its token file is not the user's
~/.ray/auth_token), on free ports, and is stopped by the process groups of the two `ray start` commands that
started it (never `ray stop`, which stops every Ray of the user). Ray cannot be kept on loopback:
`ray start` replaces --node-ip-address 127.0.0.1 with the machine's address (services.resolve_ip_for_localhost)
and its GCS and raylets listen on all interfaces; authentication is on, so others cannot use it.
Every command runs under a timeout (no pytest-timeout here), which bounds the module's wall time.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow     # a real `ray start` cluster: not in make test-fast

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell of a user whose home is `home`: no Ray settings inherited from ours."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS")) and k != "RAY_gcs_server_port_wait_time_s"}
    # TMPDIR: tune.py's log of a failed join lands in the test's folder
    env.update(HOME=str(home), TMPDIR=str(home), TQDM_DISABLE="1", OMP_WAIT_POLICY="PASSIVE", **extra)
    return env


def ray_start(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `ray start ...` in a new session; return its process group (the node's processes stay in it after
    the command exits) and its output."""
    proc = subprocess.Popen([RAY, "start", *args, "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return proc.pid, out


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group `pgid`, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def stop_group(pgid: int, grace: float = 3) -> None:
    """Stop one node: SIGTERM to its process group, SIGKILL to what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + grace
        while group_pids(pgid) and time.time() < deadline:
            time.sleep(0.2)
    assert not group_pids(pgid)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node (2 CPUs, authentication on by default as a token exists) and a worker node (1 CPU) that
    gets the token through RAY_AUTH_TOKEN, on this machine. Yields (address, HOME with the token, temp dir)."""
    base = tmp_path_factory.mktemp("cluster")
    home, temp_dir = base / "home", base / "ray"
    home.mkdir()
    env = clean_env(home)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    token = subprocess.run([RAY, "get-auth-token"], env=env, check=True, capture_output=True, text=True,
                           timeout=60).stdout.strip()
    assert token and (home / ".ray" / "auth_token").read_text().strip() == token
    port = free_port()
    groups = []
    try:
        pgid, out = ray_start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                               "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                               "--ray-client-server-port", str(free_port()), "--num-cpus", "2", "--num-gpus", "0",
                               "--temp-dir", str(temp_dir)], env)
        groups.append(pgid)
        assert "Token authentication is enabled" in out
        address = f"127.0.0.1:{port}"
        worker_home = base / "worker_home"      # no token file: the worker node has the token from its env only
        worker_home.mkdir()
        pgid, _ = ray_start(["--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--num-gpus", "0", "--temp-dir", str(temp_dir)],
                            clean_env(worker_home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        groups.append(pgid)
        yield address, home, temp_dir
    finally:
        for pgid in reversed(groups):
            stop_group(pgid)


def run_tune(argv: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def sweep_flags(data_dir: Path, out_dir: Path) -> list[str]:
    """A two-trial sigma search on the fake data; custom noise (made once by the driver) needs no checksum, so
    the cluster's workers need no test hook."""
    return ["--dataset_name", "cifar10", "--noise_mode", "sym", "--p", "0.4", "--custom_noise", "--lc_n_epoch", "-1",
            "--val_size", "0.1", "--seed", "123", "--sigmas", "1.0", "--batch_size", "64", "--n_epochs", "1",
            "--lr", "0.01", "--model", "wrn-16-1", "--train_subset", "200", "--test_subset", "50",
            "--data_dir", str(data_dir), "--out_dir", str(out_dir), "--device", "cpu", "--cpus_per_trial", "1"]


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2 and a single `error:` line on stderr holding `words`: no traceback, no Ray log lines."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(fake_root, tmp_path_factory):
    """A copy of the fake data root: the sweeps write their custom noise file into it."""
    copy = tmp_path_factory.mktemp("cluster_data") / "data"
    shutil.copytree(fake_root, copy)
    return copy


def test_sweep_runs_on_the_cluster(cluster, data_dir, tmp_path):
    address, home, temp_dir = cluster
    # the README's driver step, on the head node: the token is in ~/.ray/auth_token, nothing else to set
    result = run_tune(["--address", address, *sweep_flags(data_dir, tmp_path / "out")], clean_env(home))
    assert result.returncode == 0, result.stderr[-3000:]
    (hp_dir,) = (tmp_path / "out" / "hp").iterdir()
    with open(hp_dir / "sigma_search.csv", newline="") as f:
        assert sorted(float(r["sigma"]) for r in csv.DictReader(f)) == [0.0, 1.0]   # 1.0 and the reference
    # every trial ran in a worker process of this cluster: Ray logs each worker under the cluster's session dir
    results = [json.loads(p.read_text().splitlines()[-1]) for p in hp_dir.glob("tune/*/result.json")]
    assert len(results) == 2
    logs = temp_dir / "session_latest" / "logs"
    for r in results:
        assert list(logs.glob(f"python-core-worker-*_{r['pid']}.log")), (r["pid"], sorted(os.listdir(logs)))


def test_wrong_token_names_authentication(cluster, data_dir, tmp_path):
    address, _, _ = cluster
    result = run_tune(["--address", address, *sweep_flags(data_dir, tmp_path)],
                      clean_env(tmp_path, RAY_AUTH_TOKEN="not-the-cluster-token"), timeout=60)
    line = assert_one_line_error(result, "refused the authentication token", "RAY_AUTH_TOKEN", "ray get-auth-token")
    log = Path(line.rsplit("Ray's log: ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path and "InvalidAuthToken" in log.read_text()     # the wall of Ray lines went there


def test_missing_token_names_authentication(cluster, data_dir, tmp_path):
    address, _, _ = cluster
    result = run_tune(["--address", address, *sweep_flags(data_dir, tmp_path)], clean_env(tmp_path), timeout=60)
    assert_one_line_error(result, "requires an authentication token and this machine has none", "ray get-auth-token")


def test_ray_version_mismatch_is_named(cluster, data_dir, tmp_path):
    """A driver whose Ray differs from the cluster's (faked here: the driver reports another version)."""
    address, home, _ = cluster
    code = ("import sys; import ray._private.utils as u; u.compute_version_info = lambda: ('2.0.0', '3.11.0'); "
            "import tune; tune.main(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", code, "--address", address, *sweep_flags(data_dir, tmp_path)],
                            env=clean_env(home), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "Ray version mismatch", "Ray 2.60", "Ray 2.0.0", "pip install ray==")


def test_nothing_listening(data_dir, tmp_path):
    """Said at once: Ray itself would retry the address for minutes, past the 60 s timeout."""
    result = run_tune(["--address", f"127.0.0.1:{free_port()}", *sweep_flags(data_dir, tmp_path)], clean_env(tmp_path),
                      timeout=60)
    assert_one_line_error(result, "nothing is listening", "ray start --head")


def test_auto_joins_the_cluster_that_ray_start_recorded(cluster):
    """--address auto joins the cluster whose address `ray start --head` wrote to <Ray temp dir>/ray_current_cluster
    (the fixture's temp dir, made Ray's by RAY_TMPDIR), with the token from ~/.ray/auth_token."""
    address, home, temp_dir = cluster
    code = ("import ray, cluster; cluster.start_ray('auto'); "
            "print('joined', ray.get_runtime_context().gcs_address, len(ray.nodes()), ray.cluster_resources()['CPU'])")
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(home, RAY_TMPDIR=str(temp_dir.parent)), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    _, gcs, nodes, cpus = done.stdout.split()
    assert gcs.rsplit(":", 1)[1] == address.rsplit(":", 1)[1] and (nodes, cpus) == ("2", "3.0"), done.stdout
    assert "Traceback" not in done.stderr


def rays_running_here(folder: Path, gcs: list[str]) -> str:
    """A PYTHONPATH under which Ray sees exactly the Ray instances `gcs` (host:port) running on this machine,
    whatever really runs here: Ray's address="auto" joins any Ray it finds among the machine's processes, so a
    sweep of another user, or of this machine's own experiments, would change what the test sees."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import functools\nimport ray._private.services as services\n"
        f"services.find_gcs_addresses = functools.cache(lambda: set({gcs!r}))\n")   # Ray clears its cache
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


@pytest.mark.parametrize("others, source", [
    (0, "raytmp/ray/ray_current_cluster"),    # Ray takes the address that file records...
    (1, "a Ray running on this machine"),      # ...unless one other Ray runs here: Ray's legacy "auto" joins that
])
def test_auto_with_a_cluster_left_behind_names_where_the_address_came_from(data_dir, tmp_path, others, source):
    """A `ray start` killed without `ray stop` leaves its address in <Ray temp dir>/ray_current_cluster; --address auto
    then says at once where Ray's "auto" led and why nothing is there (Ray itself would retry that address for
    minutes; the 60 s timeout fails the test if it does) and writes nothing."""
    ray_tmp = tmp_path / "raytmp"
    (ray_tmp / "ray").mkdir(parents=True)
    left_behind, other = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"    # nothing listens at either
    (ray_tmp / "ray" / "ray_current_cluster").write_text(left_behind + "\n")
    env = clean_env(tmp_path, RAY_TMPDIR=str(ray_tmp),
                    PYTHONPATH=rays_running_here(tmp_path / "site", [other] if others else []))
    result = run_tune(["--address", "auto", *sweep_flags(data_dir, tmp_path / "out")], env, timeout=60)
    joined = other if others else left_behind
    line = assert_one_line_error(result, f"--address auto ({joined}, from ", source, "nothing is listening")
    assert ("without `ray stop`" in line) == (not others), line
    assert not (tmp_path / "out").exists()
