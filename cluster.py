"""Ray for tune.py: a Ray of its own on this machine, or a running cluster joined (--address) with the token of
Ray's authentication. A failed join raises DataError with one line that names the cause and the fix: nothing
listens at the address, the token is refused or missing, Ray's versions differ (docs/tune-and-plots.md).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import socket
import sys
import tempfile
from pathlib import Path

import ray
import ray._private.ray_constants
import ray._private.services
import ray._private.utils
import ray._raylet
import ray.exceptions
import torch

import runs
from errors import DataError


def worker_env() -> dict:
    """What every Ray worker needs: this project importable (trials start in their own directories), no progress
    bars in the logs, and a quiet exit when Ray stops it (quiet_worker_exit)."""
    path = os.pathsep.join(filter(None, [str(runs.CODE_DIR), os.environ.get("PYTHONPATH")]))
    return {"env_vars": {"PYTHONPATH": path, "TQDM_DISABLE": "1"}, "worker_process_setup_hook": "cluster.quiet_worker_exit"}


def quiet_worker_exit() -> None:
    """In every Ray worker, before it takes tasks: SIGTERM, which Ray sends its workers when a sweep ends, ends the
    process at once. Ray's own handler raises SystemExit(1) wherever the worker's Python happens to be; inside a
    finaliser that printed "Exception ignored ... Traceback ... SystemExit: 1" on the driver's console after a sweep
    that went well. A trial's run folder loses nothing: its files are written whole or not at all."""
    def exit_now(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(1)
    # the worker's main loop installs its handler through this function, after this hook has run
    ray._private.utils.set_sigterm_handler = lambda handler: signal.signal(signal.SIGTERM, exit_now)


TOKEN_HELP = ("copy the cluster's token (print it with `ray get-auth-token` on the head node) to ~/.ray/auth_token "
              "here, or set RAY_AUTH_TOKEN=<token> or RAY_AUTH_TOKEN_PATH=<file with the token>")
JOIN_TRIES = "5"     # Ray's default: 20 tries a second apart, i.e. 20 s to report a refused token


def token_source() -> str | None:
    """Where Ray would read its authentication token from, in Ray's own order, or None without one
    (RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() and default.read_text().strip() else None


def use_auth_token() -> None:
    """Send the token to the cluster whenever one is at hand. Ray 2.60 does this by itself for
    address="auto" only: with host:port and RAY_AUTH_MODE unset, the driver sends no token and a cluster with
    authentication on refuses it. A cluster without authentication ignores the token, so sending it is safe;
    an explicit RAY_AUTH_MODE (token or disabled) is left as the user set it."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and not os.environ.get("RAY_AUTH_TOKEN", "").strip():
        try:
            empty = not Path(path).read_text().strip()
        except OSError as e:
            raise DataError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the Ray token there ({e.strerror}); "
                            f"{TOKEN_HELP}")
        if empty:   # Ray's C++ core aborts the whole process on an empty token file: say it here instead
            raise DataError(f"RAY_AUTH_TOKEN_PATH={path} is empty; {TOKEN_HELP}")
    if "RAY_AUTH_MODE" in os.environ or token_source() is None:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    ray._raylet.Config.initialize("")     # Ray caches its config: make it read RAY_AUTH_MODE again (as Ray does)


def auto_address() -> tuple[str, str]:
    """The host:port that Ray's address="auto" joins, and where Ray found it, in Ray's own order (RAY_ADDRESS,
    then the cluster that `ray start` last recorded in <Ray temp dir>/ray_current_cluster, then any Ray
    running here); a one-line error when there is none."""
    from ray._private import services, utils
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    quiet = logging.getLogger(services.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)      # Ray's ray.init repeats its "multiple Ray instances" warning anyway
    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise DataError("cannot join a Ray cluster at --address auto: no Ray cluster runs on this machine; start one "
                        "with `ray start --head`, or give the head node's host:port, or drop --address to run here")
    finally:
        quiet.setLevel(level)
    if found == utils.read_ray_address(None):
        return found, utils.get_ray_address_file(None)
    return found, "a Ray running on this machine"


def probe(address: str) -> str:
    """Fail at once when nothing listens at host:port (for "auto": at the address Ray would pick): Ray itself
    retries for minutes before it gives up (about 36 s per try for an address that does not answer, see
    docs/tune-and-plots.md). Returns how to name the address in a later error, for "auto" with where it led."""
    where, hint = f"--address {address}", "start the head node with `ray start --head --port 6379` and give its address"
    if address == "auto":
        address, source = auto_address()
        where = f"--address auto ({address}, from {source})"
        if source.endswith("ray_current_cluster"):
            hint = (f"that file is left behind by a `ray start` stopped without `ray stop`: start the head node "
                    f"again, or give the running head node's host:port")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return where               # an address form that Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except ConnectionRefusedError:
        raise DataError(f"cannot join a Ray cluster at {where}: nothing is listening there; {hint}, or drop "
                        "--address to run here")
    except socket.gaierror as e:
        raise DataError(f"cannot join a Ray cluster at {where}: unknown host {host} ({e.strerror}); "
                        "give the head node's IP address and port (host:port)")
    except OSError as e:
        raise DataError(f"cannot join a Ray cluster at {where}: no answer there "
                        f"({e.strerror or 'timed out'}); check the address, and that the port is open to this machine")
    return where


