"""Ingest from a PACS over DICOMweb: QIDO-RS to find the films, WADO-RS to fetch them
(`cxr pacs ingest URL`, with dicomweb-client).

    summary = ingest_from_dicomweb(url, workspace, PacsQuery(since="20260101"), auth=(user, password))

1. QIDO-RS finds the studies (by study date, and by accession number between two values, which
   is compared here, in memory: DICOMweb has no range match for it), then each study's series.
   A series that is not an X-ray (Modality not CR or DX, or the modalities asked for) or not of
   the chest (BodyPartExamined, where the PACS gives it) is skipped with its reason.
2. An instance whose image id (the pseudonym of its SOP Instance UID, with the workspace's salt)
   is already in the manifest is not fetched again: a re-run fetches only what is new.
3. WADO-RS fetches each new instance; it is written atomically to
   `<workspace>/incoming/dicomweb/<image id>.dcm` (named by its pseudonym, never a UID).
4. Those files go through the same ingest as a folder (cxrkit.data.ingest): de-identification,
   the same checks and the same report. A file that was ingested (or was already there) is
   deleted; one that failed stays in incoming/dicomweb with its reason in the report, so nothing
   received is lost; a run that was killed leaves its files there, and the next run ingests
   them first.

UIDs, accession numbers and dates are PHI: they are used in memory to query and fetch, and
never written to a log, a report, a file name or the manifest.

The PACS is unreachable, refuses the credentials, or answers an error: PacsError, saying which.
Credentials: HTTP basic auth from the caller (the CLI reads CXR_PACS_USER and CXR_PACS_PASSWORD).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests

from cxrkit.core.atomic import write_atomic
from cxrkit.core.manifest import iter_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.data.ingest import IngestOptions, IngestReport, incoming_dir, ingest_staged
from cxrkit.data.pseudonym import Pseudonymizer

log = logging.getLogger(__name__)

X_RAY_MODALITIES = ("CR", "DX")
CHEST = "CHEST"
STAGING = "dicomweb"  # <workspace>/incoming/<STAGING>
SOURCE = "dicomweb"


class PacsError(RuntimeError):
    """The PACS could not be queried or read; the message says why (never with PHI)."""


@dataclass(frozen=True)
class PacsQuery:
    since: str | None = None            # StudyDate from, YYYYMMDD (inclusive)
    until: str | None = None            # StudyDate to, YYYYMMDD (inclusive)
    accession_from: str | None = None   # AccessionNumber from (inclusive, compared as text)
    accession_to: str | None = None
    modalities: tuple[str, ...] = X_RAY_MODALITIES
    body_part: str = CHEST


@dataclass
class PacsSummary:
    studies: int = 0
    fetched: int = 0        # instances retrieved this run
    already: int = 0        # instances already in the workspace, not fetched again
    skipped_series: list[str] = field(default_factory=list)  # "series 2 of study 1: modality CT, not an X-ray"
    report: IngestReport | None = None

    @property
    def ok(self) -> bool:
        return self.report is None or self.report.ok


def ingest_from_dicomweb(url: str, workspace: Workspace, query: PacsQuery = PacsQuery(),
                         options: IngestOptions = IngestOptions(), auth: tuple[str, str] | None = None) -> PacsSummary:
    workspace.create()
    staging = staging_dir(workspace)
    staging.mkdir(parents=True, exist_ok=True)
    client = _client(url, auth)
    pseudo = Pseudonymizer.for_workspace(workspace)
    known = {rec.image_id for rec in iter_manifest(workspace.manifest_path)}
    known |= {p.stem for p in staging.glob("*.dcm")}  # fetched by a run that did not get to ingest them
    summary = PacsSummary()

    for s, study in enumerate(_studies(client, url, query), 1):
        summary.studies += 1
        for n, series in enumerate(_call(url, client.search_for_series, study.StudyInstanceUID,
                                         fields=["BodyPartExamined"]), 1):
            series = pydicom.Dataset.from_json(series)
            reason = _not_a_chest_x_ray(series, query)
            if reason:
                summary.skipped_series.append(f"series {n} of study {s}: {reason}")
                continue
            for instance in _call(url, client.search_for_instances, study.StudyInstanceUID,
                                  series.SeriesInstanceUID):
                sop = pydicom.Dataset.from_json(instance).SOPInstanceUID
                image_id = pseudo("image", str(sop))
                if image_id in known:
                    summary.already += 1
                    continue
                dataset = _call(url, client.retrieve_instance, study.StudyInstanceUID, series.SeriesInstanceUID, sop)
                _stage(dataset, staging / f"{image_id}.dcm")
                known.add(image_id)
                summary.fetched += 1

    summary.report = ingest_staged(staging, SOURCE, workspace, options)
    for line in summary.skipped_series:
        log.info("dicomweb: skipped %s", line)
    return summary


def staging_dir(workspace: Workspace) -> Path:
    return incoming_dir(workspace, STAGING)


def _client(url: str, auth: tuple[str, str] | None):
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if auth:
        session.auth = auth
    return DICOMwebClient(url=url, session=session)


def _studies(client, url: str, query: PacsQuery) -> list[pydicom.Dataset]:
    filters = {}
    if query.since or query.until:
        filters["StudyDate"] = f"{query.since or ''}-{query.until or ''}"
    found = [pydicom.Dataset.from_json(s) for s in _call(url, client.search_for_studies, search_filters=filters,
                                                          fields=["AccessionNumber"])]
    if query.accession_from or query.accession_to:
        low, high = query.accession_from or "", query.accession_to or "\U0010ffff"
        found = [s for s in found if low <= str(s.get("AccessionNumber", "")) <= high]
    return found


def _not_a_chest_x_ray(series: pydicom.Dataset, query: PacsQuery) -> str | None:
    modality = str(series.get("Modality", "") or "")
    if modality not in query.modalities:
        return f"modality {modality or 'unknown'}, not {' or '.join(query.modalities)}"
    body_part = str(series.get("BodyPartExamined", "") or "").upper()
    if body_part and body_part != query.body_part:
        return f"body part {body_part}, not {query.body_part}"
    return None


def _stage(dataset: pydicom.Dataset, path: Path) -> None:
    """The instance as a DICOM file, written atomically (a killed write leaves no partial file)."""
    import io

    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_atomic(path, buffer.getvalue(), mode=0o600)


def _call(url: str, method, *args, **kwargs):
    try:
        return method(*args, **kwargs)
    except requests.ConnectionError:
        raise PacsError(f"the PACS at {url} is unreachable (connection refused or no route): check the URL "
                        "and that its DICOMweb service runs") from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            raise PacsError(f"the PACS at {url} refused the credentials (HTTP {status}): set CXR_PACS_USER "
                            "and CXR_PACS_PASSWORD") from None
        raise PacsError(f"the PACS at {url} answered HTTP {status} to a DICOMweb request") from None

