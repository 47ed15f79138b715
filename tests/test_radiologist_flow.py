"""The radiologist's loop in a real browser, end to end.

A project whose tasks carry the model's pre-drawn boxes and uncertainty scores. The
radiologist logs in, opens the view "Most uncertain first" (the tasks must be listed in
that order), opens the top task, finds the box already drawn, moves it onto the right
place, gives it a subtype and submits. Then the export the retrain trains from holds
exactly that corrected box.

Browser: Debian's Chromium driven by Playwright, as in test_labelstudio_browser.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit.labels import DEFAULT_CONFIG, load_schema
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.export import ground_truth
from cxrkit.manifest import Box, Record
from cxrkit.synthetic import generate_case
from tests.test_labelstudio_browser import (
    REGION_ITEM, WAIT_MS, logged_in_page, sync_playwright_or_skip, wait_for_editor_image,
)

pytestmark = pytest.mark.slow

PROJECT_TITLE = "CXR radiologist flow (test_radiologist_flow)"
SIZE = 512
MODEL_VERSION = "flow-model-1"
UNCERTAINTY = {"flow0": 0.2, "flow1": 0.9, "flow2": 0.5}  # the view must list flow1, flow2, flow0
DRAG = (40, 30)  # screen pixels the radiologist drags the box by (right, down)
TABLE_ROW = "[class*=row-wrapper]"  # one row per task in the Data Manager table
SCREENSHOT = Path("/tmp/ls_radiologist_flow.png")  # the corrected task just before Submit, for a look on failure


@pytest.fixture(scope="module")
def queued_project(labelstudio, labelstudio_workspace):
    """Three pre-annotated tasks with uncertainty scores and the uncertainty view: (ls, project, view, boxes)."""
    schema = load_schema()
    ls = LabelStudio.for_server(labelstudio)
    project = ls.ensure_project(PROJECT_TITLE, DEFAULT_CONFIG.read_text())
    view = ls.ensure_view(project)
    records, predictions = [], {}
    for i, image_id in enumerate(UNCERTAINTY):
        case = generate_case(20 + i, size=SIZE, positive=True, difficulty=0.1)
        assert cv2.imwrite(str(labelstudio_workspace.images_dir / f"{image_id}.png"),
                           (case.image * 255).round().astype(np.uint8))
        records.append(Record(image_id=image_id, path=f"images/{image_id}.png", source="synthetic", width=SIZE,
                              height=SIZE, metadata={"age": 60 + i, "sex": "M", "view": "PA"}))
        lesion = case.boxes[0]
        predictions[image_id] = ([Box(float(lesion.x), float(lesion.y), float(lesion.w), float(lesion.h),
                                      schema.opacity, score=0.6)], None)
    assert not ls.import_tasks(project, records, labelstudio_workspace.data_dir).failed
    ls.push_predictions(project, predictions, MODEL_VERSION)
    ls.set_uncertainty(project, UNCERTAINTY)
    return ls, project, view, {k: v[0][0] for k, v in predictions.items()}


def test_radiologist_corrects_the_most_uncertain_box_and_the_retrain_data_has_it(labelstudio, queued_project, tmp_path):
    sync_playwright = sync_playwright_or_skip()
    ls, project, view, boxes = queued_project
    tasks = ls.tasks_by_image(project)
    expected_order = [tasks[i]["id"] for i in sorted(UNCERTAINTY, key=UNCERTAINTY.get, reverse=True)]
    top = "flow1"
    before = boxes[top]

    with sync_playwright() as pw, logged_in_page(pw, labelstudio, tmp_path / "chromium-profile") as page:
        # The uncertainty view lists the tasks most uncertain first (the first cell is the task id).
        page.goto(f"{labelstudio.url}/projects/{project}/data?tab={view}")
        rows = page.locator(TABLE_ROW)
        rows.first.wait_for()
        listed = [int(rows.nth(i).inner_text().split()[0]) for i in range(rows.count())]
        assert listed == expected_order

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

    # Stored: one submitted annotation on that task, the box moved right and down, same size.
    annotations = ls.request("GET", f"/api/tasks/{tasks[top]['id']}/annotations")
    assert len(annotations) == 1 and not annotations[0].get("was_cancelled")
    for other in ("flow0", "flow2"):
        assert not ls.request("GET", f"/api/tasks/{tasks[other]['id']}/annotations")

    # The retrain's input: the export's ground truth has the corrected box, its subtype, the impression.
    schema = load_schema()
    truth = {image.image_id: image for image in ground_truth(ls.export_snapshot(project), schema)}
    assert set(truth) == {top}
    (after,) = truth[top].boxes
    assert after.finding == schema.opacity and after.subtype == "Viral"
    assert truth[top].impression == "Pneumonia"
    assert after.w == pytest.approx(before.w, abs=1.0) and after.h == pytest.approx(before.h, abs=1.0)
    moved_x, moved_y = after.x - before.x, after.y - before.y
    assert moved_x > 10 and moved_y > 10, (moved_x, moved_y)  # in the direction dragged
    assert moved_x > moved_y  # and by the drag's proportions (40 right, 30 down)
