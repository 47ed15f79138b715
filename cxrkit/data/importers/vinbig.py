"""VinBigData Chest X-ray Abnormalities Detection (Kaggle layout).

    root/train.csv     image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
                       ("No finding", class 14, has empty coordinates)
    root/train/<image_id>.dicom  or  root/train/<image_id>.png  (full resolution)
    root/test/*.dicom | *.png    (optional; labels not published -> split "unlabeled")

Three of 17 radiologists read each training image. Their boxes are fused per
class with weighted boxes fusion into `boxes` (score = share of the image's
readers whose boxes joined the cluster); every reader's own box stays in
`raw_boxes` with its rad_id. Boxes are complete for the 14 classes, so train
images get labeled=True and metadata["has_boxes"]=True. VinBigData says nothing
about pneumonia: the impression is normal when every reader said "No finding",
else other abnormality (the label config's impressions of those roles). Its Lung
Opacity class is the opacity finding. An unknown class name is an error. Images
listed in train.csv but missing on disk are skipped with one logged warning.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from ensemble_boxes import weighted_boxes_fusion

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Box
from cxrkit.data.importers.image_size import image_size
from cxrkit.data.sources import SourceImage

log = logging.getLogger(__name__)

SOURCE = "vinbig"
NO_FINDING = "No finding"
# Readers' boxes of one lesion differ a lot in extent (inter-reader agreement in
# VinDr-CXR is low), so match them more loosely than the library's 0.55 default;
# 0.4 still keeps adjacent distinct lesions (IoU near 0) apart.
IOU_THR = 0.4

# VinBigData class name -> label_config finding. Its Lung Opacity (class 7) is the
# opacity finding, added from the schema (`_finding_table`).
OPACITY_CLASS = "Lung Opacity"
FINDINGS = {
    "Aortic enlargement": "Aortic Enlargement",
    "Atelectasis": "Atelectasis",
    "Calcification": "Calcification",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "ILD": "ILD",
    "Infiltration": "Infiltration",
    "Nodule/Mass": "Nodule/Mass",
    "Other lesion": "Other Lesion",
    "Pleural effusion": "Pleural Effusion",
    "Pleural thickening": "Pleural Thickening",
    "Pneumothorax": "Pneumothorax",
    "Pulmonary fibrosis": "Pulmonary Fibrosis",
}
SUFFIXES = (".dicom", ".png")  # the original DICOMs, or a full-resolution PNG conversion


def _finding_table(schema: LabelSchema) -> dict[str, str]:
    """FINDINGS, checked against the label config, plus Lung Opacity -> its opacity finding."""
    schema.check_table("the vinbig importer's FINDINGS (cxrkit/data/importers/vinbig.py)", findings=FINDINGS.values())
    return {**FINDINGS, OPACITY_CLASS: schema.opacity}


def load_vinbig(root: Path, iou_thr: float = IOU_THR) -> list[SourceImage]:
    root = Path(root)
    schema = load_schema()
    table = _finding_table(schema)
    rows_by_image: dict[str, list[dict[str, str]]] = {}
    with (root / "train.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            rows_by_image.setdefault(row["image_id"], []).append(row)

    images: list[SourceImage] = []
    missing: list[str] = []
    for image_id, rows in rows_by_image.items():
        path = _find(root / "train", image_id)
        if path is None:
            missing.append(image_id)
            continue
        raw = [_raw_box(row, table) for row in rows if row["class_name"] != NO_FINDING]
        readers = list(dict.fromkeys(row["rad_id"] for row in rows))
        fused = _fuse(raw, readers, _checked_size(path, raw), iou_thr) if raw else []
        images.append(
            SourceImage(
                path=path,
                source=SOURCE,
                original_id=image_id,
                patient_key=None,  # VinBigData publishes no patient ids; ingest falls back per SourceImage
                split="train",
                labeled=True,
                boxes=fused,
                raw_boxes=raw,
                findings=sorted({box.finding for box in raw}),
                impression=schema.other_abnormality if raw else schema.normal,
                metadata={"has_boxes": True},
            )
        )
    if missing:
        log.warning("vinbig: %d images listed in train.csv are missing, skipped (e.g. %s)",
                    len(missing), ", ".join(missing[:3]))

    test = root / "test"
    for image_id in sorted({p.stem for p in test.glob("*") if p.suffix in SUFFIXES}):
        images.append(
            SourceImage(path=_find(test, image_id), source=SOURCE, original_id=image_id, split="unlabeled",
                        labeled=False, metadata={"has_boxes": False})
        )
    return images


def _find(folder: Path, image_id: str) -> Path | None:
    for suffix in SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.exists():
            return path
    return None


def _raw_box(row: dict[str, str], table: dict[str, str]) -> Box:
    name = row["class_name"]
    if name not in table:
        raise ValueError(f"train.csv: unknown VinBigData class {name!r} for {row['image_id']}")
    finding = table[name]
    x_min, y_min, x_max, y_max = (float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
    return Box(x=x_min, y=y_min, w=x_max - x_min, h=y_max - y_min, finding=finding, rad_id=row["rad_id"])


def _checked_size(path: Path, boxes: list[Box]) -> tuple[int, int]:
    """(width, height) from the DICOM header or PNG header; boxes must lie inside it.

    A box outside the frame almost always means a downsized PNG conversion, whose
    pixels no longer match train.csv's coordinates.
    """
    width, height = image_size(path)
    for box in boxes:
        if box.x < 0 or box.y < 0 or box.x + box.w > width or box.y + box.h > height:
            raise ValueError(f"{path.name} is {width}x{height} but train.csv has a {box.finding} box at "
                             f"({box.x}, {box.y}, {box.w}, {box.h}); use full-resolution images")
    return width, height


def _fuse(raw: list[Box], readers: list[str], size: tuple[int, int], iou_thr: float) -> list[Box]:
    """Weighted boxes fusion of each class, one input list per reader of the image.

    Readers who said "No finding" contribute an empty list, so a box drawn by one
    of three readers scores 1/3 and one all three agree on scores 1.
    """
    width, height = size
    classes = sorted({box.finding for box in raw})
    per_reader = [[box for box in raw if box.rad_id == reader] for reader in readers]
    coords, scores, labels = weighted_boxes_fusion(
        [[[b.x / width, b.y / height, (b.x + b.w) / width, (b.y + b.h) / height] for b in boxes]
         for boxes in per_reader],
        [[1.0] * len(boxes) for boxes in per_reader],
        [[classes.index(b.finding) for b in boxes] for boxes in per_reader],
        iou_thr=iou_thr,
        skip_box_thr=0.0,
    )
    # WBF averages in float32: round to 0.01 px so the manifest shows no float noise.
    fused = [
        Box(x=round(x1 * width, 2), y=round(y1 * height, 2),
            w=round((x2 - x1) * width, 2), h=round((y2 - y1) * height, 2),
            finding=classes[int(label)], score=round(float(score), 4))
        for (x1, y1, x2, y2), score, label in zip(coords, scores, labels)
    ]
    return sorted(fused, key=lambda b: (b.finding, b.y, b.x))
