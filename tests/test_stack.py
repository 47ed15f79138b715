"""The scale-out stack's parts, for real (issue 19): Debian's Postgres started in a temporary
folder on a free port, the Prefect server and Label Studio on it, each with a restart of Postgres
under it; a work pool with prefect.yaml's deployments and a Prefect worker that runs one.
Run alone with `pytest tests/test_stack.py`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.manifest import read_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.labelstudio.client import RETRIED_STATUSES, LabelStudio
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.services import (
    labelstudio_server,
    postgres,
    prefect_server,
    prefect_worker,
    s3_store,
)
from tests.labelstudio_server import free_port
from tests.test_cli import flow_run_report

pytestmark = pytest.mark.slow
PASSWORD = "test-only: not a default 'pass"  # quotes and spaces: the password is never on a command line


@pytest.fixture
def pg_folder():
    """A folder the `postgres` OS user can reach when we are root (pytest's own tmp is 0700 root's)."""
    root = Path(tempfile.mkdtemp(prefix="cxr-test-pg-", dir="/tmp"))
    root.chmod(0o711)
    yield root / "postgres"
    postgres.stop(root / "postgres")
    shutil.rmtree(root, ignore_errors=True)


def test_postgres_starts_on_loopback_with_a_password_and_keeps_its_data(pg_folder):
    port = free_port()
    info = postgres.start(pg_folder, PASSWORD, port)
    assert (info.host, info.port) == ("127.0.0.1", port)
    assert postgres.ensure_database(info, "labelstudio") is True
    assert postgres.ensure_database(info, "labelstudio") is False  # already there: nothing done
    postgres.sql(info, "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('an annotation')", "labelstudio")
    with pytest.raises(postgres.PostgresError, match="password authentication failed"):
        postgres.sql(postgres.PostgresInfo(info.host, port, "wrong"), "SELECT 1")
    listening = postgres.sql(info, "SHOW listen_addresses").strip()
    assert listening == "127.0.0.1"
    assert oct((pg_folder / "data").stat().st_mode & 0o777) == "0o700"
    assert PASSWORD not in (pg_folder / "server.log").read_text()
    assert not list(pg_folder.glob(".pw-*"))  # initdb's password file is gone

    assert postgres.stop(pg_folder) is True and postgres.running(pg_folder) is None
    again = postgres.start(pg_folder, PASSWORD, port)  # the same cluster: no initdb
    assert postgres.sql(again, "SELECT note FROM kept", "labelstudio").strip() == "an annotation"
    with pytest.raises(postgres.PostgresError, match="POSTGRES_PASSWORD"):
        postgres.start(pg_folder, "", port)


def test_a_folder_the_server_user_cannot_reach_is_refused_by_name(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the server runs as this user: every folder of ours is reachable")
    hidden = Path(tempfile.mkdtemp(prefix="cxr-test-pg-hidden-", dir="/tmp"))  # 0700, root's
    try:
        with pytest.raises(postgres.PostgresError, match=f"{hidden} is not searchable"):
            postgres.start(hidden / "postgres", PASSWORD, free_port())
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


# A Prefect client in its own process (its settings are read when prefect loads): it says "ready",
# waits for a line, asks for a deployment and prints its name or the error.
PREFECT_CALL = """
from cxrkit.core import offline
offline.apply()
from prefect import get_client
print("ready", flush=True)
input()
try:
    with get_client(sync_client=True) as client:
        print(client.read_deployment_by_name("retrain/retrain").name)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_the_prefect_server_runs_on_postgres_and_outlives_its_restart(pg_folder, tmp_path, monkeypatch):
    """`prefect server start` with PREFECT_SERVER_DATABASE_CONNECTION_URL on our Postgres
    (postgresql+asyncpg): the runner's deployments are rows there; Postgres restarts under the
    server, and the server answers again without being restarted itself; a client's call made
    while Postgres is down returns once it is back."""
    info = postgres.start(pg_folder, PASSWORD, free_port())
    postgres.ensure_database(info, "prefect")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", info.url("prefect", "postgresql+asyncpg"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    ws = Workspace(tmp_path / "ws").create()
    started = prefect_server.start(ws, port=free_port())
    try:
        names = set(postgres.sql(info, "SELECT name FROM deployment", "prefect").split())
        assert {"retrain", "select", "ingest"} <= names
        assert not (prefect_server.home(ws) / "prefect.db").exists()  # not the SQLite default

        postgres.stop(pg_folder)
        postgres.start(pg_folder, PASSWORD, info.port)
        deadline, answered = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                resp = requests.get(f"{started.url}/api/deployments/name/retrain/retrain", timeout=10)
                if resp.status_code == 200:
                    answered = resp.json()
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert answered is not None and answered["name"] == "retrain", "the server did not recover"
        assert prefect_server.status(ws) is not None and prefect_server.status(ws).server_pid == started.server_pid

        # While Postgres is down the server answers 500, which Prefect's clients do not retry by
        # default: a flow run's state update then fails the run. Ours retry it (offline.py), so a
        # call made while Postgres is down returns once it is back; one without that setting fails.
        clients = {name: subprocess.Popen([sys.executable, "-c", PREFECT_CALL], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, "PREFECT_API_URL": started.url + "/api", **extra})
                   for name, extra in {"ours": {}, "prefect's default": {"PREFECT_CLIENT_RETRY_EXTRA_CODES": ""}}.items()}
        for client in clients.values():
            assert client.stdout.readline().strip() == "ready", client.stderr.read()
        postgres.stop(pg_folder)
        for client in clients.values():
            client.stdin.write("go\n")
            client.stdin.flush()
        time.sleep(5)  # both have asked by then (ours retries after about 2 s, 6 s, 14 s, ...)
        postgres.start(pg_folder, PASSWORD, info.port)
        said = {name: client.communicate(timeout=120)[0].strip() for name, client in clients.items()}
        assert said["ours"] == "retrain", said
        assert "500 Internal Server Error" in said["prefect's default"], said
        for log in (prefect_server.server_log(ws), prefect_server.runner_log(ws), pg_folder / "server.log"):
            assert PASSWORD not in log.read_text(), log
    finally:
        prefect_server.stop(ws)


