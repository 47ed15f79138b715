"""Importer for studies written by `cxrkit.data.synthetic.generate_study`.

Layout: `root/img_00000.dcm ...` and `root/truth.jsonl`, one JSON object per
image (see `generate_study`). Patient identity is not in the truth file: ingest
reads PatientID from each DICOM header, as it would for a real archive.
"""
from __future__ import annotations

import json
from pathlib import Path

from cxrkit.core.manifest import Box
from cxrkit.data.sources import SourceImage

TRUTH_FILE = "truth.jsonl"
_REQUIRED = ("file", "labeled", "split", "impression", "subtype", "boxes")


def read_truth(root: Path) -> list[dict]:
    """The rows of `root/truth.jsonl`, checked; errors name the file and line."""
    path = Path(root) / TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a synthetic study (cxr synth / generate_study)?")
    rows = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [k for k in _REQUIRED if k not in row]
                if missing:
                    raise ValueError(f"missing {', '.join(missing)}")
                row["boxes"] = [Box(**{k: b[k] for k in ("x", "y", "w", "h", "finding", "subtype")}) for b in row["boxes"]]
            except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{lineno}: malformed truth line: {exc!r}") from exc
            rows.append(row)
    return rows


def load_synthetic(root: Path) -> list[SourceImage]:
    """One SourceImage per truth row. Unlabeled rows (the simulator's pool) carry no labels:
    the oracle reads them with `read_truth` when a strategy asks for them."""
    root = Path(root)
    out = []
    for row in read_truth(root):
        labeled = bool(row["labeled"])
        out.append(
            SourceImage(
                path=root / row["file"],
                source="synthetic",
                original_id=Path(row["file"]).stem,
                patient_key=None,
                split=row["split"],
                labeled=labeled,
                boxes=row["boxes"] if labeled else [],
                impression=row["impression"] if labeled else None,
                subtype=row["subtype"] if labeled else None,
                metadata={"view": row["view"]} if "view" in row else {},
            )
        )
    return out
