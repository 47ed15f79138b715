"""Several readers per image: consensus, agreement, and the ground truth an export gives
(cxrkit/evaluation/agreement.py, cxrkit/labelstudio/export.py), on hand-made cases."""
from __future__ import annotations

import math

import pytest

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box
from cxrkit.evaluation.agreement import (
    box_agreement,
    consensus,
    fleiss_kappa,
    image_agreement,
)
from cxrkit.evaluation.effort import Labeling
from cxrkit.labelstudio.effort import reader_agreement
from cxrkit.labelstudio.ground_truth import ground_truth, pick_annotations
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.pipeline.labels import read_labels, write_labels

SIZE = 200


def box(x, y, w=40, h=40, subtype=None, finding=None) -> Box:
    return Box(x, y, w, h, finding or load_schema().opacity, subtype)


def test_consensus_keeps_what_most_readers_drew():
    schema = load_schema()
    s0, s1 = schema.subtypes[:2]
    readers = [
        Labeling([box(10, 10, subtype=s0), box(120, 120)], schema.pneumonia),
        Labeling([box(14, 12, subtype=s1)], schema.pneumonia),
        Labeling([box(12, 8, subtype=s0)], schema.normal),
    ]
    agreed = consensus(readers, schema.opacity, schema.pneumonia)
    (fused,) = agreed.boxes  # (120, 120) was drawn by one reader of three: left out
    assert (fused.x, fused.y, fused.w, fused.h) == pytest.approx((12, 10, 40, 40)) and fused.subtype == s0
    assert agreed.impression == schema.pneumonia  # two of three
    # Two readers who disagree on the impression: the one the consensus boxes imply.
    tie = consensus([Labeling([], schema.normal), Labeling([box(10, 10)], schema.pneumonia)], schema.opacity,
                    schema.pneumonia)
    assert [b.x for b in tie.boxes] == [10] and tie.impression == schema.pneumonia  # 1 of 2 is half: kept
    assert consensus([Labeling([], schema.normal)], schema.opacity, schema.pneumonia) == Labeling([], schema.normal)


def test_box_agreement_is_the_matched_overlap_over_the_larger_count():
    assert box_agreement([], []) == 1.0
    assert box_agreement([box(0, 0)], []) == 0.0
    assert box_agreement([box(0, 0)], [box(0, 0)]) == pytest.approx(1.0)
    # 40x40 boxes moved by 10 px: IoU 1200 / 2000 = 0.6; the second reader's extra box counts 0
    assert box_agreement([box(0, 0)], [box(10, 0), box(150, 150)]) == pytest.approx(0.6 / 2)
    schema = load_schema()
    other = next(f for f in schema.findings if f != schema.opacity)
    assert box_agreement([box(0, 0)], [box(0, 0, finding=other)]) == 0.0  # another finding is no match
    agreement = image_agreement([Labeling([box(0, 0)], "a"), Labeling([box(0, 0)], "a"), Labeling([], "b")])
    assert agreement["readers"] == 3 and not agreement["impression_unanimous"]
    assert agreement["box_agreement"] == pytest.approx((1 + 0 + 0) / 3)


def test_fleiss_kappa_matches_the_worked_example():
    """Fleiss (1971) as worked in the literature: 10 items, 14 raters, 5 categories, kappa 0.210."""
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)
    assert fleiss_kappa([[2, 0], [0, 2], [2, 0]]) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([[2, 0], [2, 0]]))  # one category only: chance explains everything
    with pytest.raises(ValueError, match="same number of raters"):
        fleiss_kappa([[2, 0], [1, 0]])


def _annotation(i, reader, boxes, impression, when, ground_truth=False):
    schema = load_schema()
    return {"id": i, "completed_by": reader, "ground_truth": ground_truth, "updated_at": when,
            "result": boxes_to_results(boxes, SIZE, SIZE, schema, impression)}


