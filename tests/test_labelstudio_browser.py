"""The labeling page in a real browser: what a radiologist sees when a task has a pre-annotation.

Logs in to the session's Label Studio (tests/labelstudio_server.py) through its login form,
opens a task whose prediction (the project's current model version) holds one Lung Opacity
box, and checks that the X-ray and the box are on screen: the regions panel lists the
region, the image has loaded, and the box's red outline is drawn where the prediction puts it.

A second test opens a task whose heatmap overlay exists (data/heatmaps/<image id>.png, the URL
of its `data.heatmap`): the panel "Where the subtype classifier looked" is collapsed, opens on a
click, and shows the overlay beside the film; the radiologist draws a box, sets the impression
and submits, and the annotation holds nothing of the heatmap. Its screenshot is left in the
test's tmp folder and copied to /tmp/ls_heatmap_panel.png. A third opens the queue's tab in the
Data Manager: its table has no heatmap thumbnail column.

The browser is Debian's Chromium (/usr/bin/chromium), driven by Playwright; no browser is
ever downloaded. Without it the test is skipped locally and fails in CI (CI=true), where
.ci/run installs it. A copy of the screenshot is left at /tmp/ls_screenshot.png.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.manifest import Box, Record
from cxrkit.data.synthetic import generate_case
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.tasks import HEATMAP_DIR, HEATMAP_FIELD, heatmap_path, image_url

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
PROJECT_TITLE = "CXR browser (test_labelstudio_browser)"
IMAGE_ID = "browser000"
WIDTH, HEIGHT = 512, 448  # non-square: the box must land where it belongs on both axes
MODEL_VERSION = "browser-model-1"
STROKE = np.array([0xE6, 0x19, 0x4B])  # "Lung Opacity" background in label_config.xml: the region's outline
WAIT_MS = 60_000  # the Label Studio frontend is heavy; on two busy cores it takes a while
SCREENSHOT_COPY = Path("/tmp/ls_screenshot.png")

# Selectors of Label Studio 1.23's editor (inspected in page.content()).
# The <img> the editor loads the task's film into; the heatmap's <img> (also alt "image") is in
# the collapsible panel (antd's Collapse), and is not the film.
EDITOR_IMAGE = ".lsf-main-view img[alt='image']:not(.ant-collapse img)"
HEATMAP_HEADER = ".lsf-main-view .ant-collapse .ant-collapse-header"  # the panel's title, a toggle
HEATMAP_IMAGE = ".lsf-main-view .ant-collapse img[alt='image']"
HEATMAP_IMAGE_ID = "browser001"
HEATMAP_SCREENSHOT_COPY = Path("/tmp/ls_heatmap_panel.png")
REGION_ITEM = ".lsf-outliner-item"  # one row per region in the Regions panel
REGION_TITLE = ".lsf-outliner-item__title"
CANVAS = ".lsf-main-view .konvajs-content canvas"  # Konva layers the regions are drawn on
DM_TABLE_HEAD = ".lsf-table-head"  # the Data Manager table's row of column titles


@contextmanager
def logged_in_page(pw, server, profile_dir: Path, login: tuple[str, str] | None = None):
    """A headless Chromium page signed in to `server` (a ServerInfo) through the real login form,
    as a radiologist signs in (as the admin, or as `login` = (e-mail, password)); the browser is
    closed on exit."""
    context = pw.chromium.launch_persistent_context(
        str(profile_dir), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
        headless=True, viewport={"width": 1400, "height": 900}, device_scale_factor=1,
    )  # fmt: skip
    try:
        context.set_default_timeout(WAIT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        page.goto(f"{server.url}/user/login/")
        email, password = login or (server.credentials.username, server.credentials.password)
        page.fill("#email", email)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/user/login" not in url)
        yield page
    finally:
        context.close()


def wait_for_editor_image(page):
    """The labeling editor's <img>, once the task's image has fully loaded."""
    image = page.locator(EDITOR_IMAGE)
    image.wait_for(state="attached")
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; }",
        arg=EDITOR_IMAGE,
    )
    return image


def sync_playwright_or_skip():
    """Playwright's sync API, or skip (fail in CI) when it or Debian's Chromium is missing."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed"
    if reason is None and not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def prediction_task(labelstudio, labelstudio_workspace) -> tuple[int, int, Box]:
    """A project with one task whose only prediction is one Lung Opacity box: (project, task, box)."""
    schema = load_schema()
    ls = LabelStudio.for_server(labelstudio)
    project = ls.ensure_project(PROJECT_TITLE, DEFAULT_CONFIG.read_text())

    case = generate_case(3, size=WIDTH, positive=True, difficulty=0.1)
    image = (case.image[:HEIGHT] * 255).round().astype(np.uint8)  # crop the bottom: non-square
    assert cv2.imwrite(str(labelstudio_workspace.images_dir / f"{IMAGE_ID}.png"), image)
    record = Record(image_id=IMAGE_ID, path=f"images/{IMAGE_ID}.png", source="synthetic", width=WIDTH,
                    height=HEIGHT, metadata={"age": 57, "sex": "F", "view": "PA"})  # fmt: skip
    report = ls.import_tasks(project, [record], labelstudio_workspace.data_dir)
    assert not report.failed

    # A box of the synthetic case's own lesion, wholly inside the cropped image.
    lesion = case.boxes[0]
    box = Box(float(lesion.x), float(lesion.y), float(lesion.w), float(lesion.h), schema.opacity, score=0.9)
    assert box.y + box.h < HEIGHT
    ls.push_predictions(project, {IMAGE_ID: ([box], None)}, MODEL_VERSION)
    assert ls.project(project)["model_version"] == MODEL_VERSION  # shown as the pre-annotation
    task = ls.tasks_by_image(project, full=True)[IMAGE_ID]
    assert len(task["predictions"]) == 1 and not task["annotations"]
    return project, task["id"], box


