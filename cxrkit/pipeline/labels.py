"""The labels file of a data version, and how it turns unlabeled manifest records into training records.

`data/labels.jsonl` holds one line per image a radiologist submitted in Label Studio (the
ground truth `cxrkit.labelstudio.export.ground_truth` picks from a snapshot): image id, boxes,
impression, comment, and which annotation it came from. Sorted by image id and written with
sorted keys, so the same annotations always give the same bytes: the data version (data.dvc's
md5) changes when a label changes, and only then. The raw export is not versioned for that
reason: it also carries the model's predictions and the uncertainty scores the select flow
writes into the tasks, which change every round without any new label.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from cxrkit.labelstudio.export import LabeledImage, image_subtype
from cxrkit.manifest import Box, Record


def write_labels(labels: list[LabeledImage], path: str | os.PathLike) -> int:
    """Write the labels file atomically; returns the number of labeled images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        for item in sorted(labels, key=lambda x: x.image_id):
            fh.write(json.dumps(asdict(item), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(labels)


def read_labels(path: str | os.PathLike) -> list[LabeledImage]:
    """The labels file's images; an absent file means nothing has been labeled in Label Studio yet."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            d["boxes"] = [Box.from_dict(b) for b in d.get("boxes", [])]
            out.append(LabeledImage(**d))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: unreadable labels line: {exc}") from exc
    return out


def apply_labels(records: list[Record], labels: list[LabeledImage]) -> tuple[list[Record], list[str]]:
    """The records with Label Studio's ground truth in place of what ingest knew.

    An annotated image becomes `labeled` with complete boxes (a submitted annotation lists
    every finding the radiologist saw: no box means nothing there), its impression, and the
    image-level subtype of its boxes. Records nobody annotated are returned unchanged (a
    public dataset's labels stay). Also returns the ids of labels whose image is not in the
    manifest (they cannot be trained on; the caller reports them)."""
    by_id = {item.image_id: item for item in labels}
    out = []
    for rec in records:
        item = by_id.pop(rec.image_id, None)
        if item is None:
            out.append(rec)
            continue
        out.append(replace(rec, boxes=list(item.boxes), raw_boxes=[], findings=[], impression=item.impression,
                           subtype=image_subtype(item.boxes), labeled=True,
                           metadata={**rec.metadata, "has_boxes": True}))
    return out, sorted(by_id)


def labeled_ids(records: list[Record], labels: list[LabeledImage]) -> set[str]:
    """Image ids with ground truth: annotated in Label Studio, or labeled by their source."""
    return {r.image_id for r in records if r.labeled} | {item.image_id for item in labels}
