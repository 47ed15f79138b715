"""The ML backend over real HTTP: gunicorn serving ml_backend/, a real Label Studio, real Prefect.

One backend process serves the module (started as `cxr backend start` starts it), on a workspace
whose registry holds two versions of the session's tiny trained models. Label Studio is the
session's server; the test's project imports a dozen of the same images, which the backend reads
from its own workspace copy (the local-files path is the same). Prefect is the session's test
server, with a deployment `retrain/retrain` of a small stand-in flow named `retrain` (the real
flow is flows/retrain.py's business): the test checks that flow runs are created, with the right
parameters, not what they do.
"""
from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from cxrkit.core.labels import parse_label_config
from cxrkit.core.workspace import Workspace
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.results import results_to_labels
from cxrkit.labelstudio.tasks import task_data
from cxrkit.models.registry import Registry
from cxrkit.services import backend
from tests.labelstudio_server import free_port

pytestmark = pytest.mark.slow

PROJECT_TITLE = "ML backend test"
LABEL_CONFIG = (Path(__file__).resolve().parents[1] / "label_config.xml").read_text()
# The tiny models score low (see test_predictor.py): show boxes down to the detector's floor.
TEST_PREDICTOR = {"conf": 0.01, "flip_conf": 0.01}
# The registered versions' explain.max_side: what /explain shrinks a film to when the request names no size.
VERSION_OVERLAY_SIDE = 120
N_TASKS = 12


# ---------------------------------------------------------------- fixtures


def _register_versions(ws: Workspace, trained_models) -> tuple[str, str]:
    """Two registry versions (different data versions, so different ids) that predict differently:
    the second's classifier has its output biases shifted, so its subtypes and scores differ."""
    import torch

    params = dict(trained_models.params)
    params["predictor"] = {**params["predictor"], **TEST_PREDICTOR}
    params["explain"] = {**(params.get("explain") or {}), "max_side": VERSION_OVERLAY_SIDE}
    reg = Registry(ws.models_dir)
    metrics = {"detector": {"rsna": 0.1, "map50": 0.1}, "classifier": {"macro_auroc": 0.6}}
    checkpoint = torch.load(trained_models.classifier_checkpoint, weights_only=True)
    head = [k for k in checkpoint["state_dict"] if k.endswith(".bias")][-1]  # the output layer's
    bias = checkpoint["state_dict"][head]
    checkpoint["state_dict"][head] = bias + torch.linspace(-3.0, 3.0, bias.numel())
    other = ws.root / "classifier-shifted.pt"
    torch.save(checkpoint, other)
    ids = [reg.register(trained_models.detector_weights, classifier, data_version=d, params=params,
                        metrics=metrics).version_id
           for d, classifier in (("aaaa1111", trained_models.classifier_checkpoint), ("bbbb2222", other))]
    return ids[0], ids[1]


def _copy_images(trained_models, images_dir: Path) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    for rec in trained_models.records:
        shutil.copy2(trained_models.data_dir / rec.path, images_dir.parent / rec.path)


@pytest.fixture(scope="module")
def backend_ws(trained_models, tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("backend-ws")).create()
    _copy_images(trained_models, ws.images_dir)
    return ws


@pytest.fixture(scope="module")
def versions(backend_ws, trained_models) -> tuple[str, str]:
    v1, v2 = _register_versions(backend_ws, trained_models)
    Registry(backend_ws.models_dir).set_current(v1)
    return v1, v2


@pytest.fixture(scope="module")
def retrain_deployment(prefect_server):
    """A deployment `retrain/retrain` of a stand-in flow named `retrain` (never executed here)."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow(name="retrain")
    def retrain(workspace: str, project: int, reason: str = "") -> None:  # the real one: flows/retrain.py
        pass

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(retrain)
        deployment_id = client.create_deployment(flow_id=flow_id, name="retrain", entrypoint="tests:retrain")
    return deployment_id


@pytest.fixture(scope="module")
def server(backend_ws, versions, prefect_server, labelstudio, monkeypatch_module):
    """The backend process for the module; PREFECT_API_URL is the session's test server, and
    LABEL_STUDIO_URL the session's Label Studio (its token comes in /setup)."""
    from prefect.settings import PREFECT_API_URL

    info = backend.start(backend_ws, port=free_port(),
                         extra_env={"PREFECT_API_URL": PREFECT_API_URL.value(), "CXR_RETRAIN_EVERY": "3",
                                    "LABEL_STUDIO_URL": labelstudio.url, "LABEL_STUDIO_API_KEY": ""})
    yield info
    backend.stop(backend_ws)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        # The backend's login is generated into its workspace .env, not taken from the caller.
        mp.delenv("CXR_BACKEND_USER", raising=False)
        mp.delenv("CXR_BACKEND_PASSWORD", raising=False)
        yield mp


