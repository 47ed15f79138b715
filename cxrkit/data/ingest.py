"""Ingest: source images -> de-identified 8-bit PNGs + manifest records, in parallel.

Every input gets exactly one outcome: ingested, skipped (its content hash is
already in the manifest, or its image id is, with the same pixels) or failed (with a
one-line reason). A failure never stops the batch. A run that is killed resumes: each
PNG is moved into place (atomically) before its manifest line, and manifest lines are
appended and flushed one by one, so a re-run skips what finished and redoes what didn't.

One id, one picture. An image id is the pseudonym of the SOP Instance UID, or of
`source:relative path` for files without one, so two different files can share it (a
`1.png` in two batches; a copy of a DICOM re-tagged MONOCHROME1). A worker writes its PNG
under a temporary name; the parent, which alone writes the manifest, moves it into place
only for a new id. An id already taken with identical pixels is a duplicate (skipped);
with other pixels the file is refused with the reason in the report, so a PNG on disk always
holds the pixels its manifest line describes.

One writer at a time: ingest holds the workspace's writer lock (Workspace.writer_lock), as a
retrain round does, so a second ingest or a retrain's `dvc add data` never meets a
half-written folder, and the temporary files it removes on start are a dead run's.

What leaves this module for good images: the PNG (named by pseudonym, no text
chunks), and the Record (pseudonyms + allow-listed metadata). Source paths
appear only in the failure list of the ingest report, which the operator needs
to find the bad file; the report lives in `workspace/reports/`, outside the
versioned data folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from cxrkit.core.atomic import own_copy
from cxrkit.core.manifest import Box, Record, iter_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.data.dicom_read import (
    DecodedImage,
    UnreadableImage,
    WindowOptions,
    decode_dicom,
    decode_raster,
)
from cxrkit.data.pseudonym import SALT_ENV, Pseudonymizer
from cxrkit.data.sources import SourceImage

log = logging.getLogger(__name__)

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class IngestOptions:
    max_side: int = 1024  # longer side of the stored PNG; larger images are downscaled, aspect kept
    clahe: bool = False  # contrast-limited adaptive histogram equalisation (measured in the models issue)
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    workers: int = 0  # 0: one per core


@dataclass
class Failure:
    path: str
    reason: str


@dataclass
class IngestReport:
    ingested: int = 0
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def ingest(
    sources: Iterable[SourceImage],
    workspace: Workspace,
    options: IngestOptions = IngestOptions(),
    progress: Callable[[int], None] | None = None,
    report_root: Path | None = None,
) -> IngestReport:
    """Ingest `sources` into `workspace`; returns (and saves) the report.

    `report_root`: failure paths are written relative to it (default: as given).
    """
    start = time.perf_counter()
    workspace.create()
    sources = list(sources)
    with workspace.writer_lock("ingest"):
        report = _ingest_locked(sources, workspace, options, progress, report_root)
    report.seconds = round(time.perf_counter() - start, 3)
    _save_report(report, workspace)
    return report


def _ingest_locked(sources: list[SourceImage], workspace: Workspace, options: IngestOptions,
                   progress: Callable[[int], None] | None, report_root: Path | None) -> IngestReport:
    own_copy(workspace.manifest_path)  # appended to below: never through DVC's link into its cache
    _repair_torn_tail(workspace.manifest_path)
    for stale in workspace.images_dir.glob("*.tmp"):  # PNGs half-written by a killed run (we hold the lock)
        stale.unlink()
    known_hashes, known_ids = set(), set()
    for rec in iter_manifest(workspace.manifest_path):  # one pass over a possibly large manifest
        known_hashes.add(rec.content_hash)
        known_ids.add(rec.image_id)
    salt = workspace.secret(SALT_ENV)

    report = IngestReport()
    workers = options.workers or os.cpu_count() or 1
    job = _Job(salt=salt, images_dir=str(workspace.images_dir), options=options, known_hashes=frozenset(known_hashes))
    with open(workspace.manifest_path, "a") as manifest:
        for source, outcome in zip(sources, _run(job, sources, workers)):
            if isinstance(outcome, tuple):
                record, staged = outcome
                final = workspace.images_dir / f"{record.image_id}.png"
                if record.content_hash in known_hashes:
                    staged.unlink()
                    report.skipped += 1  # the same file twice in one batch
                elif record.image_id in known_ids:
                    same = _same_pixels(staged, final)
                    staged.unlink()
                    if same:
                        report.skipped += 1  # the same picture in another file (re-encoded, renamed)
                    else:
                        _refuse(report, source, report_root, f"image id {record.image_id} is taken by another image "
                                "with other pixels (the same SOP Instance UID, or the same path in this source): "
                                "not ingested, the first one is kept")
                else:
                    os.replace(staged, final)
                    manifest.write(record.to_json() + "\n")
                    manifest.flush()
                    known_ids.add(record.image_id)
                    known_hashes.add(record.content_hash)
                    report.ingested += 1
            elif outcome == "skipped":
                report.skipped += 1
            else:
                _refuse(report, source, report_root, outcome)
            if progress:
                progress(1)
    return report


def _refuse(report: IngestReport, source: SourceImage, report_root: Path | None, reason: str) -> None:
    shown = _display_path(source.path, report_root)
    report.failed.append(Failure(shown, reason))
    log.warning("ingest failed: %s: %s", shown, reason)


def _same_pixels(a: Path, b: Path) -> bool:
    pa, pb = cv2.imread(str(a), cv2.IMREAD_UNCHANGED), cv2.imread(str(b), cv2.IMREAD_UNCHANGED)
    return pa is not None and pb is not None and pa.shape == pb.shape and bool(np.array_equal(pa, pb))


@dataclass(frozen=True)
class _Job:
    """Everything a worker process needs; picklable."""

    salt: str
    images_dir: str
    options: IngestOptions
    known_hashes: frozenset


def _run(job: _Job, sources: list[SourceImage], workers: int):
    if workers <= 1 or len(sources) <= 1:
        _init_worker(job)
        yield from map(_ingest_one, sources)
        return
    # Small chunks: per-item IPC costs well under 1 ms next to a ~60 ms decode, while big
    # chunks leave a core idle at the end of the batch waiting for the last chunk.
    chunksize = 2
    # forkserver, not fork: callers (Prefect, the ML backend) run threads, and forking a threaded
    # process can deadlock a child on a lock some other thread held.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.map(_ingest_one, sources, chunksize=chunksize)


_JOB: _Job | None = None
_PSEUDO: Pseudonymizer | None = None


def _init_worker(job: _Job) -> None:
    global _JOB, _PSEUDO
    _JOB, _PSEUDO = job, Pseudonymizer(job.salt)
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _ingest_one(source: SourceImage) -> tuple[Record, Path] | str:
    """One source -> (Record, its PNG under a temporary name), "skipped", or a one-line failure reason."""
    job, pseudo = _JOB, _PSEUDO
    try:
        data = Path(source.path).read_bytes()
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"can't read file: {exc.strerror or exc}"
    content_hash = hashlib.sha256(data).hexdigest()
    if content_hash in job.known_hashes:
        return "skipped"
    window = WindowOptions(percentiles=tuple(job.options.window_percentiles))
    try:
        if Path(source.path).suffix.lower() in RASTER_SUFFIXES:
            decoded = decode_raster(data, window)
        else:
            decoded = decode_dicom(data, window)
    except UnreadableImage as exc:
        return str(exc)
    except Exception as exc:  # a codec bug must cost one image, not the batch
        return f"unexpected decoding error: {type(exc).__name__}: {exc}"

    image_key = decoded.sop_instance_uid or f"{source.source}:{source.original_id}"
    patient_key = source.patient_key or decoded.patient_id or f"{source.source}:{source.original_id}"
    image_id = pseudo("image", image_key)
    pixels, (sy, sx) = _fit(decoded, job.options)
    if job.options.clahe:
        pixels = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(pixels)
    rel_path = f"images/{image_id}.png"
    # Under a name of its own: the parent decides whether it may become images/<id>.png.
    staged = Path(job.images_dir) / f"{image_id}.{content_hash[:16]}.{os.getpid()}.png.tmp"
    _write_png(staged, pixels)

    h, w = pixels.shape
    metadata = dict(source.metadata) | decoded.metadata  # the header wins over a dataset's table
    if "pixel_spacing" in metadata:  # spacing of the stored PNG, not of the detector
        metadata["pixel_spacing"] = [round(metadata["pixel_spacing"][0] / sy, 5), round(metadata["pixel_spacing"][1] / sx, 5)]
    return (Record(
        image_id=image_id,
        path=rel_path,
        source=source.source,
        split=source.split,
        patient_id=pseudo("patient", patient_key),
        width=w,
        height=h,
        metadata=metadata,
        boxes=[_scale_box(b, sx, sy, w, h) for b in source.boxes],
        raw_boxes=[_scale_box(b, sx, sy, w, h) for b in source.raw_boxes],
        findings=list(source.findings),
        impression=source.impression,
        subtype=source.subtype,
        labeled=source.labeled,
        content_hash=content_hash,
    ), staged)


def _fit(decoded: DecodedImage, options: IngestOptions) -> tuple[np.ndarray, tuple[float, float]]:
    """Downscale to max_side (aspect kept). Returns pixels and the total (y, x) scale from source pixels."""
    pixels = decoded.pixels
    sy, sx = decoded.spacing_scale
    h, w = pixels.shape
    factor = options.max_side / max(h, w)
    if factor < 1.0:
        new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
        pixels = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_AREA)
        sy, sx = sy * new_h / h, sx * new_w / w
    return pixels, (sy, sx)


def _scale_box(box: Box, sx: float, sy: float, width: int, height: int) -> Box:
    x0, y0 = max(0.0, box.x * sx), max(0.0, box.y * sy)
    x1, y1 = min(float(width), (box.x + box.w) * sx), min(float(height), (box.y + box.h) * sy)
    return Box(
        x=round(x0, 2), y=round(y0, 2), w=round(max(0.0, x1 - x0), 2), h=round(max(0.0, y1 - y0), 2),
        finding=box.finding, subtype=box.subtype, rad_id=box.rad_id, score=box.score,
    )


def _write_png(path: Path, pixels: np.ndarray) -> None:
    # cv2 writes no text chunks (no tEXt/iTXt/eXIf): nothing but pixels leaves ingest.
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise UnreadableImage("PNG encoding failed")
    path.write_bytes(encoded.tobytes())


def _repair_torn_tail(manifest_path: Path) -> None:
    """Drop a last line left half-written by a killed run (its image is simply redone)."""
    if not manifest_path.exists():
        return
    data = manifest_path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        manifest_path.write_bytes(keep)
        log.warning("manifest: dropped a torn last line from an interrupted run")


def _display_path(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(path)


def _save_report(report: IngestReport, workspace: Workspace) -> None:
    workspace.report_path.parent.mkdir(parents=True, exist_ok=True)
    workspace.report_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def incoming_dir(workspace: Workspace, receiver: str) -> Path:
    """Where a receiver (a PACS fetch, a DICOM listener) stages what it gets before ingest:
    <workspace>/incoming/<receiver>, outside the versioned data and git-ignored."""
    return workspace.root / "incoming" / receiver


def ingest_staged(folder: Path, source: str, workspace: Workspace, options: IngestOptions) -> IngestReport | None:
    """Ingest the DICOMs a receiver staged in `folder`, then delete each one ingested or already
    there; one that failed stays, its reason in the report, so nothing received is lost. None
    when the folder holds none."""
    staged = sorted(Path(folder).glob("*.dcm"))
    if not staged:
        return None
    sources = [SourceImage(path=p, source=source, original_id=p.name) for p in staged]
    report = ingest(sources, workspace, options, report_root=workspace.root)
    failed = {f.path for f in report.failed}
    for path in staged:
        if str(path.relative_to(workspace.root)) not in failed:
            path.unlink()
    return report


# A plain folder's films: the source says what each file is, by its suffix; anything else is
# taken for a DICOM (they often have no extension), which decoding then confirms or refuses.
FOLDER_SOURCES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def sources_from_folder(folder: Path) -> list[SourceImage]:
    """Every regular file under `folder` (DICOM, PNG or JPEG films), unlabeled; the source of
    each is its kind: png, jpeg, else dicom."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [SourceImage(path=p, source=FOLDER_SOURCES.get(p.suffix.lower(), "dicom"),
                        original_id=str(p.relative_to(folder))) for p in files]
