"""Start and stop the workspace's Prefect: a local Prefect server and the runner of the deployments.

The embedded default of the live loop. Label Studio's webhook reaches the ML backend, which
starts the deployment `retrain/retrain` (ml_backend/retrain.py); something must hold that
deployment and run its flow runs. Two detached processes, like Label Studio and the backend:

    workspace/prefect/              PREFECT_HOME of both: prefect.db (the server's SQLite database)
    workspace/prefect/server.log    `prefect server start` (the API and the UI)
    workspace/prefect/server.json   its PID file (cxrkit.pidfile)
    workspace/prefect/runner.log    `python -m flows.serve`: serves retrain/retrain, select/select,
    workspace/prefect/runner.json   ingest/ingest and runs each flow run in a subprocess

Settings, each with the reason:
- Bound to 127.0.0.1 unless $CXR_PREFECT_HOST says otherwise: the API starts retrains and has no
  login. Port $CXR_PREFECT_PORT (default 4200); a port taken by another program is refused.
- The runner runs this checkout's flows (cwd and PYTHONPATH are the checkout that started it),
  with CXR_WORKSPACE set, so a flow run without parameters works on this workspace and takes the
  params the workspace is configured with (cxrkit.params.params_file_for), as a round started by
  hand does.
- Offline: no analytics (cxrkit.offline), the process environment otherwise passed through.

A docker-compose or team setup runs its own Prefect server and workers instead (prefect.yaml):
when $PREFECT_API_URL is set, `cxr demo` uses that server and starts neither process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from cxrkit import pidfile
from cxrkit.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
START_TIMEOUT_S = 180.0  # the server's first start creates its database; the runner imports torch
DEPLOYMENTS = ("retrain/retrain", "select/select", "ingest/ingest")


class PrefectServerError(RuntimeError):
    """The Prefect server or the runner could not be started."""


@dataclass(frozen=True)
class PrefectInfo:
    url: str  # the server, e.g. http://127.0.0.1:4200 (the UI); the API is url + "/api"
    server_pid: int
    runner_pid: int | None
    reused: bool = False

    @property
    def api_url(self) -> str:
        return self.url + "/api"


def home(ws: Workspace) -> Path:
    return ws.root / "prefect"


def server_pid_path(ws: Workspace) -> Path:
    return home(ws) / "server.json"


def runner_pid_path(ws: Workspace) -> Path:
    return home(ws) / "runner.json"


def server_log(ws: Workspace) -> Path:
    return home(ws) / "server.log"


def runner_log(ws: Workspace) -> Path:
    return home(ws) / "runner.log"


def start(ws: Workspace, port: int | None = None, timeout: float = START_TIMEOUT_S) -> PrefectInfo:
    """Start the server and the runner for the workspace, or find them running (each is started
    when it is not: a runner that died is started again beside a running server)."""
    home(ws).mkdir(parents=True, exist_ok=True)
    running = pidfile.running(server_pid_path(ws))
    reused = running is not None
    if running is None:
        running = _start_server(ws, port, timeout)
    else:
        _wait(lambda: _healthy(running["url"]), timeout, None, server_log(ws), None, "the Prefect server")
    url = running["url"]
    runner = pidfile.running(runner_pid_path(ws))
    if runner is None:
        reused = False
        runner = _start_runner(ws, url, timeout)
    else:
        _wait(lambda: _deployments_served(url), timeout, None, runner_log(ws), None, "the deployments' runner")
    return PrefectInfo(url, running["pid"], runner["pid"], reused=reused)


def stop(ws: Workspace, timeout: float = 30.0) -> bool:
    """Stop the runner, then the server. False when neither ran."""
    runner = pidfile.stop(runner_pid_path(ws), timeout)
    server = pidfile.stop(server_pid_path(ws), timeout)
    return runner or server


def status(ws: Workspace) -> PrefectInfo | None:
    """The workspace's Prefect server when it runs and answers (runner_pid None when no runner runs)."""
    running = pidfile.running(server_pid_path(ws))
    if running is None or not _healthy(running["url"]):
        return None
    runner = pidfile.running(runner_pid_path(ws))
    return PrefectInfo(running["url"], running["pid"], runner["pid"] if runner else None, reused=True)


