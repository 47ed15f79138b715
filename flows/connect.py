"""Where the flows find their workspace, Label Studio and the project they work on: a flow run
builds one FlowContext where it starts (`context_for`) and passes it down to its tasks.

Label Studio is $LABEL_STUDIO_URL with the token $LABEL_STUDIO_API_KEY (docker-compose sets
both for the worker), else the server `cxr labelstudio start` runs for the workspace, else
nobody: the select and ingest flows then skip their Label Studio steps and say so, and the
retrain flow trains on the labels it already has. A configured Label Studio that does not
answer is an error (LabelStudioError), never a silent skip: a retrain must not run on stale labels.

The project is the id given, else the one titled like `cxr labelstudio setup-project` names it.
A flow's network steps are tried again as params.yaml's retrain section says (`network_retries`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from cxrkit.core.workspace import Workspace, read_env_file, refuse_placeholder
from cxrkit.labelstudio.client import DEFAULT_PROJECT, LabelStudio, LabelStudioError


@dataclass
class FlowContext:
    """What one flow run works on, resolved once: the workspace (paths, secrets), a client of its
    Label Studio (None: none configured or running) and the project id (None without Label Studio)."""

    ws: Workspace
    labelstudio: LabelStudio | None
    project: int | None


def context_for(workspace: Workspace | str | os.PathLike | None, project: int | None = None) -> FlowContext:
    """The context of a flow run on `workspace` (a Workspace, a folder, or None: $CXR_WORKSPACE or
    ./workspace)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.from_env(workspace)
    ls = labelstudio_for(ws)
    return FlowContext(ws, ls, project_id(ls, project) if ls is not None else project)


def labelstudio_for(ws: Workspace) -> LabelStudio | None:
    url = os.environ.get("LABEL_STUDIO_URL")
    if url:
        token = os.environ.get("LABEL_STUDIO_API_KEY") or read_env_file(ws.env_path).get("LABEL_STUDIO_USER_TOKEN")
        if not token:
            raise LabelStudioError(f"LABEL_STUDIO_URL is {url} but no token: set LABEL_STUDIO_API_KEY")
        return LabelStudio(url, refuse_placeholder("LABEL_STUDIO_API_KEY", token))
    from cxrkit.services import labelstudio_server as server

    info = server.status(ws)
    return LabelStudio.for_server(info) if info else None


def project_id(ls: LabelStudio, project: int | None, title: str = DEFAULT_PROJECT) -> int:
    if project is not None:
        return int(ls.project(int(project))["id"])  # LabelStudioError (404) names a project that is not there
    found = [p["id"] for p in ls.projects() if p["title"] == title]
    if not found:
        raise LabelStudioError(f"no Label Studio project titled {title!r} at {ls.url}: `cxr labelstudio setup-project`")
    return int(found[0])


def network_retries(knobs: dict) -> dict:
    """Prefect task options for a flow's network steps (a Label Studio export or publication, the
    backend's reload, dvc push): params.yaml retrain.retries and retrain.retry_delay_seconds.
    Each such step is safe to run again whole: a Label Studio 500 while its Postgres restarts, or a
    push that cannot reach its remote, fails one try and the next finishes the work."""
    settings = knobs.get("retrain") or {}
    return {"retries": int(settings.get("retries", 3)),
            "retry_delay_seconds": float(settings.get("retry_delay_seconds", 10))}
