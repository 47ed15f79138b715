"""Label Studio integration against a real server (tests/labelstudio_server.py starts one per session).

The tests of this module share one project of 50 tasks and build on each other in file order
(import, then predictions, then annotations, ...); bad-input tests use projects of their own.
"""
from __future__ import annotations

import random
import socket
import sqlite3
import threading
import time

import cv2
import numpy as np
import psutil
import pytest

from cxrkit.core.labels import DEFAULT_CONFIG, LabelConfigError, load_schema
from cxrkit.core.manifest import Box, Record
from cxrkit.core.workspace import Workspace
from cxrkit.labelstudio.client import LabelStudio, LabelStudioError
from cxrkit.labelstudio.publish import prune_publications, publish_queue
from cxrkit.labelstudio.queue import share_queue
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.labelstudio.tasks import patient_info, task_data
from cxrkit.services import labelstudio_database
from cxrkit.services import labelstudio_server as server
from tests.labelstudio_server import free_port

pytestmark = pytest.mark.slow
N_TASKS = 50
SIZE = 64


def make_records(ws: Workspace, prefix: str, n: int) -> list[Record]:
    """n records with a small grey PNG each under the workspace's images folder."""
    records = []
    for i in range(n):
        image_id = f"{prefix}{i:03d}"
        cv2.imwrite(str(ws.images_dir / f"{image_id}.png"), np.full((SIZE, SIZE), i * 4 % 256, np.uint8))
        records.append(
            Record(
                image_id=image_id,
                path=f"images/{image_id}.png",
                source="synthetic",
                width=SIZE,
                height=SIZE,
                metadata={"age": 40 + i, "sex": "MF"[i % 2], "view": "PA"},
            )
        )
    return records


def opacity_box(score: float) -> Box:
    schema = load_schema()
    return Box(8, 8, 16, 24, schema.opacity, schema.subtypes[0], score=score)


@pytest.fixture(scope="module")
def ls(labelstudio) -> LabelStudio:
    return LabelStudio.for_server(labelstudio)


@pytest.fixture(scope="module")
def project(ls) -> int:
    return ls.ensure_project("CXR test", DEFAULT_CONFIG.read_text())


@pytest.fixture(scope="module")
def records(labelstudio_workspace) -> list[Record]:
    return make_records(labelstudio_workspace, "img", N_TASKS)


def test_task_data_is_deidentified_metadata():
    rec = Record(image_id="ab12", path="images/ab12.png", source="rsna", width=10, height=20,
                 metadata={"age": 62, "sex": "F", "view": "PA", "pixel_spacing": [0.1, 0.1]})  # fmt: skip
    data = task_data(rec)
    assert data["image"] == "/data/local-files/?d=images/ab12.png"
    assert data["patient_info"] == "62 y · F · PA"
    assert (data["image_id"], data["age"], data["sex"], data["view"]) == ("ab12", 62, "F", "PA")
    assert "pixel_spacing" not in data and "patient_id" not in data
    assert patient_info({"view": "AP"}) == "AP"