def join_error(where: str, error: BaseException, log: Path) -> str:
    """One line on why ray.init could not join the cluster at `where` (what probe returned): Ray wraps the
    cause (refused token, version mismatch, no GCS) in a generic ConnectionError whose text only names the
    address."""
    text, cause = "", error
    while cause is not None:
        text += f"{type(cause).__name__}: {cause}\n"
        cause = cause.__cause__ or cause.__context__
    head = f"cannot join the Ray cluster at {where}"
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "authentication token" in text:
        source = token_source() if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else None
        if source is None:
            return f"{head}: it requires an authentication token and this machine has none; {TOKEN_HELP} (Ray's log: {log})"
        return f"{head}: it refused the authentication token from {source}; {TOKEN_HELP} (Ray's log: {log})"
    mismatch = re.search(r"Version mismatch: The cluster was started with:\s*Ray: (\S+)\s*Python: (\S+)\s*"
                         r"This process .*? was started with:\s*Ray: (\S+)\s*Python: (\S+)", text, re.S)
    if mismatch:
        ray_c, py_c, ray_d, py_d = mismatch.groups()
        return (f"{head}: Ray version mismatch, the cluster runs Ray {ray_c} on Python {py_c} and this driver Ray "
                f"{ray_d} on Python {py_d}; run the driver with the cluster's versions (pip install ray=={ray_c} "
                f"under Python {py_c}) (Ray's log: {log})")
    if "Could not find any running Ray instance" in text:
        return (f"{head}: no Ray cluster runs on this machine; start one with `ray start --head`, or give the head "
                f"node's host:port (Ray's log: {log})")
    if "Timed out while waiting for GCS" in text:
        return (f"{head}: something listens there but it is not a Ray head node's GCS port; give the port that "
                f"`ray start --head` printed (default 6379) (Ray's log: {log})")
    last = text.strip().splitlines()[-1] if text.strip() else repr(error)
    return f"{head} ({last}); see Ray's log {log}"


@contextlib.contextmanager
def quiet_stderr(log: Path):
    """Send everything written to this process's stderr, Ray's C++ core included (it writes to fd 2, beyond
    Python's logging), to `log` while Ray joins: a failed join repeats the same warning once a second."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "wb") as f:
            os.dup2(f.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def join_ray(address: str) -> None:
    """Join the cluster at `address` with Ray's log sent to a file; on failure DataError, which says why in one
    line."""
    use_auth_token()
    where = probe(address)
    fd, name = tempfile.mkstemp(prefix="tune-ray-join-", suffix=".log")
    os.close(fd)
    log = Path(name)
    ours = "RAY_gcs_server_port_wait_time_s" not in os.environ     # a user's own setting is kept as it is
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", JOIN_TRIES)
    try:
        with quiet_stderr(log):
            ray.init(address=address, runtime_env=worker_env(), logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
        raise DataError(join_error(where, e, log))
    finally:
        if ours:
            os.environ.pop("RAY_gcs_server_port_wait_time_s", None)
    sys.stderr.write(log.read_text(errors="replace"))    # warnings of a join that worked are not hidden
    log.unlink()


def start_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start Ray sized to this machine."""
    if address:
        join_ray(address)
        return
    cpus = local_cpus()
    # address="local": always a fresh instance of our own, never a cluster that runs (or was left behind) here
    with ray_in_own_session(), ray_on_loopback():
        ray.init(address="local", num_cpus=cpus, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 runtime_env=worker_env(), logging_level=logging.WARNING)


def local_cpus() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@contextlib.contextmanager
def ray_on_loopback():
    """Make a local Ray listen on 127.0.0.1 only: nothing outside this machine needs to reach it.

    Ray 2.60 binds the gRPC servers of its GCS, raylet and workers to loopback exactly when the node's IP is
    127.0.0.1 (else to every interface), and its runtime-env agent to the node's IP. ray.init turns a given
    `_node_ip_address="127.0.0.1"` back into the machine's address, and takes 127.0.0.1 only where it believes
    multi-node clusters unsupported (macOS and Windows, Ray's ENABLE_RAY_CLUSTER). Saying so while it starts
    gives this node 127.0.0.1, for which every port it opens is on loopback (docs/tune-and-plots.md lists them)."""
    constants = ray._private.ray_constants
    saved = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def ray_in_own_session():
    """Start a local Ray's processes in a session of their own, out of the driver's process group.

    `timeout`, a shell's job control and job schedulers signal a whole process group. Had Ray's processes been in
    ours, SIGTERM would stop the raylet too, and a driver whose raylet is gone exits at once with status 1 and no
    word (Ray's core worker ends it), racing the orderly stop of forward_sigterm. Out of the group, only the driver
    hears the signal and stops the sweep as Ctrl-C does. They still end with the driver: Ray's kernel fate-sharing
    (Linux's parent-death signal) kills them even when the driver is killed; where that is missing, Ray's reaper
    needs them in its group, so they are left there."""
    services = ray._private.services
    if not ray._private.utils.detect_fate_sharing_support() or sys.platform == "win32":
        yield
        return
    popen = services.ConsolePopen
    services.ConsolePopen = functools.partial(popen, start_new_session=True)
    try:
        yield
    finally:
        services.ConsolePopen = popen
