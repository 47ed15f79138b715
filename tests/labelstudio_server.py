"""pytest plugin: one real Label Studio server per test session.

It runs exactly as `cxr labelstudio start` runs it (cxrkit.services.labelstudio_server), in a fresh
temporary workspace on a free port, and is stopped when the session ends. A first start copies
the install's migrated empty database (cxrkit.services.labelstudio_database), made by the first
start on this machine: that one applies Label Studio's migrations, about 25 s; later ones take
about 4 s. Tests share one server all the same: each start is a server process of its own.
"""
from __future__ import annotations

import pytest

from cxrkit.core.workspace import Workspace
from cxrkit.services import labelstudio_server as server
from cxrkit.services.process import free_port  # noqa: F401 - the tests import it from here


@pytest.fixture(scope="session")
def labelstudio_workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("ls-workspace")).create()


@pytest.fixture(scope="session")
def labelstudio(labelstudio_workspace) -> server.ServerInfo:
    """The running server's ServerInfo (url, pid, admin credentials)."""
    info = server.start(labelstudio_workspace, port=free_port())
    yield info
    server.stop(labelstudio_workspace)


def published_queue(ls, project: int) -> tuple[list[str], dict[str, dict]]:
    """The select flow's queue as Label Studio holds it: the image ids whose tasks carry a
    prediction of the project's current model version (a publication), in the order of their
    scores, and image id -> that prediction."""
    label = ls.project(project)["model_version"]
    current = {t["data"]["image_id"]: p for t in ls.list_tasks(project, full=True)
               for p in t.get("predictions") or [] if p["model_version"] == label}
    return sorted(current, key=lambda i: current[i]["score"]), current
