"""The scale-out stack's parts, for real (issue 19): Debian's Postgres started in a temporary
folder on a free port, the Prefect server and Label Studio on it, each with a restart of Postgres
under it; a work pool with prefect.yaml's deployments and a Prefect worker that runs one.
Run alone with `pytest tests/test_stack.py`."""
from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
import requests

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.workspace import Workspace
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.services import labelstudio_server, postgres, prefect_server, s3_store

pytestmark = pytest.mark.slow
PASSWORD = "test-only: not a default 'pass"  # quotes and spaces: the password is never on a command line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pg_folder():
    """A folder the `postgres` OS user can reach when we are root (pytest's own tmp is 0700 root's)."""
    root = Path(tempfile.mkdtemp(prefix="cxr-test-pg-", dir="/tmp"))
    root.chmod(0o711)
    yield root / "postgres"
    postgres.stop(root / "postgres")
    shutil.rmtree(root, ignore_errors=True)


def test_postgres_starts_on_loopback_with_a_password_and_keeps_its_data(pg_folder):
    port = _free_port()
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
    with pytest.raises(postgres.PostgresError, match="CXR_POSTGRES_PASSWORD"):
        postgres.start(pg_folder, "", port)


def test_a_folder_the_server_user_cannot_reach_is_refused_by_name(tmp_path):
    import os

    if os.geteuid() != 0:
        pytest.skip("the server runs as this user: every folder of ours is reachable")
    hidden = Path(tempfile.mkdtemp(prefix="cxr-test-pg-hidden-", dir="/tmp"))  # 0700, root's
    try:
        with pytest.raises(postgres.PostgresError, match=f"{hidden} is not searchable"):
            postgres.start(hidden / "postgres", PASSWORD, _free_port())
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def test_the_prefect_server_runs_on_postgres_and_outlives_its_restart(pg_folder, tmp_path, monkeypatch):
    """`prefect server start` with PREFECT_SERVER_DATABASE_CONNECTION_URL on our Postgres
    (postgresql+asyncpg): the runner's deployments are rows there; Postgres restarts under the
    server, and the server answers again without being restarted itself."""
    info = postgres.start(pg_folder, PASSWORD, _free_port())
    postgres.ensure_database(info, "prefect")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", info.url("prefect", "postgresql+asyncpg"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    ws = Workspace(tmp_path / "ws").create()
    started = prefect_server.start(ws, port=_free_port())
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
        for log in (prefect_server.server_log(ws), prefect_server.runner_log(ws), pg_folder / "server.log"):
            assert PASSWORD not in log.read_text(), log
    finally:
        prefect_server.stop(ws)


