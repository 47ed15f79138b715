"""The labeled set in the formats other tools read: COCO and YOLO (`cxr export OUT --format ...`).

    labeled_set(data_dir)              the ground truth: the manifest with Label Studio's labels applied
    write_coco(records, data_dir, out) out/annotations.json + out/images/<image_id>.png
    write_yolo(records, data_dir, out) out/data.yaml + out/images/train/*.png + out/labels/train/*.txt
    both                               + out/labels.csv (image, impression, subtype) for every film,
                                       + out/images/image-level/ (films without complete boxes)

What is exported is what training reads as ground truth: the radiologists' labels exported by the
last retrain (data/labels.jsonl) over the labels ingest knew, never pseudo-labels. Boxes go out
only for films whose box list is complete (a film labeled at the image level has `has_boxes`
False and would read as "no finding" in a detection format): those films are left out of the
detection files and kept in labels.csv. Categories are the label config's findings in its order;
a box's subtype is a COCO annotation attribute (`attributes.subtype`), an image's impression and
subtype are COCO image attributes, so `cxr ingest OUT --dataset coco` (or `--dataset yolo`, with
labels.csv beside) reads the same labels back. Films are hard links to the workspace's PNGs
where the file system allows, copies elsewhere; their names are the pseudonymous image ids.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import yaml

from cxrkit.core.atomic import write_atomic
from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Record, read_manifest
from cxrkit.models.detector import has_complete_boxes
from cxrkit.pipeline.labels import apply_labels, read_labels

FORMATS = ("coco", "yolo")


def labeled_set(data_dir: Path) -> list[Record]:
    """The workspace's labeled records: the manifest with data/labels.jsonl applied."""
    records = read_manifest(Path(data_dir) / "manifest.jsonl")
    labels_path = Path(data_dir) / "labels.jsonl"
    merged, _ = apply_labels(records, read_labels(labels_path) if labels_path.exists() else [])
    return [r for r in merged if r.labeled]


def write_coco(records: list[Record], data_dir: Path, out: Path) -> dict:
    schema = load_schema()
    category = {name: n for n, name in enumerate(schema.findings, 1)}
    boxed = [r for r in records if has_complete_boxes(r)]
    images, annotations = [], []
    for n, rec in enumerate(boxed, 1):
        _place(Path(data_dir) / rec.path, Path(out) / "images" / f"{rec.image_id}.png")
        images.append({"id": n, "file_name": f"{rec.image_id}.png", "width": rec.width, "height": rec.height,
                       "attributes": {"impression": rec.impression, "subtype": rec.subtype}})
        for box in rec.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": n, "category_id": category[box.finding],
                                "bbox": [box.x, box.y, box.w, box.h], "area": round(box.w * box.h, 2), "iscrowd": 0,
                                "attributes": {"subtype": box.subtype}})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": n, "name": name} for name, n in category.items()]}
    write_atomic(Path(out) / "annotations.json", json.dumps(coco, indent=1) + "\n")
    return _image_labels(records, boxed, data_dir, Path(out), "images") | {"boxes": len(annotations)}


def write_yolo(records: list[Record], data_dir: Path, out: Path) -> dict:
    schema = load_schema()
    index = {name: n for n, name in enumerate(schema.findings)}
    boxed = [r for r in records if has_complete_boxes(r)]
    count = 0
    for rec in boxed:
        _place(Path(data_dir) / rec.path, Path(out) / "images" / "train" / f"{rec.image_id}.png")
        lines = [f"{index[b.finding]} {(b.x + b.w / 2) / rec.width:.6f} {(b.y + b.h / 2) / rec.height:.6f} "
                 f"{b.w / rec.width:.6f} {b.h / rec.height:.6f}" for b in rec.boxes]
        count += len(lines)
        write_atomic(Path(out) / "labels" / "train" / f"{rec.image_id}.txt", "".join(f"{line}\n" for line in lines))
    data = {"path": ".", "train": "images/train", "names": dict(enumerate(schema.findings))}
    write_atomic(Path(out) / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    return _image_labels(records, boxed, data_dir, Path(out), "images/train") | {"boxes": count}


def _image_labels(records: list[Record], boxed: list[Record], data_dir: Path, out: Path, boxed_folder: str) -> dict:
    """out/labels.csv (image, impression, subtype) for every labeled film with an impression, as
    cxrkit.data.importers.csv_labels reads it; films labeled at the image level only go to
    out/images/image-level/, outside the detection files."""
    boxed_ids = {r.image_id for r in boxed}
    rows = []
    for rec in records:
        folder = boxed_folder if rec.image_id in boxed_ids else "images/image-level"
        if rec.image_id not in boxed_ids:
            _place(Path(data_dir) / rec.path, out / folder / f"{rec.image_id}.png")
        if rec.impression:
            rows.append([f"{folder}/{rec.image_id}.png", rec.impression, rec.subtype or ""])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "impression", "subtype"])
        writer.writerows(rows)
    return {"images": len(boxed), "image_level_only": len(records) - len(boxed)}


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)