@pytest.fixture(scope="module")
def http(server) -> requests.Session:
    session = requests.Session()
    session.auth = (server.user, server.password)
    return session


@pytest.fixture(scope="module")
def ls_project(labelstudio, labelstudio_workspace, trained_models):
    """(client, project id, tasks): a project with N_TASKS of the trained images, in Label Studio's workspace."""
    _copy_images(trained_models, labelstudio_workspace.images_dir)
    ls = LabelStudio.for_server(labelstudio)
    project = ls.ensure_project(PROJECT_TITLE, LABEL_CONFIG)
    records = [r for r in trained_models.records if r.split != "train"][:N_TASKS]
    ls.import_tasks(project, records, labelstudio_workspace.data_dir)
    return ls, project, ls.list_tasks(project, full=True)


@pytest.fixture(scope="module")
def tasks(trained_models) -> list[dict]:
    """Tasks as Label Studio sends them (cxrkit.labelstudio.tasks builds the import), for tests without it."""
    records = [r for r in trained_models.records if r.split != "train"][:N_TASKS]
    return [{"id": 1000 + i, "data": task_data(r)} for i, r in enumerate(records)]


def _current(ws: Workspace) -> str:
    return Registry(ws.models_dir).current_id()


def test_the_worker_uses_every_core(server):
    """The test process has imported ultralytics, as `cxr backend start` does, and ultralytics sets
    OMP_NUM_THREADS=1 in its process on import: the gunicorn worker must not inherit that, and its
    torch must take the threads a fresh process takes (1 of 2 cores served predictions before)."""
    import psutil

    from tests.environment_at_start import USER_OMP_NUM_THREADS, torch_default_threads

    workers = psutil.Process(server.pid).children()
    assert workers
    for worker in workers:
        assert worker.environ().get("OMP_NUM_THREADS") == USER_OMP_NUM_THREADS
    assert requests.get(server.url + "/health", timeout=10).json()["threads"] == torch_default_threads()


# ---------------------------------------------------------------- the protocol


def test_health_setup_predict_with_label_studio_tasks(server, http, ls_project, backend_ws, labelstudio):
    ls, project, tasks = ls_project
    version = _current(backend_ws)
    health = requests.get(server.url + "/health", timeout=10).json()  # no login needed
    assert health["status"] == "UP" and health["model_version"] == version

    setup = http.post(server.url + "/setup", json={
        "project": f"{project}.1700000000", "schema": LABEL_CONFIG, "hostname": labelstudio.url,
        "access_token": labelstudio.credentials.token}, timeout=30)  # fmt: skip
    assert setup.status_code == 200, setup.text
    assert setup.json() == {"model_version": version}

    resp = http.post(server.url + "/predict", json={
        "tasks": tasks, "project": f"{project}.1700000000", "label_config": LABEL_CONFIG}, timeout=120)  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == version and body["failed"] == 0
    assert len(body["results"]) == len(tasks) == N_TASKS
    schema = parse_label_config(LABEL_CONFIG)
    n_boxes = 0
    for task, item in zip(tasks, body["results"]):
        assert item["model_version"] == version and "error" not in item
        labels = results_to_labels(item["result"], schema)  # valid Label Studio results for this config
        assert labels.impression in schema.impressions
        n_boxes += len(labels.boxes)
        if labels.boxes:
            assert 0 < item["score"] <= 1
        for r in item["result"]:
            assert r["to_name"] == schema.image_tag
    assert n_boxes > 0


