"""A Prefect work pool and a worker that runs prefect.yaml's deployments (issue 19).

    deploy(api_url)                            # the process pools (made when missing) + prefect.yaml's deployments
    start(folder, api_url, workspace, name, pool) -> the worker's PID-file entry
    running(folder), stop(folder)

The scale-out counterpart of `cxr flows start`'s runner (cxrkit/services/prefect_server.py),
which serves the deployments from one process: here, as docker-compose's `prefect-worker`
service, the deployments are created from prefect.yaml on a work pool of type `process`, and any
number of workers, on this machine or others, poll the pool and run each flow run in a process
of its own. The commands are compose's: `prefect --no-prompt deploy --all` from the checkout,
`prefect worker start --pool <pool> --type process`.

Two pools: `cxr-process` holds retrain, select and ingest; `cxr-gpu` holds retrain-gpu, the same
flow for workers started on machines with a GPU (`cxr stack worker gpu-1 --pool cxr-gpu` there,
or `prefect worker start --pool cxr-gpu --type process`). The ML backend starts retrain-gpu
instead of retrain when CXR_RETRAIN_DEPLOYMENT=retrain/retrain-gpu; training uses the GPU its
machine has (params.yaml's device settings), nothing else changes.

Settings, each with the reason:
- The flow code is this checkout: prefect.yaml's pull step changes to `{{ $CXR_CODE_DIR }}`,
  which Prefect resolves in the worker's environment when a flow run starts (compose sets /app,
  the image's copy; here the checkout that started the worker), with PYTHONPATH on it too.
- CXR_WORKSPACE: a flow run without parameters works on the worker's workspace.
- The worker's health endpoint is not started: its default port (8080) is Label Studio's.
- Offline: no analytics (cxrkit.core.offline); the rest of the environment passes through, so
  the Label Studio, DVC remote and backend settings a team sets reach the flows.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import requests

from cxrkit.core.checkout import CODE_ROOT
from cxrkit.services import process
from cxrkit.services.prefect_server import flows_environment, prefect_bin

POOL = "cxr-process"
GPU_POOL = "cxr-gpu"  # retrain/retrain-gpu's: workers on machines with a GPU poll it
DEPLOYMENTS = ("retrain/retrain", "retrain/retrain-gpu", "select/select", "ingest/ingest")
START_TIMEOUT_S = 120.0


class PrefectWorkerError(process.ServiceError):
    """The pool, the deployments or the worker could not be set up; the message says why."""


def pid_path(folder: Path) -> Path:
    return Path(folder) / "worker.json"


def log_path(folder: Path) -> Path:
    return Path(folder) / "worker.log"


def running(folder: Path) -> dict | None:
    return process.running(pid_path(folder))


def deploy(api_url: str) -> list[str]:
    """Make the process pools (POOL, GPU_POOL) unless they exist, then create or update
    prefect.yaml's deployments on them (from the checkout). Returns the deployments' names."""
    env = environment(api_url)
    for pool in (POOL, GPU_POOL):
        if requests.get(f"{api_url}/work_pools/{pool}", timeout=30).status_code != 200:
            _prefect(["work-pool", "create", pool, "--type", "process"], env, f"create the work pool {pool}")
    _prefect(["--no-prompt", "deploy", "--all"], env, "create prefect.yaml's deployments")
    missing = [name for name in DEPLOYMENTS
               if requests.get(f"{api_url}/deployments/name/{name}", timeout=30).status_code != 200]
    if missing:
        raise PrefectWorkerError(f"`prefect deploy --all` left out {', '.join(missing)}: see prefect.yaml")
    return list(DEPLOYMENTS)


def start(folder: str | os.PathLike, api_url: str, workspace: str | os.PathLike, name: str,
          pool: str = POOL, timeout: float = START_TIMEOUT_S) -> dict:
    """Start a worker `name` polling `pool`, detached, its log and PID file in `folder`; returns
    once the server lists it as online. A worker already running from `folder` is returned."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    found = running(folder)
    if found is not None:
        return found
    env = environment(api_url)
    env["CXR_WORKSPACE"] = str(workspace)
    return process.launch(command(pool, name), env=env, cwd=CODE_ROOT, log=log_path(folder), pid_file=pid_path(folder),
                          address=("", 0, api_url), ready=lambda: _online(api_url, pool, name), timeout=timeout,
                          what=f"the Prefect worker {name}", error=PrefectWorkerError)


def command(pool: str, name: str) -> list[str]:
    """The worker's command line (compose's prefect-worker runs the same, tests/test_compose.py)."""
    return [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process", "--name", name]


def stop(folder: str | os.PathLike, timeout: float = 30.0) -> bool:
    """Stop the folder's worker (SIGTERM: it stops polling; a flow run it started is ended with it)."""
    return process.stop(pid_path(Path(folder)), timeout)


def environment(api_url: str) -> dict[str, str]:
    env = flows_environment()
    env["PREFECT_API_URL"] = api_url
    env["CXR_CODE_DIR"] = str(CODE_ROOT)
    return env


def _online(api_url: str, pool: str, name: str) -> bool:
    try:
        resp = requests.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}, timeout=5)
    except requests.RequestException:
        return False
    return resp.status_code == 200 and any(w["name"] == name and w.get("status") == "ONLINE" for w in resp.json())


def _prefect(args: list[str], env: dict, what: str) -> None:
    result = subprocess.run([prefect_bin(), *args], env=env, cwd=CODE_ROOT, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        raise PrefectWorkerError(f"could not {what} (`prefect {' '.join(args)}` exited {result.returncode}): "
                                 f"{(result.stderr or result.stdout).strip()[-1500:]}")
