"""Round trip through a real Label Studio: records -> tasks -> predictions -> annotations
(as a radiologist leaves them: corrected, re-reviewed, skipped, half-finished) -> export ->
snapshot -> ground truth -> YOLO set, checked value by value.

Uses the session's Label Studio (tests/labelstudio_server.py) with a project of its own, so
the tasks of other test modules do not mix in. The tests build on each other in file order.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime

import cv2
import numpy as np
import pytest
import yaml

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.manifest import Box, Record
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.export import (
    image_subtype,
    save_snapshot,
    snapshot_bytes,
    to_yolo,
)
from cxrkit.labelstudio.ground_truth import ground_truth, pick_annotations
from cxrkit.labelstudio.results import boxes_to_results

pytestmark = pytest.mark.slow

SCHEMA = load_schema()
PROJECT_TITLE = "CXR roundtrip (test_labelstudio_roundtrip)"
PREFIX = "rt"
N_TASKS = 50
N_ANNOTATED = 40  # tasks 0..39 get a submitted annotation
SIZES = [(300, 240), (256, 256), (240, 300), (301, 257)]  # width x height; non-square first
MODEL_VERSION = "rt-model-1"
# The model's guess on every image: a box and impression no annotation uses, so a leak shows.
DECOY = Box(33.25, 44.75, 21.5, 17.125, "Cardiomegaly", subtype="Fungal", score=0.4242)
DECOY_IMPRESSION = "Other abnormality"

# Special tasks (by index).
TWICE = 5  # annotated twice: the second annotation wins
PATCHED = 6  # annotated twice, then the first is edited: the edit is the latest and wins
CANCELLED_AFTER = 7  # a real annotation, then a skip: the real one stays ground truth
EMPTY = 8  # a submitted annotation with no regions and no impression: "nothing here"
SKIPPED = 40  # only a skip (was_cancelled): not ground truth
DRAFT = 41  # only a draft: not ground truth
LATE = 42  # annotated last, after the first snapshot: a new snapshot


def image_id(i: int) -> str:
    return f"{PREFIX}{i:03d}"


def size_of(i: int) -> tuple[int, int]:
    return SIZES[i % len(SIZES)]


@dataclass
class Truth:
    """What the radiologist says about one image (the values the round trip must give back)."""

    boxes: list[Box] = field(default_factory=list)
    impression: str | None = None
    comment: str | None = None


def plan_truth(i: int, rng: random.Random) -> Truth:
    """Varied ground truth: 0-3 boxes of every finding, subtypes (some None), fractional pixels."""
    w, h = size_of(i)
    n_boxes = i % 4
    boxes = []
    for k in range(n_boxes):
        finding = SCHEMA.findings[(3 * i + k) % len(SCHEMA.findings)]
        subtype = (None,) + SCHEMA.subtypes
        subtype = subtype[(i + 2 * k) % len(subtype)]
        bw, bh = rng.uniform(5, w / 3), rng.uniform(5, h / 3)
        boxes.append(Box(rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh, finding, subtype))
    impression = (None,) + SCHEMA.impressions
    truth = Truth(boxes, impression[i % len(impression)])
    if i % 7 == 3:
        truth.comment = f"re-read {i}: faint opacity, compare with prior — ünïcode ok"
    return truth


def special_truths() -> dict[int, Truth]:
    """Boxes on the edges of their images, and the hand-picked cases."""
    opacity, effusion, nodule = SCHEMA.opacity, "Pleural Effusion", "Nodule/Mass"
    w0, h0 = size_of(0)
    w1, h1 = size_of(1)
    w2, h2 = size_of(2)
    return {
        # Touching the top-left corner, and the right and bottom edges exactly.
        0: Truth([Box(0.0, 0.0, 17.5, 12.25, opacity, SCHEMA.subtypes[0]),
                  Box(w0 - 40.125, h0 - 30.0625, 40.125, 30.0625, effusion)], "Pneumonia"),
        # The whole image, and a sliver one pixel wide on the left edge.
        1: Truth([Box(0.0, 0.0, float(w1), float(h1), "Cardiomegaly"),
                  Box(0.0, 100.3333333, 1.0, 20.6666667, nodule, None)], "Other abnormality",
                 comment="first line\nsecond line"),
        # Reaching past the right and bottom edges (kept as drawn; YOLO clips it).
        2: Truth([Box(w2 - 10.5, h2 - 8.25, 30.0, 20.0, opacity, "COVID-19")], "Pneumonia"),
        EMPTY: Truth([], None),
    }


def make_image(i: int, w: int, h: int) -> np.ndarray:
    """A chest-radiograph-like grey image (bright mediastinum, dark lungs) with noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lungs = np.exp(-(((xx - w * 0.3) / (w * 0.15)) ** 2 + ((yy - h * 0.45) / (h * 0.3)) ** 2))
    lungs += np.exp(-(((xx - w * 0.7) / (w * 0.15)) ** 2 + ((yy - h * 0.45) / (h * 0.3)) ** 2))
    img = 200 - 120 * lungs + np.random.default_rng(i).normal(0, 6, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def box_key(b: Box):
    return (b.finding, b.subtype)


def assert_same_boxes(got: list[Box], want: list[Box], where: str):
    assert len(got) == len(want), f"{where}: {len(got)} boxes, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert (g.finding, g.subtype) == (w.finding, w.subtype), f"{where} box {k}"
        for attr in ("x", "y", "w", "h"):
            # Label Studio stores percent floats: pixels come back to float precision.
            assert getattr(g, attr) == pytest.approx(getattr(w, attr), rel=1e-6, abs=1e-9), f"{where} box {k} {attr}"
        assert g.score is None, f"{where} box {k}: an annotation's box has no model score"


# --- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ls(labelstudio) -> LabelStudio:
    return LabelStudio.for_server(labelstudio)


@pytest.fixture(scope="module")
def project(ls) -> int:
    return ls.ensure_project(PROJECT_TITLE, DEFAULT_CONFIG.read_text())


@pytest.fixture(scope="module")
def records(labelstudio_workspace) -> list[Record]:
    out = []
    for i in range(N_TASKS):
        w, h = size_of(i)
        path = labelstudio_workspace.images_dir / f"{image_id(i)}.png"
        assert cv2.imwrite(str(path), make_image(i, w, h))
        out.append(
            Record(image_id=image_id(i), path=f"images/{image_id(i)}.png", source="synthetic", width=w, height=h,
                   metadata={"age": 20 + i, "sex": "FM"[i % 2], "view": "AP" if i % 3 else "PA"})
        )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def truths() -> dict[int, Truth]:
    rng = random.Random(20240611)
    plan = {i: plan_truth(i, rng) for i in range(N_ANNOTATED)}
    plan.update(special_truths())
    return plan


@pytest.fixture(scope="module")
def state() -> dict:
    """What earlier tests of this module made (task ids, snapshot paths, ...)."""
    return {}


def results_for(i: int, truth: Truth) -> list[dict]:
    w, h = size_of(i)
    results = boxes_to_results(truth.boxes, w, h, SCHEMA, truth.impression)
    if truth.comment is not None:
        results.append(
            {"id": "comment01", "from_name": "comment", "to_name": SCHEMA.image_tag, "type": "textarea",
             "value": {"text": [truth.comment]}}
        )  # fmt: skip
    return results


# --- the round trip -----------------------------------------------------------


def test_import_non_square_images(ls, project, records, labelstudio_workspace, state):
    report = ls.import_tasks(project, records, labelstudio_workspace.data_dir)
    assert (len(report.imported), report.skipped, report.failed) == (N_TASKS, [], [])
    tasks = ls.tasks_by_image(project)
    assert sorted(tasks) == [image_id(i) for i in range(N_TASKS)]
    for i in range(N_TASKS):
        assert (tasks[image_id(i)]["data"]["width"], tasks[image_id(i)]["data"]["height"]) == size_of(i)
    state["task"] = {i: tasks[image_id(i)]["id"] for i in range(N_TASKS)}


def test_push_predictions(ls, project, state):
    predictions = {image_id(i): ([DECOY], DECOY_IMPRESSION) for i in range(N_TASKS)}
    assert ls.push_predictions(project, predictions, MODEL_VERSION) == N_TASKS
    assert ls.project(project)["model_version"] == MODEL_VERSION


def test_annotate(ls, labelstudio, project, truths, state):
    task = state["task"]
    made = {}
    for i, truth in sorted(truths.items()):
        if i in (TWICE, PATCHED):
            continue
        made[i] = ls.create_annotation(task[i], results_for(i, truth))

    # TWICE: a first reading, then a correction; the correction is ground truth.
    first = Truth([Box(10, 10, 50, 50, SCHEMA.opacity, "Bacterial")], "Pneumonia")
    ls.create_annotation(task[TWICE], results_for(TWICE, first))
    made[TWICE] = ls.create_annotation(task[TWICE], results_for(TWICE, truths[TWICE]))

    # PATCHED: A, then B, then A is edited: A's edit is the most recent and wins, though B has the higher id.
    other = Truth([Box(20, 20, 30, 30, "Atelectasis")], "Other abnormality")
    a = ls.create_annotation(task[PATCHED], results_for(PATCHED, Truth([], "Normal")))
    b = ls.create_annotation(task[PATCHED], results_for(PATCHED, other))
    assert b["id"] > a["id"]
    made[PATCHED] = ls.request("PATCH", f"/api/annotations/{a['id']}", json={"result": results_for(PATCHED, truths[PATCHED])})
    assert datetime.fromisoformat(made[PATCHED]["updated_at"]) > datetime.fromisoformat(b["updated_at"])

    # A skip after a real annotation does not undo it; a skip alone labels nothing.
    for i in (CANCELLED_AFTER, SKIPPED):
        skipped = ls.request("POST", f"/api/tasks/{task[i]}/annotations", json={"result": [], "was_cancelled": True})
        assert skipped["was_cancelled"] is True

    # A half-finished annotation (what the editor autosaves) on an otherwise untouched task.
    half = Truth([Box(12.5, 30.25, 40, 40, SCHEMA.opacity, "Viral")], "Pneumonia")
    draft = ls.request("POST", f"/api/tasks/{task[DRAFT]}/drafts", json={"result": results_for(DRAFT, half), "lead_time": 4.2})
    assert draft["task"] == task[DRAFT] and draft["annotation"] is None
    state["made"] = made


def test_export_and_snapshot_is_stable(ls, project, state, tmp_path_factory):
    out = tmp_path_factory.mktemp("rt-snapshots")
    export = ls.export_snapshot(project)
    path = save_snapshot(export, out)
    again = save_snapshot(ls.export_snapshot(project), out)
    assert again == path  # the same labels: the same snapshot, nothing new written
    assert sorted(out.iterdir()) == [path]
    assert path.read_bytes() == snapshot_bytes(export)
    state.update(export=export, snapshot=path, snapshot_dir=out)


def test_the_export_holds_what_was_done(state):
    by_image = {t["data"]["image_id"]: t for t in state["export"]}
    assert len(by_image) == N_TASKS
    assert [a["was_cancelled"] for a in by_image[image_id(SKIPPED)]["annotations"]] == [True]
    assert by_image[image_id(DRAFT)]["annotations"] == []
    assert len(by_image[image_id(DRAFT)]["drafts"]) == 1
    assert len(by_image[image_id(TWICE)]["annotations"]) == 2
    assert all(len(t["predictions"]) == 1 for t in by_image.values())


def test_ground_truth_is_exactly_what_was_annotated(state, truths):
    export = json.loads(state["snapshot"].read_text())  # from the saved snapshot, as the retrain flow reads it
    chosen, counts = pick_annotations(export)
    assert counts["tasks"] == N_TASKS
    assert counts["labeled_images"] == N_ANNOTATED
    assert counts["cancelled_annotations"] == 2
    assert counts["tasks_cancelled_only"] == 1 and counts["tasks_draft_only"] == 1
    assert counts["superseded_annotations"] == 2  # TWICE and PATCHED
    assert counts["predictions_ignored"] == N_TASKS and counts["drafts_ignored"] == 1
    assert counts["tasks_untouched"] == N_TASKS - N_ANNOTATED - 2

    gt = {g.image_id: g for g in ground_truth(export, SCHEMA)}
    assert sorted(gt) == [image_id(i) for i in range(N_ANNOTATED)]
    assert image_id(SKIPPED) not in gt and image_id(DRAFT) not in gt
    made = state["made"]
    for i in range(N_ANNOTATED):
        got, want = gt[image_id(i)], truths[i]
        assert_same_boxes(got.boxes, want.boxes, image_id(i))
        assert got.impression == want.impression, image_id(i)
        assert got.comment == want.comment, image_id(i)
        assert got.annotation_id == made[i]["id"], image_id(i)
    # Every finding and every subtype of the schema made the trip at least once.
    boxes = [b for g in gt.values() for b in g.boxes]
    assert {b.finding for b in boxes} == set(SCHEMA.findings)
    assert {b.subtype for b in boxes} == set(SCHEMA.subtypes) | {None}
    assert {g.impression for g in gt.values()} == set(SCHEMA.impressions) | {None}
    assert gt[image_id(EMPTY)].boxes == [] and gt[image_id(EMPTY)].impression is None


def test_predictions_do_not_leak_into_ground_truth(state):
    gt = ground_truth(state["export"], SCHEMA)
    assert len(gt) == N_ANNOTATED
    for g in gt:
        for b in g.boxes:
            assert b.score is None, g.image_id
            assert (b.x, b.y, b.w, b.h) != pytest.approx((DECOY.x, DECOY.y, DECOY.w, DECOY.h)), g.image_id
    # Label Studio copies the project's current prediction into each annotation it creates
    # (`annotation.prediction`); it is still the model's, not the radiologist's.
    by_image = {t["data"]["image_id"]: t for t in state["export"]}
    embedded = by_image[image_id(EMPTY)]["annotations"][0].get("prediction") or {}
    assert embedded.get("model_version") == MODEL_VERSION
    empty = next(g for g in gt if g.image_id == image_id(EMPTY))
    assert (empty.boxes, empty.impression) == ([], None)


def expected_yolo(box: Box, w: int, h: int) -> tuple[int, float, float, float, float]:
    """By hand: clip to the image, then centre and size over the image size."""
    x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
    x1, y1 = min(box.x + box.w, w), min(box.y + box.h, h)
    return SCHEMA.findings.index(box.finding), (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h


def split_of_image(i: int) -> str:
    return ("train", "train", "val", "test")[i % 4]


def test_yolo_set_from_ground_truth(state, truths, labelstudio_workspace, tmp_path):
    gt = ground_truth(state["export"], SCHEMA)
    split_of = {image_id(i): split_of_image(i) for i in range(N_ANNOTATED)}
    data_yaml = to_yolo(gt, labelstudio_workspace.images_dir, tmp_path / "yolo", SCHEMA, split_of)
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == list(SCHEMA.findings)
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    root = tmp_path / "yolo"
    for split in ("train", "val", "test"):
        want = sorted(f"{image_id(i)}.png" for i in range(N_ANNOTATED) if split_of_image(i) == split)
        assert sorted(p.name for p in (root / "images" / split).iterdir()) == want
    for i in range(N_ANNOTATED):
        split, w, h = split_of_image(i), *size_of(i)
        assert (root / "images" / split / f"{image_id(i)}.png").read_bytes() == (
            labelstudio_workspace.images_dir / f"{image_id(i)}.png"
        ).read_bytes()
        lines = (root / "labels" / split / f"{image_id(i)}.txt").read_text().splitlines()
        assert len(lines) == len(truths[i].boxes), image_id(i)
        for line, box in zip(lines, truths[i].boxes):
            fields = line.split()
            cls, *coords = expected_yolo(box, w, h)
            assert int(fields[0]) == cls, (image_id(i), line)
            # Six decimals: equal to within half a unit of the last digit.
            assert [float(f) for f in fields[1:]] == pytest.approx(coords, abs=5e-7 + 1e-12), (image_id(i), line)
            assert all(0.0 <= float(f) <= 1.0 for f in fields[1:]), line
    # The box past the edges of image 2, clipped by hand: x 229.5..240, y 291.75..300 of 240x300.
    (line,) = (root / "labels" / split_of_image(2) / f"{image_id(2)}.txt").read_text().splitlines()
    assert size_of(2) == (240, 300)
    assert line == f"0 {(229.5 + 240) / 2 / 240:.6f} {(291.75 + 300) / 2 / 300:.6f} {10.5 / 240:.6f} {8.25 / 300:.6f}"
    # Image 1's whole-image Cardiomegaly box.
    assert (root / "labels" / split_of_image(1) / f"{image_id(1)}.txt").read_text().splitlines()[0] == (
        f"{SCHEMA.findings.index('Cardiomegaly')} 0.500000 0.500000 1.000000 1.000000"
    )


def expected_image_subtype(boxes: list[Box]) -> str:
    counts: dict[str, int] = {}
    for b in boxes:
        if b.subtype is not None:
            counts[b.subtype] = counts.get(b.subtype, 0) + 1
    best = ""
    for subtype, n in counts.items():  # first seen wins a tie
        if not best or n > counts[best]:
            best = subtype
    return best


def test_an_image_subtype_is_its_boxes_most_frequent(state, truths):
    """The image-level subtype the pipeline trains the classifier on (cxrkit.pipeline.labels)."""
    gt = ground_truth(state["export"], SCHEMA)
    assert [g.image_id for g in gt] == [image_id(i) for i in range(N_ANNOTATED)]
    assert [image_subtype(g.boxes) or "" for g in gt] == [expected_image_subtype(truths[i].boxes) for i in range(N_ANNOTATED)]
    assert any(expected_image_subtype(truths[i].boxes) for i in range(N_ANNOTATED))


def test_a_new_annotation_gives_a_new_snapshot(ls, project, state):
    late = Truth([Box(100.5, 60.75, 33.3, 44.4, "Pneumothorax", None)], "Other abnormality")
    ls.create_annotation(state["task"][LATE], results_for(LATE, late))
    export = ls.export_snapshot(project)
    path = save_snapshot(export, state["snapshot_dir"])
    assert path != state["snapshot"]
    assert sorted(state["snapshot_dir"].iterdir()) == sorted([state["snapshot"], path])
    gt = {g.image_id: g for g in ground_truth(export, SCHEMA)}
    assert len(gt) == N_ANNOTATED + 1
    assert_same_boxes(gt[image_id(LATE)].boxes, late.boxes, image_id(LATE))
    # Saving that export again finds it.
    assert save_snapshot(ls.export_snapshot(project), state["snapshot_dir"]) == path