def test_label_studio_keeps_its_annotations_in_postgres_across_a_restart(pg_folder, tmp_path, monkeypatch):
    """Label Studio started as `cxr labelstudio start` starts it, with DJANGO_DB and POSTGRE_* for
    our Postgres: its rows are there, not in a SQLite file; Postgres restarts under it, and the
    annotation made before and the one made after are both kept."""
    info = postgres.start(pg_folder, PASSWORD, _free_port())
    postgres.ensure_database(info, "labelstudio")
    for key, value in info.environment("labelstudio").items():
        monkeypatch.setenv(key, value)
    ws = Workspace(tmp_path / "ws").create()
    server = labelstudio_server.start(ws, port=_free_port())
    try:
        ls = LabelStudio.for_server(server)
        project = ls.ensure_project("CXR on Postgres", DEFAULT_CONFIG.read_text())
        resp = ls.session.post(f"{ls.url}/api/projects/{project}/import", timeout=60,
                               json=[{"data": {"image": f"/data/local-files/?d=images/film{k}.png", "patient_info": ""}}
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
        postgres.start(pg_folder, PASSWORD, info.port)
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


def test_a_worker_runs_prefect_yamls_deployment_from_the_checkout(prefect_server, tmp_path):
    """`prefect deploy --all` from prefect.yaml onto the process pool, a `prefect worker` started
    as the stack starts it, and a flow run of ingest/ingest created as the backend creates a
    retrain's (run_deployment): the worker runs it in its own process from this checkout
    ($CXR_CODE_DIR), on its workspace, and the images land in that workspace's manifest."""
    from prefect.deployments import run_deployment
    from prefect.settings import get_current_settings

    from cxrkit.core.manifest import read_manifest
    from cxrkit.services import prefect_worker
    from tests.test_flow_ingest import write_good

    api = str(get_current_settings().api.url)
    assert prefect_worker.deploy(api) == ["retrain/retrain", "select/select", "ingest/ingest"]
    assert prefect_worker.deploy(api)  # again: updated in place, the pool kept
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    names = write_good(incoming)
    ws = Workspace(tmp_path / "ws").create()
    folder = tmp_path / "worker"
    entry = prefect_worker.start(folder, api, ws.root, name="worker-1")
    try:
        assert prefect_worker.start(folder, api, ws.root, name="worker-1")["pid"] == entry["pid"]  # found running
        run = run_deployment("ingest/ingest", parameters={"path": str(incoming), "max_side": 64,
                                                          "labelstudio": False}, timeout=300)
        assert run.state.is_completed(), (run.state, (folder / "worker.log").read_text()[-3000:])
        assert len(read_manifest(ws.manifest_path)) == len(names)  # the worker's workspace (CXR_WORKSPACE)
        assert "worker-1" in (folder / "worker.log").read_text()
    finally:
        prefect_worker.stop(folder)
    assert prefect_worker.running(folder) is None


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

    port = _free_port()
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


@pytest.mark.timeout(2400)  # the demo's first round, then a round on the worker; minutes on a quiet machine
def test_the_stack_turns_the_loop_end_to_end(pg_folder):
    """`cxr stack up`, then the README's demo against it (`eval "$(cxr stack env)"`): Label Studio
    on Postgres, the first round pushed to the S3 store. Annotations made in Label Studio reach
    the backend's webhook, which starts the retrain deployment; the *worker* runs it (no runner
    serves anything here), DVC pushes the new version to the S3 store, the backend hot-swaps to
    it and the select flow publishes the new queue. `cxr stack down` stops everything."""
    from cxrkit.core.manifest import read_manifest
    from cxrkit.models.registry import Registry
    from cxrkit.services import stack
    from tests.test_cli import (
        RETRAIN_EVERY,
        cxr,
        tiny_demo_params,
        turn_the_loop_through_label_studio,
    )

    root = pg_folder.parent
    ws = root / "ws"
    ports = {name: str(_free_port()) for name in
             ("CXR_POSTGRES_PORT", "CXR_S3_PORT", "CXR_PREFECT_PORT", "CXR_LS_PORT", "CXR_BACKEND_PORT")}
    env = {**ports, "CXR_RETRAIN_EVERY": str(RETRAIN_EVERY)}
    try:
        started = cxr("stack", "up", "-w", str(ws), env_extra=env)
        assert started.returncode == 0, started.stderr[-3000:]
        status = cxr("stack", "status", "-w", str(ws), env_extra=env)
        assert status.returncode == 0, status.stderr
        assert f"postgres: postgresql://127.0.0.1:{ports['CXR_POSTGRES_PORT']}" in status.stderr
        assert f"s3 store: http://127.0.0.1:{ports['CXR_S3_PORT']}" in status.stderr
        assert "prefect worker: worker-1" in status.stderr
        exported = cxr("stack", "env", "-w", str(ws), env_extra=env)
        client = dict(line.removeprefix("export ").split("=", 1) for line in exported.stdout.splitlines())
        client = {key: value.strip("'") for key, value in client.items()}
        assert client["PREFECT_API_URL"] == f"http://127.0.0.1:{ports['CXR_PREFECT_PORT']}/api"
        assert client["CXR_DVC_REMOTE_URL"] == "s3://cxr-dvc" and client["DJANGO_DB"] == "default"
        secrets = Workspace(ws).env_path
        assert oct(secrets.stat().st_mode & 0o777) == "0o600"
        assert client["POSTGRE_PASSWORD"] in secrets.read_text()  # generated once, kept there

        demo = cxr("demo", "--workspace", str(ws), "--n", "60", "--size", "256",
                   "--params", str(tiny_demo_params(root / "p.yaml")), env_extra={**env, **client})
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert f"using $PREFECT_API_URL {client['PREFECT_API_URL']}" in demo.stderr
        pg = postgres.PostgresInfo("127.0.0.1", int(ports["CXR_POSTGRES_PORT"]), client["POSTGRE_PASSWORD"])
        assert postgres.sql(pg, "SELECT count(*) FROM task", "labelstudio").strip() == "60"  # Label Studio's rows
        s3 = s3_store.S3Info(client["CXR_DVC_ENDPOINT_URL"], client["AWS_ACCESS_KEY_ID"], client["AWS_SECRET_ACCESS_KEY"])
        first_push = set(s3_store.object_keys(s3, "cxr-dvc"))
        assert first_push, "the first round's data version is in the S3 store"

        w = Workspace(ws)
        first = Registry(w.models_dir).current_id()
        ls = LabelStudio.for_server(labelstudio_server.status(w))
        (project,) = [p["id"] for p in ls.projects()]
        seed = {r.image_id for r in read_manifest(w.manifest_path) if r.labeled}
        pool = [t for t in ls.list_tasks(project, full=True) if t["data"]["image_id"] not in seed]
        run = turn_the_loop_through_label_studio(ws, ls, project, pool[:RETRAIN_EVERY], prefect_server.status(w), first)
        worker_log = (stack.stack_dir(w) / "worker" / "worker.log").read_text()
        assert run["id"] in worker_log, "the worker ran the webhook's retrain"
        assert set(s3_store.object_keys(s3, "cxr-dvc")) > first_push, "round 2's data version was pushed"
    finally:
        stopped = cxr("stack", "down", "-w", str(ws), env_extra=env)
    assert stopped.returncode == 0, stopped.stderr
    assert cxr("stack", "status", "-w", str(ws), env_extra=env).returncode == 1