def red_fraction(pixels: np.ndarray) -> float:
    """Share of pixels close to the region's outline colour."""
    if pixels.size == 0:
        return 0.0
    diff = np.abs(pixels[..., :3].astype(int) - STROKE).max(axis=-1)
    return float((diff < 60).mean())


def test_labeling_page_shows_the_prediction_box(labelstudio, prediction_task, tmp_path):
    sync_playwright = sync_playwright_or_skip()
    project, task_id, box = prediction_task
    shot = tmp_path / "labeling.png"
    started = time.monotonic()

    with sync_playwright() as pw, logged_in_page(pw, labelstudio, tmp_path / "chromium-profile") as page:
        # Label Studio 1.23 labels a task inside the Data Manager: /projects/<id>/data?task=<id>.
        page.goto(f"{labelstudio.url}/projects/{project}/data?task={task_id}")
        image = wait_for_editor_image(page)
        natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert natural == [WIDTH, HEIGHT]

        # The Regions panel lists the prediction's one region.
        page.locator(REGION_ITEM).first.wait_for(state="visible")
        assert page.locator(REGION_ITEM).count() == 1
        assert page.locator(REGION_ITEM).locator(REGION_TITLE).inner_text().strip() == "Lung Opacity"
        assert page.locator(CANVAS).count() >= 1

        # Where the image is on screen (the editor scales it to fit).
        bbox = image.bounding_box()
        assert bbox and bbox["width"] > 100 and bbox["height"] > 100
        scale_x, scale_y = bbox["width"] / WIDTH, bbox["height"] / HEIGHT
        assert scale_x == pytest.approx(scale_y, rel=0.02)  # aspect ratio kept
        left, top = bbox["x"] + box.x * scale_x, bbox["y"] + box.y * scale_y
        right, bottom = left + box.w * scale_x, top + box.h * scale_y

        # Konva draws a moment after the panel lists the region: wait for the outline.
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            page.screenshot(path=str(shot))
            pixels = np.asarray(Image.open(shot).convert("RGB"))
            edge = 4  # pixels either side of each expected edge (outline 2 px, anti-aliased, rounding)

            def band(x0, y0, x1, y1):
                return pixels[int(round(y0)) : int(round(y1)), int(round(x0)) : int(round(x1))]

            outline = [
                band(left - edge, top + edge, left + edge, bottom - edge),  # left edge
                band(right - edge, top + edge, right + edge, bottom - edge),  # right edge
                band(left + edge, top - edge, right - edge, top + edge),  # top edge
                band(left + edge, bottom - edge, right - edge, bottom + edge),  # bottom edge
            ]
            if min(red_fraction(b) for b in outline) > 0.15 or time.monotonic() > deadline:
                break
            page.wait_for_timeout(500)

    shutil.copyfile(shot, SCREENSHOT_COPY)
    fractions = [red_fraction(b) for b in outline]
    assert min(fractions) > 0.15, f"the box outline is not where the prediction puts it: {fractions}"
    # The X-ray itself around the box carries no such red: the outline is the region, not the picture.
    image_area = band(bbox["x"], bbox["y"], bbox["x"] + bbox["width"], bbox["y"] + bbox["height"]).copy()
    y0, x0 = int(round(top - 3 * edge - bbox["y"])), int(round(left - 3 * edge - bbox["x"]))
    y1, x1 = int(round(bottom + 3 * edge - bbox["y"])), int(round(right + 3 * edge - bbox["x"]))
    image_area[max(y0, 0) : y1, max(x0, 0) : x1] = 0
    assert red_fraction(image_area) < 0.001
    # The X-ray is on screen: a grey picture with structure, not a blank or single-colour area.
    xray = band(bbox["x"], bbox["y"], bbox["x"] + bbox["width"], bbox["y"] + bbox["height"]).astype(float)
    assert xray.std() > 20 and len(np.unique(xray.mean(axis=-1).round())) > 100

    # A real screenshot: not tiny, not one colour.
    assert shot.stat().st_size > 50_000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    assert time.monotonic() - started < 180


