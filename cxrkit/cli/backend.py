"""`cxr backend start|stop|status|connect`: run the ML backend and connect it to Label Studio."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from cxrkit.cli.common import WorkspaceOpt, console, labelstudio_client
from cxrkit.core.workspace import Workspace
from cxrkit.labelstudio.client import DEFAULT_PROJECT

backend_app = typer.Typer(help="Run the ML backend (pre-annotations) and connect it to Label Studio.",
                          no_args_is_help=True)


@contextmanager
def backend_errors():
    """Backend and Label Studio failures as one red line and exit status 2."""
    from cxrkit.core.labels import LabelConfigError
    from cxrkit.core.workspace import PlaceholderSecret
    from cxrkit.labelstudio.client import LabelStudioError
    from cxrkit.services.backend import BackendError
    from cxrkit.services.labelstudio_server import LabelStudioServerError

    try:
        yield
    except (BackendError, LabelStudioError, LabelStudioServerError, LabelConfigError, PlaceholderSecret) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)


@backend_app.command("start")
def start(
    workspace: Optional[Path] = WorkspaceOpt,
    port: Optional[int] = typer.Option(None, help="Port (default $CXR_BACKEND_PORT or 9090)."),
) -> None:
    """Start the ML backend on 127.0.0.1 (or find the one already running for this workspace)."""
    from cxrkit.services import backend

    with backend_errors():
        info = backend.start(Workspace.from_env(workspace), port=port)
    state = "already running" if info.reused else "started"
    model = info.model_version or "none yet (no predictions until a model is promoted)"
    console.print(f"ML backend {state}: {info.url} (pid {info.pid}, log {info.log_path})\n"
                     f"model version: {model}; login: {info.user}, password in the workspace .env")


@backend_app.command("stop")
def stop(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Stop the ML backend this workspace started."""
    from cxrkit.services import backend

    stopped = backend.stop(Workspace.from_env(workspace))
    console.print("ML backend stopped" if stopped else "ML backend was not running for this workspace")


@backend_app.command("status")
def status(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Say whether the ML backend runs and which model version it serves. Exit status 1 if not running."""
    from cxrkit.services import backend

    info = backend.status(Workspace.from_env(workspace))
    if info is None:
        console.print("ML backend is not running for this workspace")
        raise typer.Exit(1)
    console.print(f"ML backend running: {info.url} (pid {info.pid}), model version {info.model_version}")


@backend_app.command("connect")
def connect(
    workspace: Optional[Path] = WorkspaceOpt,
    title: str = typer.Option(DEFAULT_PROJECT, "--title", help="Label Studio project title."),
    url: Optional[str] = typer.Option(
        None, help="The backend URL as Label Studio reaches it (default: the one `cxr backend start` runs here)."),
    predict: bool = typer.Option(True, help="Request predictions for every task lacking one of the current version."),
) -> None:
    """Connect the running backend to the project (basic auth), then fill in missing predictions."""
    from cxrkit.services import backend

    ws = Workspace.from_env(workspace)
    info = backend.status(ws)
    if info is None and url is None:
        console.print("[red]error:[/red] the ML backend is not running for this workspace: `cxr backend start` "
                         "(or give the --url of one running elsewhere)")
        raise typer.Exit(2)
    user, password = backend.login(ws)
    ls = labelstudio_client(ws)
    with backend_errors():
        projects = [p for p in ls.projects() if p["title"] == title]
        if not projects:
            console.print(f"[red]error:[/red] no Label Studio project {title!r}: `cxr labelstudio setup-project`")
            raise typer.Exit(2)
        project = projects[0]["id"]
        connected, requested = backend.connect(ls, project, url or info.url, user, password, predict=predict)
    console.print(f"connected {connected['url']} to project {title!r} (ML backend id {connected['id']}, "
                     f"model version {connected.get('model_version')})")
    if predict:
        console.print(f"requested predictions for {len(requested)} task(s) lacking one of this version")
