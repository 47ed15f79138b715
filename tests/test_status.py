"""`cxr status` against a real Label Studio, a real registry and a real workspace git repo."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box, write_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.publish import publish_queue
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.models.registry import Registry
from cxrkit.services.status import render_lines, workspace_status
from tests.test_labelstudio import make_records

TITLE = "status test"


def test_status_without_anything_says_what_is_missing(tmp_path):
    lines = render_lines(workspace_status(Workspace(tmp_path / "empty"), TITLE))
    text = "\n".join(lines)
    assert "nothing ingested yet" in text and "none promoted yet" in text and "not running" in text
    assert "Prefect: not running (`cxr flows start`)" in text and "ML backend: not running" in text


def test_status_reports_counts_model_gate_commit_and_queue(labelstudio, labelstudio_workspace, tmp_path):
    # A workspace of its own (manifest, registry, git repo) with Label Studio the session's server;
    # inside that server's workspace, because Label Studio serves local files from there only.
    ws = Workspace(labelstudio_workspace.data_dir / "status-ws").create()
    records = make_records(ws, "st", 6)
    records[0].labeled = True
    write_manifest(ws.manifest_path, records)
    ls = LabelStudio.for_server(labelstudio)
    project = ls.ensure_project(TITLE, open("label_config.xml").read())
    ls.import_tasks(project, records, ws.data_dir)
    tasks = ls.tasks_by_image(project)
    schema = load_schema()

    registry = Registry(ws.models_dir)
    (tmp_path / "d.pt").write_bytes(b"d")
    (tmp_path / "c.pt").write_bytes(b"c")
    metrics = {"detector": {"rsna": 0.25, "map50": 0.5}, "classifier": {"macro_auroc": 0.8}}
    version = registry.register(tmp_path / "d.pt", tmp_path / "c.pt", data_version="abc123", params={}, metrics=metrics)
    registry.promote(version.version_id)
    # The select flow's queue: every task, st002 with a box; then st001 is annotated.
    shown = {"st002": ([Box(1, 1, 9, 9, schema.opacity, score=0.5)], None)}
    publish_queue(ls, project, tasks, ["st001", "st003", "st002", "st005", "st004", "st000"], shown, version.version_id)
    ls.ensure_view(project)
    ls.create_annotation(tasks["st001"]["id"], boxes_to_results([Box(4, 4, 20, 20, schema.opacity, schema.subtypes[0])],
                                                                64, 64, schema))
    subprocess.run(["git", "init", "-q", str(ws.root)], check=True)
    subprocess.run(["git", "-C", str(ws.root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "retrain round 1"], check=True)

    status = workspace_status(ws, TITLE, labelstudio)
    assert status["data"] == {"images": 6, "labeled": 1, "unlabeled": 5}
    assert status["models"]["current"]["version"] == version.version_id
    assert status["models"]["current"]["metrics"]["detector.rsna"] == pytest.approx(0.25)
    assert status["models"]["last_gate"]["promoted"] is True
    assert status["last_commit"]["subject"] == "retrain round 1"
    lsinfo = status["labelstudio"]
    assert lsinfo["tasks"] == 6 and lsinfo["annotated"] == 1 and lsinfo["predicted_current"] == 6
    # the queue: unannotated tasks in queue order (st001, first, is annotated, so left out)
    assert [q["image_id"] for q in lsinfo["queue"]] == ["st003", "st002", "st005", "st004", "st000"]

    text = "\n".join(render_lines(status))
    assert version.version_id in text and "st003" in text and "retrain round 1" in text

    # The command, on the same workspace (whose own Label Studio is not running).
    out = subprocess.run([sys.executable, "-m", "cxrkit.cli", "status", "-w", str(ws.root), "--json"],
                         capture_output=True, text=True, check=True)
    shown = json.loads(out.stdout)
    assert shown["models"]["current"]["version"] == version.version_id and shown["labelstudio"] == {"running": False}