def colourful(pixels: np.ndarray) -> float:
    """Share of pixels with a strong colour (the heatmap's JET blues and reds; a grey film has none)."""
    if pixels.size == 0:
        return 0.0
    rgb = pixels[..., :3].astype(int)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1) > 100).mean())


@pytest.fixture(scope="module")
def heatmap_task(labelstudio, labelstudio_workspace, prediction_task):
    """A second task of the browser project, without a prediction: (project, task, its lesion box).
    The overlays a test writes for it under the shared workspace's data/heatmaps/ are removed after
    the module (tests/test_flow_select.py asserts that folder is not there when it starts)."""
    project = prediction_task[0]
    ls = LabelStudio.for_server(labelstudio)
    case = generate_case(5, size=WIDTH, positive=True, difficulty=0.1)
    image = (case.image[:HEIGHT] * 255).round().astype(np.uint8)
    assert cv2.imwrite(str(labelstudio_workspace.images_dir / f"{HEATMAP_IMAGE_ID}.png"), image)
    record = Record(image_id=HEATMAP_IMAGE_ID, path=f"images/{HEATMAP_IMAGE_ID}.png", source="synthetic",
                    width=WIDTH, height=HEIGHT, metadata={"age": 61, "sex": "M", "view": "AP"})
    assert not ls.import_tasks(project, [record], labelstudio_workspace.data_dir).failed
    task = ls.tasks_by_image(project, full=True)[HEATMAP_IMAGE_ID]
    assert task["data"][HEATMAP_FIELD] == image_url(heatmap_path(HEATMAP_IMAGE_ID))
    assert not task["predictions"] and not task["annotations"]
    lesion = case.boxes[0]
    yield project, task["id"], Box(float(lesion.x), float(lesion.y), float(lesion.w), float(lesion.h),
                                   load_schema().opacity)
    shutil.rmtree(labelstudio_workspace.data_dir / HEATMAP_DIR, ignore_errors=True)


