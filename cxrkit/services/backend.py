"""Start and stop the workspace's ML backend (gunicorn serving ml_backend/_wsgi.py), and connect it.

Like Label Studio (cxrkit.services.labelstudio_server), it runs detached, with its files in the workspace:

    workspace/backend/backend.log         gunicorn's log (access and errors)
    workspace/backend/backend.json        PID file: pid, process start time, host, port, url
    workspace/backend/retrain_state.json  new-annotation counts (ml_backend/retrain.py)

The process gets its configuration in the environment:
- CXR_WORKSPACE: this workspace (images, model registry);
- CXR_BACKEND_USER / CXR_BACKEND_PASSWORD: the basic-auth login Label Studio must send; from the
  environment, else from the workspace .env, where the password is generated once (mode 600);
- LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY: the one Label Studio uploaded images are fetched from,
  taken from the workspace's running Label Studio when they are not set (without a URL, the
  backend fetches no upload: /setup's hostname is never used);
- PREFECT_API_URL: where the webhook starts the retrain deployment, taken from the workspace's
  running Prefect server (`cxr flows start`, cxrkit.services.prefect_server) when it is not set;
- CXR_RETRAIN_EVERY: new annotations that start a retrain (DEFAULT_RETRAIN_EVERY);
- bound to 127.0.0.1 unless $CXR_BACKEND_HOST says otherwise; port $CXR_BACKEND_PORT (9090).
Everything else in the caller's environment passes through.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from cxrkit.core.checkout import CODE_ROOT
from cxrkit.core.workspace import Workspace, read_env_file
from cxrkit.labelstudio.tasks import has_prediction
from cxrkit.services import process

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
DEFAULT_USER = "labelstudio"
DEFAULT_RETRAIN_EVERY = 20  # new annotations per retrain, unless $CXR_RETRAIN_EVERY says otherwise
START_TIMEOUT_S = 120.0  # imports torch and ultralytics, then loads the current model


class BackendError(process.ServiceError):
    """The backend could not be started, or is not the one this workspace started."""


@dataclass(frozen=True)
class BackendInfo:
    url: str
    pid: int
    log_path: Path
    user: str
    password: str = field(repr=False)
    model_version: str | None = None
    reused: bool = False


def backend_dir(ws: Workspace) -> Path:
    return ws.root / "backend"


def log_path(ws: Workspace) -> Path:
    return backend_dir(ws) / "backend.log"


def pid_path(ws: Workspace) -> Path:
    return backend_dir(ws) / "backend.json"


def login(ws: Workspace) -> tuple[str, str]:
    """The basic-auth user and password: the environment's, else the workspace .env's (generated once)."""
    user = os.environ.get("CXR_BACKEND_USER") or read_env_file(ws.env_path).get("CXR_BACKEND_USER") or DEFAULT_USER
    return user, ws.secret("CXR_BACKEND_PASSWORD")


def start(ws: Workspace, port: int | None = None, timeout: float = START_TIMEOUT_S,
          extra_env: dict[str, str] | None = None) -> BackendInfo:
    """Start the backend for the workspace, or return the one already running for it."""
    user, password = login(ws)
    running = process.running(pid_path(ws))
    if running is not None:
        health = process.wait_until_ready(lambda: _health(running["url"]), timeout, "the ML backend", log_path(ws),
                                          pid_file=pid_path(ws), error=BackendError)
        return BackendInfo(running["url"], running["pid"], log_path(ws), user, password,
                           health.get("model_version"), reused=True)

    host = os.environ.get("CXR_BACKEND_HOST") or DEFAULT_HOST
    port = int(port or os.environ.get("CXR_BACKEND_PORT") or DEFAULT_PORT)
    if process.port_taken(host, port):
        raise BackendError(f"port {port} on {host} is already in use by another program; "
                           "stop it or choose another port with CXR_BACKEND_PORT")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        raise BackendError(f"gunicorn not found at {gunicorn}: run scripts/bootstrap.sh")
    backend_dir(ws).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({"CXR_WORKSPACE": str(ws.root), "CXR_BACKEND_USER": user, "CXR_BACKEND_PASSWORD": password,
                "CXR_BACKEND_HOST": host, "CXR_BACKEND_PORT": str(port)})
    env.update(_label_studio_env(ws))
    env.update(_prefect_env(ws))
    env.update(extra_env or {})
    command = [str(gunicorn), "-c", str(CODE_ROOT / "ml_backend" / "gunicorn.conf.py"), "ml_backend._wsgi:create_app()"]
    url = process.connect_url(host, port)
    entry = process.launch(command, env=env, cwd=CODE_ROOT, log=log_path(ws), pid_file=pid_path(ws),
                           address=(host, port, url), ready=lambda: _health(url), timeout=timeout,
                           what="the ML backend", error=BackendError)
    return BackendInfo(url, entry["pid"], log_path(ws), user, password, (_health(url) or {}).get("model_version"))


def stop(ws: Workspace, timeout: float = 30.0) -> bool:
    """Stop the backend this workspace started (SIGTERM: gunicorn finishes its requests). False if none ran."""
    return process.stop(pid_path(ws), timeout)


def status(ws: Workspace) -> BackendInfo | None:
    """The workspace's backend when it runs and answers /health, else None."""
    running = process.running(pid_path(ws))
    health = _health(running["url"]) if running else None
    if health is None:
        return None
    user, password = login(ws)
    return BackendInfo(running["url"], running["pid"], log_path(ws), user, password,
                       health.get("model_version"), reused=True)


