"""Our boxes <-> Label Studio region results, both directions.

Label Studio stores a rectangle as a `rectanglelabels` result whose `value` holds
x, y (top-left corner), width and height in PERCENT of the image, plus the size
of the image it was drawn on (`original_width`, `original_height`, in pixels).
Results that describe the same region share the same `id`: that is how a
per-region `<Choices perRegion="true">` answer (our subtype) is tied to its box.
An image-level `<Choices>` answer (our impression) and the `<TextArea>` comment
are results of their own. Every tag and label name comes from the LabelSchema
(label_config.xml); nothing here names one.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from cxrkit.core.labels import LabelSchema
from cxrkit.core.manifest import Box

RECTANGLE = "rectanglelabels"
CHOICES = "choices"
TEXTAREA = "textarea"


@dataclass
class Labels:
    """What one annotation (or prediction) says about one image, boxes in pixels."""

    boxes: list[Box] = field(default_factory=list)
    impression: str | None = None
    comment: str | None = None


def region_id(index: int, box: Box) -> str:
    """A short id (Label Studio uses 10 characters of [A-Za-z0-9_-]) that is the same
    every time the same box is converted, so re-sent predictions keep their ids.
    The index keeps two identical boxes apart."""
    key = f"{index}|{box.x!r}|{box.y!r}|{box.w!r}|{box.h!r}|{box.finding}"
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def boxes_to_results(
    boxes: list[Box], width: int, height: int, schema: LabelSchema, impression: str | None = None
) -> list[dict]:
    """Label Studio results for `boxes` (pixels of a `width` x `height` image).

    Each box becomes a `rectanglelabels` result (with `score` when the box has one);
    a box with a subtype also gets a per-region `choices` result with the same id;
    `impression`, when given, becomes an image-level `choices` result.
    Unknown finding, subtype or impression names raise ValueError.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if impression is not None and impression not in schema.impressions:
        raise ValueError(f"unknown impression {impression!r}; label_config.xml has {list(schema.impressions)}")

    def region(rid: str, from_name: str, kind: str, geometry: dict, answer: dict) -> dict:
        return {
            "id": rid,
            "from_name": from_name,
            "to_name": schema.image_tag,
            "type": kind,
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {**geometry, **answer},
        }

    results = []
    for i, box in enumerate(boxes):
        schema.check_finding(box.finding)
        schema.check_subtype(box.subtype)
        rid = region_id(i, box)
        # Multiply before dividing: one rounding, so whole-pixel boxes give exact percentages.
        geometry = {
            "x": box.x * 100.0 / width,
            "y": box.y * 100.0 / height,
            "width": box.w * 100.0 / width,
            "height": box.h * 100.0 / height,
            "rotation": 0,
        }
        rect = region(rid, schema.finding_tag, RECTANGLE, geometry, {RECTANGLE: [box.finding]})
        if box.score is not None:
            rect["score"] = box.score
        results.append(rect)
        if box.subtype is not None:
            results.append(region(rid, schema.subtype_tag, CHOICES, geometry, {CHOICES: [box.subtype]}))
    if impression is not None:
        results.append(
            {
                "id": hashlib.sha1(b"impression").hexdigest()[:10],
                "from_name": schema.impression_tag,
                "to_name": schema.image_tag,
                "type": CHOICES,
                "value": {CHOICES: [impression]},
            }
        )
    return results


def _image_size(result: dict, width: int | None, height: int | None) -> tuple[float, float]:
    """The size the region was drawn on: the result's own `original_width/height` (what
    Label Studio records with every region), else the caller's fallback. Results written
    by hand or by old tools may lack them; without either there are no pixels to give."""
    w = result.get("original_width") or width
    h = result.get("original_height") or height
    if not w or not h:
        raise ValueError(
            f"result {result.get('id')!r} has no original_width/original_height and no image size was given"
        )
    return float(w), float(h)


def _pixel_box(value: dict, img_w: float, img_h: float) -> tuple[float, float, float, float]:
    """x, y, w, h in pixels. A rotated rectangle (the editor allows rotation unless the
    config says canRotate="false") becomes the axis-aligned box around it: Label Studio
    rotates about the top-left corner (x, y), in pixel space."""
    x = value["x"] * img_w / 100.0
    y = value["y"] * img_h / 100.0
    w = value["width"] * img_w / 100.0
    h = value["height"] * img_h / 100.0
    rotation = float(value.get("rotation") or 0.0)
    if rotation % 360 == 0:
        return x, y, w, h
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    xs = [x, x + w * c, x - h * s, x + w * c - h * s]
    ys = [y, y + w * s, y + h * c, y + w * s + h * c]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def _single(value: dict, key: str, rid: str) -> str:
    names = value.get(key) or []
    if len(names) != 1:
        raise ValueError(f"region {rid!r}: expected exactly one {key} value, got {names!r}")
    return names[0]


def results_to_labels(
    results: list[dict], schema: LabelSchema, width: int | None = None, height: int | None = None
) -> Labels:
    """Boxes (pixels), impression and comment from one annotation's results.

    Pixels use each result's `original_width`/`original_height`; `width`/`height` are
    the fallback for results without them (ValueError when neither is there).
    A subtype is joined to its box by region id. Result types this config does not
    produce (relations, other tags) are ignored. A rectangle from a tag that is not
    `schema.finding_tag`, or a finding/subtype/impression name the config does not
    have, or a subtype whose region has no box, raises ValueError: those mean the
    export and label_config.xml disagree, and guessing would corrupt ground truth.
    """
    boxes: dict[str, Box] = {}  # region id -> box, in result order
    subtypes: dict[str, str] = {}
    impression = None
    comments = []
    for r in results:
        kind, source, rid, value = r.get("type"), r.get("from_name"), r.get("id"), r.get("value") or {}
        if kind == RECTANGLE:
            if source != schema.finding_tag:
                raise ValueError(f"rectangle {rid!r} comes from tag {source!r}, not {schema.finding_tag!r}")
            finding = schema.check_finding(_single(value, RECTANGLE, rid))
            x, y, w, h = _pixel_box(value, *_image_size(r, width, height))
            if rid in boxes:
                raise ValueError(f"two rectangles share region id {rid!r}")
            boxes[rid] = Box(x=x, y=y, w=w, h=h, finding=finding, score=r.get("score"))
        elif kind == CHOICES and source == schema.subtype_tag:
            subtypes[rid] = schema.check_subtype(_single(value, CHOICES, rid))
        elif kind == CHOICES and source == schema.impression_tag:
            impression = _single(value, CHOICES, rid)
            if impression not in schema.impressions:
                raise ValueError(f"unknown impression {impression!r}; label_config.xml has {list(schema.impressions)}")
        elif kind == TEXTAREA and r.get("to_name") == schema.image_tag:
            comments.extend(value.get("text") or [])
    for rid, subtype in subtypes.items():
        if rid not in boxes:
            raise ValueError(f"subtype {subtype!r} belongs to region {rid!r}, which has no rectangle")
        boxes[rid].subtype = subtype
    comment = "\n".join(comments) if comments else None
    return Labels(boxes=list(boxes.values()), impression=impression, comment=comment)