def test_tag_names_come_from_the_label_config(server, http, tasks):
    renamed = (LABEL_CONFIG.replace('name="finding"', 'name="boxes"').replace('toName="image"', 'toName="xray"')
               .replace('name="image"', 'name="xray"'))  # fmt: skip
    resp = http.post(server.url + "/predict", json={"tasks": tasks[:2], "label_config": renamed}, timeout=60)
    assert resp.status_code == 200, resp.text
    results = [r for item in resp.json()["results"] for r in item["result"]]
    assert {r["to_name"] for r in results} == {"xray"}
    assert {r["from_name"] for r in results if r["type"] == "rectanglelabels"} <= {"boxes"}


def test_connect_stores_predictions_in_label_studio(server, ls_project, backend_ws):
    ls, project, tasks = ls_project
    version = _current(backend_ws)
    connected, requested = backend.connect(ls, project, server.url, server.user, server.password)
    assert connected["url"] == server.url and connected["auth_method"] == "BASIC_AUTH"
    assert connected["model_version"] == version
    assert sorted(requested) == sorted(t["id"] for t in tasks)
    stored = {t["id"]: [p for p in t["predictions"] if p["model_version"] == version] for t in ls.list_tasks(project, full=True)}
    assert all(len(preds) == 1 for preds in stored.values()), stored
    for preds in stored.values():
        assert preds[0]["result"], "a stored prediction without results"
    # The webhook Label Studio created for the backend carries the backend's login.
    hooks = [h for h in ls.request("GET", "/api/webhooks/", params={"project": project})
             if h["url"] == server.url + "/webhook"]  # fmt: skip
    assert len(hooks) == 1 and hooks[0]["headers"]["Authorization"].startswith("Basic ")
    # Connecting again finds nothing left to predict for this version.
    _, again = backend.connect(ls, project, server.url, server.user, server.password)
    assert again == []
    # A radiologist's annotation reaches the backend through that webhook and is counted.
    ls.create_annotation(tasks[0]["id"], stored[tasks[0]["id"]][0]["result"])
    state_file = backend_ws.root / "backend" / "retrain_state.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and str(project) not in _pending(state_file):
        time.sleep(0.5)
    assert len(_pending(state_file).get(str(project), [])) == 1


def test_uploaded_image_is_fetched_from_label_studio(server, http, ls_project, labelstudio, trained_models):
    """A task made by uploading a PNG to Label Studio: the backend fetches it with the token from /setup."""
    ls = ls_project[0]
    # Label Studio turns an uploaded image into a task only for a config with one data key: no
    # patient line, no heatmap panel.
    config = re.sub(r"\s*<Collapse.*?</Collapse>", "",
                    LABEL_CONFIG.replace('<Text name="patient" value="$patient_info"/>', ""), flags=re.S)
    project = ls.ensure_project("ML backend upload test", config)
    record = trained_models.records[0]
    png = (trained_models.data_dir / record.path).read_bytes()
    ls.request("POST", f"/api/projects/{project}/import", files={"file": ("uploaded.png", png, "image/png")})
    (task,) = ls.list_tasks(project, full=True)
    assert task["data"]["image"].startswith("/data/upload/")
    setup = http.post(server.url + "/setup", json={"schema": config, "hostname": labelstudio.url,
                                                   "access_token": labelstudio.credentials.token}, timeout=30)
    assert setup.status_code == 200, setup.text
    resp = http.post(server.url + "/predict", json={"tasks": [task], "label_config": config}, timeout=60)
    assert resp.status_code == 200 and resp.json()["failed"] == 0, resp.text
    # The same prediction as for the workspace copy of that image.
    local = {"id": 1, "data": task_data(record)}
    again = http.post(server.url + "/predict", json={"tasks": [local], "label_config": LABEL_CONFIG}, timeout=60)
    assert resp.json()["results"][0]["result"] == again.json()["results"][0]["result"]