def test_label_studio_keeps_its_annotations_in_postgres_across_a_restart(pg_folder, tmp_path, monkeypatch):
    """Label Studio started as `cxr labelstudio start` starts it, with DJANGO_DB and POSTGRE_* for
    our Postgres: its rows are there, not in a SQLite file; Postgres restarts under it, a read
    sent while it is down is retried until it is back, and the annotation made before and the one
    made after are both kept."""
    info = postgres.start(pg_folder, PASSWORD, free_port())
    postgres.ensure_database(info, "labelstudio")
    for key, value in info.environment("labelstudio").items():
        monkeypatch.setenv(key, value)
    ws = Workspace(tmp_path / "ws").create()
    server = labelstudio_server.start(ws, port=free_port())
    try:
        ls = LabelStudio.for_server(server)
        project = ls.ensure_project("CXR on Postgres", DEFAULT_CONFIG.read_text())
        resp = ls.session.post(f"{ls.url}/api/projects/{project}/import", timeout=60,
                               json=[{"data": {"image": f"/data/local-files/?d=images/film{k}.png", "patient_info": "",
                                         "heatmap": ""}}
                                     for k in range(2)])
        assert resp.status_code == 201, resp.text[:500]
        tasks = ls.list_tasks(project)
        schema = load_schema()
        normal = boxes_to_results([], 64, 64, schema, schema.normal)
        ls.create_annotation(tasks[0]["id"], normal)
        assert not list(labelstudio_server.data_dir(ws).glob("*.sqlite3"))  # not the embedded database
        count = "SELECT count(*) FROM task_completion"
        assert postgres.sql(info, count, "labelstudio").strip() == "1"

        postgres.stop(pg_folder)
        down = ls._send("GET", f"/api/projects/{project}")  # Label Studio is up, its database is not
        assert down.status_code in RETRIED_STATUSES, (down.status_code, down.text[:300])
        # Postgres comes back 2 s later; a read sent meanwhile is retried by the client until it is.
        restarted = threading.Timer(2.0, postgres.start, args=(pg_folder, PASSWORD, info.port))
        restarted.start()
        try:
            listed = ls.list_tasks(project)
        finally:
            restarted.join()
        assert postgres.running(pg_folder) and sorted(t["id"] for t in listed) == sorted(t["id"] for t in tasks)
        deadline, made = time.monotonic() + 60, None
        while made is None and time.monotonic() < deadline:
            try:
                made = ls.create_annotation(tasks[1]["id"], normal)
            except Exception:  # noqa: BLE001 - a request that met the restart; the next one must succeed
                time.sleep(1)
        assert made is not None, "Label Studio did not recover from the Postgres restart"
        assert postgres.sql(info, count, "labelstudio").strip() == "2"
        assert PASSWORD not in labelstudio_server.log_path(ws).read_text()
    finally:
        labelstudio_server.stop(ws)


