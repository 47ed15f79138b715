"""The heatmap panel's parts that need no server: the label config's panel (an image nothing can
annotate), every task's `data.heatmap`, params.yaml's `explain:`, and how the select flow keeps
data/heatmaps/ to exactly the overlays of the queue's top for the serving model (with a stand-in
predictor whose explanations are made up; tests/test_flow_select.py runs the real one against a
real Label Studio, tests/test_labelstudio_browser.py shows the panel in a browser)."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.manifest import Box, Record
from cxrkit.core.params import load_params
from cxrkit.core.workspace import Workspace
from cxrkit.labelstudio.tasks import (
    HEATMAP_DIR,
    HEATMAP_FIELD,
    heatmap_path,
    image_url,
    task_data,
)
from cxrkit.models.explain import DEFAULTS as EXPLAIN_DEFAULTS
from cxrkit.models.explain import ExplainError, Explanation, explain_settings
from cxrkit.pipeline.project_repo import DVCIGNORE_LINES, keep_out_of_data_version
from flows.select import (
    HEATMAP_INDEX,
    remove_heatmaps,
    write_overlays,
)

CONTROL_TAGS = {"RectangleLabels", "Choices", "TextArea", "Labels", "Rectangle", "PolygonLabels", "BrushLabels",
                "KeyPointLabels", "EllipseLabels", "Rating", "Number", "DateTime", "Taxonomy", "Relations"}


def test_the_heatmap_is_a_collapsed_image_no_control_points_to():
    root = ET.fromstring(DEFAULT_CONFIG.read_text())
    images = list(root.iter("Image"))
    assert [i.get("name") for i in images] == ["image", "heatmap"]  # the film first: the workbench's image tag
    assert load_schema(DEFAULT_CONFIG).image_tag == "image"
    (panel,) = [p for c in root.iter("Collapse") for p in c.iter("Panel")]
    assert "not part of your annotation" in panel.get("value")
    (heatmap,) = [i for i in panel.iter("Image")]
    assert (heatmap.get("name"), heatmap.get("value")) == ("heatmap", f"${HEATMAP_FIELD}")
    assert panel.get("open") in (None, "false")  # collapsed until the radiologist opens it
    # Nothing can annotate it: no tag at all names it as its target.
    targets = {t.strip() for el in root.iter() for t in (el.get("toName") or "").split(",")}
    assert "heatmap" not in targets and "image" in targets
    assert {el.tag for el in root.iter() if el.get("toName")} <= CONTROL_TAGS


def test_every_task_carries_every_variable_of_the_config():
    """Label Studio refuses to import a task without one of the config's `$variables`."""
    rec = Record(image_id="ab 12", path="images/ab 12.png", source="rsna", width=10, height=20)
    data = task_data(rec)
    variables = set(re.findall(r'value="\$(\w+)"', DEFAULT_CONFIG.read_text()))
    assert variables == {"image", "patient_info", HEATMAP_FIELD} and variables <= set(data)
    assert heatmap_path("ab12") == f"{HEATMAP_DIR}/ab12.png"
    assert data[HEATMAP_FIELD] == "/data/local-files/?d=heatmaps/ab%2012.png" == image_url(heatmap_path("ab 12"))


def test_explain_settings():
    shipped = load_params()["explain"]
    assert shipped == EXPLAIN_DEFAULTS  # params.yaml and the defaults an older params file gets agree
    flow_keys = {k: EXPLAIN_DEFAULTS[k] for k in ("enabled", "queue_top", "max_side")}
    assert explain_settings(load_params()) == explain_settings({}) == flow_keys
    assert explain_settings({"explain": {"queue_top": "5"}})["queue_top"] == 5
    for bad in ({"queue_top": -1}, {"max_side": 8}):
        with pytest.raises(ExplainError, match="explain"):
            explain_settings({"explain": bad})


