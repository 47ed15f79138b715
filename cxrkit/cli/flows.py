"""`cxr retrain`, `cxr select` and `cxr flows start|stop|status|serve`: the Prefect flows from the command line.

`retrain` and `select` run the flow in this process and print its summary, against
$PREFECT_API_URL, else the workspace's own Prefect server when it runs (so the run shows in its
UI and shares the one-retrain-per-project limit with the webhook's runs), else Prefect's
temporary local API. `flows start` runs the workspace's Prefect server and a runner serving the
retrain, select and ingest deployments in the background (cxrkit/services/prefect_server.py), so the
Prefect UI, `prefect deployment run` and the ML backend's webhook (run_deployment
("retrain/retrain", ...)) can start them; `flows serve` serves them in the foreground instead,
against $PREFECT_API_URL.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from cxrkit.cli.common import WorkspaceOpt, console

ProjectOpt = typer.Option(None, "--project", help="Label Studio project id (default: the 'Chest X-ray pneumonia' project).")
ParamsOpt = typer.Option(None, "--params", help="Params file (default $CXR_PARAMS or params.yaml).")


def use_workspace_prefect(workspace: Path | None) -> None:
    """Point this process at the workspace's Prefect server when $PREFECT_API_URL is unset.
    Before prefect is imported: it reads its settings once, at import."""
    from cxrkit.core.workspace import Workspace
    from cxrkit.services import prefect_server

    url = prefect_server.api_url(Workspace.from_env(workspace))
    if url:
        os.environ["PREFECT_API_URL"] = url


def _finish(state, name: str, hide: tuple[str, ...] = ()) -> None:
    result = state.result(raise_on_failure=False)
    if not state.is_completed():
        console.print(f"[red]{name} failed:[/red] {result}")
        raise typer.Exit(1)
    summary = {k: v for k, v in (result or {}).items() if k not in hide}
    typer.echo(json.dumps(summary, indent=2, default=str))
    console.print(f"{name}: {state.name}")


def retrain(
    workspace: Optional[Path] = WorkspaceOpt,
    project: Optional[int] = ProjectOpt,
    params: Optional[Path] = ParamsOpt,
    reason: str = typer.Option("manual", help="Why (logged, and in the round's commit message)."),
    select: bool = typer.Option(True, help="Rank the unlabeled images with the new model afterwards."),
) -> None:
    """Retrain on Label Studio's labels: export, version (DVC), train, gate, serve, select. Exit 1 on failure.

    The params file: --params, else $CXR_PARAMS, else the one the workspace is configured with
    (`cxr demo` sets it), else params.yaml."""
    use_workspace_prefect(workspace)
    from flows.retrain import retrain_flow

    state = retrain_flow(workspace=str(workspace) if workspace else None, project=project,
                         params=str(params) if params else None, reason=reason, select=select, return_state=True)
    _finish(state, "retrain")


def select(
    workspace: Optional[Path] = WorkspaceOpt,
    project: Optional[int] = ProjectOpt,
    params: Optional[Path] = ParamsOpt,
    strategy: Optional[str] = typer.Option(None, help="Acquisition strategy (default: params.yaml select.strategy)."),
) -> None:
    """Score the unlabeled images with the serving model and write the ranking to Label Studio."""
    use_workspace_prefect(workspace)
    from flows.select import select_flow

    state = select_flow(workspace=str(workspace) if workspace else None, project=project,
                        params=str(params) if params else None, strategy=strategy, return_state=True)
    _finish(state, "select", hide=("ranking", "scores"))


flows_app = typer.Typer(help="Prefect deployments of the retrain, select and ingest flows.", no_args_is_help=True)


@flows_app.command("start")
def start(
    workspace: Optional[Path] = WorkspaceOpt,
    port: Optional[int] = typer.Option(None, help="Port of the Prefect server (default $CXR_PREFECT_PORT or 4200)."),
) -> None:
    """Start the workspace's Prefect server (127.0.0.1) and the runner of its deployments, in the
    background (or find them running)."""
    from cxrkit.core.workspace import Workspace
    from cxrkit.services import prefect_server

    try:
        info = prefect_server.start(Workspace.from_env(workspace), port=port)
    except prefect_server.PrefectServerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    console.print(f"Prefect {'already running' if info.reused else 'started'}: {info.url} (server pid "
                  f"{info.server_pid}, runner pid {info.runner_pid}) serving {', '.join(prefect_server.DEPLOYMENTS)}")


@flows_app.command("stop")
def stop(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Stop the workspace's Prefect runner and server."""
    from cxrkit.core.workspace import Workspace
    from cxrkit.services import prefect_server

    stopped = prefect_server.stop(Workspace.from_env(workspace))
    console.print("Prefect stopped" if stopped else "Prefect was not running for this workspace")


@flows_app.command("status")
def status(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Say whether the workspace's Prefect server and runner run. Exit status 1 if the server does not."""
    from cxrkit.core.workspace import Workspace
    from cxrkit.services import prefect_server

    info = prefect_server.status(Workspace.from_env(workspace))
    if info is None:
        console.print("Prefect is not running for this workspace")
        raise typer.Exit(1)
    runner = f"runner pid {info.runner_pid}" if info.runner_pid else "[red]no runner[/red] (`cxr flows start`)"
    console.print(f"Prefect running: {info.url} (server pid {info.server_pid}), {runner}")


@flows_app.command("serve")
def serve() -> None:
    """Serve the deployments retrain/retrain, select/select and ingest/ingest in the foreground until
    interrupted, against $PREFECT_API_URL (`cxr flows start` runs the workspace's own in the background)."""
    from flows.serve import serve_deployments

    serve_deployments()


def register(app: typer.Typer) -> None:
    """Add the commands to the `cxr` app (cxrkit/cli/__init__.py)."""
    app.command()(retrain)
    app.command()(select)
    app.add_typer(flows_app, name="flows")
