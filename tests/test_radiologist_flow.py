"""The radiologist's loop in a real browser, end to end, and the retrain that learns from it.

A project of ingested synthetic films: most are already labeled (through the API, as earlier
work of colleagues), three wait in the queue with the model's pre-drawn boxes and uncertainty
scores. The radiologist logs in, opens the view "Most uncertain first" (the queue must be listed
in that order), opens the top task, finds the box already drawn, moves it onto the right place,
gives it a subtype and submits. Then a real retrain round (the Prefect flow, git + DVC, tiny
trainings) exports the project, and the labels it versions and trains on hold exactly that
corrected box.

Browser: Debian's Chromium driven by Playwright, as in test_labelstudio_browser.py.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.manifest import Box, read_manifest, write_manifest
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.effort import NO_PREANNOTATION
from cxrkit.labelstudio.publish import publish_queue
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.pipeline import EFFORT_FILE, LABELS_FILE, project_repo
from cxrkit.pipeline.labels import read_labels
from cxrkit.pipeline.round_plots import write_plots
from cxrkit.services.status import render_lines, workspace_status
from tests.retrain_setup import retrain_environment, tiny_retrain_params
from tests.synthetic_study import ingested_study
from tests.test_labelstudio_browser import (
    REGION_ITEM,
    WAIT_MS,
    logged_in_page,
    sync_playwright_or_skip,
    wait_for_editor_image,
)

pytestmark = pytest.mark.slow

PROJECT_TITLE = "radiologist flow"
N_IMAGES, SIZE = 14, 384
MODEL_VERSION = "flow-model-1"
DRAG = (40, 30)  # screen pixels the radiologist drags the box by (right, down)
TABLE_ROW = "[class*=row-wrapper]"  # one row per task in the Data Manager table
SCREENSHOT = Path("/tmp/ls_radiologist_flow.png")  # the corrected task just before Submit, for a look on failure


@pytest.fixture(scope="module")
def queued_project(labelstudio, labelstudio_workspace, tmp_path_factory):
    """An ingested workspace Label Studio serves, its project with every film as a task, all but
    three labeled, the three published as the select flow's queue with a predicted box each, and
    the queue's view. Returns a dict: ls, project, view, ws, queue (image ids, most uncertain
    first), boxes (the predicted box per queued image), labeled (image ids labeled beforehand)."""
    schema = load_schema()
    # Label Studio serves local files below its workspace's data folder only: put ours there.
    root = labelstudio_workspace.data_dir / f"radiologist-{uuid.uuid4().hex[:8]}"
    ws, records = ingested_study(root, n=N_IMAGES, seed=5, size=SIZE, positive_fraction=0.6, difficulty=0.15,
                                 salt="radiologist-test-salt-0123456789", workers=2)
    # What a plain DICOM folder gives: the truth is only what people annotate in Label Studio.
    write_manifest(ws.manifest_path, [replace(r, labeled=False, boxes=[], impression=None, subtype=None, split="")
                                      for r in records])
    ls = LabelStudio.for_server(labelstudio)
    project = ls.ensure_project(f"{PROJECT_TITLE} {uuid.uuid4().hex[:6]}", DEFAULT_CONFIG.read_text())
    view = ls.ensure_view(project)
    # Task image URLs are relative to Label Studio's document root, here the folder above ours.
    served = [replace(r, path=str((ws.data_dir / r.path).relative_to(labelstudio_workspace.data_dir)))
              for r in read_manifest(ws.manifest_path)]
    assert len(ls.import_tasks(project, served, labelstudio_workspace.data_dir).imported) == N_IMAGES
    tasks = ls.tasks_by_image(project)

    positives = [r for r in records if r.boxes]
    queue = [positives[0].image_id] + [r.image_id for r in records if r.image_id != positives[0].image_id][:2]
    labeled = [r.image_id for r in records if r.image_id not in queue]
    for rec in records:
        if rec.image_id in labeled:
            ls.create_annotation(tasks[rec.image_id]["id"],
                                 boxes_to_results(rec.boxes, rec.width, rec.height, schema, rec.impression))
    truth = {r.image_id: r for r in records}
    # The model's box on each queued film: the first true box, or a guess where there is none.
    boxes = {i: (replace(truth[i].boxes[0], subtype=None, score=0.6) if truth[i].boxes
                 else Box(SIZE * 0.2, SIZE * 0.3, SIZE * 0.2, SIZE * 0.2, schema.opacity, score=0.4)) for i in queue}
    publish_queue(ls, project, tasks, queue, {i: ([b], None) for i, b in boxes.items()}, MODEL_VERSION)
    return {"ls": ls, "project": project, "view": view, "ws": ws, "queue": queue, "boxes": boxes,
            "labeled": labeled, "root": root}


def test_radiologist_corrects_the_most_uncertain_box_and_the_retrain_learns_it(
        labelstudio, queued_project, prefect_server, tmp_path):
    sync_playwright = sync_playwright_or_skip()
    ls, project, view, ws = (queued_project[k] for k in ("ls", "project", "view", "ws"))
    tasks = ls.tasks_by_image(project)
    top = queued_project["queue"][0]
    before = queued_project["boxes"][top]

    with sync_playwright() as pw, logged_in_page(pw, labelstudio, tmp_path / "chromium-profile") as page:
        # The queue's view lists it in order (the first cell is the task id); the labeled tasks,
        # which are in no queue, come after it.
        page.goto(f"{labelstudio.url}/projects/{project}/data?tab={view}")
        rows = page.locator(TABLE_ROW)
        rows.first.wait_for()
        listed = [int(rows.nth(i).inner_text().split()[0]) for i in range(rows.count())]
        assert listed[:3] == [tasks[i]["id"] for i in queued_project["queue"]]

        # Open the top task: the model's box is already drawn, as the annotation's starting point.
        rows.first.click()
        image = wait_for_editor_image(page)
        page.locator(REGION_ITEM).first.wait_for(state="visible")
        assert page.locator(REGION_ITEM).count() == 1

        # Select the region and give it a subtype (the choices show while it is selected), drag it
        # to where the opacity really is, set the impression, submit.
        page.locator(REGION_ITEM).first.click()
        page.locator("input[name='Viral']").check()
        bbox = image.bounding_box()
        scale = bbox["width"] / SIZE
        cx, cy = bbox["x"] + (before.x + before.w / 2) * scale, bbox["y"] + (before.y + before.h / 2) * scale
        page.mouse.move(cx, cy)
        page.wait_for_timeout(300)  # Konva starts a drag on a press that rests on the shape
        page.mouse.down()
        page.wait_for_timeout(300)
        for step in range(1, 11):
            page.mouse.move(cx + DRAG[0] * step / 10, cy + DRAG[1] * step / 10)
            page.wait_for_timeout(50)
        page.mouse.up()
        page.wait_for_timeout(300)
        page.locator("input[name='Pneumonia']").check()  # impression of the whole image
        page.screenshot(path=str(SCREENSHOT))
        page.get_by_role("button", name="Submit").click()
        deadline = time.monotonic() + WAIT_MS / 1000
        while not ls.request("GET", f"/api/tasks/{tasks[top]['id']}/annotations") and time.monotonic() < deadline:
            time.sleep(0.5)

    # Stored: one submitted annotation on that task; the other queued tasks are untouched.
    annotations = ls.request("GET", f"/api/tasks/{tasks[top]['id']}/annotations")
    assert len(annotations) == 1 and not annotations[0].get("was_cancelled")
    for other in queued_project["queue"][1:]:
        assert not ls.request("GET", f"/api/tasks/{tasks[other]['id']}/annotations")

    # A real retrain round (tiny trainings) over the project: the labels it versions and trains on
    # hold the corrected box with its subtype and the impression, next to the earlier labels.
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_retrain_params(split_salt="radiologist-test")))
    from flows.retrain import retrain_flow

    with retrain_environment(labelstudio, tmp_path / "dvc-remote"):
        state = retrain_flow(workspace=str(ws.root), project=project, params=str(params_file), select=False,
                             return_state=True)
    assert state.is_completed() and state.name == "Retrained", state.message
    info = json.loads((ws.root / "round.json").read_text())
    assert info["round"] == 1 and info["labeled"] == len(queued_project["labeled"]) + 1
    assert project_repo.git(ws.root, "tag", "--points-at", "HEAD").stdout.strip() == "round-1"

    schema = load_schema()
    labels = {image.image_id: image for image in read_labels(ws.root / LABELS_FILE)}
    assert set(labels) == set(queued_project["labeled"]) | {top}
    (after,) = labels[top].boxes
    assert after.finding == schema.opacity and after.subtype == "Viral"
    assert labels[top].impression == "Pneumonia"
    assert after.w == pytest.approx(before.w, abs=1.0) and after.h == pytest.approx(before.h, abs=1.0)
    moved_x, moved_y = after.x - before.x, after.y - before.y
    assert moved_x > 10 and moved_y > 10, (moved_x, moved_y)  # in the direction dragged
    assert moved_x > moved_y  # and by the drag's proportions (40 right, 30 down)
    # The correction's effort, measured from what Label Studio recorded of it: one box shown by
    # MODEL_VERSION, moved (adjusted), given a subtype, the impression set, in the seconds the
    # editor counted; the earlier labels were made with nothing shown. Committed with the round,
    # drawn by `cxr plots` and printed by `cxr status`.
    effort = json.loads(project_repo.git(ws.root, "show", f"round-1:{EFFORT_FILE}").stdout)["by_model_version"]
    shown = effort[MODEL_VERSION]
    assert shown["images"] == 1
    assert (shown["kept"], shown["adjusted"], shown["deleted"], shown["added"]) == (0, 1, 0, 0)
    assert (shown["subtype_changed"], shown["impression_changed"], shown["edits_per_image"]) == (1, 1, 3)
    assert shown["timed"] == 1 and shown["seconds_median"] > 0
    assert effort[NO_PREANNOTATION]["images"] == len(queued_project["labeled"])
    assert [p.name for p in write_plots(ws)["effort"]] == ["effort.png"]
    assert any(line.strip().startswith(f"{MODEL_VERSION}: 1 images, 3.00 edits/image")
               for line in render_lines(workspace_status(ws, PROJECT_TITLE, labelstudio)))

    # The corrected image is in the round's training or validation records.
    prepared = {r.image_id: r for name in ("train", "val")
                for r in read_manifest(ws.root / "pipeline" / "prepared" / f"{name}.jsonl")}
    assert top in prepared and [(b.x, b.y) for b in prepared[top].boxes] == [(after.x, after.y)]