class StandIn:
    """A predictor whose explain_paths makes up a heatmap peaking at the middle of each film, with
    one box; films named in `fail` cannot be explained."""

    def __init__(self, version: str, fail: tuple[str, ...] = ()):
        self.model_version = version
        self.fail = fail
        self.asked: list[str] = []

    def explain_paths(self, paths, cache_dir=None):
        out = []
        for path in map(Path, paths):
            self.asked.append(path.stem)
            if path.stem in self.fail:
                out.append(Explanation(error=f"{path}: cannot decode image", path=str(path),
                                       model_version=self.model_version))
                continue
            h, w = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape
            grid = np.zeros((7, 7), np.float32)
            grid[3, 3] = 1.0
            out.append(Explanation(width=w, height=h, grid=grid.tolist(), boxes=[Box(w / 3, h / 3, w / 3, h / 3,
                                   load_schema().opacity)], model_version=self.model_version, path=str(path),
                                   image_sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
        return out


@pytest.fixture
def films(tmp_path) -> tuple[Workspace, dict[str, Path]]:
    ws = Workspace(tmp_path / "ws").create()
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(5):
        path = ws.images_dir / f"f{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (120, 100), dtype=np.uint8))
        paths[path.stem] = path
    return ws, paths


def overlays(ws: Workspace) -> dict[str, int]:
    """image id -> mtime (ns) of every file in data/heatmaps/."""
    return {p.stem: p.stat().st_mtime_ns for p in sorted((ws.data_dir / HEATMAP_DIR).iterdir())}


def test_the_overlays_follow_the_queue_top_and_the_model(films):
    ws, paths = films
    folder = ws.data_dir / HEATMAP_DIR
    folder.mkdir(parents=True)
    (folder / "gone.png").write_bytes(b"an overlay of a task no longer queued")
    (folder / ".f0.png.x1y2.tmp").write_bytes(b"left by a killed write")

    first = write_overlays(ws, StandIn("v1"), ["f0", "f1", "f2"], paths, "unused", 64)
    assert (first["written"], first["unchanged"], first["deleted"], first["failed"]) == (3, 0, 2, {})
    assert first["explained"] == 3 and first["top"] == 3
    made = overlays(ws)
    assert sorted(made) == ["f0", "f1", "f2"]
    picture = cv2.imread(str(folder / "f1.png"), cv2.IMREAD_COLOR)
    assert max(picture.shape[:2]) == 64 and picture.shape[:2] == (64, 53)  # the film's aspect, at max_side
    assert (picture.max(axis=2).astype(int) - picture.min(axis=2)).max() > 100  # colour: the heatmap is on it
    index = json.loads((ws.root / HEATMAP_INDEX).read_text())
    assert set(index) == set(made) and index["f0"]["model_version"] == "v1"

    # The same model and top: nothing written again.
    again = write_overlays(ws, StandIn("v1"), ["f0", "f1", "f2"], paths, "unused", 64)
    assert (again["written"], again["unchanged"], again["deleted"]) == (0, 3, 0)
    assert overlays(ws) == made

    # f0 labeled (out of the queue), f3 in, a new model, and f4 cannot be explained: every overlay
    # is the new model's, f0's is gone, f4 is reported and the others go on.
    (folder / "f4.png").write_bytes(b"f4's overlay by an older model")
    third = write_overlays(ws, StandIn("v2", fail=("f4",)), ["f1", "f4", "f2", "f3"], paths, "unused", 64)
    assert (third["written"], third["unchanged"], third["deleted"]) == (3, 0, 2)
    assert list(third["failed"]) == ["f4"] and "cannot decode" in third["failed"]["f4"]
    now = overlays(ws)
    assert sorted(now) == ["f1", "f2", "f3"] and all(now[i] != made[i] for i in ("f1", "f2"))
    assert {v["model_version"] for v in json.loads((ws.root / HEATMAP_INDEX).read_text()).values()} == {"v2"}

    # A changed max_side, or an index that was lost: written again.
    assert write_overlays(ws, StandIn("v2"), ["f1"], paths, "unused", 32)["written"] == 1
    (ws.root / HEATMAP_INDEX).unlink()
    assert write_overlays(ws, StandIn("v2"), ["f1"], paths, "unused", 32)["written"] == 1

    # An image id missing from the manifest is reported, not raised.
    assert write_overlays(ws, StandIn("v2"), ["f1", "nobody"], paths, "unused", 32)["failed"] == {
        "nobody": "not in the manifest"}

    assert remove_heatmaps(ws) == 1 and overlays(ws) == {} and not (ws.root / HEATMAP_INDEX).exists()
    assert remove_heatmaps(Workspace(ws.root / "elsewhere")) == 0


def test_overlays_stay_out_of_the_data_version(tmp_path):
    """`dvc add data` (the retrain's data version) does not count data/heatmaps/: a select round
    that writes overlays leaves the data version as it was."""
    root = tmp_path / "ws"
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "images" / "a.png").write_bytes(b"a film")
    subprocess.run(["git", "init", "--quiet"], cwd=root, check=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--quiet"], cwd=root, check=True)
    before = (root / ".dvcignore").read_text()
    keep_out_of_data_version(root)
    keep_out_of_data_version(root)  # once only
    text = (root / ".dvcignore").read_text()
    assert text.startswith(before) and text.splitlines().count(DVCIGNORE_LINES[-1]) == 1

    subprocess.run([dvc, "add", "--quiet", "data"], cwd=root, check=True)
    version = (root / "data.dvc").read_text()
    (root / "data" / HEATMAP_DIR).mkdir()
    (root / "data" / HEATMAP_DIR / "a.png").write_bytes(b"an overlay")
    subprocess.run([dvc, "add", "--quiet", "data"], cwd=root, check=True)
    assert (root / "data.dvc").read_text() == version and "nfiles: 1" in version

    # A workspace that is no DVC repository yet: `dvc init` later keeps the file.
    fresh = tmp_path / "no-repo-yet"
    fresh.mkdir()
    keep_out_of_data_version(fresh)
    assert DVCIGNORE_LINES[-1] in (fresh / ".dvcignore").read_text().splitlines()
