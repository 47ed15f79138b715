"""What a radiologist is shown on a film: boxes worth correcting, and an impression that agrees with them.

    fuse_boxes(box_lists, iou, width, height, findings) -> weighted boxes fusion of box lists
    merge_boxes(boxes, iou, width, height, findings) -> overlapping boxes of one finding fused into one
    shown_impression(boxes, schema)                  -> the impression the shown boxes imply
    effort_threshold(truths, detections, ...)        -> the box threshold with the fewest expected edits
    effort_conf(images, merge_iou, max_boxes, schema) -> the same from evaluate_detector's kept images

A young detector reports several overlapping low boxes on one opacity, and the impression rule
(cxrkit.models.predictor.impression_rule) can say Normal beside them: the radiologist then has
more to delete than to correct (four stacked boxes at 0.03-0.04 and "Normal" on the demo's
first task). So the predictor (settings in params.yaml `predictor:`):
- fuses the shown boxes of one finding that overlap at IoU above `merge_iou` by weighted boxes
  fusion (`ensemble_boxes`, which compares each box with the cluster's running fused box) (the score-weighted mean of their corners, keeping the best score: fusion of a box
  with its own duplicates should not make it less sure). 0.4 is the IoU the VinBigData
  winners fused readers' boxes at (../shared/REFERENCES.md);
- with `impression: shown`, says Pneumonia when it shows an opacity box, else Other
  abnormality when it shows a box of another finding, else Normal: one edit fixes a wrong box
  and its impression together, instead of a box and an impression that contradict each other;
- with `conf: effort`, shows the boxes from the threshold that minimises the expected edits
  per image (cxrkit.evaluation.effort: boxes adjusted, deleted, added, impression changed) on
  the fixed validation set, measured per model version by the `evaluate` stage beside the
  RSNA operating point. Subtypes are left out of that count: they come from the classifier,
  whatever the threshold. It is measured for this display (the shown impression, the
  detector's own boxes): with `impression: rule` or `tta: true` the count is an estimate.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from cxrkit.core.labels import LabelSchema
from cxrkit.core.manifest import Box
from cxrkit.evaluation.effort import Labeling, annotation_edits
from cxrkit.evaluation.metrics import OPERATING_GRID

# The predictor's display settings the evaluate stage measures with (cxrkit.models.predictor's
# DEFAULTS take them from here, so that evaluation does not depend on the serving code).
SHOWN_DEFAULTS = {"merge_iou": 0.4, "max_boxes": 10}


def fuse_boxes(box_lists: Sequence[Sequence[Box]], iou: float, width: float, height: float,
               findings: Sequence[str], conf_type: str = "avg") -> list[Box]:
    """Weighted boxes fusion (`ensemble_boxes`) of one or more lists of boxes of a width x height
    image: boxes of one finding overlapping at IoU above `iou` become one, its corners the
    score-weighted mean; its score the mean over the lists ("avg": a box one list of two
    misses keeps half its score) or the best ("max"). Best first. An unknown image size (0)
    is taken as the extent of the boxes (IoU does not change with the frame); a box without a
    score weighs as little as possible (no score at all would make the weighted mean 0 / 0)."""
    from ensemble_boxes import weighted_boxes_fusion

    if not any(box_lists):
        return []
    every = [b for boxes in box_lists for b in boxes]
    width = width if width > 0 else max(b.x + b.w for b in every)
    height = height if height > 0 else max(b.y + b.h for b in every)
    index = {f: k for k, f in enumerate(findings)}

    def arrays(boxes):
        xyxy = [[b.x / width, b.y / height, (b.x + b.w) / width, (b.y + b.h) / height] for b in boxes]
        return (np.clip(np.array(xyxy, dtype=np.float64).reshape(-1, 4), 0, 1),
                np.array([max(b.score or 0.0, 1e-6) for b in boxes], dtype=np.float64),
                np.array([index[b.finding] for b in boxes]))

    xyxy, scores, labels = zip(*(arrays(boxes) for boxes in box_lists))
    fused, scores, labels = weighted_boxes_fusion(list(xyxy), list(scores), list(labels), iou_thr=float(iou),
                                                  skip_box_thr=0.0, conf_type=conf_type)
    out = [Box(x=round(float(x0) * width, 2), y=round(float(y0) * height, 2), w=round(float(x1 - x0) * width, 2),
               h=round(float(y1 - y0) * height, 2), finding=findings[int(label)], score=round(float(score), 5))
           for (x0, y0, x1, y1), score, label in zip(fused, scores, labels)]
    return sorted(out, key=lambda b: -(b.score or 0.0))


def merge_boxes(boxes: Sequence[Box], iou: float | None, width: float, height: float,
                findings: Sequence[str]) -> list[Box]:
    """Boxes of one finding that overlap at IoU above `iou` fused into one, the best score kept;
    best first. iou None: the boxes as given."""
    if iou is None or len(boxes) < 2:
        return list(boxes)
    return fuse_boxes([boxes], iou, width, height, findings, conf_type="max")


def shown_impression(boxes: Sequence[Box], schema: LabelSchema) -> str:
    """Pneumonia with an opacity box shown, else Other abnormality with another finding's box, else Normal."""
    if any(b.finding == schema.opacity for b in boxes):
        return schema.pneumonia
    return schema.other_abnormality if boxes else schema.normal


def shown_at(detected: Sequence[Box], threshold: float, merge_iou: float | None, width: float, height: float,
             schema: LabelSchema, max_boxes: int | None = None) -> list[Box]:
    """The boxes the predictor shows from `detected` at `threshold`: kept, merged, capped."""
    kept = merge_boxes([b for b in detected if (b.score or 0.0) >= threshold], merge_iou, width, height,
                       schema.findings)
    return kept[:max_boxes] if max_boxes is not None else kept


def effort_threshold(truths: Sequence[Labeling], detections: Sequence[Sequence[Box]], sizes: Sequence[tuple],
                     grid: Sequence[float], merge_iou: float | None, schema: LabelSchema,
                     max_boxes: int | None = None) -> tuple[float | None, float]:
    """(threshold in `grid`, mean edits per image there) with the fewest expected edits to turn what
    the predictor would show (boxes at the threshold, merged, and the impression they imply) into
    each image's truth; the higher threshold on ties. (None, nan) without images."""
    if not truths:
        return None, float("nan")
    plain = [Labeling([replace(b, subtype=None) for b in t.boxes], t.impression) for t in truths]
    best: tuple[float | None, float] = (None, float("inf"))
    for t in sorted(grid):
        edits = []
        for truth, detected, (w, h) in zip(plain, detections, sizes):
            shown = shown_at(detected, t, merge_iou, w, h, schema, max_boxes)
            edits.append(annotation_edits(truth, Labeling(shown, shown_impression(shown, schema))).total)
        mean = float(np.mean(edits))
        if mean <= best[1] + 1e-12:
            best = (t, mean)
    return best if best[0] is not None else (None, float("nan"))


def effort_conf(images: dict, merge_iou: float | None, max_boxes: int | None, schema: LabelSchema,
                min_conf: float = 0.0) -> tuple[float | None, float]:
    """effort_threshold over cxrkit.evaluation.metrics.OPERATING_GRID (from `min_conf`, the
    detector's floor) for `images`, evaluate_detector(..., keep_images=True)["images"]: its
    records' truth against what the detector found on each."""
    records = images["records"]
    return effort_threshold([Labeling(r.boxes, r.impression) for r in records], images["boxes"],
                            [(r.width, r.height) for r in records], [t for t in OPERATING_GRID if t >= min_conf],
                            merge_iou, schema, max_boxes)
