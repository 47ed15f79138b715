"""What the `cxr` subcommand modules share: one console, the --workspace option, and Label
Studio errors shown as one red line."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import typer
from rich.console import Console

from cxrkit.core.workspace import Workspace

# Not a terminal (CI, pipes): wide enough that the summary table does not wrap.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace folder (default $CXR_WORKSPACE or ./workspace).")


@contextmanager
def labelstudio_errors():
    """Label Studio failures as one red line and exit status 2, not a traceback."""
    from cxrkit.core.labels import LabelConfigError
    from cxrkit.core.workspace import PlaceholderSecret
    from cxrkit.labelstudio.client import LabelStudioError
    from cxrkit.services.labelstudio_server import LabelStudioServerError

    try:
        yield
    except (LabelStudioError, LabelStudioServerError, LabelConfigError, PlaceholderSecret) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)


def labelstudio_client(ws: Workspace):
    """A client of the workspace's running Label Studio, or exit 2 saying how to start it."""
    from cxrkit.labelstudio.client import LabelStudio
    from cxrkit.services import labelstudio_server

    info = labelstudio_server.status(ws)
    if info is None:
        console.print(f"[red]error:[/red] Label Studio is not running for {ws.root}: `cxr labelstudio start`")
        raise typer.Exit(2)
    return LabelStudio.for_server(info)


def print_report(report, ws: Workspace) -> None:
    """An ingest report (cxrkit.data.ingest.IngestReport): the counts, then each failure and why."""
    console.print(
        f"ingested {report.ingested}, skipped {report.skipped} (already in the workspace), "
        f"failed {len(report.failed)} in {report.seconds:.1f} s"
    )
    for failure in report.failed:
        console.print(f"  [red]failed[/red] {failure.path}: {failure.reason}")
    if report.failed:
        console.print(f"report: {ws.report_path}")
