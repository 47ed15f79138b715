"""Start and stop the workspace's Prefect: a local Prefect server and the runner of the deployments.

The embedded default of the live loop. Label Studio's webhook reaches the ML backend, which
starts the deployment `retrain/retrain` (ml_backend/retrain.py); something must hold that
deployment and run its flow runs. Two detached processes, like Label Studio and the backend:

    workspace/prefect/              PREFECT_HOME of both: prefect.db (the server's SQLite database)
    workspace/prefect/server.log    `prefect server start` (the API and the UI)
    workspace/prefect/server.json   its PID file (cxrkit.services.process)
    workspace/prefect/runner.log    `python -m flows.serve`: serves retrain/retrain, select/select,
    workspace/prefect/runner.json   ingest/ingest and runs each flow run in a subprocess

Settings, each with the reason:
- Bound to 127.0.0.1 unless $CXR_PREFECT_HOST says otherwise: the API starts retrains and has no
  login. Port $CXR_PREFECT_PORT (default 4200); a port taken by another program is refused.
- The runner runs this checkout's flows (cwd and PYTHONPATH are the checkout that started it),
  with CXR_WORKSPACE set, so a flow run without parameters works on this workspace and takes the
  params the workspace is configured with (cxrkit.core.params.params_file_for), as a round started by
  hand does.
- Offline: no analytics (cxrkit.core.offline), the process environment otherwise passed through.

A docker-compose or team setup runs its own Prefect server and workers instead (prefect.yaml):
when $PREFECT_API_URL is set, `cxr demo` uses that server and starts neither process.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from cxrkit.core.checkout import CODE_ROOT, pythonpath
from cxrkit.core.workspace import Workspace
from cxrkit.services import process

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
START_TIMEOUT_S = 180.0  # the server's first start creates its database; the runner imports torch
DEPLOYMENTS = ("retrain/retrain", "select/select", "ingest/ingest")


class PrefectServerError(process.ServiceError):
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


def start(ws: Workspace, port: int | None = None, timeout: float = START_TIMEOUT_S,
          with_runner: bool = True) -> PrefectInfo:
    """Start the server and the runner for the workspace, or find them running (each is started
    when it is not: a runner that died is started again beside a running server). `with_runner=False`:
    the server alone, for a stack whose workers run the deployments (cxrkit.services.stack)."""
    home(ws).mkdir(parents=True, exist_ok=True)
    running = process.running(server_pid_path(ws))
    reused = running is not None
    if running is None:
        running = _start_server(ws, port, timeout)
    else:
        process.wait_until_ready(lambda: _healthy(running["url"]), timeout, "the Prefect server", server_log(ws),
                                 pid_file=server_pid_path(ws), error=PrefectServerError)
    url = running["url"]
    if not with_runner:
        return PrefectInfo(url, running["pid"], None, reused=reused)
    runner = process.running(runner_pid_path(ws))
    if runner is None:
        reused = False
        runner = _start_runner(ws, url, timeout)
    else:
        process.wait_until_ready(lambda: _deployments_served(url), timeout, "the deployments' runner", runner_log(ws),
                                 pid_file=runner_pid_path(ws), error=PrefectServerError)
    return PrefectInfo(url, running["pid"], runner["pid"], reused=reused)


def stop(ws: Workspace, timeout: float = 30.0) -> bool:
    """Stop the runner, then the server. False when neither ran."""
    runner = process.stop(runner_pid_path(ws), timeout)
    server = process.stop(server_pid_path(ws), timeout)
    return runner or server


def status(ws: Workspace) -> PrefectInfo | None:
    """The workspace's Prefect server when it runs and answers (runner_pid None when no runner runs)."""
    running = process.running(server_pid_path(ws))
    if running is None or not _healthy(running["url"]):
        return None
    runner = process.running(runner_pid_path(ws))
    return PrefectInfo(running["url"], running["pid"], runner["pid"] if runner else None, reused=True)


def api_url(ws: Workspace) -> str | None:
    """$PREFECT_API_URL, else the API of the Prefect server this workspace runs, else None."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    info = status(ws)
    return info.api_url if info else None


# --- the two processes ----------------------------------------------------------------------


def flows_environment() -> dict[str, str]:
    """What a process that runs this checkout's flows starts with (this runner, a stack's
    workers): the process environment over the offline switches, this checkout first on PYTHONPATH."""
    from cxrkit.core import offline

    env = {**offline.OFFLINE_ENV, **os.environ}  # the user's explicit settings win, as in offline.apply
    env["PYTHONPATH"] = pythonpath(env.get("PYTHONPATH"))
    return env


def _environment(ws: Workspace) -> dict[str, str]:
    env = flows_environment()
    env["PREFECT_HOME"] = str(home(ws))  # its database, profiles and logs stay in the workspace
    env["CXR_WORKSPACE"] = str(ws.root)
    return env


def _start_server(ws: Workspace, port: int | None, timeout: float) -> dict:
    host = os.environ.get("CXR_PREFECT_HOST") or DEFAULT_HOST
    port = int(port or os.environ.get("CXR_PREFECT_PORT") or DEFAULT_PORT)
    if process.port_taken(host, port):
        raise PrefectServerError(f"port {port} on {host} is already in use by another program; "
                                 "stop it or choose another port with CXR_PREFECT_PORT")
    env = _environment(ws)
    env.pop("PREFECT_API_URL", None)  # the server is the API; a URL meant for clients is not its own
    command = [prefect_bin(), "server", "start", "--host", host, "--port", str(port), "--analytics-off"]
    url = process.connect_url(host, port)
    return process.launch(command, env=env, cwd=CODE_ROOT, log=server_log(ws), pid_file=server_pid_path(ws),
                          address=(host, port, url), ready=lambda: _healthy(url), timeout=timeout,
                          what="the Prefect server", error=PrefectServerError)


def _start_runner(ws: Workspace, url: str, timeout: float) -> dict:
    env = _environment(ws)
    env["PREFECT_API_URL"] = url + "/api"
    return process.launch([sys.executable, "-m", "flows.serve"], env=env, cwd=CODE_ROOT, log=runner_log(ws),
                          pid_file=runner_pid_path(ws), address=("", 0, url), ready=lambda: _deployments_served(url),
                          timeout=timeout, what="the deployments' runner", error=PrefectServerError)


def prefect_bin() -> str:
    """The `prefect` command of this environment (beside its python)."""
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
