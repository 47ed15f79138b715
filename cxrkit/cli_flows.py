"""`cxr retrain`, `cxr select` and `cxr flows serve`: the Prefect flows from the command line.

`retrain` and `select` run the flow in this process (against $PREFECT_API_URL, or Prefect's
temporary local API when unset) and print its summary; `flows serve` keeps a process serving
the retrain, select and ingest deployments so the Prefect UI, `prefect deployment run` and the
ML backend's webhook (run_deployment("retrain/retrain", ...)) can start them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)
WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace folder (default $CXR_WORKSPACE or ./workspace).")
ProjectOpt = typer.Option(None, "--project", help="Label Studio project id (default: the 'Chest X-ray pneumonia' project).")
ParamsOpt = typer.Option(None, "--params", help="Params file (default $CXR_PARAMS or params.yaml).")


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
    """Retrain on Label Studio's labels: export, version (DVC), train, gate, serve, select. Exit 1 on failure."""
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
    from flows.select import select_flow

    state = select_flow(workspace=str(workspace) if workspace else None, project=project,
                        params=str(params) if params else None, strategy=strategy, return_state=True)
    _finish(state, "select", hide=("ranking", "scores"))


flows_app = typer.Typer(help="Prefect deployments of the retrain, select and ingest flows.", no_args_is_help=True)


@flows_app.command("serve")
def serve() -> None:
    """Serve the deployments retrain/retrain, select/select and ingest/ingest until interrupted."""
    from flows.serve import serve_deployments

    serve_deployments()


def register(app: typer.Typer) -> None:
    """Add the commands to the `cxr` app (cxrkit/cli.py)."""
    app.command()(retrain)
    app.command()(select)
    app.add_typer(flows_app, name="flows")
