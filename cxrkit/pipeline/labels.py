"""The labels file of a data version, and how it turns unlabeled manifest records into training records.

`data/labels.jsonl` holds one line per image a radiologist submitted in Label Studio (the
ground truth `cxrkit.labelstudio.ground_truth.ground_truth` picks from a snapshot): image id, boxes and
impression, what training reads, and, for an image several readers labeled, each reader's
boxes and impression (`readers`, pseudonymous ids: the per-reader labels stay in the data
version, so a reader's change is a new version even where the consensus stays; `prepare`'s
records are then the same, and DVC retrains nothing), and nothing else. Sorted by image id and written with sorted
keys, so the same labels always give the same bytes: the data version (data.dvc's md5) changes
when a label changes, and only then. Left out on purpose:
- which annotation a label came from and when it was saved: re-saving an unchanged annotation
  would make a new data version and a full retrain;
- the radiologist's free-text comment: it can hold names, and the versioned data is pushed to
  the DVC remote. Comments stay in Label Studio and its raw exports (workspace/exports/).
The raw export is not versioned either: it also carries the model's predictions, which the
select flow publishes again with every new queue, without any new label.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from cxrkit.core.atomic import write_atomic
from cxrkit.core.manifest import Box, Record
from cxrkit.labelstudio.export import LabeledImage, image_subtype

VERSIONED_FIELDS = ("image_id", "boxes", "impression")  # what training reads; see the module docstring


def _versioned(item: LabeledImage) -> dict:
    # `readers` only where there are several: an image one reader labeled keeps the bytes it always had.
    fields = (*VERSIONED_FIELDS, "readers") if len(item.readers) > 1 else VERSIONED_FIELDS
    return {k: v for k, v in asdict(item).items() if k in fields}


def write_labels(labels: list[LabeledImage], path: str | os.PathLike) -> int:
    """Write the labels file (VERSIONED_FIELDS, and `readers` where several read an image)
    atomically; returns the number of labeled images."""
    lines = [json.dumps(_versioned(item), sort_keys=True) + "\n" for item in sorted(labels, key=lambda x: x.image_id)]
    write_atomic(path, "".join(lines))
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
            # Files written before the comment and annotation fields were left out still read.
            out.append(LabeledImage(**({"comment": None, "annotation_id": None, "updated_at": None} | d)))
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
