"""NIH ChestX-ray14.

    root/Data_Entry_2017.csv   Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,
                               Patient Gender,View Position,OriginalImage[Width,Height],
                               OriginalImagePixelSpacing[x,y],
                               (the brackets hold commas, so they split into extra columns,
                               and the trailing comma adds an empty one)
    root/BBox_List_2017.csv    Image Index,Finding Label,Bbox [x,y,w,h],,,
    root/train_val_list.txt, root/test_list.txt   (optional official split)
    root/images/*.png or root/images_001/images/*.png ...   (found by file name)

NIH's image-level labels were text-mined from reports (roughly 90% accurate) and
its ~1,000 boxes cover only some findings of some images, so every NIH image gets
labeled=False and metadata["has_boxes"]=False: absence of a label or box means
nothing. The boxes are still kept (radiologist-drawn, in the 1024x1024 PNG frame)
for evaluation or as hints. The impression is derived from the noisy labels:
pneumonia if listed, normal for "No Finding", else other abnormality (the label
config's impressions of those roles); NIH's Pneumonia is the opacity finding.
Every raw label is kept in metadata["source_labels"]; Edema, Emphysema and Hernia
have no label_config finding and live only there. An unknown label is an error.
Images listed in the CSV but missing on disk (e.g. only some shards downloaded)
are skipped with one logged warning.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Box
from cxrkit.data.sources import SourceImage

log = logging.getLogger(__name__)

SOURCE = "nih"
PNG_SIZE = 1024  # NIH resized every original to 1024x1024 PNG; the boxes are in that frame

PNEUMONIA = "Pneumonia"  # NIH's label: the opacity finding (schema.opacity) and the pneumonia impression

# NIH label -> label_config finding; None: no equivalent, kept only in source_labels.
# "Infiltrate" is how BBox_List spells Data_Entry's "Infiltration". Pneumonia is added
# from the schema (`_finding_table`).
FINDINGS: dict[str, str | None] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Infiltration",
    "Infiltrate": "Infiltration",
    "Mass": "Nodule/Mass",
    "Nodule": "Nodule/Mass",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Fibrosis": "Pulmonary Fibrosis",
    "Pleural_Thickening": "Pleural Thickening",
    "Edema": None,
    "Emphysema": None,
    "Hernia": None,
}
NO_FINDING = "No Finding"


def _finding_table(schema: LabelSchema) -> dict[str, str | None]:
    """FINDINGS, checked against the label config, plus Pneumonia -> its opacity finding."""
    schema.check_table("the nih importer's FINDINGS (cxrkit/data/importers/nih.py)", findings=FINDINGS.values())
    return {**FINDINGS, PNEUMONIA: schema.opacity}


def load_nih(root: Path) -> list[SourceImage]:
    root = Path(root)
    schema = load_schema()
    table = _finding_table(schema)
    files = {p.name: p for p in sorted(root.rglob("*.png"))}
    splits = _read_splits(root)
    boxes = _read_boxes(root / "BBox_List_2017.csv", table)

    images: list[SourceImage] = []
    missing: list[str] = []
    with (root / "Data_Entry_2017.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Image Index"]
            if name not in files:
                missing.append(name)
                continue
            labels = row["Finding Labels"].split("|")
            for label in labels:
                if label != NO_FINDING and label not in table:
                    raise ValueError(f"Data_Entry_2017.csv: unknown NIH label {label!r} for {name}")
            findings = sorted({table[l] for l in labels if l != NO_FINDING and table[l]})
            images.append(
                SourceImage(
                    path=files[name],
                    source=SOURCE,
                    original_id=Path(name).stem,
                    patient_key=row["Patient ID"],
                    split=splits.get(name, ""),
                    labeled=False,
                    boxes=boxes.get(name, []),
                    findings=findings,
                    impression=_impression(labels, schema),
                    metadata=_metadata(row, labels),
                )
            )
    if missing:
        log.warning("nih: %d images listed in Data_Entry_2017.csv are missing, skipped (e.g. %s)",
                    len(missing), ", ".join(missing[:3]))
    return images


def _impression(labels: list[str], schema: LabelSchema) -> str:
    if PNEUMONIA in labels:
        return schema.pneumonia
    return schema.normal if labels == [NO_FINDING] else schema.other_abnormality


def _metadata(row: dict[str, str], labels: list[str]) -> dict:
    meta: dict = {"has_boxes": False, "source_labels": labels}
    age = _age(row["Patient Age"])
    if age is not None:
        meta["age"] = age
    if row["Patient Gender"] in ("M", "F"):
        meta["sex"] = row["Patient Gender"]
    if row["View Position"] in ("PA", "AP"):
        meta["view"] = row["View Position"]
    # The CSV gives the spacing of the original image; convert it to the 1024 PNG
    # we point at, so it agrees with the boxes and can be rescaled like them.
    width, height = float(row["OriginalImage[Width"]), float(row["Height]"])
    spacing_x, spacing_y = float(row["OriginalImagePixelSpacing[x"]), float(row["y]"])
    meta["pixel_spacing"] = [spacing_x * width / PNG_SIZE, spacing_y * height / PNG_SIZE]
    return meta


def _age(text: str) -> int | None:
    """Years from '58' or the first release's '058Y' / '011M' / '005D'; None when implausible."""
    match = re.fullmatch(r"0*(\d+)([YMD]?)", text.strip())
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2)
    years = value // 12 if unit == "M" else 0 if unit == "D" else value
    # A handful of rows say 148..414: data-entry errors, not ages.
    return years if years <= 120 else None


def _read_boxes(path: Path, table: dict[str, str | None]) -> dict[str, list[Box]]:
    boxes: dict[str, list[Box]] = {}
    if not path.exists():
        return boxes
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            label = row["Finding Label"]
            if not table.get(label):
                raise ValueError(f"BBox_List_2017.csv: box label {label!r} of {row['Image Index']} "
                                 "has no label_config finding")
            boxes.setdefault(row["Image Index"], []).append(
                Box(x=float(row["Bbox [x"]), y=float(row["y"]), w=float(row["w"]), h=float(row["h]"]),
                    finding=table[label])
            )
    return boxes


def _read_splits(root: Path) -> dict[str, str]:
    """Official split: train_val_list.txt -> "train", test_list.txt -> "test"."""
    splits: dict[str, str] = {}
    for file_name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        path = root / file_name
        if path.exists():
            for line in path.read_text().split():
                splits[line] = split
    return splits
