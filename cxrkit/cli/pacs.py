"""`cxr pacs ingest URL` (DICOMweb) and `cxr listen` (DICOM C-STORE): films from where hospitals keep them."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from cxrkit.cli.common import WorkspaceOpt, console, print_report
from cxrkit.core.workspace import Workspace

pacs_app = typer.Typer(help="Films from a PACS over DICOMweb.", no_args_is_help=True)


@pacs_app.command("ingest")
def pacs_ingest(
    url: str = typer.Argument(..., help="The DICOMweb root, e.g. https://pacs.example.org/dicom-web."),
    since: Optional[str] = typer.Option(None, help="Studies from this date, YYYYMMDD."),
    until: Optional[str] = typer.Option(None, help="Studies up to this date, YYYYMMDD."),
    accession_from: Optional[str] = typer.Option(None, help="Accession numbers from (compared as text)."),
    accession_to: Optional[str] = typer.Option(None, help="Accession numbers up to (compared as text)."),
    modality: list[str] = typer.Option(["CR", "DX"], help="Series modalities to take (repeat the option)."),
    workspace: Optional[Path] = WorkspaceOpt,
    max_side: int = typer.Option(1024, help="Longer side of the stored PNGs."),
) -> None:
    """Query the PACS (QIDO-RS), fetch the new chest X-rays (WADO-RS), ingest them. Credentials:
    $CXR_PACS_USER / $CXR_PACS_PASSWORD. Exit 1 when a film failed, 2 when the PACS could not be read."""
    from cxrkit.data.dicomweb import PacsError, PacsQuery, ingest_from_dicomweb
    from cxrkit.data.ingest import IngestOptions

    ws = Workspace.from_env(workspace)
    user, password = os.environ.get("CXR_PACS_USER"), os.environ.get("CXR_PACS_PASSWORD")
    query = PacsQuery(since=since, until=until, accession_from=accession_from, accession_to=accession_to,
                      modalities=tuple(modality))
    try:
        summary = ingest_from_dicomweb(url, ws, query, IngestOptions(max_side=max_side),
                                       auth=(user, password) if user else None)
    except PacsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    console.print(f"PACS: {summary.studies} studies, {summary.fetched} films fetched, {summary.already} already here")
    for line in summary.skipped_series:
        console.print(f"  skipped {line}")
    if summary.report is not None:
        print_report(summary.report, ws)
    raise typer.Exit(0 if summary.ok else 1)


def listen(
    allow: str = typer.Option(..., help="Calling AE titles that may send, comma-separated (e.g. PACS1,CR_ROOM_2)."),
    port: int = typer.Option(11112, help="The DICOM port."),
    ae_title: str = typer.Option("CXRKIT", help="This receiver's AE title."),
    host: str = typer.Option("127.0.0.1", help="The address to bind; 0.0.0.0 only behind a firewall."),
    batch_seconds: float = typer.Option(10.0, help="Received films are ingested this often."),
    workspace: Optional[Path] = WorkspaceOpt,
    max_side: int = typer.Option(1024, help="Longer side of the stored PNGs."),
) -> None:
    """Receive studies by DICOM C-STORE and ingest them in batches, until Ctrl-C or SIGTERM."""
    from cxrkit.data.dicom_listener import Listener, ListenerError
    from cxrkit.data.ingest import IngestOptions

    ws = Workspace.from_env(workspace)
    allowed = tuple(a.strip() for a in allow.split(",") if a.strip())
    try:
        listener = Listener(ws, port=port, allowed=allowed, ae_title=ae_title, host=host,
                            options=IngestOptions(max_side=max_side))
        listener.start()
    except ListenerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    console.print(f"listening as {ae_title} on {host}:{port}; allowed: {', '.join(allowed)}")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(batch_seconds):
            report = listener.ingest_received()
            if report is not None:
                print_report(report, ws)
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()  # no new association; then what has arrived is ingested
        report = listener.ingest_received()
        if report is not None:
            print_report(report, ws)
    console.print(f"stopped: {listener.received} films received, {len(listener.refused)} senders refused")