@pytest.fixture
def s3_folder(tmp_path):
    yield tmp_path / "s3"
    s3_store.stop(tmp_path / "s3")


def test_dvc_pushes_to_the_s3_store_and_a_push_it_cannot_reach_loses_nothing(s3_folder, tmp_path, monkeypatch):
    """The workspace's DVC remote on the S3 store, configured as compose configures MinIO
    (CXR_DVC_REMOTE_URL=s3://bucket, CXR_DVC_ENDPOINT_URL, the key pair in AWS_*): `dvc push`, the
    retrain's last versioning step, uploads the data version. With the store down the push fails
    naming the endpoint, and the workspace keeps every file; with the store back (empty: moto
    keeps objects in memory) the next push uploads the whole version again."""
    from cxrkit.pipeline import project_repo

    port = free_port()
    info = s3_store.start(s3_folder, port, "dvc-test-key", "dvc-test-secret")
    assert info.endpoint == f"http://127.0.0.1:{port}"
    assert s3_store.ensure_bucket(info, "cxr-dvc") is True and s3_store.ensure_bucket(info, "cxr-dvc") is False
    for key, value in info.environment("cxr-dvc").items():
        monkeypatch.setenv(key, value)
    root = project_repo.init(tmp_path / "ws")
    assert project_repo.remote_settings(root) == ("s3://cxr-dvc", info.endpoint)
    data = root / "data"
    data.mkdir()
    films = {f"film{k}.png": bytes([k]) * (1000 + k) for k in range(5)}
    for name, content in films.items():
        (data / name).write_bytes(content)
    project_repo.dvc(root, "add", "data")
    project_repo.dvc(root, "push")
    pushed = s3_store.object_keys(info, "cxr-dvc")
    assert len(pushed) == len(films) + 1  # each film and the folder's listing (.dir)

    s3_store.stop(s3_folder)
    (data / "film9.png").write_bytes(b"a new film")
    project_repo.dvc(root, "add", "data")
    with pytest.raises(project_repo.ProjectRepoError, match="push.*failed") as failure:
        project_repo.dvc(root, "push")
    assert str(port) in str(failure.value), "the error names the store it could not reach"
    assert sorted(p.name for p in data.iterdir()) == sorted([*films, "film9.png"])

    info = s3_store.start(s3_folder, port, "dvc-test-key", "dvc-test-secret")
    s3_store.ensure_bucket(info, "cxr-dvc")
    project_repo.dvc(root, "push")
    assert len(s3_store.object_keys(info, "cxr-dvc")) == len(films) + 2  # the new film, the new listing
    assert "are in sync" in project_repo.dvc(root, "status", "--cloud").stdout


