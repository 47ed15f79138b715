"""The one manifest format every source is converted to.

A manifest is a JSON-lines file, one `Record` per image. Boxes are in pixels of
the stored image (x, y = top-left corner). Nothing in a record identifies a
patient: ids are keyed pseudonyms (see `cxrkit.deid`) and `path` is relative to
the workspace's data folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from cxrkit.core.atomic import write_atomic


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float
    finding: str
    subtype: str | None = None
    rad_id: str | None = None  # radiologist who drew it, where the source says
    score: float | None = None  # confidence for fused or predicted boxes

    @classmethod
    def from_dict(cls, d: dict) -> "Box":
        return cls(**d)


@dataclass
class Record:
    image_id: str  # keyed pseudonym; also the PNG's file stem
    path: str  # stored image, relative to the data folder (e.g. images/ab12.png)
    source: str  # synthetic, rsna, nih, vinbig, covid-radiography, kermany
    split: str = ""  # train / val / test where the source defines one
    patient_id: str = ""  # keyed pseudonym of the patient, for patient-level splits
    width: int = 0
    height: int = 0
    metadata: dict = field(default_factory=dict)  # age, sex, view, spacing, ...
    boxes: list[Box] = field(default_factory=list)  # boxes to train on (fused where several readers)
    raw_boxes: list[Box] = field(default_factory=list)  # every reader's own boxes, when fused
    findings: list[str] = field(default_factory=list)  # image-level findings without boxes
    impression: str | None = None  # label_config impression, when known
    subtype: str | None = None  # image-level pneumonia subtype, when known
    labeled: bool = False  # True when boxes/impression/subtype are ground truth (no boxes = none there)
    content_hash: str = ""  # sha256 of the source bytes: re-ingest skips what it has seen

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        d = dict(d)
        d["boxes"] = [Box.from_dict(b) for b in d.get("boxes", [])]
        d["raw_boxes"] = [Box.from_dict(b) for b in d.get("raw_boxes", [])]
        return cls(**d)


def read_manifest(path: str | os.PathLike) -> list[Record]:
    return list(iter_manifest(path))


def iter_manifest(path: str | os.PathLike) -> Iterator[Record]:
    p = Path(path)
    if not p.exists():
        return
    with p.open() as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield Record.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError) as exc:
                # A run killed mid-write leaves at most a torn last line; say so, keep the rest.
                raise ValueError(f"{p}:{lineno}: unreadable manifest line: {exc}") from exc


def write_manifest(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Replace the manifest atomically (write a temp file, then rename)."""
    write_atomic(path, "".join(rec.to_json() + "\n" for rec in records))
