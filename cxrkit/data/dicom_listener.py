"""A DICOM C-STORE receiver, so a modality or a PACS can send studies to the workbench
(`cxr listen`, with pynetdicom).

    listener = Listener(workspace, port=11112, allowed=("PACS1",))
    listener.start()                 # pynetdicom's server, in its own thread
    report = listener.ingest_received()   # one batch: what has arrived, through cxrkit.data.ingest
    listener.stop()

- Only calling AE titles on the allow-list may associate; any other is rejected (pynetdicom's
  require_calling_aet) and the refusal logged with the AE title it came from. An empty allow-list
  is refused at start: a receiver open to any sender is not a default.
- Chest radiographs only: the presentation contexts are CR and DX image storage, in every
  transfer syntax pynetdicom knows (ingest decodes what it decodes, and reports the rest).
- Each instance is written atomically to `<workspace>/incoming/listener/<random id>.dcm` (0600,
  named by a random id, never a UID) before the C-STORE is answered Success; when it cannot be
  written the answer is a failure (0xA700, out of resources), so the sender keeps the instance
  and can send it again. Nothing acknowledged is lost.
- Batches: `ingest_received` runs ingest (de-identification, the same checks and report as a
  folder) on what has arrived; a file ingested (or already there) is deleted, one that failed
  stays with its reason in the report. Files a killed listener left are ingested by the next.
- Bound to 127.0.0.1 unless `host` says otherwise.
"""
from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path

from cxrkit.core.atomic import write_atomic
from cxrkit.core.workspace import Workspace
from cxrkit.data.ingest import IngestOptions, IngestReport, incoming_dir, ingest_staged

log = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "CXRKIT"
DEFAULT_PORT = 11112
DEFAULT_HOST = "127.0.0.1"
STAGING = "listener"  # <workspace>/incoming/<STAGING>
SOURCE = "dicom-push"
OUT_OF_RESOURCES = 0xA700
SUCCESS = 0x0000


class ListenerError(RuntimeError):
    """The receiver cannot start (no allow-list, the port is taken); the message says why."""


class Listener:
    def __init__(self, workspace: Workspace, port: int = DEFAULT_PORT, allowed: tuple[str, ...] = (),
                 ae_title: str = DEFAULT_AE_TITLE, host: str = DEFAULT_HOST, options: IngestOptions = IngestOptions()):
        if not allowed:
            raise ListenerError("no calling AE title is allowed: name the senders (--allow PACS1,CR_ROOM_2)")
        self.workspace, self.port, self.host, self.options = workspace, port, host, options
        self.ae_title, self.allowed = ae_title, tuple(allowed)
        self.staging = staging_dir(workspace)
        self.received = 0
        self.refused: list[str] = []  # calling AE titles refused, in order
        self._server = None
        self._lock = threading.Lock()  # one batch at a time

    def start(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import ComputedRadiographyImageStorage as CR
        from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation as DX
        from pynetdicom.sop_class import (
            DigitalXRayImageStorageForProcessing as DX_PROCESSING,
        )

        self.workspace.create()
        self.staging.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.require_calling_aet = list(self.allowed)
        for sop_class in (CR, DX, DX_PROCESSING):
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_REQUESTED, self._requested)]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ListenerError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        log.info("listening for C-STORE as %s on %s:%d (allowed: %s)", self.ae_title, self.host, self.port,
                 ", ".join(self.allowed))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def ingest_received(self) -> IngestReport | None:
        """Ingest what has arrived; None when nothing waits."""
        with self._lock:
            return ingest_staged(self.staging, SOURCE, self.workspace, self.options)

    # --- pynetdicom's events, in its threads -------------------------------------------------

    def _requested(self, event) -> None:
        primitive = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ (ae_title is set only once accepted)
        calling = str(getattr(primitive, "calling_ae_title", "") or event.assoc.requestor.ae_title).strip()
        if calling not in self.allowed:
            self.refused.append(calling)
            log.warning("refused an association from AE title %r: not on the allow-list (%s)", calling,
                        ", ".join(self.allowed))

    def _store(self, event) -> int:
        try:
            data = _encoded(event)
            write_atomic(self.staging / f"{secrets.token_hex(12)}.dcm", data, mode=0o600)
        except Exception as exc:  # noqa: BLE001 - the sender must hear of it and keep the instance
            log.error("could not keep a received instance (%s: %s); answered 0xA700", type(exc).__name__, exc)
            return OUT_OF_RESOURCES
        self.received += 1
        return SUCCESS


def _encoded(event) -> bytes:
    """The received instance as a DICOM file: preamble, file meta, then the dataset as sent."""
    import io

    from pydicom.filewriter import write_file_meta_info

    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, event.file_meta, enforce_standard=True)
    buffer.write(event.request.DataSet.getvalue())
    return buffer.getvalue()


def staging_dir(workspace: Workspace) -> Path:
    return incoming_dir(workspace, STAGING)