@dataclass
class DemoStack:
    """`cxr stack up` and the README's demo run against it, shared by the end-to-end and fault tests."""
    ws: Workspace
    env: dict            # the ports and CXR_RETRAIN_EVERY, as a user sets them
    client: dict         # `cxr stack env`
    ports: dict

    def run(self, *args):
        from tests.test_cli import cxr

        return cxr(*args, env_extra={**self.env, **self.client})

    @property
    def s3(self) -> s3_store.S3Info:
        return s3_store.S3Info(self.client["CXR_DVC_ENDPOINT_URL"], self.client["AWS_ACCESS_KEY_ID"],
                               self.client["AWS_SECRET_ACCESS_KEY"])

    @property
    def pg(self) -> postgres.PostgresInfo:
        return postgres.PostgresInfo("127.0.0.1", int(self.ports["CXR_POSTGRES_PORT"]), self.client["POSTGRE_PASSWORD"])

    def labelstudio(self) -> tuple[LabelStudio, int]:
        ls = LabelStudio.for_server(labelstudio_server.status(self.ws))
        (project,) = [p["id"] for p in ls.projects()]
        return ls, project

    def annotate(self, count: int) -> list[dict]:
        """A radiologist labels `count` tasks of the pool (one box each); returns the tasks."""
        from cxrkit.core.manifest import Box

        ls, project = self.labelstudio()
        schema = load_schema()
        tasks = [t for t in ls.list_tasks(project, full=True) if not t["total_annotations"]
                 and not any(r.image_id == t["data"]["image_id"] and r.labeled for r in self.manifest())][:count]
        for task in tasks:
            width, height = task["data"]["width"], task["data"]["height"]
            box = Box(x=0.2 * width, y=0.3 * height, w=0.25 * width, h=0.3 * height, finding=schema.findings[0])
            ls.create_annotation(task["id"], boxes_to_results([box], width, height, schema))
        return tasks

    def manifest(self):
        return read_manifest(self.ws.manifest_path)


