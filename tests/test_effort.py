"""Correction effort (cxrkit/evaluation/effort.py, cxrkit/labelstudio/effort.py): edits counted
against the pre-annotation shown, by hand-made cases and from a real Label Studio's export of annotations made through its API."""
from __future__ import annotations

import uuid

import pytest

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.manifest import Box
from cxrkit.evaluation.effort import MATCH_IOU, Edits, annotation_edits, match_boxes
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.effort import (
    NO_PREANNOTATION,
    effort_rows,
    needs_predictions,
    summarise_effort,
)
from cxrkit.labelstudio.results import Labels, boxes_to_results
from tests.test_labelstudio import make_records

SIZE = 64


def box(x: float, y: float, w: float = 20, h: float = 20, finding: str | None = None, subtype: str | None = None) -> Box:
    return Box(x, y, w, h, finding or load_schema().opacity, subtype)


def test_match_boxes_pairs_each_box_once_greedily_down_to_min_iou():
    # Two shown boxes near one true box: the closer one pairs with it; the other pairs with nothing.
    shown, final = [box(0, 0), box(5, 0), box(100, 100)], [box(2, 0), box(110, 100)]  # IoU 0.82, 0.74; 0.33
    assert [(i, j) for i, j, _ in match_boxes(shown, final)] == [(0, 0), (2, 1)]
    assert MATCH_IOU < 0.33
    # A stricter floor (bench_pseudo_boxes.py's IoU 0.5) drops the 0.33 pair and keeps the other.
    assert [(i, j) for i, j, _ in match_boxes(shown, final, min_iou=0.5)] == [(0, 0)]
    assert match_boxes([], final) == [] and match_boxes(shown, [], min_iou=0.5) == []


def test_each_kind_of_edit_is_counted_once():
    schema = load_schema()
    other = next(f for f in schema.findings if f != schema.opacity)
    shown = Labels([box(0, 0), box(30, 0), box(0, 30), box(40, 40), box(30, 30, subtype=schema.subtypes[0])],
                   schema.normal)
    final = Labels([
        box(0, 0),                                    # kept: the same place
        box(33, 3),                                   # adjusted: moved by 3 px (IoU 0.57)
        box(0, 30, finding=other),                    # adjusted: another finding at the same place
        box(30, 30, subtype=schema.subtypes[1]),      # kept in place, its subtype changed
        box(5, 44, 8, 8, subtype=schema.subtypes[0]),  # added (a miss), with a subtype
    ], schema.pneumonia)                              # (40, 40) was deleted; the impression changed
    edits = annotation_edits(final, shown)
    assert edits == Edits(kept=2, adjusted=2, deleted=1, added=1, subtype_changed=2, impression_changed=1)
    assert edits.total == 2 + 1 + 1 + 2 + 1
    assert annotation_edits(shown, shown) == Edits(kept=5)


def test_a_box_moved_off_its_place_is_a_deletion_and_an_addition():
    """Below MATCH_IOU the radiologist drew a new finding rather than corrected the shown one."""
    edits = annotation_edits(Labels([box(40, 40)]), Labels([box(0, 0)]))
    assert (edits.kept, edits.adjusted, edits.deleted, edits.added) == (0, 0, 1, 1)


def test_nothing_shown_counts_everything_as_added_work():
    schema = load_schema()
    final = Labels([box(0, 0, subtype=schema.subtypes[0]), box(30, 30)], schema.pneumonia)
    assert annotation_edits(final, None) == Edits(added=2, subtype_changed=1, impression_changed=1)
    assert annotation_edits(Labels(), None).total == 0  # "nothing here", unassisted: no edit but the reading


