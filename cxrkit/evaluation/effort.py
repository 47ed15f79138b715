"""Correction effort between two labelings of one image: what was shown and what was kept.

    annotation_edits(final, shown)   -> Edits: boxes kept, adjusted, deleted, added; subtypes and
                                        impression changed (shown None: nothing was shown)
    EffortModel().seconds(images, edits_per_image) -> radiologist seconds, by a stated model

Per image:
- kept: a shown box left where it was: IoU >= KEPT_IOU with the final box it is matched to, and
  the same finding;
- adjusted: a shown box matched to a final box at a lower IoU (moved or resized) or given
  another finding;
- deleted: a shown box with no final box matched to it (a false positive);
- added: a final box matched to no shown box (a miss);
- subtype_changed: a matched box whose subtype differs from the shown one (set, changed or
  cleared; only opacity boxes carry one), plus every subtype given to an added box;
- impression_changed: the image's impression differs from the shown one (or none was shown).

Matching pairs shown and final boxes greedily, highest IoU first, down to MATCH_IOU: a box the
radiologist dragged keeps most of its overlap, and below that the new box is a new finding,
not a correction. edits = adjusted + deleted + added + subtype_changed + impression_changed:
the actions a radiologist takes (kept boxes cost a look, not an action). With nothing shown,
every box, subtype and impression of the final labeling is added work, which is what labeling
from scratch costs.

Used on Label Studio's annotations against the predictions they were made over
(cxrkit.labelstudio.effort), and on a model's pre-annotations against the truth, to choose and
measure what the predictor shows (cxrkit.models.preannotation, benchmarks/bench_preannotation.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxrkit.core.manifest import Box
from cxrkit.evaluation.metrics import iou_matrix

KEPT_IOU = 0.9
MATCH_IOU = 0.1
EDIT_KINDS = ("adjusted", "deleted", "added", "subtype_changed", "impression_changed")


@dataclass
class Edits:
    kept: int = 0
    adjusted: int = 0
    deleted: int = 0
    added: int = 0
    subtype_changed: int = 0
    impression_changed: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in EDIT_KINDS)


def match_boxes(shown: Sequence[Box], final: Sequence[Box],
                same_finding: bool = False, min_iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """(shown index, final index, IoU) pairs, greedily by IoU down to `min_iou`, each box at most
    once; with `same_finding`, only boxes of one finding pair up."""
    if not shown or not final:
        return []
    iou = iou_matrix(np.array([[b.x, b.y, b.w, b.h] for b in shown], float),
                     np.array([[b.x, b.y, b.w, b.h] for b in final], float))
    if same_finding:
        iou[np.array([[a.finding != b.finding for b in final] for a in shown])] = 0.0
    pairs, used_shown, used_final = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = (int(k) for k in np.unravel_index(flat, iou.shape))
        if iou[i, j] < min_iou:
            break
        if i not in used_shown and j not in used_final:
            pairs.append((i, j, float(iou[i, j])))
            used_shown.add(i)
            used_final.add(j)
    return pairs


@dataclass
class Labeling:
    """What one labeling (an annotation, a prediction, the truth) says about an image."""

    boxes: list[Box] = field(default_factory=list)
    impression: str | None = None


def annotation_edits(final, shown) -> Edits:
    """What a reader changes to get from `shown` (None: nothing shown) to `final`: each has
    `boxes` (pixels, with finding and subtype) and `impression` (a Labeling, or Label Studio's
    parsed Labels)."""
    if shown is None:
        return Edits(added=len(final.boxes), subtype_changed=sum(b.subtype is not None for b in final.boxes),
                     impression_changed=int(final.impression is not None))
    edits = Edits(impression_changed=int(final.impression != shown.impression))
    pairs = match_boxes(shown.boxes, final.boxes)
    for i, j, iou in pairs:
        before, after = shown.boxes[i], final.boxes[j]
        if iou >= KEPT_IOU and before.finding == after.finding:
            edits.kept += 1
        else:
            edits.adjusted += 1
        edits.subtype_changed += int(before.subtype != after.subtype)
    matched_final = {j for _, j, _ in pairs}
    edits.deleted = len(shown.boxes) - len(pairs)
    added = [b for j, b in enumerate(final.boxes) if j not in matched_final]
    edits.added = len(added)
    edits.subtype_changed += sum(b.subtype is not None for b in added)
    return edits



@dataclass(frozen=True)
class EffortModel:
    """Radiologist seconds for a labeled film: `look_seconds` to read it and check what is shown,
    plus `edit_seconds` per edit (annotation_edits' total). A stated model, not a measurement of
    our readers (Label Studio's lead_time is, once they label): its constants come from the one
    published figure for boxes on radiographs (../shared/REFERENCES.md), radiologists correcting
    pre-drawn boxes on paediatric wrist radiographs in 22.7 s per image at the start and 8.9 s
    after 10 days (PLoS One 2022, PMID 36264961). Reading a film whose marks are right is taken as
    the practised 8.9 s; one edit as the 13.8 s the first days cost on top, when readers changed
    most of what was drawn. Labeling from scratch is the same reading plus one edit per box,
    subtype and impression to add. Editing model output was 8.7x faster than from scratch in CT
    haemorrhage segmentation (Front. Radiol. 2023); a box is far cheaper to draw than a volume,
    so this model's ratio is much smaller, which errs against the workbench."""

    look_seconds: float = 8.9
    edit_seconds: float = 13.8

    def seconds(self, images: int, edits_per_image: float) -> float:
        return images * (self.look_seconds + self.edit_seconds * edits_per_image)
