"""What an importer hands to ingest: one source image and the labels its dataset gives.

Importers only parse a dataset's own files (CSVs, folder names); they never
decode pixels or write anything. `cxrkit.data.ingest` turns each SourceImage into a
de-identified PNG and a manifest `Record`, pseudonymising `original_id` and
`patient_key` and scaling boxes if the image is resized.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxrkit.core.manifest import Box


@dataclass
class SourceImage:
    path: Path  # the original file: DICOM, PNG or JPEG
    source: str  # dataset name, e.g. "rsna"
    original_id: str  # the dataset's own image id (may be PHI; never stored)
    patient_key: str | None = None  # the dataset's patient id; None: read PatientID from DICOM, else use original_id
    split: str = ""  # train / val / test / unlabeled, as the dataset defines
    labeled: bool = False  # the labels below are ground truth (an empty box list then means "no box")
    boxes: list[Box] = field(default_factory=list)  # in the source image's pixel coordinates
    raw_boxes: list[Box] = field(default_factory=list)  # per-reader boxes when `boxes` are fused
    findings: list[str] = field(default_factory=list)  # image-level findings (label_config names)
    impression: str | None = None
    subtype: str | None = None
    metadata: dict = field(default_factory=dict)  # non-PHI facts from the dataset's tables (age, sex, view, ...)