def connect(ls, project: int, url: str, user: str, password: str, predict: bool = True) -> tuple[dict, list[int]]:
    """Connect the backend at `url` (as Label Studio reaches it) to a Label Studio project (`ls`:
    a LabelStudio client), then request predictions for every task lacking one of the version
    the backend serves (Label Studio learns it from the backend's /setup).

    Returns Label Studio's ML backend record and the ids of the tasks predictions were requested for."""
    connected = ls.connect_ml_backend(project, url, user, password)
    version = connected.get("model_version")
    lacking: list[int] = []
    if predict and version:
        lacking = [t["id"] for t in ls.list_tasks(project, full=True) if not has_prediction(t, version)]
        ls.request_predictions(project, lacking)
    return connected, lacking


def _label_studio_env(ws: Workspace) -> dict[str, str]:
    """LABEL_STUDIO_URL / _API_KEY from the workspace's Label Studio, unless already set."""
    if os.environ.get("LABEL_STUDIO_URL") and os.environ.get("LABEL_STUDIO_API_KEY"):
        return {}
    from cxrkit.services import labelstudio_server as server

    info = server.status(ws)
    if info is None:
        return {}  # uploads then use the URL and token Label Studio sends in /setup
    return {"LABEL_STUDIO_URL": os.environ.get("LABEL_STUDIO_URL") or info.url,
            "LABEL_STUDIO_API_KEY": os.environ.get("LABEL_STUDIO_API_KEY") or info.credentials.token}


def retrain_every() -> int:
    """New annotations that make the backend start a retrain ($CXR_RETRAIN_EVERY)."""
    return int(os.environ.get("CXR_RETRAIN_EVERY") or DEFAULT_RETRAIN_EVERY)


def _prefect_env(ws: Workspace) -> dict[str, str]:
    """PREFECT_API_URL of the workspace's Prefect server, unless already set (then it passes through)."""
    from cxrkit.services import prefect_server

    url = prefect_server.api_url(ws)
    return {"PREFECT_API_URL": url} if url else {}


def _health(url: str) -> dict | None:
    """The backend's /health answer, or None while it does not answer."""
    try:
        resp = requests.get(url + "/health", timeout=5)
        return resp.json() if resp.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None
