"""Boxes <-> Label Studio results, and ground truth / YOLO / CSV from a Label Studio export.

The export below follows Label Studio's JSON export format field for field (task
`id/data/annotations/drafts/predictions`, annotation `id/created_at/updated_at/
was_cancelled/result/completed_by/lead_time/...`, regions with `original_width`
and percent coordinates). Every tag and label name comes from label_config.xml.
"""
from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box
from cxrkit.labelstudio.export import (
    content_hash,
    prune_snapshots,
    save_snapshot,
    to_yolo,
)
from cxrkit.labelstudio.ground_truth import ground_truth, pick_annotations
from cxrkit.labelstudio.results import boxes_to_results, results_to_labels

SCHEMA = load_schema()
OPACITY = SCHEMA.opacity
EFFUSION = SCHEMA.findings[4]  # any finding but the first: its class index must be 4
VIRAL = SCHEMA.subtypes[1]
PNEUMONIA = SCHEMA.pneumonia
NORMAL = SCHEMA.normal
REPO = Path(__file__).resolve().parent.parent


# --- results <-> boxes ------------------------------------------------------


def test_boxes_to_results_writes_percent_and_links_subtype_by_region_id():
    boxes = [Box(100, 200, 300, 160, OPACITY, subtype=VIRAL, score=0.875), Box(612.5, 40, 125, 100, EFFUSION)]
    results = boxes_to_results(boxes, 1000, 800, SCHEMA, impression=PNEUMONIA)

    rect1, sub1, rect2, imp = results
    assert rect1["type"] == "rectanglelabels" and rect1["from_name"] == SCHEMA.finding_tag
    assert rect1["to_name"] == SCHEMA.image_tag
    assert (rect1["original_width"], rect1["original_height"], rect1["image_rotation"]) == (1000, 800, 0)
    assert rect1["value"] == {
        "x": pytest.approx(10.0, abs=1e-9),
        "y": pytest.approx(25.0, abs=1e-9),
        "width": pytest.approx(30.0, abs=1e-9),
        "height": pytest.approx(20.0, abs=1e-9),
        "rotation": 0,
        "rectanglelabels": [OPACITY],
    }
    assert rect1["score"] == 0.875
    # The per-region subtype is a choices result on the same region: same id, same geometry.
    assert sub1["id"] == rect1["id"] and sub1["type"] == "choices" and sub1["from_name"] == SCHEMA.subtype_tag
    assert sub1["value"]["choices"] == [VIRAL]
    assert {k: sub1["value"][k] for k in ("x", "y", "width", "height")} == {k: rect1["value"][k] for k in ("x", "y", "width", "height")}
    assert (rect2["value"]["x"], rect2["value"]["y"], rect2["value"]["width"], rect2["value"]["height"]) == pytest.approx(
        (61.25, 5.0, 12.5, 12.5), abs=1e-9
    )
    assert "score" not in rect2
    assert rect2["id"] != rect1["id"]
    assert imp["type"] == "choices" and imp["from_name"] == SCHEMA.impression_tag and imp["value"] == {"choices": [PNEUMONIA]}
    # Stable ids: the same boxes give the same results every time.
    assert boxes_to_results(boxes, 1000, 800, SCHEMA, impression=PNEUMONIA) == results


def test_round_trip_is_exact():
    rng = random.Random(7)
    width, height = 1023, 777
    boxes = []
    for i in range(40):
        x, y = rng.uniform(0, width - 50), rng.uniform(0, height - 50)
        boxes.append(
            Box(
                x=x,
                y=y,
                w=rng.uniform(1, width - x),
                h=rng.uniform(1, height - y),
                finding=rng.choice(SCHEMA.findings),
                subtype=rng.choice((None,) + SCHEMA.subtypes),
                score=rng.choice((None, rng.random())),
            )
        )
    # Through JSON, as the results travel to Label Studio and back.
    results = json.loads(json.dumps(boxes_to_results(boxes, width, height, SCHEMA, impression=NORMAL)))
    labels = results_to_labels(results, SCHEMA)

    assert labels.impression == NORMAL and labels.comment is None
    assert len(labels.boxes) == len(boxes)
    for got, want in zip(labels.boxes, boxes):
        for attr in ("x", "y", "w", "h"):
            assert getattr(got, attr) == pytest.approx(getattr(want, attr), abs=1e-6)
        assert (got.finding, got.subtype, got.score) == (want.finding, want.subtype, want.score)