class _Recorder:
    """A real HTTP server on loopback that records every request it gets (a host a caller names)."""

    def __init__(self):
        import http.server

        self.requests: list[tuple[str, str | None]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                recorder.requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"\x89PNG not an image")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_uploads_come_only_from_the_label_studio_the_backend_was_started_for(server, http, tasks, labelstudio):
    """/setup names a host and a token: the backend still fetches uploads from LABEL_STUDIO_URL only,
    so no caller can send it (and a configured token) elsewhere."""
    elsewhere = _Recorder()
    try:
        setup = http.post(server.url + "/setup", json={"schema": LABEL_CONFIG, "hostname": elsewhere.url,
                                                       "access_token": "the-callers-token"}, timeout=30)
        assert setup.status_code == 200, setup.text
        upload = {"id": 9001, "data": {"image": "/data/upload/1/photo.png"}}
        absolute = {"id": 9002, "data": {"image": elsewhere.url + "/data/upload/1/photo.png"}}
        resp = http.post(server.url + "/predict", json={"tasks": [upload, absolute], "label_config": LABEL_CONFIG},
                         timeout=60).json()
        assert resp["failed"] == 2 and elsewhere.requests == []
        assert "refused, the upload is not on Label Studio at " + labelstudio.url in resp["results"][1]["error"]
    finally:
        elsewhere.close()