def test_server_listens_on_loopback_only(labelstudio):
    listening = [c for c in psutil.Process(labelstudio.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert [c.laddr.port for c in listening] == [labelstudio.port]
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}


def test_second_start_finds_the_running_server(labelstudio, labelstudio_workspace):
    again = server.start(labelstudio_workspace)
    assert (again.pid, again.url, again.reused) == (labelstudio.pid, labelstudio.url, True)
    assert server.status(labelstudio_workspace).pid == labelstudio.pid


def test_a_new_workspace_starts_from_the_installs_migrated_empty_database(labelstudio, tmp_path):
    """The session's server left the install's migrated empty database in the cache (made on its first
    start, or found there): a new workspace's first start copies it, has nothing left to migrate, and
    makes its own admin and token; the copy holds nobody's login."""
    template = labelstudio_database.template_path(server.label_studio_bin())
    assert template is not None and template.is_file()
    ws = Workspace(tmp_path / "second").create()
    info = server.start(ws, port=free_port())
    try:
        assert "Initializing database" not in server.log_path(ws).read_text()  # Label Studio's word for migrating
        assert LabelStudio.for_server(info).projects() == []  # this workspace's token is the one that works
        assert info.credentials.token != labelstudio.credentials.token
        copied = server.data_dir(ws) / labelstudio_database.DATABASE_FILE
        assert copied.stat().st_mode & 0o077 == 0  # holds that token: readable by its owner alone
    finally:
        server.stop(ws)
    with sqlite3.connect(template) as db:
        assert db.execute("SELECT count(*) FROM htx_user").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM authtoken_token").fetchone() == (0,)


def test_only_the_default_sqlite_database_is_copied_and_a_failed_copy_migrates(tmp_path, capsys):
    assert labelstudio_database.uses_default_sqlite({})
    assert labelstudio_database.uses_default_sqlite({"DJANGO_DB": "sqlite"})
    assert not labelstudio_database.uses_default_sqlite({"DJANGO_DB": "default"})  # Postgres (the stack)
    prefixed_first = {"LABEL_STUDIO_DJANGO_DB": "postgresql", "DJANGO_DB": "sqlite"}  # as Label Studio reads it
    assert not labelstudio_database.uses_default_sqlite(prefixed_first)
    assert not labelstudio_database.uses_default_sqlite({"DATABASE_NAME": str(tmp_path / "elsewhere.sqlite3")})
    # An install whose Label Studio version cannot be read: no copy, the start migrates as before.
    binary = tmp_path / "install" / "bin" / "label-studio"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    assert not labelstudio_database.seed_database(tmp_path, binary, {}, timeout=5)
    assert not (tmp_path / labelstudio_database.DATABASE_FILE).exists()
    assert "migrating this workspace's database itself" in capsys.readouterr().err


def test_start_refuses_a_port_taken_by_another_program(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(server.LabelStudioServerError, match="already in use"):
            server.start(Workspace(tmp_path), port=other.getsockname()[1])
    assert not server.stop(Workspace(tmp_path))  # nothing was started


def test_project_from_label_config_is_idempotent(ls, project):
    assert ls.ensure_project("CXR test", DEFAULT_CONFIG.read_text()) == project
    assert ls.project(project)["label_config"] == DEFAULT_CONFIG.read_text().strip()
    assert [p["title"] for p in ls.projects()].count("CXR test") == 1
    assert ls.project(project)["maximum_annotations"] == 1  # one reader per image, Label Studio's default


def test_a_project_of_k_readers_gives_each_task_to_k_of_them(ls):
    """retrain.readers_per_image reaches Label Studio as its overlap: every task, k annotations."""
    made = ls.ensure_project("CXR three readers", DEFAULT_CONFIG.read_text(), readers_per_image=3)
    assert (ls.project(made)["maximum_annotations"], ls.project(made)["overlap_cohort_percentage"]) == (3, 100)
    assert ls.ensure_project("CXR three readers", DEFAULT_CONFIG.read_text(), readers_per_image=2) == made
    assert ls.project(made)["maximum_annotations"] == 2
    with pytest.raises(ValueError, match="readers_per_image"):
        ls.ensure_project("CXR three readers", DEFAULT_CONFIG.read_text(), readers_per_image=0)


def test_import_then_reimport_is_a_noop(ls, project, records, labelstudio_workspace):
    report = ls.import_tasks(project, records, labelstudio_workspace.data_dir)
    assert len(report.imported) == N_TASKS and not report.failed
    again = ls.import_tasks(project, records, labelstudio_workspace.data_dir)
    assert (again.imported, len(again.skipped), again.failed) == ([], N_TASKS, [])
    tasks = ls.tasks_by_image(project)
    assert len(ls.list_tasks(project)) == N_TASKS
    assert tasks["img003"]["data"]["patient_info"] == "43 y · F · PA"


def test_task_image_is_served_by_label_studio(ls, labelstudio, project, labelstudio_workspace):
    task = ls.tasks_by_image(project)["img007"]
    resp = ls.session.get(labelstudio.url + task["data"]["image"], timeout=30)
    assert resp.status_code == 200, resp.text[:200]
    assert resp.content == (labelstudio_workspace.images_dir / "img007.png").read_bytes()
    # Without a login the file is not served.
    anonymous = LabelStudio(labelstudio.url, "wrong-token").session
    assert anonymous.get(labelstudio.url + task["data"]["image"], timeout=30).status_code != 200


def test_predictions_replace_their_version_and_keep_annotations(ls, project):
    schema = load_schema()
    first = {f"img{i:03d}": ([opacity_box(0.5)], schema.impressions[1]) for i in range(N_TASKS)}
    assert ls.push_predictions(project, first, "v1") == N_TASKS
    task = ls.tasks_by_image(project)["img000"]
    annotation = ls.create_annotation(task["id"], boxes_to_results([opacity_box(None)], SIZE, SIZE, schema))

    second = {image_id: ([opacity_box(0.9), opacity_box(0.7)], imp) for image_id, (_, imp) in first.items()}
    assert ls.push_predictions(project, second, "v1") == N_TASKS
    tasks = ls.tasks_by_image(project, full=True)
    assert sum(len(t["predictions"]) for t in tasks.values()) == N_TASKS
    prediction = tasks["img000"]["predictions"][0]
    assert prediction["model_version"] == "v1" and prediction["score"] == pytest.approx(0.8)
    boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
    assert sorted(r["score"] for r in boxes) == [0.7, 0.9]
    assert [a["id"] for a in tasks["img000"]["annotations"]] == [annotation["id"]]

    newer = {f"img{i:03d}": ([opacity_box(0.6)], None) for i in range(10)}
    assert ls.push_predictions(project, newer, "v2") == 10
    versions = [p["model_version"] for t in ls.list_tasks(project, full=True) for p in t["predictions"]]
    assert (versions.count("v1"), versions.count("v2")) == (N_TASKS, 10)
    assert ls.project(project)["model_version"] == "v2"  # shown as pre-annotations from now on


def test_annotations_are_in_the_export_snapshot(ls, project):
    schema = load_schema()
    tasks = ls.tasks_by_image(project)
    made = [
        ls.create_annotation(tasks[image_id]["id"], boxes_to_results([], SIZE, SIZE, schema, schema.impressions[0]))
        for image_id in ("img010", "img011", "img012")
    ]
    exported = {t["data"]["image_id"]: t for t in ls.export_snapshot(project)}
    assert len(exported) == N_TASKS
    for image_id, annotation in zip(("img010", "img011", "img012"), made):
        (got,) = exported[image_id]["annotations"]
        assert got["id"] == annotation["id"] and got["created_at"] and got["updated_at"]
        assert got["result"][0]["value"]["choices"] == [schema.impressions[0]]
        assert exported[image_id]["drafts"] == []


class RequestLog:
    """Counts the client's HTTP requests by method (a response hook on its session)."""

    def __init__(self, ls: LabelStudio):
        self.calls: list[str] = []
        ls.session.hooks["response"].append(lambda resp, *a, **k: self.calls.append(resp.request.method))

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def test_the_queue_is_published_in_a_few_requests_whatever_its_length(ls, project, monkeypatch):
    schema = load_schema()
    log = RequestLog(ls)
    tasks = ls.tasks_by_image(project)
    rng = random.Random(0)
    order = rng.sample(sorted(tasks), N_TASKS)
    shown = {i: ([opacity_box(0.8)], schema.impressions[1]) for i in order[:30]}
    log.take()
    first = publish_queue(ls, project, tasks, order, shown, "v3")
    requests_for_50 = log.take()
    view = ls.ensure_view(project)
    assert ls.ensure_view(project) == view
    # The tab hides the heatmap overlay's column (a thumbnail per row) and what Label Studio hides by default.
    hidden = next(v for v in ls.views(project) if v["id"] == view)["data"]["hiddenColumns"]
    assert all("tasks:data.heatmap" in hidden[mode] for mode in ("explore", "labeling"))
    assert "tasks:inner_id" in hidden["explore"] and "tasks:data.image" not in hidden["explore"]
    assert "tasks:predictions_score" not in hidden["explore"]  # the queue's place, the tab's order
    # A user's own choice of columns stays; the overlay's column is hidden again.
    data = next(v for v in ls.views(project) if v["id"] == view)["data"]
    mine = {"explore": ["tasks:total_annotations"], "labeling": []}
    ls.request("PATCH", f"/api/dm/views/{view}", json={"project": project, "data": {**data, "hiddenColumns": mine}})
    assert ls.ensure_view(project) == view
    hidden = next(v for v in ls.views(project) if v["id"] == view)["data"]["hiddenColumns"]
    assert hidden == {"explore": ["tasks:total_annotations", "tasks:data.heatmap"], "labeling": ["tasks:data.heatmap"]}
    listed = ls.list_tasks(project, view=view, full=True)
    # The tab lists the queue in order, each task with its pre-annotation (or none) from this publication.
    assert [t["data"]["image_id"] for t in listed] == order
    assert first.label.startswith("v3@") and first.created == N_TASKS and ls.project(project)["model_version"] == first.label
    # Each task's prediction counter is right (the batched import recounts the tasks it touched).
    assert all(t["total_predictions"] == len(t["predictions"]) >= 1 for t in listed)
    current = {t["data"]["image_id"]: [p for p in t["predictions"] if p["model_version"] == first.label] for t in listed}
    assert all(len(p) == 1 for p in current.values())
    assert [current[i][0]["score"] for i in order] == pytest.approx([n / N_TASKS for n in range(N_TASKS)])
    assert all(any(r["type"] == "rectanglelabels" for r in current[i][0]["result"]) == (i in shown) for i in order)

    # The same queue again: recognised by its label, nothing written.
    log.take()
    again = publish_queue(ls, project, tasks, order, shown, "v3")
    assert (again.label, again.created, again.stale) == (first.label, 0, [])
    assert "POST" not in log.take()

    # A new order is a new publication; the one shown until now stays (open editors hold its ids).
    second = publish_queue(ls, project, tasks, order[::-1], shown, "v3")
    assert second.stale == [] and prune_publications(ls, project, second) == []
    log.take()
    third = publish_queue(ls, project, tasks, order[:10], shown, "v3")
    requests_for_10 = log.take()
    assert third.stale == [first.label] and prune_publications(ls, project, third) == [first.label]
    assert log.take() == ["DELETE"]
    versions = ls.model_versions(project)
    assert first.label not in versions and versions[second.label] == N_TASKS and versions[third.label] == 10
    assert [t["data"]["image_id"] for t in ls.list_tasks(project, view=view)][:10] == order[:10]
    # Requests do not grow with the queue's length.
    assert sorted(requests_for_10) == sorted(requests_for_50)

    # A run killed while importing left part of a publication: the next run deletes it and redoes it.
    fourth_order = order[5:]
    probe = publish_queue(ls, project, tasks, fourth_order, {}, None)
    assert probe.label.startswith("cold-start@") and prune_publications(ls, project, probe) == [second.label]
    ls.delete_model_version(project, probe.label)
    ls.import_predictions(project, [{"task": tasks[i]["id"], "result": [], "score": 0.5, "model_version": probe.label}
                                    for i in fourth_order[:3]])
    redone = publish_queue(ls, project, tasks, fourth_order, {}, None)
    assert redone.label == probe.label and redone.created == len(fourth_order)
    assert prune_publications(ls, project, redone) == [third.label]
    assert ls.model_versions(project)[probe.label] == len(fourth_order)

    # Readers' queues: one bulk request per distinct value, only for tasks whose value changes.
    queues = share_queue(fourth_order, ["reader-1", "reader-2"], 1)
    log.take()
    shared = publish_queue(ls, project, tasks, fourth_order, {}, None, queues)
    assert shared.created == 0 and shared.queue_changed == len(fourth_order)
    assert log.take().count("POST") == 2
    by_image = ls.tasks_by_image(project)
    assert all(by_image[i]["data"]["queue"] == f",{queues[i][0]}," for i in fourth_order)
    assert publish_queue(ls, project, by_image, fourth_order, {}, None, queues).queue_changed == 0
    cleared = publish_queue(ls, project, ls.tasks_by_image(project), fourth_order, {}, None, None)
    assert cleared.queue_changed == len(fourth_order)
    assert all(not t["data"].get("queue") for t in ls.list_tasks(project))

    # Listing pages through the project: one request per page, only the fields asked for.
    monkeypatch.setattr("cxrkit.labelstudio.client.PAGE_SIZE", 7)
    log.take()
    slim = ls.list_tasks(project)
    assert len(slim) == N_TASKS and log.take() == ["GET"] * -(-N_TASKS // 7)
    assert all("predictions" not in t and "annotations" not in t for t in slim)


def test_malformed_config_changes_nothing(ls, project):
    before = ls.project(project)["label_config"]
    with pytest.raises(LabelConfigError, match="not valid XML"):
        ls.ensure_project("CXR test", "<View><Image name='image' value='$image'>")
    no_boxes = before.replace("RectangleLabels", "Labels")
    with pytest.raises(LabelConfigError, match="RectangleLabels"):
        ls.ensure_project("CXR test", no_boxes)
    assert ls.project(project)["label_config"] == before


def test_missing_image_is_reported_and_the_rest_imported(ls, labelstudio_workspace):
    other = ls.ensure_project("CXR missing images", DEFAULT_CONFIG.read_text())
    records = make_records(labelstudio_workspace, "gone", 3)
    (labelstudio_workspace.images_dir / "gone001.png").unlink()
    report = ls.import_tasks(other, records, labelstudio_workspace.data_dir)
    assert report.imported == ["gone000", "gone002"]
    assert [image_id for image_id, _ in report.failed] == ["gone001"]
    assert "missing" in report.failed[0][1]
    assert sorted(ls.tasks_by_image(other)) == ["gone000", "gone002"]


def test_client_turns_legacy_tokens_back_on(ls, labelstudio):
    ls.request("POST", "/api/jwt/settings", json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": False})
    assert ls.session.get(labelstudio.url + "/api/projects", timeout=30).status_code == 401
    assert ls.projects()  # logged in with the admin's password and re-enabled them
    assert ls.request("GET", "/api/jwt/settings")["legacy_api_tokens_enabled"] is True


def test_unreachable_server_is_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabelStudioError) as caught:
        LabelStudio(url, "token").projects()
    message = str(caught.value)
    assert url in message and "\n" not in message


def test_api_error_carries_label_studio_message(ls):
    with pytest.raises(LabelStudioError, match="HTTP 404"):
        ls.project(999999)


def test_a_submission_while_the_database_is_busy_waits_and_is_saved(ls, labelstudio_workspace):
    """Label Studio deletes a superseded queue of predictions in one transaction (about 20 s for
    5,000). With SQLite's default busy timeout of 5 s, a radiologist's submission in that time
    failed with HTTP 500 and was not saved; the server's sitecustomize makes it wait. Here a real
    write transaction from outside holds the database for 8 s while the submission comes in."""
    schema = load_schema()
    other = ls.ensure_project("CXR busy database", DEFAULT_CONFIG.read_text())
    ls.import_tasks(other, make_records(labelstudio_workspace, "busy", 1), labelstudio_workspace.data_dir)
    task = ls.tasks_by_image(other)["busy000"]
    outcome = []

    def submit():
        try:
            outcome.append(ls.create_annotation(task["id"], boxes_to_results([], SIZE, SIZE, schema, schema.normal)))
        except LabelStudioError as error:
            outcome.append(error)

    database = sqlite3.connect(server.data_dir(labelstudio_workspace) / "label_studio.sqlite3", isolation_level=None)
    database.execute("BEGIN IMMEDIATE")  # the write lock a prune holds while it deletes
    start = time.monotonic()
    reader = threading.Thread(target=submit)
    reader.start()
    time.sleep(8)
    database.execute("COMMIT")
    database.close()
    reader.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], dict), outcome
    assert time.monotonic() - start >= 8  # it waited for the lock, and then it was saved
    assert [a["id"] for a in ls.tasks_by_image(other, full=True)["busy000"]["annotations"]] == [outcome[0]["id"]]