def api_url(ws: Workspace) -> str | None:
    """$PREFECT_API_URL, else the API of the Prefect server this workspace runs, else None."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    info = status(ws)
    return info.api_url if info else None


# --- the two processes ----------------------------------------------------------------------


def _environment(ws: Workspace) -> dict[str, str]:
    from cxrkit import offline

    env = {**offline.OFFLINE_ENV, **os.environ}  # the user's explicit settings win, as in offline.apply
    env["PREFECT_HOME"] = str(home(ws))  # its database, profiles and logs stay in the workspace
    env["CXR_WORKSPACE"] = str(ws.root)
    # This checkout's code, whatever the environment's site-packages hold.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def _start_server(ws: Workspace, port: int | None, timeout: float) -> dict:
    host = os.environ.get("CXR_PREFECT_HOST") or DEFAULT_HOST
    port = int(port or os.environ.get("CXR_PREFECT_PORT") or DEFAULT_PORT)
    if pidfile.port_taken(host, port):
        raise PrefectServerError(f"port {port} on {host} is already in use by another program; "
                                 "stop it or choose another port with CXR_PREFECT_PORT")
    env = _environment(ws)
    env.pop("PREFECT_API_URL", None)  # the server is the API; a URL meant for clients is not its own
    command = [_prefect_bin(), "server", "start", "--host", host, "--port", str(port), "--analytics-off"]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    return _launch(command, env, server_log(ws), server_pid_path(ws), (host, port, url),
                   lambda: _healthy(url), timeout, "the Prefect server")


def _start_runner(ws: Workspace, url: str, timeout: float) -> dict:
    env = _environment(ws)
    env["PREFECT_API_URL"] = url + "/api"
    return _launch([sys.executable, "-m", "flows.serve"], env, runner_log(ws), runner_pid_path(ws), ("", 0, url),
                   lambda: _deployments_served(url), timeout, "the deployments' runner")


def _launch(command: list[str], env: dict, log: Path, pid_file: Path, address: tuple[str, int, str], ready,
            timeout: float, what: str) -> dict:
    """Start `command` detached (its output appended to `log`), record its PID file, wait until
    `ready()`; on failure stop it and raise with the log's tail. Returns the PID file's entry."""
    with open(log, "a") as fh:
        fh.write(f"\n--- cxr flows start: {what} at {address[2]}, {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        offset = fh.tell()
        # A new session: the process outlives the command that started it and ignores its Ctrl-C.
        proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    entry = pidfile.record(pid_file, proc.pid, *address)
    try:
        _wait(ready, timeout, proc, log, offset, what)
    except PrefectServerError:
        pidfile.stop(pid_file, 15)
        raise
    return entry


def _prefect_bin() -> str:
    beside = Path(sys.executable).parent / "prefect"
    if not beside.is_file():
        raise PrefectServerError(f"prefect not found at {beside}: run scripts/bootstrap.sh")
    return str(beside)


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/api/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _deployments_served(url: str) -> bool:
    """Every deployment exists on the server (the runner registers them as it starts serving)."""
    try:
        return all(requests.get(f"{url}/api/deployments/name/{name}", timeout=5).status_code == 200
                   for name in DEPLOYMENTS)
    except requests.RequestException:
        return False


def _wait(ready, timeout: float, proc: subprocess.Popen | None, log: Path, offset: int | None, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            raise PrefectServerError(f"{what} exited with status {proc.returncode}; {pidfile.log_tail(log, offset)}")
        time.sleep(0.5)
    raise PrefectServerError(f"{what} was not ready within {timeout:.0f} s; {pidfile.log_tail(log, offset)}")
