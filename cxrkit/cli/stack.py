"""`cxr stack up|down|status|env`: docker-compose.yml's topology from native processes, for a team
without Docker (cxrkit/services/stack.py): Postgres, an S3 store, a Prefect server and worker,
Label Studio and the ML backend, every one on 127.0.0.1."""
from __future__ import annotations

import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from cxrkit.cli.common import WorkspaceOpt, console
from cxrkit.core.workspace import Workspace

stack_app = typer.Typer(help="Run the scale-out stack (Postgres, S3, Prefect worker) without Docker.",
                        no_args_is_help=True)


@contextmanager
def stack_errors():
    """A service that cannot start or stop: one red line naming it and why, exit status 2."""
    from cxrkit.core.workspace import PlaceholderSecret
    from cxrkit.services.process import ServiceError

    try:
        yield
    except (ServiceError, PlaceholderSecret) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)


@stack_app.command("up")
def up(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Start every service of the stack that is not running (secrets: the environment, else the workspace .env)."""
    from cxrkit.services import stack

    ws = Workspace.from_env(workspace)
    with stack_errors():
        stack.up(ws, say=console.print)
    console.print(f"The stack runs. For `cxr` commands and DVC against it: eval \"$(cxr stack env -w {ws.root})\"")


@stack_app.command("down")
def down(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Stop every service of the stack (the data stays: Postgres' cluster, the workspace)."""
    from cxrkit.services import stack

    with stack_errors():
        stack.down(Workspace.from_env(workspace), say=console.print)


@stack_app.command("worker")
def worker(name: str = typer.Argument(..., help="The new worker's name (its folder under <workspace>/stack)."),
           pool: str = typer.Option("cxr-process", help="Its work pool: cxr-process, or cxr-gpu on a machine with a GPU."),
           workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Start one more Prefect worker on a pool of the stack, beside the others (or find it running)."""
    from cxrkit.services import stack

    with stack_errors():
        entry = stack.start_worker(Workspace.from_env(workspace), name, pool)
    console.print(f"prefect worker {name}: pid {entry['pid']}")


@stack_app.command("status")
def status(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Each service: where it answers, or `not running`. Exit 1 when any is down."""
    from cxrkit.services import stack

    found = stack.status(Workspace.from_env(workspace))
    for name, where in found.items():
        console.print(f"{name}: {where or '[red]not running[/red]'}")
    if not all(found.values()):
        raise typer.Exit(1)


@stack_app.command("env")
def env(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Print `export` lines for a shell that uses the stack (it holds secrets: eval it, don't save it)."""
    from cxrkit.services import stack

    for key, value in stack.client_environment(Workspace.from_env(workspace)).items():
        typer.echo(f"export {key}={shlex.quote(value)}")
