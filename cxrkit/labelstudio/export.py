"""Label Studio's exports kept, and the training sets made from their ground truth.

An export (GET /api/projects/<id>/export?exportType=JSON) is a list of tasks:
`{"id", "data": {"image", "image_id", ...}, "annotations": [...], "drafts": [...],
"predictions": [...]}`; which annotations are ground truth, and how several readers' become
one, is cxrkit.labelstudio.ground_truth's (`LabeledImage`, below, is what it gives).

Outputs: a versioned snapshot of the raw export (`save_snapshot`) and an ultralytics YOLO
detection set (`to_yolo`, built by the detector's training from the prepared records).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from PIL import Image

from cxrkit.core.atomic import write_atomic
from cxrkit.core.labels import LabelSchema
from cxrkit.core.manifest import Box

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX = "labels-"
# Fields whose value changes with the clock, not with the data ("3 hours" ago).
_VOLATILE_KEYS = frozenset({"created_ago"})
YOLO_SPLITS = ("train", "val", "test")


@dataclass
class LabeledImage:
    image_id: str
    boxes: list[Box]  # pixels of the stored PNG; no box = nothing there
    impression: str | None
    comment: str | None
    annotation_id: int | str  # the Label Studio annotation this came from (the latest, for a consensus)
    updated_at: str  # that annotation's updated_at, as Label Studio wrote it
    # Several readers (cxrkit.labelstudio.ground_truth): each one's labels ({"reader", "boxes",
    # "impression"}) and how much they agree (cxrkit.evaluation.agreement.image_agreement);
    # source: "reader", "consensus" or "review".
    readers: list[dict] = field(default_factory=list)
    agreement: dict | None = None
    source: str = "reader"
    reviewer: str | None = None  # the reader id of the review that decided (not versioned)


# --- snapshot ---------------------------------------------------------------


def _strip_volatile(obj):
    if isinstance(obj, dict):
        return {k: _strip_volatile(v) for k, v in obj.items() if k not in _VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


def snapshot_bytes(export: list[dict]) -> bytes:
    """The canonical bytes of an export: sorted keys, clock-relative fields dropped,
    so the same labels always give the same bytes."""
    return json.dumps(_strip_volatile(export), sort_keys=True, indent=1, ensure_ascii=False).encode()


def content_hash(export: list[dict]) -> str:
    """12 hex digits of the sha256 of `snapshot_bytes(export)`."""
    return digest_of(snapshot_bytes(export))


def digest_of(data: bytes) -> str:
    """The 12 hex digits a snapshot of these bytes is named by."""
    return hashlib.sha256(data).hexdigest()[:12]


def save_snapshot(export: list[dict], out_dir: Path) -> Path:
    """Write `out_dir/labels-<UTC yyyymmddThhmmssZ>-<hash>.json` atomically and return it.

    When a snapshot with the same content hash is already in `out_dir`, nothing is
    written and that file is returned, so "same path as last time" means "no new labels".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = snapshot_bytes(export)
    digest = digest_of(data)
    existing = sorted(out_dir.glob(f"{SNAPSHOT_PREFIX}*-{digest}.json"))
    if existing:
        return existing[0]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{SNAPSHOT_PREFIX}{stamp}-{digest}.json"
    write_atomic(path, data)
    return path


def prune_snapshots(out_dir: Path, keep: int, current: Path) -> list[Path]:
    """Delete all but the `keep` newest snapshots of `out_dir` (by the time in their names) and
    `current`; returns the deleted files. Each holds the whole project, so they are not kept
    forever; the labels that trained each round are versioned by DVC, not here."""
    snapshots = [p for p in sorted(Path(out_dir).glob(f"{SNAPSHOT_PREFIX}*.json")) if p != Path(current)]
    old = snapshots[: max(0, len(snapshots) - max(0, int(keep) - 1))]
    for path in old:
        path.unlink(missing_ok=True)
    return old


# --- YOLO detection set -----------------------------------------------------


def yolo_lines(boxes: list[Box], width: int, height: int, schema: LabelSchema) -> list[str]:
    """`class cx cy w h` lines, normalised to the image, class = index in schema.findings.
    Boxes are clipped to the image first (ultralytics refuses a whole image whose
    coordinates leave [0, 1]); a box with nothing left inside is dropped, with a warning."""
    lines = []
    for box in boxes:
        cls = schema.findings.index(schema.check_finding(box.finding))
        x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
        x1, y1 = min(box.x + box.w, float(width)), min(box.y + box.h, float(height))
        if x1 <= x0 or y1 <= y0:
            log.warning("box %s lies outside its %dx%d image; dropped", box, width, height)
            continue
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        w, h = (x1 - x0) / width, (y1 - y0) / height
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link costs no space and, unlike a symlink, looks like a plain file to
    # every tool (ultralytics derives label paths from image paths). Across file
    # systems there is no hard link: copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def to_yolo(
    ground_truth: list[LabeledImage], images_dir: Path, out_dir: Path, schema: LabelSchema, split_of: dict[str, str]
) -> Path:
    """Write an ultralytics detection dataset and return its data.yaml:

        out_dir/images/<split>/<image_id>.png   hard link to images_dir/<image_id>.png (copy across devices)
        out_dir/labels/<split>/<image_id>.txt   `class cx cy w h` lines; empty = annotated, nothing there
        out_dir/data.yaml                       path, train, val (test when used), names = schema.findings

    Every image must have a split in `split_of` ("train", "val" or "test"): a default
    would silently move images between train and val. The set is built next to
    `out_dir` and swapped in whole, so no file from an earlier export survives.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir).resolve()
    missing = [g.image_id for g in ground_truth if g.image_id not in split_of]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no split, e.g. {missing[:3]}")
    bad = sorted({split_of[g.image_id] for g in ground_truth} - set(YOLO_SPLITS))
    if bad:
        raise ValueError(f"unknown split(s) {bad}; expected one of {list(YOLO_SPLITS)}")

    build = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.building")
    shutil.rmtree(build, ignore_errors=True)
    used = {"train", "val"} | {split_of[g.image_id] for g in ground_truth}  # ultralytics needs train and val
    for split in used:
        (build / "images" / split).mkdir(parents=True)
        (build / "labels" / split).mkdir(parents=True)
    try:
        for item in ground_truth:
            src = images_dir / f"{item.image_id}.png"
            if not src.is_file():
                raise FileNotFoundError(f"{src} not found: image {item.image_id} is labeled but not in the workspace")
            with Image.open(src) as im:  # reads the header only
                width, height = im.size
            split = split_of[item.image_id]
            _link_or_copy(src, build / "images" / split / src.name)
            lines = yolo_lines(item.boxes, width, height, schema)
            (build / "labels" / split / f"{item.image_id}.txt").write_text("".join(line + "\n" for line in lines))
        data = {"path": str(out_dir), "names": list(schema.findings)}
        data.update({split: f"images/{split}" for split in YOLO_SPLITS if split in used})
        (build / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(build, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return out_dir / "data.yaml"


# --- an image's subtype ------------------------------------------------------


def image_subtype(boxes: list[Box]) -> str | None:
    """The most frequent subtype among the boxes (the first seen wins a tie), or None."""
    counts = Counter(b.subtype for b in boxes if b.subtype is not None)
    return counts.most_common(1)[0][0] if counts else None