@pytest.fixture(scope="module")
def demo_stack():
    from tests.test_cli import RETRAIN_EVERY, cxr, tiny_demo_params

    root = Path(tempfile.mkdtemp(prefix="cxr-test-stack-", dir="/tmp"))
    root.chmod(0o711)  # the postgres OS user reaches <ws>/stack/postgres through it
    ws = Workspace(root / "ws")
    ports = {name: str(free_port()) for name in
             ("CXR_POSTGRES_PORT", "CXR_S3_PORT", "CXR_PREFECT_PORT", "CXR_LS_PORT", "CXR_BACKEND_PORT")}
    env = {**ports, "CXR_RETRAIN_EVERY": str(RETRAIN_EVERY)}
    params = tiny_demo_params(root / "p.yaml")
    knobs = yaml.safe_load(params.read_text())
    knobs["retrain"]["retry_delay_seconds"] = 1  # the fault tests wait for the retries of a push that cannot reach
    params.write_text(yaml.safe_dump(knobs, sort_keys=False))
    try:
        started = cxr("stack", "up", "-w", str(ws.root), env_extra=env)
        assert started.returncode == 0, started.stderr[-3000:]
        exported = cxr("stack", "env", "-w", str(ws.root), env_extra=env)
        client = dict(line.removeprefix("export ").split("=", 1) for line in exported.stdout.splitlines())
        stack = DemoStack(ws, env, {key: value.strip("'") for key, value in client.items()}, ports)
        demo = stack.run("demo", "--workspace", str(ws.root), "--n", "60", "--size", "256", "--params", str(params))
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert f"using $PREFECT_API_URL {stack.client['PREFECT_API_URL']}" in demo.stderr
        yield stack
    finally:
        stopped = cxr("stack", "down", "-w", str(ws.root), env_extra=env)
        shutil.rmtree(root, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr


@pytest.mark.timeout(2400)  # the demo's first round, then a round on the worker; minutes on a quiet machine
def test_the_stack_turns_the_loop_end_to_end_through_a_postgres_restart(demo_stack):
    """`cxr stack up`, then the README's demo against it (`eval "$(cxr stack env)"`): Label Studio
    on Postgres, the first round pushed to the S3 store. Annotations made in Label Studio reach
    the backend's webhook, which starts the retrain deployment; the *worker* runs it (no runner
    serves anything here), and Postgres restarts while it runs. DVC pushes the new version to the
    S3 store, the backend hot-swaps to it and the select flow publishes the new queue."""
    from cxrkit.models.registry import Registry
    from tests.test_cli import (
        RETRAIN_EVERY,
        retrain_runs,
        turn_the_loop_through_label_studio,
    )

    ws, ports, client = demo_stack.ws, demo_stack.ports, demo_stack.client
    status = demo_stack.run("stack", "status", "-w", str(ws.root))
    assert status.returncode == 0, status.stderr
    assert f"postgres: postgresql://127.0.0.1:{ports['CXR_POSTGRES_PORT']}" in status.stderr
    assert f"s3 store: http://127.0.0.1:{ports['CXR_S3_PORT']}" in status.stderr
    assert "prefect workers: worker-1" in status.stderr
    assert client["PREFECT_API_URL"] == f"http://127.0.0.1:{ports['CXR_PREFECT_PORT']}/api"
    assert client["CXR_DVC_REMOTE_URL"] == "s3://cxr-dvc" and client["DJANGO_DB"] == "default"
    assert oct(ws.env_path.stat().st_mode & 0o777) == "0o600"
    assert client["POSTGRE_PASSWORD"] in ws.env_path.read_text()  # generated once, kept there
    assert postgres.sql(demo_stack.pg, "SELECT count(*) FROM task", "labelstudio").strip() == "60"
    first_push = set(s3_store.object_keys(demo_stack.s3, "cxr-dvc"))
    assert first_push, "the first round's data version is in the S3 store"

    # prefect.yaml's deployments on the two pools (`deploy` again updates them in place).
    api = client["PREFECT_API_URL"]
    assert prefect_worker.deploy(api) == list(prefect_worker.DEPLOYMENTS)
    pools = {name: requests.get(f"{api}/deployments/name/{name}", timeout=10).json()["work_pool_name"]
             for name in prefect_worker.DEPLOYMENTS}
    assert pools == {"retrain/retrain": "cxr-process", "retrain/retrain-gpu": "cxr-gpu",
                     "select/select": "cxr-process", "ingest/ingest": "cxr-process"}
    # A retrain on the GPU pool waits there for a GPU machine's worker: this worker leaves it alone.
    gpu_run = _run_retrain(api, "a GPU round", "retrain/retrain-gpu")
    time.sleep(5)
    assert requests.get(f"{api}/flow_runs/{gpu_run}", timeout=10).json()["state_type"] == "SCHEDULED"
    assert requests.delete(f"{api}/flow_runs/{gpu_run}", timeout=10).status_code == 204

    # Postgres restarts under the Prefect server and Label Studio once the webhook's retrain runs.
    def restart_postgres_mid_run():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(r["state_type"] == "RUNNING" for r in retrain_runs(client["PREFECT_API_URL"]) or []):
                time.sleep(2)
                postgres.stop(ws.root / "stack" / "postgres")
                postgres.start(ws.root / "stack" / "postgres", client["POSTGRE_PASSWORD"], int(ports["CXR_POSTGRES_PORT"]))
                restarted.append(time.monotonic())
                return
            time.sleep(0.5)

    restarted: list[float] = []
    restarter = threading.Thread(target=restart_postgres_mid_run, daemon=True)
    restarter.start()
    first = Registry(ws.models_dir).current_id()
    ls, project = demo_stack.labelstudio()
    seed = {r.image_id for r in demo_stack.manifest() if r.labeled}
    pool = [t for t in ls.list_tasks(project, full=True) if t["data"]["image_id"] not in seed]
    run = turn_the_loop_through_label_studio(ws.root, ls, project, pool[:RETRAIN_EVERY],
                                             prefect_server.status(ws), first)
    restarter.join(timeout=60)
    assert restarted, "Postgres was restarted while the retrain ran"
    assert run["id"] in worker_log_text(ws), "the worker ran the webhook's retrain"
    assert set(s3_store.object_keys(demo_stack.s3, "cxr-dvc")) > first_push, "round 2's data version was pushed"

    # The worker runs prefect.yaml's other deployments too: select on the stack's workspace, and
    # ingest of a DICOM folder into another workspace (so the rounds above keep their pool).
    from tests.test_flow_ingest import write_good

    incoming, other = ws.root.parent / "incoming", Workspace(ws.root.parent / "other-ws")
    incoming.mkdir()
    names = write_good(incoming)
    runs = {"select/select": {}, "ingest/ingest": {"path": str(incoming), "workspace": str(other.root),
                                                   "max_side": 64, "labelstudio": False}}
    for name, parameters in runs.items():
        deployment = requests.get(f"{api}/deployments/name/{name}", timeout=10).json()["id"]
        created = requests.post(f"{api}/deployments/{deployment}/create_flow_run", json={"parameters": parameters},
                                timeout=30).json()["id"]
        finished = _wait_for(api, created, TERMINAL, timeout=600)
        assert finished["state_type"] == "COMPLETED", (name, flow_run_report(api, finished))
        assert created in worker_log_text(ws), name
    assert len(read_manifest(other.manifest_path)) == len(names)


def worker_log_text(ws: Workspace, name: str = "worker-1") -> str:
    from cxrkit.services import stack

    return (stack.stack_dir(ws) / name / "worker.log").read_text()


def _run_retrain(api: str, reason: str, deployment: str = "retrain/retrain") -> str:
    """A flow run of the retrain deployment, created as the backend's webhook creates one; its id."""
    deployment = requests.get(f"{api}/deployments/name/{deployment}", timeout=10).json()["id"]
    resp = requests.post(f"{api}/deployments/{deployment}/create_flow_run", json={"parameters": {"reason": reason}},
                         timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _wait_for(api: str, run_id: str, states: tuple[str, ...], timeout: float = 900) -> dict:
    deadline, run = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        run = requests.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        if run["state_type"] in states:
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} is {run.get('state_type')}, not {states}, after {timeout:.0f} s")


def _served_version(ws: Workspace, timeout: float = 120) -> str | None:
    """The model version the running ML backend reports on /health. It answers in well under its
    5-s limit on a quiet machine; right after a round (the select flow scoring on the worker,
    Label Studio asking for predictions, the backend loading the new version) it once did not on
    CI's 2 cores, so it is asked again; a backend that never answers fails with its log."""
    from cxrkit.services import backend

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = backend.status(ws)
        if info is not None:
            return info.model_version
        time.sleep(2)
    raise AssertionError(f"the ML backend was not found answering /health for {timeout:.0f} s: "
                         f"{_why_no_backend(ws)}")


def _why_no_backend(ws: Workspace) -> str:
    """Which part failed: the PID file, the process it names, or its answer; then the log's end."""
    import psutil

    from cxrkit.services import backend, process

    path, log = backend.pid_path(ws), backend.log_path(ws)
    entry = json.loads(path.read_text()) if path.exists() else None
    parts = [f"PID file {entry}", f"found running: {process.running(path) is not None}"]
    if entry:
        alive = psutil.pid_exists(entry["pid"])
        parts.append(f"pid {entry['pid']} exists: {alive}")
        if alive:
            try:
                parts.append(f"started now {process.started(entry['pid'])}, create_time now "
                             f"{psutil.Process(entry['pid']).create_time()}")
            except psutil.Error as exc:
                parts.append(f"gone meanwhile: {exc}")
        try:
            answer = requests.get(entry["url"] + "/health", timeout=5)
            parts.append(f"/health: HTTP {answer.status_code} {answer.text[:200]}")
        except requests.RequestException as exc:
            parts.append(f"/health: {type(exc).__name__}: {exc}")
    return "; ".join(parts) + f"; its log ends: {log.read_text()[-3000:] if log.exists() else '(no log)'}"


TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@pytest.mark.timeout(2400)
def test_a_worker_stopped_mid_retrain_and_the_s3_store_down_lose_nothing(demo_stack, monkeypatch):
    """Two faults on the running stack, each reported, nothing lost, the next run completing:
    1. the worker is stopped while it runs a retrain and another one is started (`cxr stack
       worker`): the next retrain runs on the new worker and completes the round;
    2. the S3 store is down during the retrain's `dvc push`: the flow run fails naming the push
       and the store, every annotation stays in Label Studio and the backend serves a complete
       model; `cxr stack up` brings the store back and the next retrain pushes and commits."""
    from cxrkit.models.registry import Registry
    from cxrkit.pipeline import project_repo
    from cxrkit.services import stack

    ws, api = demo_stack.ws, demo_stack.client["PREFECT_API_URL"]
    rounds_before = json.loads((ws.root / "round.json").read_text())["round"]

    # 1. The worker stops mid-retrain; another starts.
    # One annotation per fault, two in all: fewer than CXR_RETRAIN_EVERY, so the webhook starts no
    # round of its own; this test starts them.
    demo_stack.annotate(1)
    interrupted = _run_retrain(api, "fault: the worker stops")
    _wait_for(api, interrupted, ("RUNNING",), timeout=300)
    time.sleep(5)
    assert prefect_worker.stop(stack.stack_dir(ws) / "worker-1")
    second = demo_stack.run("stack", "worker", "worker-2", "-w", str(ws.root))
    assert second.returncode == 0, second.stderr[-2000:]
    assert _served_version(ws) == Registry(ws.models_dir).current_id()
    finished = _wait_for(api, _run_retrain(api, "after the worker stopped"), TERMINAL)
    assert finished["state_type"] == "COMPLETED", flow_run_report(api, finished)
    assert finished["id"] in (stack.stack_dir(ws) / "worker-2" / "worker.log").read_text()
    after_worker = json.loads((ws.root / "round.json").read_text())
    assert after_worker["round"] == rounds_before + 1  # the interrupted round, finished once
    assert _served_version(ws) == Registry(ws.models_dir).current_id()

    # 2. The S3 store is down during the push.
    ls, project = demo_stack.labelstudio()
    annotated = sum(t["total_annotations"] for t in ls.list_tasks(project))
    s3_store.stop(ws.root / "stack" / "s3")
    demo_stack.annotate(1)
    failed = _wait_for(api, _run_retrain(api, "fault: the S3 store is down"), TERMINAL)
    assert failed["state_type"] == "FAILED", flow_run_report(api, failed)
    worker_log = (stack.stack_dir(ws) / "worker-2" / "worker.log").read_text()
    assert "dvc push" in worker_log and demo_stack.ports["CXR_S3_PORT"] in worker_log, worker_log[-3000:]
    assert sum(t["total_annotations"] for t in ls.list_tasks(project)) == annotated + 1
    assert _served_version(ws) == Registry(ws.models_dir).current_id()

    again = demo_stack.run("stack", "up", "-w", str(ws.root))  # starts what is down: the store, its bucket
    assert again.returncode == 0, again.stderr[-2000:]
    done = _wait_for(api, _run_retrain(api, "after the S3 store came back"), TERMINAL)
    assert done["state_type"] == "COMPLETED", flow_run_report(api, done)
    final = json.loads((ws.root / "round.json").read_text())
    assert final["round"] == rounds_before + 2 and final["labeled"] > after_worker["labeled"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, demo_stack.client[key])
    assert "are in sync" in project_repo.dvc(ws.root, "status", "--cloud").stdout
