"""Several readers of one film: the consensus that trains, and how much they agree.

    consensus(readings, opacity, pneumonia, iou)  -> Labeling: boxes fused across readers, impression by majority
    box_agreement(a, b)                           -> matched-box agreement of two readings, in [0, 1]
    image_agreement(readings)                     -> impression unanimous?, mean pairwise box agreement
    fleiss_kappa(counts)                          -> chance-corrected agreement of a categorical label

Consensus (after VinBigData's winners, who fused the three readers' boxes by weighted boxes
fusion at IoU 0.4, ../shared/REFERENCES.md; the majority filter is ours): the readers' boxes of one finding are
clustered greedily, each box joining the cluster whose mean box it overlaps most at IoU
above `iou` and that holds no box of its reader yet; a cluster drawn by at least half of the
readers becomes one box, the mean of its members' corners, with the subtype most of its
members gave (ties: the first reader's). Readers' boxes carry no score, so every reader weighs
the same. The impression is the one most readers gave (a reader who gave none does not vote);
on a tie, the one the consensus boxes imply (pneumonia with an opacity box), else the first
reader's among the tied.

Box agreement of two readings: their boxes matched one to one (same finding, greedily by IoU,
down to cxrkit.evaluation.effort.MATCH_IOU); the sum of the matched IoUs over the larger box
count, so a box one reader drew and the other did not counts 0; 1 when neither drew a box.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from cxrkit.core.manifest import Box
from cxrkit.evaluation.effort import Labeling, match_boxes
from cxrkit.evaluation.metrics import iou_matrix


def _iou(a: Box, b: Box) -> float:
    return float(iou_matrix(np.array([[a.x, a.y, a.w, a.h]], float), np.array([[b.x, b.y, b.w, b.h]], float))[0, 0])


def _mean_box(members: list[tuple[int, Box]]) -> Box:
    boxes = [b for _, b in members]
    return Box(x=float(np.mean([b.x for b in boxes])), y=float(np.mean([b.y for b in boxes])),
               w=float(np.mean([b.w for b in boxes])), h=float(np.mean([b.h for b in boxes])), finding=boxes[0].finding)


def consensus(readings: Sequence[Labeling], opacity: str, pneumonia: str, iou: float = 0.4) -> Labeling:
    """The consensus labeling of one film from its readers' labelings (module docstring)."""
    if not readings:
        raise ValueError("consensus of no reading")
    clusters: list[list[tuple[int, Box]]] = []  # (reader index, box)
    for reader, reading in enumerate(readings):
        for box in reading.boxes:
            best, best_iou = None, iou
            for cluster in clusters:
                if cluster[0][1].finding != box.finding or any(r == reader for r, _ in cluster):
                    continue
                overlap = _iou(_mean_box(cluster), box)
                if overlap > best_iou:
                    best, best_iou = cluster, overlap
            if best is None:
                clusters.append([(reader, box)])
            else:
                best.append((reader, box))
    boxes = []
    for cluster in clusters:
        if 2 * len(cluster) < len(readings):  # drawn by fewer than half of the readers
            continue
        fused = _mean_box(cluster)
        subtypes = [b.subtype for _, b in cluster if b.subtype]
        fused.subtype = Counter(subtypes).most_common(1)[0][0] if subtypes else None  # ties: first seen
        boxes.append(fused)
    votes = Counter(r.impression for r in readings if r.impression is not None)
    impression = None
    if votes:
        top = max(votes.values())
        tied = [name for name, n in votes.items() if n == top]  # in the order the readers gave them
        implied = pneumonia if any(b.finding == opacity for b in boxes) else None
        impression = tied[0] if len(tied) == 1 else (implied if implied in tied else tied[0])
    return Labeling(boxes, impression)


def box_agreement(a: Sequence[Box], b: Sequence[Box]) -> float:
    """Matched-box agreement of two readings' boxes (module docstring), in [0, 1]."""
    if not a and not b:
        return 1.0
    return sum(iou for _, _, iou in match_boxes(a, b, same_finding=True)) / max(len(a), len(b))


def image_agreement(readings: Sequence[Labeling]) -> dict:
    """{"readers", "impression_unanimous", "box_agreement"}: the mean over reader pairs (1.0 for one reader)."""
    pairs = list(combinations(readings, 2))
    return {"readers": len(readings),
            "impression_unanimous": len({r.impression for r in readings}) <= 1,
            "box_agreement": float(np.mean([box_agreement(a.boxes, b.boxes) for a, b in pairs])) if pairs else 1.0}


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of a table with one row per item and one column per category, each row
    counting the raters who chose that category (the same number of raters on every row). NaN
    with fewer than two items or raters, or when every rating falls in one category."""
    table = np.asarray(counts, dtype=np.float64)
    if table.ndim != 2 or len(table) < 2:
        return float("nan")
    raters = table.sum(axis=1)
    if raters.min() != raters.max():
        raise ValueError("fleiss_kappa: every item needs the same number of raters")
    n = raters[0]
    if n < 2:
        return float("nan")
    p_item = ((table**2).sum(axis=1) - n) / (n * (n - 1))
    p_cat = table.sum(axis=0) / table.sum()
    expected = float((p_cat**2).sum())
    return float("nan") if expected >= 1.0 else float((p_item.mean() - expected) / (1.0 - expected))