def test_results_to_labels_rejects_names_not_in_the_config():
    rect = boxes_to_results([Box(10, 10, 20, 20, OPACITY)], 100, 100, SCHEMA)[0]
    bad_label = copy.deepcopy(rect)
    bad_label["value"]["rectanglelabels"] = ["Banana"]
    with pytest.raises(ValueError, match="unknown finding 'Banana'"):
        results_to_labels([bad_label], SCHEMA)
    other_tag = dict(rect, from_name="not_our_tag")
    with pytest.raises(ValueError, match="not_our_tag"):
        results_to_labels([other_tag], SCHEMA)
    bad_subtype = dict(rect, type="choices", from_name=SCHEMA.subtype_tag, value={"choices": ["Banana"]})
    with pytest.raises(ValueError, match="unknown subtype 'Banana'"):
        results_to_labels([rect, bad_subtype], SCHEMA)
    orphan = dict(bad_subtype, id="no_such_box", value={"choices": [VIRAL]})
    with pytest.raises(ValueError, match="no_such_box"):
        results_to_labels([rect, orphan], SCHEMA)
    with pytest.raises(ValueError, match="unknown impression"):
        boxes_to_results([], 100, 100, SCHEMA, impression="Banana")
    with pytest.raises(ValueError, match="unknown subtype"):
        boxes_to_results([Box(1, 1, 2, 2, OPACITY, subtype="Banana")], 100, 100, SCHEMA)


def test_missing_original_size_falls_back_to_the_given_size():
    rect = boxes_to_results([Box(10, 20, 30, 40, OPACITY)], 200, 400, SCHEMA)[0]
    del rect["original_width"], rect["original_height"]
    box = results_to_labels([rect], SCHEMA, width=200, height=400).boxes[0]
    assert (box.x, box.y, box.w, box.h) == pytest.approx((10, 20, 30, 40), abs=1e-9)
    # The size recorded with the region wins over the fallback.
    recorded = boxes_to_results([Box(10, 20, 30, 40, OPACITY)], 200, 400, SCHEMA)
    box = results_to_labels(recorded, SCHEMA, width=999, height=999).boxes[0]
    assert (box.x, box.y, box.w, box.h) == pytest.approx((10, 20, 30, 40), abs=1e-9)
    with pytest.raises(ValueError, match="original_width"):
        results_to_labels([rect], SCHEMA)


def test_rotated_rectangle_becomes_its_axis_aligned_bounds():
    rect = boxes_to_results([Box(100, 100, 200, 100, OPACITY)], 1000, 1000, SCHEMA)[0]
    rect["value"]["rotation"] = 90  # about the top-left corner, clockwise on screen (y points down)
    box = results_to_labels([rect], SCHEMA).boxes[0]
    assert (box.x, box.y, box.w, box.h) == pytest.approx((0, 100, 100, 200), abs=1e-9)


# --- a Label Studio export --------------------------------------------------


def _region(rid, from_name, kind, value, w, h):
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": value,
        "id": rid,
        "from_name": from_name,
        "to_name": SCHEMA.image_tag,
        "type": kind,
        "origin": "manual",
    }


def _rect(rid, x, y, w, h, label, iw, ih):
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}
    return _region(rid, SCHEMA.finding_tag, "rectanglelabels", value, iw, ih)


def _annotation(aid, task_id, result, updated_at, was_cancelled=False):
    return {
        "id": aid,
        "completed_by": {"id": 1, "email": "rad@example.org", "first_name": "", "last_name": ""},
        "result": result,
        "was_cancelled": was_cancelled,
        "ground_truth": False,
        "created_at": "2024-05-01T08:00:00.000000Z",
        "updated_at": updated_at,
        "draft_created_at": None,
        "lead_time": 12.5,
        "prediction": {},
        "result_count": len(result),
        "unique_id": f"u-{aid}",
        "import_id": None,
        "last_action": None,
        "task": task_id,
        "project": 1,
        "updated_by": 1,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }


def _task(tid, image_id, annotations=(), drafts=(), predictions=()):
    return {
        "id": tid,
        "data": {"image": f"/data/local-files/?d=images/{image_id}.png", "image_id": image_id, "patient_info": "AP, 62 y"},
        "annotations": list(annotations),
        "drafts": list(drafts),
        "predictions": list(predictions),
        "meta": {},
        "created_at": "2024-05-01T07:00:00.000000Z",
        "updated_at": "2024-05-02T07:00:00.000000Z",
        "inner_id": tid,
        "total_annotations": len(annotations),
        "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
        "total_predictions": len(predictions),
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 1,
        "updated_by": 1,
        "file_upload": None,
        "comment_authors": [],
    }


SIZES = {"img_full": (1000, 800), "img_two": (640, 480), "img_neg": (512, 512), "img_skip": (300, 300), "img_draft": (300, 300)}


def make_export(opacity_x: float = 10.0) -> list[dict]:
    full = _annotation(
        101,
        1,
        [
            _rect("r1", opacity_x, 25.0, 30.0, 20.0, OPACITY, 1000, 800),
            # The subtype's result may come before or after its box; the id joins them.
            _region("r2", SCHEMA.subtype_tag, "choices", {"x": 61.25, "y": 5.0, "width": 12.5, "height": 12.5, "rotation": 0, "choices": [VIRAL]}, 1000, 800),
            _rect("r2", 61.25, 5.0, 12.5, 12.5, EFFUSION, 1000, 800),
            _region("imp", SCHEMA.impression_tag, "choices", {"choices": [PNEUMONIA]}, 1000, 800),
            _region("txt", "comment", "textarea", {"text": ["faint, recheck lateral"]}, 1000, 800),
        ],
        "2024-05-02T09:00:00.000000Z",
    )
    prediction = {
        "id": 7,
        "model_version": "yolo-v1",
        "created_ago": "3 hours",
        "score": 0.4,
        "result": [_rect("p1", 50.0, 50.0, 10.0, 10.0, OPACITY, 640, 480)],
        "cluster": None,
        "neighbors": None,
        "mislabeling": 0.0,
        "created_at": "2024-05-01T07:30:00.000000Z",
        "updated_at": "2024-05-01T07:30:00.000000Z",
        "task": 4,
        "project": 1,
    }
    draft = {
        "id": 55,
        "user": "rad@example.org",
        "created_username": "rad@example.org, 1",
        "created_ago": "2 hours",
        "result": [_rect("d1", 10.0, 10.0, 20.0, 20.0, OPACITY, 300, 300)],
        "lead_time": 3.0,
        "was_postponed": False,
        "import_id": None,
        "created_at": "2024-05-02T10:00:00.000000Z",
        "updated_at": "2024-05-02T10:00:00.000000Z",
        "task": 3,
        "annotation": None,
    }
    # Task 4: the newer annotation has the LOWER id and comes first: updated_at decides.
    newer = _annotation(90, 4, [_rect("n1", 25.0, 50.0, 50.0, 25.0, OPACITY, 640, 480)], "2024-05-03T12:00:00.000000Z")
    older = _annotation(120, 4, [_rect("o1", 0.0, 0.0, 10.0, 10.0, EFFUSION, 640, 480)], "2024-05-03T11:59:59.999999Z")
    return [
        _task(1, "img_full", [full]),
        _task(2, "img_skip", [_annotation(102, 2, [], "2024-05-02T09:01:00.000000Z", was_cancelled=True)]),
        _task(3, "img_draft", drafts=[draft]),
        _task(4, "img_two", [newer, older], predictions=[prediction]),
        _task(5, "img_neg", [_annotation(105, 5, [], "2024-05-02T09:05:00.000000Z")]),
        _task(6, "img_untouched"),
    ]