def test_rows_skip_skipped_tasks_report_broken_ones_and_summarise_per_version():
    schema = load_schema()
    shown = boxes_to_results([box(0, 0)], SIZE, SIZE, schema, schema.normal)
    moved = boxes_to_results([box(4, 0)], SIZE, SIZE, schema, schema.normal)
    data = {"image_id": "x", "width": SIZE, "height": SIZE}
    prediction = {"id": 7, "model_version": "v1", "result": shown}
    export = [
        {"id": 1, "data": data, "predictions": [prediction],
         "annotations": [{"id": 10, "result": shown, "prediction": prediction, "lead_time": 4.0},
                         {"id": 11, "result": [], "was_cancelled": True, "prediction": prediction}]},
        # Label Studio's copy of the shown prediction is missing: parent_prediction names it (an export
        # lists a task's predictions by id; the project's predictions are looked up).
        {"id": 2, "data": {**data, "image_id": "y"}, "predictions": [7],
         "annotations": [{"id": 12, "result": moved, "prediction": {}, "parent_prediction": 7, "lead_time": 8.0}]},
        {"id": 3, "data": {**data, "image_id": "z"}, "predictions": [],
         "annotations": [{"id": 13, "result": moved, "prediction": {}, "lead_time": None}]},
        {"id": 4, "data": {**data, "image_id": "w"}, "predictions": [],
         "annotations": [{"id": 14, "result": [{"type": "choices", "from_name": schema.impression_tag, "id": "a",
                                                 "to_name": schema.image_tag, "value": {"choices": ["Maybe"]}}]}]},
    ]
    assert needs_predictions(export)
    rows, problems = effort_rows(export, schema, {7: prediction})
    assert [r["annotation"] for r in rows] == [10, 12, 13]
    assert len(problems) == 1 and "task 4 (image w), annotation 14" in problems[0] and "Maybe" in problems[0]
    summary = summarise_effort(rows)
    assert set(summary) == {"v1", NO_PREANNOTATION}
    v1 = summary["v1"]
    assert (v1["images"], v1["kept"], v1["adjusted"], v1["edits_per_image"], v1["unchanged"]) == (2, 1, 1, 0.5, 0.5)
    assert (v1["timed"], v1["seconds_median"], v1["seconds_mean"]) == (2, 6.0, 6.0)
    scratch = summary[NO_PREANNOTATION]
    assert (scratch["added"], scratch["impression_changed"], scratch["timed"], scratch["seconds_median"]) == (1, 1, 0, None)
    # Without the project's predictions the id cannot be read: reported and left out, never counted as unassisted.
    rows, problems = effort_rows(export, schema)
    assert 12 not in [r["annotation"] for r in rows] and any("annotation 12" in p and "(7)" in p for p in problems)


@pytest.mark.slow
def test_effort_from_a_real_label_studio_export(labelstudio, labelstudio_workspace):
    """Annotations made through Label Studio's API over the predictions it shows: the server itself
    records which prediction each annotation started from, and the counts come out as made."""
    schema = load_schema()
    ls = LabelStudio.for_server(labelstudio)
    project = ls.ensure_project(f"effort {uuid.uuid4().hex[:6]}", DEFAULT_CONFIG.read_text())
    records = make_records(labelstudio_workspace, f"effort{uuid.uuid4().hex[:4]}-", 5)
    ls.import_tasks(project, records, labelstudio_workspace.data_dir)
    tasks = ls.tasks_by_image(project)
    accepted, corrected, redrawn, unassisted, late = (r.image_id for r in records)
    predicted = box(10, 10)
    ls.push_predictions(project, {i: ([predicted], schema.normal) for i in (accepted, corrected, redrawn, late)},
                        "effort-v1")

    def annotate(image_id: str, boxes: list[Box], impression: str, seconds: float, **extra) -> None:
        ls.request("POST", f"/api/tasks/{tasks[image_id]['id']}/annotations",
                   json={"result": boxes_to_results(boxes, SIZE, SIZE, schema, impression), "lead_time": seconds,
                         **extra})

    annotate(accepted, [predicted], schema.normal, 3.0)                            # accepted as shown
    annotate(corrected, [box(14, 12, subtype=schema.subtypes[0])], schema.pneumonia, 9.0)  # moved, subtyped
    annotate(redrawn, [box(40, 40, 16, 16)], schema.normal, 12.0)                   # deleted and drawn anew
    annotate(unassisted, [box(5, 5), box(40, 40)], schema.pneumonia, 30.0)          # no prediction shown
    # The project moved on to another version while this film was open: Label Studio keeps no copy
    # of what was shown, and the editor's parent_prediction names it.
    (shown_late,) = [p["id"] for p in ls.predictions(project) if p["task"] == tasks[late]["id"]]
    ls.push_predictions(project, {unassisted: ([box(40, 40)], schema.normal)}, "effort-v2")  # now shown: v2
    annotate(late, [predicted], schema.normal, 5.0, parent_prediction=shown_late)

    export = ls.export_snapshot(project)
    assert needs_predictions(export)
    rows, problems = effort_rows(export, schema, {p["id"]: p for p in ls.predictions(project)})
    assert problems == []
    by_image = {r["image_id"]: r for r in rows}
    assert by_image[accepted]["model_version"] == "effort-v1" and by_image[accepted]["edits"] == 0
    assert (by_image[corrected]["adjusted"], by_image[corrected]["subtype_changed"],
            by_image[corrected]["impression_changed"], by_image[corrected]["edits"]) == (1, 1, 1, 3)
    assert (by_image[redrawn]["deleted"], by_image[redrawn]["added"], by_image[redrawn]["edits"]) == (1, 1, 2)
    assert by_image[unassisted]["model_version"] == NO_PREANNOTATION
    assert (by_image[unassisted]["added"], by_image[unassisted]["edits"]) == (2, 3)
    assert (by_image[late]["model_version"], by_image[late]["kept"], by_image[late]["edits"]) == ("effort-v1", 1, 0)
    summary = summarise_effort(rows)
    assert summary["effort-v1"]["images"] == 4 and summary["effort-v1"]["edits_per_image"] == pytest.approx(5 / 4)
    assert summary["effort-v1"]["seconds_median"] == pytest.approx(7.0)  # 3, 5, 9, 12
    assert summary[NO_PREANNOTATION]["seconds_median"] == pytest.approx(30.0)


