"""Label Studio's webhook events -> the Prefect retrain deployment, never training in a request.

New annotations are counted per project: the ids of annotations created or updated since the
last retrain was started (an annotation saved five times counts once). When a project reaches
`every` ($CXR_RETRAIN_EVERY), or on an explicit "start training" (Label Studio 1.23's button
sends the webhook action START_TRAINING; older servers POST /train), the deployment
`retrain/retrain` is started with `run_deployment(..., timeout=0)`: Prefect creates a flow run
for a worker and answers at once. The call runs in a thread the request waits on for at most
`wait_s`, so the webhook's answer says whether the run was created (its id) or why not (no
such deployment, Prefect unreachable), and a hung Prefect never holds a worker thread for long.

The counts live in the workspace (`backend/retrain_state.json`, replaced atomically under a
file lock shared by every worker), so a restart does not lose them. The counted annotations
are forgotten only once the flow run exists: when a start fails they stay, and the next event
tries again.
"""
from __future__ import annotations

import fcntl
import json
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from cxrkit.core.atomic import write_atomic

log = logging.getLogger(__name__)

DEPLOYMENT = "retrain/retrain"
COUNTED_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
START_EVENTS = ("START_TRAINING",)


class RetrainTrigger:
    def __init__(self, state_path: Path, every: int, workspace_root: Path, deployment: str = DEPLOYMENT,
                 wait_s: float = 30.0):
        if every < 1:
            raise ValueError(f"CXR_RETRAIN_EVERY must be at least 1, got {every}")
        self.state_path = Path(state_path)
        self.every = every
        self.workspace_root = Path(workspace_root)
        self.deployment = deployment
        self.wait_s = wait_s

    # --- events ----------------------------------------------------------------

    def handle(self, event: str, payload: dict) -> dict:
        """What the webhook answers: what was counted, and the retrain started (or why not)."""
        project = project_id(payload)
        if event in START_EVENTS:
            if project is None:
                return {"event": event, "retrain": {"started": False, "error": "START_TRAINING without a project id"}}
            return {"event": event, "retrain": self.start(project, reason="start training requested in Label Studio")}
        if event not in COUNTED_EVENTS:
            return {"event": event, "ignored": True}
        ids = annotation_ids(payload)
        if project is None or not ids:
            return {"event": event, "ignored": True, "reason": "no project or annotation id in the payload"}
        with self._state() as state:
            pending = set(state.setdefault("pending", {}).get(str(project), []))
            pending.update(ids)
            state["pending"][str(project)] = sorted(pending)
        answer = {"event": event, "project": project, "pending": len(pending), "every": self.every}
        if len(pending) >= self.every:

            def forget_counted():  # once the run exists; annotations counted meanwhile stay
                with self._state() as state:
                    left = set(state["pending"].get(str(project), [])) - pending
                    state["pending"][str(project)] = sorted(left)

            answer["retrain"] = self.start(project, f"{len(pending)} new annotations (CXR_RETRAIN_EVERY={self.every})",
                                           on_started=forget_counted)
        return answer

    # --- starting the deployment ------------------------------------------------

    def start(self, project: int, reason: str, on_started=None) -> dict:
        """Create a flow run of the deployment. The answer: {"started": True, "flow_run_id": ...},
        {"started": False, "error": ...}, or {"started": None, ...} when Prefect has not answered
        within wait_s (the thread goes on; its outcome is logged and kept in the state file)."""
        parameters = {"workspace": str(self.workspace_root), "project": int(project), "reason": reason}
        outcome: dict = {}

        def run():
            try:
                outcome["flow_run_id"] = str(_run_deployment(self.deployment, parameters))
                outcome["started"] = True
                log.info("retrain started for project %s (%s): flow run %s", project, reason, outcome["flow_run_id"])
                if on_started is not None:
                    on_started()
            except Exception as exc:  # noqa: BLE001 - reported to the caller, the service stays up
                outcome.update(started=False, error=f"cannot start Prefect deployment {self.deployment!r}: "
                                                    f"{type(exc).__name__}: {exc}")
                log.error("retrain not started for project %s: %s", project, outcome["error"])
            with self._state() as state:
                state["last_trigger"] = {"time": time.time(), "project": project, "reason": reason, **outcome}

        thread = threading.Thread(target=run, name="retrain-trigger", daemon=True)
        thread.start()
        thread.join(self.wait_s)
        if thread.is_alive():
            result = {"started": None,
                      "detail": f"Prefect has not answered within {self.wait_s:.0f} s; the outcome goes to the log"}
        else:
            result = dict(outcome)
        return {"deployment": self.deployment, "parameters": parameters, **result}

    # --- state file ---------------------------------------------------------------

    @contextmanager
    def _state(self):
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # every thread and worker process takes turns
            try:
                state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
            except ValueError:
                log.error("unreadable %s: starting the annotation counts again", self.state_path)
                state = {}
            yield state
            write_atomic(self.state_path, json.dumps(state, indent=1, sort_keys=True))


def _run_deployment(name: str, parameters: dict):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # Without an API URL Prefect would start a temporary server inside this worker.
        raise RuntimeError("PREFECT_API_URL is not set: the backend does not know the Prefect server")
    return run_deployment(name, parameters=parameters, timeout=0).id


def project_id(payload: dict) -> int | None:
    project = payload.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    try:
        return int(project) if project is not None else None
    except (TypeError, ValueError):
        return None


def annotation_ids(payload: dict) -> list[int]:
    """The annotation ids of an event: `annotation` is one object, or a list for ANNOTATIONS_CREATED."""
    items = payload.get("annotation") or []
    items = items if isinstance(items, list) else [items]
    return [int(a["id"]) for a in items if isinstance(a, dict) and a.get("id") is not None]