def test_ground_truth_takes_only_the_latest_submitted_annotation():
    gt = {g.image_id: g for g in ground_truth(make_export(), SCHEMA)}
    assert sorted(gt) == ["img_full", "img_neg", "img_two"]

    full = gt["img_full"]
    assert [(b.finding, b.subtype) for b in full.boxes] == [(OPACITY, None), (EFFUSION, VIRAL)]
    assert [(b.x, b.y, b.w, b.h) for b in full.boxes] == [
        pytest.approx((100.0, 200.0, 300.0, 160.0), abs=1e-6),
        pytest.approx((612.5, 40.0, 125.0, 100.0), abs=1e-6),
    ]
    assert (full.impression, full.comment, full.annotation_id) == (PNEUMONIA, "faint, recheck lateral", 101)

    two = gt["img_two"]
    assert two.annotation_id == 90 and two.updated_at == "2024-05-03T12:00:00.000000Z"
    assert [b.finding for b in two.boxes] == [OPACITY]
    assert (two.boxes[0].x, two.boxes[0].y, two.boxes[0].w, two.boxes[0].h) == pytest.approx((160.0, 240.0, 320.0, 120.0), abs=1e-6)

    neg = gt["img_neg"]
    assert neg.boxes == [] and neg.impression is None and neg.annotation_id == 105

    _, counts = pick_annotations(make_export())
    assert counts["tasks"] == 6
    assert counts["labeled_images"] == 3
    assert counts["cancelled_annotations"] == 1 and counts["tasks_cancelled_only"] == 1
    assert counts["tasks_draft_only"] == 1 and counts["drafts_ignored"] == 1
    assert counts["superseded_annotations"] == 1
    assert counts["predictions_ignored"] == 1
    assert counts["tasks_untouched"] == 1


def test_ground_truth_error_names_the_task_and_the_label():
    export = make_export()
    export[0]["annotations"][0]["result"][0]["value"]["rectanglelabels"] = ["Banana"]
    with pytest.raises(ValueError, match=r"task 1 \(image img_full\), annotation 101: unknown finding 'Banana'"):
        ground_truth(export, SCHEMA)


# --- snapshot ---------------------------------------------------------------


def test_snapshot_is_versioned_by_content(tmp_path):
    first = save_snapshot(make_export(), tmp_path)
    assert first.name.startswith("labels-") and first.name.endswith(f"-{content_hash(make_export())}.json")
    assert json.loads(first.read_text())[0]["annotations"][0]["id"] == 101
    # Same labels (key order and the clock-relative "created_ago" aside) -> same file, nothing new written.
    reordered = [dict(reversed(list(t.items()))) for t in make_export()]
    reordered[3]["predictions"][0]["created_ago"] = "5 hours"
    assert save_snapshot(reordered, tmp_path) == first
    assert len(list(tmp_path.iterdir())) == 1
    # Later on, the same content still finds the snapshot it was first saved as.
    earlier = first.rename(first.with_name(f"labels-20000101T000000Z-{content_hash(make_export())}.json"))
    assert save_snapshot(make_export(), tmp_path) == earlier
    assert len(list(tmp_path.iterdir())) == 1
    first = earlier
    # One box moved by a tenth of a percent -> a new snapshot.
    second = save_snapshot(make_export(opacity_x=10.1), tmp_path)
    assert second != first and second.exists() and first.exists()
    assert content_hash(make_export(opacity_x=10.1)) != content_hash(make_export())


def test_old_snapshots_are_pruned_but_the_newest_and_the_current(tmp_path):
    names = [f"labels-2026010{d}T000000Z-{d:012x}.json" for d in range(1, 6)]
    for name in names:
        (tmp_path / name).write_text("[]")
    current = tmp_path / names[0]  # the oldest, found again by its content this round
    gone = prune_snapshots(tmp_path, 3, current)
    assert [p.name for p in gone] == names[1:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[0], *names[3:]]
    assert prune_snapshots(tmp_path, 3, current) == []