def test_an_export_with_several_readers_trains_on_their_consensus_or_the_review(tmp_path):
    schema = load_schema()
    data = {"width": SIZE, "height": SIZE}
    export = [
        # Two readers agree on a box; one corrected their own label later (only the latest counts).
        {"id": 1, "data": {**data, "image_id": "two"}, "annotations": [
            _annotation(12, 2, [box(14, 10)], schema.pneumonia, "2026-01-01T10:30:00+00:00"),
            _annotation(10, 1, [box(10, 10)], schema.normal, "2026-01-01T10:00:00+00:00"),
            _annotation(11, 1, [box(10, 10)], schema.pneumonia, "2026-01-01T11:00:00+00:00")]},
        # The readers disagree; the reviewer starred reader 2's annotation (ground truth): final.
        {"id": 2, "data": {**data, "image_id": "reviewed"}, "annotations": [
            _annotation(20, 1, [box(10, 10)], schema.normal, "2026-01-01T12:00:00+00:00"),
            _annotation(21, {"id": 2}, [box(100, 100)], schema.pneumonia, "2026-01-01T10:05:00+00:00",
                        ground_truth=True)]},
        # One reader: exactly that reader's label, as always.
        {"id": 3, "data": {**data, "image_id": "one"}, "annotations": [
            _annotation(30, 1, [], schema.normal, "2026-01-01T10:00:00+00:00")]},
    ]
    _, counts = pick_annotations(export)
    assert (counts["labeled_images"], counts["images_with_several_readers"], counts["superseded_annotations"]) == (3, 2, 1)
    gt = {g.image_id: g for g in ground_truth(export, schema, readers_per_image=2)}
    two = gt["two"]
    assert two.source == "consensus" and two.impression == schema.pneumonia and two.annotation_id == 11
    assert [(b.x, b.y) for b in two.boxes] == [pytest.approx((12, 10))]
    assert [r["reader"] for r in two.readers] == ["reader-1", "reader-2"]  # by id, whatever the export's order
    assert two.agreement["impression_unanimous"] and two.agreement["box_agreement"] == pytest.approx(36 * 40 / (44 * 40))
    reviewed = gt["reviewed"]
    assert reviewed.source == "review" and [(b.x, b.y) for b in reviewed.boxes] == [(100, 100)]
    assert reviewed.annotation_id == 21 and reviewed.impression == schema.pneumonia
    assert not reviewed.agreement["impression_unanimous"] and len(reviewed.readers) == 2
    one = gt["one"]
    assert (one.source, one.agreement, one.impression) == ("reader", None, schema.normal)
    assert one.readers == [{"reader": "reader-1", "boxes": [], "impression": schema.normal}]  # for the per-reader report

    # One reader per image (the default): the latest annotation wins, whoever made it; no star, no consensus.
    single = {g.image_id: g for g in ground_truth(export, schema)}
    assert (single["two"].annotation_id, single["reviewed"].annotation_id) == (11, 20)
    assert all(g.source == "reader" and g.agreement is None and len(g.readers) == 1 for g in single.values())
    write_labels(list(single.values()), tmp_path / "single.jsonl")
    assert "readers" not in (tmp_path / "single.jsonl").read_text()  # a one-reader project's bytes as ever
    with pytest.raises(ValueError, match="readers_per_image"):
        ground_truth(export, schema, readers_per_image=0)

    # The round's agreement figures (metrics/effort.json "readers"): two images read twice, one unanimous;
    # kappa from the impression table [[0, 2, 0], [1, 1, 0]]: P = 0.5, expected 0.625, (0.5 - 0.625) / 0.375.
    summary = reader_agreement(list(gt.values()), schema.impressions)
    assert (summary["images"], summary["impression_unanimous"]) == (2, 0.5)
    assert summary["box_agreement"] == pytest.approx((36 / 44 + 0.0) / 2)
    assert summary["impression_kappa"] == pytest.approx(-1 / 3)
    assert reader_agreement([one], schema.impressions)["images"] == 0

    # The labels file keeps each reader's labels where there were several, and only there; read back,
    # the agreement figures are the same (recomputed from the readers' labels).
    path = tmp_path / "labels.jsonl"
    write_labels(list(gt.values()), path)
    lines = {line.split('"image_id": ')[1].split('"')[1]: line for line in path.read_text().splitlines()}
    assert "readers" not in lines["one"] and '"reader": "reader-2"' in lines["two"]
    back = {g.image_id: g for g in read_labels(path)}
    assert back["two"].readers == two.readers and back["two"].boxes == two.boxes
    assert reader_agreement(list(back.values()), schema.impressions) == summary