def test_without_label_studio_url_no_upload_is_fetched(tmp_path, trained_models, monkeypatch):
    elsewhere = _Recorder()
    ws = Workspace(tmp_path / "ws").create()
    v1, _ = _register_versions(ws, trained_models)
    Registry(ws.models_dir).set_current(v1)
    for name in ("CXR_BACKEND_USER", "CXR_BACKEND_PASSWORD", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    try:
        info = backend.start(ws, port=free_port())
        auth = (info.user, info.password)
        requests.post(info.url + "/setup", json={"schema": LABEL_CONFIG, "hostname": elsewhere.url,
                                                 "access_token": "the-callers-token"}, auth=auth, timeout=30)
        task = {"id": 1, "data": {"image": "/data/upload/1/photo.png"}}
        resp = requests.post(info.url + "/predict", json={"tasks": [task], "label_config": LABEL_CONFIG},
                             auth=auth, timeout=60).json()
        assert resp["failed"] == 1 and "started without LABEL_STUDIO_URL" in resp["results"][0]["error"]
        assert elsewhere.requests == []
    finally:
        backend.stop(ws)
        elsewhere.close()


def _pending(state_file: Path) -> dict:
    return json.loads(state_file.read_text()).get("pending", {}) if state_file.is_file() else {}


# ---------------------------------------------------------------- bad input


def test_bad_tasks_fail_alone(server, http, tasks, backend_ws):
    good = tasks[0]
    (backend_ws.images_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    huge = np.zeros((8000, 8000), np.uint8)  # 64 megapixels, over the 50 MP limit; a small file
    cv2.imwrite(str(backend_ws.images_dir / "huge.png"), huge)
    secret = backend_ws.root / "secret.png"
    shutil.copy2(backend_ws.images_dir / Path(good["data"]["image"].split("d=")[1]).name, secret)

    def task(i, image):
        data = {"image_id": f"bad{i}"} if image is None else {"image": image, "image_id": f"bad{i}"}
        return {"id": 9000 + i, "data": data}

    bad = [
        task(1, "/data/local-files/?d=images/missing.png"),
        task(2, "/data/local-files/?d=images/corrupt.png"),
        task(3, "/data/local-files/?d=images/../../secret.png"),  # a real PNG, outside the image folder
        task(4, f"/data/local-files/?d={secret}"),
        task(5, "/data/local-files/?d=images/huge.png"),
        task(6, "http://example.org/x.png"),
        task(7, None),
    ]
    resp = http.post(server.url + "/predict", json={"tasks": [good, *bad, good], "label_config": LABEL_CONFIG},
                     timeout=120)
    assert resp.status_code == 200, resp.text
    items = resp.json()["results"]
    assert resp.json()["failed"] == len(bad)
    assert "result" in items[0] and "result" in items[-1] and items[0]["result"] == items[-1]["result"]
    errors = {item["task"]: item["error"] for item in items[1:-1]}
    assert "not found" in errors[9001]
    assert "cannot decode" in errors[9002]
    assert "outside the workspace image folder" in errors[9003]
    assert "outside the workspace image folder" in errors[9004]
    assert "8000 x 8000" in errors[9005] and "over the limit" in errors[9005]
    assert "unsupported image URL" in errors[9006]
    assert "no image" in errors[9007]
    assert all("result" not in item for item in items[1:-1])

    # A label config without the tags we predict into: a clear refusal of that request only.
    no_boxes = ('<View><Image name="image" value="$image"/>'
                '<Choices name="c" toName="image"><Choice value="a"/></Choices></View>')
    for route, key in (("/predict", "label_config"), ("/setup", "schema")):
        resp = http.post(server.url + route, json={"tasks": [good], key: no_boxes}, timeout=60)
        assert resp.status_code == 400 and "RectangleLabels" in resp.json()["error"], resp.text
    # Not JSON, and a body over the limit (16 MiB): refused, nothing read.
    assert http.post(server.url + "/predict", data=b"tasks", timeout=30).status_code in (400, 415)
    resp = http.post(server.url + "/predict", data=b"x" * (17 << 20), headers={"Content-Type": "application/json"},
                     timeout=60)
    assert resp.status_code == 413
    # Still serving.
    resp = http.post(server.url + "/predict", json={"tasks": [good], "label_config": LABEL_CONFIG}, timeout=60)
    assert resp.status_code == 200 and "result" in resp.json()["results"][0]


def test_a_request_is_bounded_and_names_what_it_left(backend_ws, versions, tasks):
    """At most CXR_BACKEND_MAX_TASKS tasks per request, no batch started after
    CXR_BACKEND_PREDICT_SECONDS (the first always runs): the tasks left get an error that says
    why and to ask again, in the request's order (the service in-process, as a worker runs it)."""
    from ml_backend.model import CxrModel, Service, Settings

    many = [{**t, "id": 5000 + i} for i, t in enumerate(tasks * 3)]  # 36 tasks
    batch = Registry(backend_ws.models_dir).get(versions[0]).params["predictor"]["batch"]

    def predict(**env) -> list[dict]:
        settings = Settings.from_env({"CXR_WORKSPACE": str(backend_ws.root), **env})
        return CxrModel(Service(settings), label_config=LABEL_CONFIG).predict(many)

    capped = predict(CXR_BACKEND_MAX_TASKS="10")
    assert len(capped) == len(many) and all("result" in item for item in capped[:10])
    assert [item["task"] for item in capped[10:]] == [t["id"] for t in many[10:]]
    assert all("at most 10 per request (CXR_BACKEND_MAX_TASKS)" in item["error"] and "ask again" in item["error"]
               for item in capped[10:])
    late = predict(CXR_BACKEND_PREDICT_SECONDS="0")  # the default cap: 32
    assert all("result" in item for item in late[:batch])
    assert all("CXR_BACKEND_PREDICT_SECONDS" in item["error"] for item in late[batch:32])
    assert all("CXR_BACKEND_MAX_TASKS" in item["error"] for item in late[32:])


def test_the_inference_thread_serves_whoever_asked_first_on_one_thread():
    """A bulk request submits batch by batch; a single task that asks while batch 0 runs is
    served before batch 1. Every job runs on the one inference thread, never the caller's."""
    from ml_backend.current_model import InferenceThread

    inference, order, threads = InferenceThread(), [], set()
    single_asked = threading.Event()

    def job(name):
        threads.add(threading.get_ident())
        order.append(name)

    def single():
        single_asked.set()
        inference.run(job, "single")

    def first_batch():
        job("batch 0")
        threading.Thread(target=single).start()
        single_asked.wait(10)
        while inference._executor._work_queue.qsize() < 1:  # the single task's job is queued behind us
            time.sleep(0.001)

    def bulk():
        inference.run(first_batch)
        for k in range(1, 4):
            inference.run(job, f"batch {k}")

    worker = threading.Thread(target=bulk)
    worker.start()
    worker.join(30)
    assert order == ["batch 0", "single", "batch 1", "batch 2", "batch 3"]
    assert len(threads) == 1 and threading.get_ident() not in threads and worker.ident not in threads
    with pytest.raises(ZeroDivisionError):  # a job's exception reaches its caller
        inference.run(lambda: 1 / 0)


def test_models_load_on_the_thread_that_runs_them(tmp_path):
    """The first load, /reload's and a hot swap's all run on the inference thread: torch work on
    a second thread slows every inference after it (current_model.InferenceThread)."""
    from cxrkit.models.registry import CURRENT_FILE
    from ml_backend.current_model import CurrentModel

    registry = SimpleNamespace(root=tmp_path, current_id=lambda: (tmp_path / CURRENT_FILE).read_text().strip())
    loaded_on: dict[str, str] = {}

    def load(version_id):
        loaded_on[version_id] = threading.current_thread().name
        return object()

    (tmp_path / CURRENT_FILE).write_text("v1")
    current = CurrentModel(registry, load)
    assert current.get().version_id == "v1"  # nothing served yet: loads before answering
    (tmp_path / CURRENT_FILE).write_text("v2-longer")  # another size: the stamp changes
    current.get()  # queued on the inference thread; this caller goes on
    deadline = time.monotonic() + 10
    while current.get().version_id != "v2-longer" and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / CURRENT_FILE).write_text("v3")
    assert current.check(wait=True).version_id == "v3"
    assert set(loaded_on) == {"v1", "v2-longer", "v3"}
    assert {name.split("_")[0] for name in loaded_on.values()} == {"inference"}, loaded_on


def test_an_unexpected_failure_is_answered_without_paths_or_exception_text(tmp_path, caplog):
    """A fault on disk (the retrain counter's state file is a folder) fails the webhook: the
    answer is a 500 that names no path and quotes no exception; the log has both."""
    from ml_backend._wsgi import create_app
    from ml_backend.model import Settings

    state = tmp_path / "state"
    (state / "retrain_state.json").mkdir(parents=True)
    ws = Workspace(tmp_path / "ws").create()
    settings = Settings.from_env({"CXR_WORKSPACE": str(ws.root), "CXR_BACKEND_USER": "ls",
                                  "CXR_BACKEND_PASSWORD": "a-password-of-this-test", "CXR_BACKEND_STATE_DIR": str(state)})
    client = create_app(settings).test_client()
    resp = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 5}},
                       auth=("ls", "a-password-of-this-test"))
    body = resp.get_data(as_text=True)
    assert resp.status_code == 500 and "the ML backend's log says why" in body
    assert str(tmp_path) not in body and "Errno" not in body and "Error" not in body, body
    assert str(state) in caplog.text  # the operator still learns what failed, from the log


