"""What the predictor shows (cxrkit/models/preannotation.py): merged boxes, the impression they imply,
and the box threshold with the fewest expected edits, on hand-made cases."""
from __future__ import annotations

import math

import pytest

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box
from cxrkit.evaluation.effort import Labeling
from cxrkit.models.preannotation import effort_threshold, merge_boxes, shown_impression


def box(x, y, w=20, h=20, score=0.5, finding=None) -> Box:
    return Box(x, y, w, h, finding or load_schema().opacity, score=score)


def test_overlapping_boxes_of_one_finding_merge_and_keep_the_best_score():
    schema = load_schema()
    other = next(f for f in schema.findings if f != schema.opacity)
    boxes = [box(10, 10, score=0.3), box(12, 12, score=0.5), box(10, 10, score=0.9, finding=other), box(60, 60, score=0.2)]
    merged = merge_boxes(boxes, 0.4, 100, 100, schema.findings)
    assert [(b.finding, b.score) for b in merged] == [(other, 0.9), (schema.opacity, 0.5), (schema.opacity, 0.2)]
    fused = merged[1]
    assert 10 < fused.x < 12 and 10 < fused.y < 12  # between the two, nearer the surer one
    assert fused.x - 10 > 12 - fused.x
    assert merge_boxes(boxes, None, 100, 100, schema.findings) == boxes  # off
    assert len(merge_boxes(boxes, 0.9, 100, 100, schema.findings)) == 4  # IoU 0.68 < 0.9: kept apart


def test_the_impression_follows_the_boxes_shown():
    schema = load_schema()
    other = next(f for f in schema.findings if f != schema.opacity)
    assert shown_impression([box(0, 0)], schema) == schema.pneumonia
    assert shown_impression([box(0, 0, finding=other), box(5, 5)], schema) == schema.pneumonia
    assert shown_impression([box(0, 0, finding=other)], schema) == schema.other_abnormality
    assert shown_impression([], schema) == schema.normal


def test_effort_threshold_shows_what_takes_the_fewest_edits():
    """Film A has one opacity, found at 0.6, and a false box at 0.2; film B is normal with a false box
    at 0.3. Edits per image: at 0.1, A deletes one box and B deletes one and changes the impression
    (1.5); at 0.5 nothing to do (0); at 0.7 A's box and impression are missing (1)."""
    schema = load_schema()
    truths = [Labeling([box(10, 10)], schema.pneumonia), Labeling([], schema.normal)]
    detections = [[box(10, 10, score=0.6), box(60, 60, score=0.2)], [box(30, 30, score=0.3)]]
    sizes = [(100, 100), (100, 100)]
    assert effort_threshold(truths, detections, sizes, (0.1, 0.5, 0.7), 0.4, schema) == (0.5, 0.0)
    assert effort_threshold(truths, detections, sizes, (0.1, 0.7), 0.4, schema) == (0.7, 1.0)
    threshold, edits = effort_threshold([], [], [], (0.1,), 0.4, schema)
    assert threshold is None and math.isnan(edits)
    # Ties go to the higher threshold: fewer boxes to look at for the same edits.
    assert effort_threshold([Labeling([], schema.normal)], [[]], sizes[:1], (0.1, 0.5), None, schema) == (0.5, 0.0)


@pytest.mark.parametrize("iou", [0.4, None])
def test_merging_never_invents_a_finding(iou):
    schema = load_schema()
    boxes = [box(10, 10, score=0.3), box(11, 11, score=0.5)]
    assert {b.finding for b in merge_boxes(boxes, iou, 64, 64, schema.findings)} == {schema.opacity}
