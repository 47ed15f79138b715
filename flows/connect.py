"""Where the flows find Label Studio and the project they work on.

Label Studio is $LABEL_STUDIO_URL with the token $LABEL_STUDIO_API_KEY (docker-compose sets
both for the worker), else the server `cxr labelstudio start` runs for the workspace, else
nobody: the select and ingest flows then skip their Label Studio steps and say so, and the
retrain flow trains on the labels it already has. A configured Label Studio that does not
answer is an error (LabelStudioError), never a silent skip: a retrain must not run on stale labels.

The project is the id given, else the one titled like `cxr labelstudio setup-project` names it.
"""
from __future__ import annotations

import os

from cxrkit.core.workspace import Workspace, read_env_file, refuse_placeholder
from cxrkit.labelstudio.client import DEFAULT_PROJECT, LabelStudio, LabelStudioError


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
