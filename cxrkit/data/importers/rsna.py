"""RSNA Pneumonia Detection Challenge (Kaggle, stage 2 layout).

    root/stage_2_train_labels.csv          patientId,x,y,width,height,Target  (one row per box;
                                           Target=0 rows have empty coordinates)
    root/stage_2_detailed_class_info.csv   patientId,class  (repeated once per box row)
    root/stage_2_train_images/<patientId>.dcm
    root/stage_2_test_images/<patientId>.dcm   (optional; no labels published)

Every opacity box is the pneumonia finding (`schema.opacity`) without a subtype:
RSNA does not say what caused the pneumonia. Boxes are complete for that one
finding, so train images get labeled=True and metadata["has_boxes"]=True. The
detailed class gives the impression (`_impressions`).
Images listed in the CSV but missing on disk are skipped with one logged warning
(ingest only sees what exists; the count tells the user the download is partial).
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from pathlib import Path

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Box
from cxrkit.data.sources import SourceImage

log = logging.getLogger(__name__)

SOURCE = "rsna"

OPACITY_CLASS = "Lung Opacity"  # the class of the images with boxes


def _impressions(schema: LabelSchema) -> dict[str, str]:
    """RSNA's three-way class -> the label config's impression of that role."""
    return {
        OPACITY_CLASS: schema.pneumonia,
        "Normal": schema.normal,
        "No Lung Opacity / Not Normal": schema.other_abnormality,
    }


def load_rsna(root: Path) -> list[SourceImage]:
    root = Path(root)
    schema = load_schema()
    impression_of = _impressions(schema)
    classes = _read_classes(root / "stage_2_detailed_class_info.csv", impression_of)
    boxes = _read_boxes(root / "stage_2_train_labels.csv", schema.opacity)

    images: list[SourceImage] = []
    missing: list[str] = []
    for patient_id, patient_boxes in boxes.items():
        path = root / "stage_2_train_images" / f"{patient_id}.dcm"
        if not path.exists():
            missing.append(path.name)
            continue
        if patient_id not in classes:
            raise ValueError(f"{patient_id} has boxes but no row in stage_2_detailed_class_info.csv")
        cls = classes[patient_id]
        if (cls == OPACITY_CLASS) != bool(patient_boxes):
            raise ValueError(f"{patient_id}: class {cls!r} disagrees with Target in stage_2_train_labels.csv")
        images.append(
            SourceImage(
                path=path,
                source=SOURCE,
                original_id=patient_id,
                patient_key=patient_id,
                split="train",
                labeled=True,
                boxes=patient_boxes,
                findings=[schema.opacity] if patient_boxes else [],
                impression=impression_of[cls],
                metadata={"has_boxes": True},
            )
        )
    if missing:
        log.warning("rsna: %d images listed in stage_2_train_labels.csv are missing, skipped (e.g. %s)",
                    len(missing), ", ".join(missing[:3]))

    for path in sorted((root / "stage_2_test_images").glob("*.dcm")):
        images.append(
            SourceImage(path=path, source=SOURCE, original_id=path.stem, patient_key=path.stem,
                        split="unlabeled", labeled=False, metadata={"has_boxes": False})
        )
    return images


def _read_classes(path: Path, known: Iterable[str]) -> dict[str, str]:
    classes: dict[str, str] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            cls = row["class"]
            if cls not in known:
                raise ValueError(f"{path.name}: unknown class {cls!r} for {row['patientId']}; "
                                 f"expected one of {list(known)}")
            classes[row["patientId"]] = cls
    return classes


def _read_boxes(path: Path, finding: str) -> dict[str, list[Box]]:
    """patientId -> its boxes, in CSV order; patients with Target=0 map to []."""
    boxes: dict[str, list[Box]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            patient_boxes = boxes.setdefault(row["patientId"], [])
            if row["Target"] == "1":
                patient_boxes.append(
                    Box(x=float(row["x"]), y=float(row["y"]), w=float(row["width"]), h=float(row["height"]),
                        finding=finding)
                )
            elif row["Target"] != "0":
                raise ValueError(f"{path.name}: Target must be 0 or 1, got {row['Target']!r} for {row['patientId']}")
    return boxes