def test_snapshot_hash_is_the_same_in_another_process(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(make_export()))
    code = (
        "import json, sys; from cxrkit.labelstudio.export import content_hash; "
        "print(content_hash(json.load(open(sys.argv[1]))))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == content_hash(make_export())


# --- YOLO and CSV -----------------------------------------------------------


@pytest.fixture
def images_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for image_id, size in SIZES.items():
        Image.new("L", size).save(d / f"{image_id}.png")
    return d


def test_to_yolo_writes_an_ultralytics_detection_set(tmp_path, images_dir):
    gt = ground_truth(make_export(), SCHEMA)
    out = tmp_path / "yolo"
    split_of = {"img_full": "train", "img_neg": "train", "img_two": "val"}
    data_yaml = to_yolo(gt, images_dir, out, SCHEMA, split_of)

    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == list(SCHEMA.findings)
    assert (data["path"], data["train"], data["val"]) == (str(out.resolve()), "images/train", "images/val")
    # cx = (100 + 300/2) / 1000, cy = (200 + 160/2) / 800, w = 300/1000, h = 160/800; class 4 = EFFUSION
    assert (out / "labels/train/img_full.txt").read_text() == (
        "0 0.250000 0.350000 0.300000 0.200000\n"
        "4 0.675000 0.112500 0.125000 0.125000\n"
    )
    # (160 + 160) / 640, (240 + 60) / 480, 320 / 640, 120 / 480
    assert (out / "labels/val/img_two.txt").read_text() == "0 0.500000 0.625000 0.500000 0.250000\n"
    assert (out / "labels/train/img_neg.txt").read_text() == ""  # annotated, nothing there
    assert sorted(p.name for p in (out / "images/train").iterdir()) == ["img_full.png", "img_neg.png"]
    assert (out / "images/train/img_full.png").read_bytes() == (images_dir / "img_full.png").read_bytes()
    assert not (out / "labels/train/img_two.txt").exists()

    # A rebuild with another split leaves nothing of the old one behind.
    to_yolo(gt, images_dir, out, SCHEMA, {"img_full": "val", "img_neg": "train", "img_two": "val"})
    assert not (out / "labels/train/img_full.txt").exists() and not (out / "images/train/img_full.png").exists()
    assert (out / "labels/val/img_full.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "yolo"]  # no build leftovers

    with pytest.raises(ValueError, match="no split"):
        to_yolo(gt, images_dir, out, SCHEMA, {"img_full": "train"})


def test_yolo_boxes_are_clipped_to_the_image(tmp_path, images_dir):
    from cxrkit.labelstudio.export import LabeledImage

    item = LabeledImage("img_neg", [Box(-10, 500, 100, 30, OPACITY), Box(600, 0, 10, 10, OPACITY)], None, None, 1, "")
    to_yolo([item], images_dir, tmp_path / "yolo", SCHEMA, {"img_neg": "train"})
    # x from 0 to 90, y from 500 to 512 (the image is 512 x 512); the second box is outside and dropped.
    assert (tmp_path / "yolo/labels/train/img_neg.txt").read_text() == "0 0.087891 0.988281 0.175781 0.023438\n"


def test_ultralytics_reads_the_set(tmp_path, images_dir):
    from cxrkit.models.detector import import_ultralytics

    import_ultralytics()  # first: offline, and its settings in their own folder, not ~/.config
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    split_of = {"img_full": "train", "img_neg": "train", "img_two": "val"}
    data = check_det_dataset(str(to_yolo(ground_truth(make_export(), SCHEMA), images_dir, tmp_path / "yolo", SCHEMA, split_of)))
    assert data["nc"] == len(SCHEMA.findings)
    labels = {Path(lb["im_file"]).stem: lb for lb in YOLODataset(img_path=data["train"], data=data, task="detect").labels}
    assert sorted(labels) == ["img_full", "img_neg"]  # neither refused as corrupt
    assert labels["img_full"]["cls"].ravel().tolist() == [0, 4]
    assert labels["img_neg"]["bboxes"].shape[0] == 0  # a background image: a true negative