def test_the_heatmap_panel_shows_the_overlay_beside_the_film(labelstudio, labelstudio_workspace, heatmap_task,
                                                              tmp_path):
    from cxrkit.models.explain import Explanation, write_overlay

    sync_playwright = sync_playwright_or_skip()
    project, task_id, lesion = heatmap_task
    ls = LabelStudio.for_server(labelstudio)
    # The overlay the select flow would write (tests/test_flow_select.py runs the flow): the film,
    # a heatmap peaking on the lesion, the model's box outlined.
    film = cv2.imread(str(labelstudio_workspace.images_dir / f"{HEATMAP_IMAGE_ID}.png"), cv2.IMREAD_GRAYSCALE)
    row, col = min(6, int(7 * (lesion.y + lesion.h / 2) / HEIGHT)), min(6, int(7 * (lesion.x + lesion.w / 2) / WIDTH))
    grid = np.zeros((7, 7), np.float32)
    grid[max(0, row - 1): row + 2, max(0, col - 1): col + 2] = 0.5
    grid[row, col] = 1.0
    overlay = labelstudio_workspace.data_dir / heatmap_path(HEATMAP_IMAGE_ID)
    write_overlay(overlay, film, Explanation(width=WIDTH, height=HEIGHT, grid=grid.tolist(), boxes=[lesion]))
    ls.ensure_local_storage(project, overlay.parent)
    shot = tmp_path / "heatmap_panel.png"

    with sync_playwright() as pw, logged_in_page(pw, labelstudio, tmp_path / "chromium-profile") as page:
        fetched: list[tuple[str, int]] = []
        page.on("response", lambda r: fetched.append((r.url, r.status)) if "heatmaps" in r.url else None)
        page.goto(f"{labelstudio.url}/projects/{project}/data?task={task_id}")
        image = wait_for_editor_image(page)
        assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [WIDTH, HEIGHT]

        # Collapsed: its title is on screen, the overlay is not.
        header = page.locator(HEATMAP_HEADER)
        header.wait_for(state="visible")
        assert "Where the subtype classifier looked" in header.inner_text()
        assert "not part of your annotation" in header.inner_text()
        heatmap = page.locator(HEATMAP_IMAGE)
        assert heatmap.count() == 0 or not heatmap.first.is_visible()

        # Opened: the overlay loads, whole, beside (to the right of) the film.
        header.click()
        page.wait_for_function(
            "sel => { const i = document.querySelector(sel); "
            "return i && i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 50; }",
            arg=HEATMAP_IMAGE)
        assert heatmap.count() == 1
        assert heatmap.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [WIDTH, HEIGHT]  # under max_side
        assert (f"{labelstudio.url}{image_url(heatmap_path(HEATMAP_IMAGE_ID))}", 200) in fetched  # from Label Studio
        heatmap.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        film_box, heat_box = image.bounding_box(), heatmap.bounding_box()
        assert heat_box["x"] >= film_box["x"] + film_box["width"] - 1, (film_box, heat_box)
        assert heat_box["width"] > 100 and heat_box["y"] + heat_box["height"] <= 900
        page.screenshot(path=str(shot))
        pixels = np.asarray(Image.open(shot).convert("RGB"))

        def region(b):
            return pixels[int(b["y"]): int(b["y"] + b["height"]), int(b["x"]): int(b["x"] + b["width"])]

        film_box = image.bounding_box()
        # The overlay's colours, on screen (as much of the picture as in the file, give or take scaling).
        in_file = colourful(cv2.cvtColor(cv2.imread(str(overlay)), cv2.COLOR_BGR2RGB))
        assert in_file > 0.02 and colourful(region(heat_box)) > 0.5 * in_file
        shown_film = region(film_box)
        if shown_film.size:  # the film, when still on screen after the scroll, stays grey
            assert colourful(shown_film) < 0.001

        # The radiologist's work goes on as before: a box on the film, the impression, Submit.
        page.keyboard.press("1")  # Lung Opacity
        film_box = image.bounding_box()
        scale = film_box["width"] / WIDTH
        x0, y0 = film_box["x"] + lesion.x * scale, film_box["y"] + lesion.y * scale
        page.mouse.move(x0, y0)
        page.mouse.down()
        for step in range(1, 11):
            page.mouse.move(x0 + lesion.w * scale * step / 10, y0 + lesion.h * scale * step / 10)
            page.wait_for_timeout(30)
        page.mouse.up()
        page.locator(REGION_ITEM).first.wait_for(state="visible")
        page.locator("input[name='Pneumonia']").check()
        page.get_by_role("button", name="Submit").click()
        deadline = time.monotonic() + WAIT_MS / 1000
        while not ls.request("GET", f"/api/tasks/{task_id}/annotations") and time.monotonic() < deadline:
            time.sleep(0.5)

    shutil.copyfile(shot, HEATMAP_SCREENSHOT_COPY)
    assert shot.stat().st_size > 50_000 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    (annotation,) = ls.request("GET", f"/api/tasks/{task_id}/annotations")
    results = annotation["result"]
    assert {r["type"] for r in results} == {"rectanglelabels", "choices"}
    assert {r["to_name"] for r in results} == {"image"} and "heatmap" not in {r["from_name"] for r in results}
    assert "heatmap" not in json.dumps(annotation)
    (box,) = [r for r in results if r["type"] == "rectanglelabels"]
    assert box["value"]["rectanglelabels"] == [load_schema().opacity]
    assert box["value"]["x"] == pytest.approx(100 * lesion.x / WIDTH, abs=2)
    assert box["value"]["y"] == pytest.approx(100 * lesion.y / HEIGHT, abs=2)