def test_explain_answers_the_overlay_of_a_task(server, http, tasks, backend_ws):
    """POST /explain: the film with the serving classifier's heatmap over it, as a PNG, under the
    same image checks as /predict."""
    resp = http.post(server.url + "/explain", json={"task": tasks[0], "max_side": 200}, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "image/png" and resp.headers["X-Model-Version"] == _current(backend_ws)
    picture = cv2.imdecode(np.frombuffer(resp.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture.ndim == 3 and max(picture.shape[:2]) == 200  # shrunk to max_side (never enlarged)
    assert picture.astype(int).std(axis=2).mean() > 1  # coloured: a heatmap over a grey film
    same = http.post(server.url + "/explain", json={"image": tasks[0]["data"]["image"], "max_side": 200}, timeout=120)
    assert same.status_code == 200 and same.content == resp.content
    unsized = http.post(server.url + "/explain", json={"task": tasks[0]}, timeout=120)  # the version's explain.max_side
    assert unsized.status_code == 200, unsized.text
    assert max(cv2.imdecode(np.frombuffer(unsized.content, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]) == VERSION_OVERLAY_SIDE
    outside = http.post(server.url + "/explain", json={"image": "/data/local-files/?d=images/../../.env"}, timeout=30)
    assert outside.status_code == 422 and "outside the workspace image folder" in outside.json()["error"]
    for bad in ({}, {"task": {"data": {}}}, {"image": tasks[0]["data"]["image"], "max_side": 10}):
        answer = http.post(server.url + "/explain", json=bad, timeout=30)
        assert answer.status_code == 400, answer.text
    assert requests.post(server.url + "/explain", json={"task": tasks[0]}, timeout=30).status_code == 401


def test_auth_is_required(server, tasks):
    for method, route in (("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"), ("POST", "/reload"),
                          ("POST", "/train"), ("GET", "/versions")):  # fmt: skip
        for auth in (None, (server.user, "wrong-password"), ("someone", server.password)):
            resp = requests.request(method, server.url + route, auth=auth, json={"tasks": tasks[:1]}, timeout=30)
            assert resp.status_code == 401, (route, auth, resp.text)
            assert "basic authentication" in resp.json()["error"]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_no_credentials_configured_refuses_everything(tmp_path):
    from ml_backend._wsgi import create_app
    from ml_backend.model import Settings

    settings = Settings.from_env({"CXR_WORKSPACE": str(tmp_path)})
    assert settings.user is None and settings.password is None
    client = create_app(settings).test_client()
    for route in ("/setup", "/predict", "/webhook", "/reload"):
        resp = client.post(route, json={}, auth=("labelstudio", "anything"))
        assert resp.status_code == 503 and "no credentials configured" in resp.json["error"]
    assert client.get("/health").status_code == 200


# ---------------------------------------------------------------- retrain trigger


def test_webhook_counts_annotations_and_starts_the_retrain(server, http, retrain_deployment, backend_ws):
    from prefect.client.orchestration import get_client

    project = 4242

    def event(action, annotation_id):
        payload = {"action": action, "project": {"id": project}, "annotation": {"id": annotation_id}, "task": {"id": 1}}
        resp = http.post(server.url + "/webhook", json=payload, timeout=60)
        assert resp.status_code == 201, resp.text
        return resp.json()

    assert event("ANNOTATION_CREATED", 101)["pending"] == 1
    assert event("ANNOTATION_UPDATED", 101)["pending"] == 1  # the same annotation again
    assert event("ANNOTATION_CREATED", 102)["pending"] == 2
    assert "retrain" not in event("PROJECT_UPDATED", 0)
    third = event("ANNOTATION_CREATED", 103)  # CXR_RETRAIN_EVERY=3
    retrain = third["retrain"]
    assert retrain["started"] is True, retrain
    assert (backend_ws.root / "backend" / "retrain_state.json").is_file()
    assert event("ANNOTATION_CREATED", 104)["pending"] == 1  # counting starts again

    explicit = http.post(server.url + "/webhook", json={"action": "START_TRAINING", "project": {"id": project}},
                         timeout=60).json()["retrain"]  # Label Studio's "Start training" button
    assert explicit["started"] is True, explicit
    with get_client(sync_client=True) as client:
        for result, reason in ((retrain, "3 new annotations"), (explicit, "start training")):
            run = client.read_flow_run(result["flow_run_id"])
            assert run.deployment_id == retrain_deployment
            assert run.parameters["workspace"] == str(backend_ws.root) and run.parameters["project"] == project
            assert reason in run.parameters["reason"]
        # No deployment: a clear error in the answer, the service stays up.
        client.delete_deployment(retrain_deployment)
    failed = http.post(server.url + "/webhook", json={"action": "START_TRAINING", "project": {"id": project}},
                       timeout=60)
    assert failed.status_code == 201 and failed.json()["retrain"]["started"] is False
    assert "retrain/retrain" in failed.json()["retrain"]["error"]
    assert requests.get(server.url + "/health", timeout=10).json()["status"] == "UP"


# ---------------------------------------------------------------- no model, hot swap


def test_no_model_yet(tmp_path, monkeypatch):
    """A workspace without a promoted model: the backend says so and predicts nothing."""
    from cxrkit.cli import app

    ws = Workspace(tmp_path / "ws").create()
    monkeypatch.delenv("CXR_BACKEND_USER", raising=False)
    monkeypatch.delenv("CXR_BACKEND_PASSWORD", raising=False)
    runner = CliRunner()
    try:
        started = runner.invoke(app, ["backend", "start", "-w", str(ws.root), "--port", str(free_port())])
        assert started.exit_code == 0, started.output
        info = backend.status(ws)
        assert info is not None and info.model_version is None
        assert runner.invoke(app, ["backend", "status", "-w", str(ws.root)]).exit_code == 0
        auth = (info.user, info.password)
        setup = requests.post(info.url + "/setup", json={"schema": LABEL_CONFIG}, auth=auth, timeout=30)
        assert setup.status_code == 503 and "no model has been trained yet" in setup.json()["error"]
        task = {"id": 1, "data": {"image": "/data/local-files/?d=images/x.png"}}
        resp = requests.post(info.url + "/predict", json={"tasks": [task], "label_config": LABEL_CONFIG},
                             auth=auth, timeout=30)
        assert resp.status_code == 503 and resp.json()["results"] == []
        assert "no model has been trained yet" in resp.json()["error"]
    finally:
        assert runner.invoke(app, ["backend", "stop", "-w", str(ws.root)]).exit_code == 0
    assert backend.status(ws) is None


def test_a_model_that_fails_to_load_is_named_not_explained_on_health(tmp_path, trained_models, monkeypatch):
    """/health answers without a login: a failed load shows which version, never the exception
    text, which holds the workspace's paths."""
    ws = Workspace(tmp_path / "ws").create()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    version = Registry(ws.models_dir).register(broken, broken, data_version="broken", params=trained_models.params,
                                               metrics={})
    Registry(ws.models_dir).set_current(version.version_id)
    monkeypatch.delenv("CXR_BACKEND_USER", raising=False)
    monkeypatch.delenv("CXR_BACKEND_PASSWORD", raising=False)
    try:
        info = backend.start(ws, port=free_port())
        health = requests.get(info.url + "/health", timeout=10).json()
        assert health["model_version"] is None and version.version_id in health["model_error"]
        assert str(tmp_path) not in json.dumps(health) and "Error" not in health["model_error"]
        assert "the backend log says why" in health["model_error"]
    finally:
        backend.stop(ws)


def test_hot_swap_under_load(server, http, tasks, backend_ws, versions):
    """Promote another version while clients hammer /predict: nothing fails, nothing is mixed.
    The two versions predict differently, so each response is checked against what its version
    answers alone: a response labeled v2 but computed (even in part) by v1 fails."""
    v1, v2 = versions
    registry = Registry(backend_ws.models_dir)

    def predicted(session, k):
        resp = session.post(server.url + "/predict", timeout=60,
                            json={"tasks": tasks[k * 2: k * 2 + 2], "label_config": LABEL_CONFIG})
        return resp, resp.json()

    expected = {}
    for version in (v2, v1):  # v1 stays current for the start of the load
        registry.set_current(version)
        assert http.post(server.url + "/reload", timeout=60).json()["model_version"] == version
        expected[version] = [predicted(http, k)[1]["results"] for k in range(3)]
    assert expected[v1] != expected[v2]
    seen: list[list[str]] = [[] for _ in range(3)]
    failures: list[str] = []
    stop = threading.Event()

    def client(k):
        session = requests.Session()
        session.auth = (server.user, server.password)
        while not stop.is_set():
            try:
                resp, body = predicted(session, k)
                versions_in = {item.get("model_version") for item in body["results"]}
                if resp.status_code != 200 or body["failed"] or versions_in != {body["model_version"]}:
                    failures.append(f"{resp.status_code}: {resp.text[:300]}")
                elif body["results"] != expected[body["model_version"]][k]:
                    failures.append(f"client {k}: a response of {body['model_version']} that it does not give alone")
                seen[k].append(body["model_version"])
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(3)
    registry.promote(v2, force=True)  # what the retrain flow does
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(s and s[-1] == v2 for s in seen):
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    for s in seen:
        assert s[0] == v1 and s[-1] == v2, s
        switch = s.index(v2)
        assert set(s[:switch]) == {v1} and set(s[switch:]) == {v2}, s  # one switch, never back
    assert http.post(server.url + "/reload", timeout=60).json()["model_version"] == v2
    assert requests.get(server.url + "/health", timeout=10).json()["model_version"] == v2



def test_the_retrain_deployment_is_a_setting(tmp_path):
    """CXR_RETRAIN_DEPLOYMENT names the deployment the webhook starts: retrain/retrain-gpu sends
    the rounds to the GPU pool's workers (prefect.yaml); unset, it is retrain/retrain."""
    from ml_backend.model import Service, Settings

    ws = Workspace(tmp_path / "ws").create()
    assert Service(Settings.from_env({"CXR_WORKSPACE": str(ws.root)})).retrain.deployment == "retrain/retrain"
    gpu = Settings.from_env({"CXR_WORKSPACE": str(ws.root), "CXR_RETRAIN_DEPLOYMENT": "retrain/retrain-gpu"})
    assert Service(gpu).retrain.deployment == "retrain/retrain-gpu"