def test_status_lines_and_the_plot_read_the_rounds_effort(tmp_path):
    """metrics/effort.json as a retrain writes it: `cxr status` prints a line per model version and
    `cxr plots` draws them in the order of the rounds that trained them, unassisted as a line."""
    import json

    from PIL import Image

    from cxrkit.core.workspace import Workspace
    from cxrkit.evaluation.plots import plot_effort
    from cxrkit.pipeline import EFFORT_FILE
    from cxrkit.pipeline.round_plots import effort_by_round
    from cxrkit.services.status import effort_lines, effort_status

    ws = Workspace(tmp_path / "ws")
    assert effort_status(ws) is None and effort_lines(None) == [] and effort_by_round(ws, []) is None

    def entry(images, edits, seconds):
        return {"images": images, "edits_per_image": edits, "unchanged": 0.25, "kept": 1, "adjusted": 2, "deleted": 3,
                "added": 4, "subtype_changed": 5, "impression_changed": 6, "timed": images, "seconds_median": seconds,
                "seconds_mean": seconds}

    (ws.root / "metrics").mkdir(parents=True)
    (ws.root / EFFORT_FILE).write_text(json.dumps({"annotations": 9, "by_model_version": {
        "v2": entry(2, 0.5, 6.0), "v1": entry(3, 1.5, None), NO_PREANNOTATION: entry(4, 3.0, 20.0)}}))
    lines = effort_lines(effort_status(ws))
    assert lines[0].startswith("correction effort at the last retrain's export (9 annotations")
    assert any(line.strip() == "v1: 3 images, 1.50 edits/image (adjusted 2, deleted 3, added 4, subtype 5, impression 6; "
               "kept 1), 25% unchanged, no time recorded" for line in lines)
    assert any(line.strip().startswith("v2: 2 images, 0.50 edits/image") and "median 6.0 s/image" in line for line in lines)
    versions, scratch = effort_by_round(ws, [{"model_version": "v1", "round": 1}, {"model_version": "v2", "round": 2}])
    assert [v["model_version"] for v in versions] == ["v1", "v2"] and scratch["seconds_median"] == 20.0
    png = plot_effort(versions, tmp_path / "effort.png", "effort", scratch=scratch)
    pixels = Image.open(png).convert("L")
    assert pixels.size[0] > 400 and pixels.getextrema()[0] < 100  # drawn, not blank