def test_the_queue_tab_hides_the_heatmap_column(labelstudio, labelstudio_workspace, heatmap_task, tmp_path):
    """The Data Manager's table, as a radiologist opens the queue's tab, has no column of heatmap
    thumbnails (which would fetch an overlay per row, broken below the queue's top); a tab the
    workbench did not make shows that column, so the check can see it."""
    sync_playwright = sync_playwright_or_skip()
    project = heatmap_task[0]
    ls = LabelStudio.for_server(labelstudio)
    plain = ls.request("POST", "/api/dm/views", json={"project": project, "data": {"title": "plain"}})["id"]
    queue = ls.ensure_view(project)
    shot = tmp_path / "queue_tab.png"

    def columns_shown(page, tab: int) -> list[str]:
        page.goto(f"{labelstudio.url}/projects/{project}/data?tab={tab}")
        page.locator(f'{DM_TABLE_HEAD} [data-id="tasks:data.image"]').wait_for(state="attached")
        return page.locator(f"{DM_TABLE_HEAD} [data-id]").evaluate_all("cells => cells.map(c => c.dataset.id)")

    try:
        with sync_playwright() as pw, logged_in_page(pw, labelstudio, tmp_path / "chromium-profile") as page:
            fetched: list[str] = []
            page.on("request", lambda r: fetched.append(r.url) if "heatmaps" in r.url else None)
            assert "tasks:data.heatmap" in columns_shown(page, plain)
            page.wait_for_timeout(1000)  # thumbnails load after the rows
            assert any("heatmaps/" in url for url in fetched)  # the plain tab's thumbnail column fetches overlays
            fetched.clear()
            shown = columns_shown(page, queue)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shot))
    finally:
        ls.request("DELETE", f"/api/dm/views/{plain}")
    assert "tasks:data.heatmap" not in shown and "tasks:data.image" in shown
    assert "tasks:inner_id" not in shown  # Label Studio's own defaults kept
    assert "tasks:predictions_score" in shown  # but the tab's order, the queue's place, is shown
    assert fetched == []
