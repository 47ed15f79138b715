"""The `cxr` front door as a user runs it: real processes, real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests
import yaml

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box, read_manifest
from cxrkit.core.params import load_params
from cxrkit.core.workspace import Workspace
from cxrkit.labelstudio.client import DEFAULT_PROJECT, LabelStudio
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.labelstudio.tasks import model_version_of
from cxrkit.models.registry import Registry, params_hash
from cxrkit.services import backend, prefect_server
from cxrkit.services import labelstudio_server as server
from flows.retrain import model_params
from tests.labelstudio_server import free_port, published_queue


def cxr(*args, cwd=None, env_extra=None):
    env = os.environ.copy() | (env_extra or {})
    env.pop("CXR_DEID_SALT", None)
    return subprocess.run([sys.executable, "-m", "cxrkit.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=1200)


def tiny_demo_params(path):
    """params.yaml with the demo's first model shrunk to seconds of training (the loop, not the quality)."""
    params = load_params()
    params["demo"]["overrides"] = {
        "detector": {"imgsz": 128, "epochs": 3, "patience": 0, "batch": 8, "nbs": 8, "warmup_epochs": 1},
        "classifier": {"input_size": 64, "epochs": 2, "patience": 0},
        "registry": {"tolerance": 1.0},  # tiny models are noisy: the webhook's round must be promoted
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


RETRAIN_EVERY = 3


@pytest.mark.timeout(2400)  # two demo runs and a webhook round, with training; minutes on a quiet machine
def test_demo_runs_the_whole_loop_and_reruns_fast(tmp_path):
    """`cxr demo` as the README runs it, small: study -> ingest -> Label Studio -> Prefect server and
    runner -> first model on the seed labels (retrain flow, DVC) -> pre-annotations + ranking (select
    flow) -> ML backend connected. Then the live loop turns by itself: annotations submitted through
    Label Studio's API reach the backend's webhook, which starts a retrain flow run on the demo's
    runner with the workspace's params; it completes, the backend serves the new version, the view
    is re-ranked."""
    ws = tmp_path / "ws"
    env = {"CXR_LS_PORT": str(free_port()), "CXR_BACKEND_PORT": str(free_port()),
           "CXR_PREFECT_PORT": str(free_port()), "CXR_RETRAIN_EVERY": str(RETRAIN_EVERY)}
    args = ("demo", "--workspace", str(ws), "--n", "60", "--size", "256", "--params", str(tiny_demo_params(tmp_path / "p.yaml")))
    try:
        first = cxr(*args, env_extra=env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "ingested 60, skipped 0" in first.stderr
        records = read_manifest(ws / "data" / "manifest.jsonl")
        assert len(records) == 60 and all(r.source == "synthetic" for r in records)
        seed = {r.image_id for r in records if r.labeled}
        assert 0 < len(seed) < 60  # a seed of labels, the rest is the pool
        assert "Label Studio: imported 60 tasks, 0 already there, 0 failed" in first.stderr

        # The first model is trained on the seed, registered, promoted, and its round committed.
        current = Registry(Workspace(ws).models_dir).current()
        assert current is not None and f"model {current.version_id} trained on" in first.stderr
        log = subprocess.run(["git", "-C", str(ws), "log", "--format=%s"], capture_output=True, text=True, check=True)
        assert "round 1" in log.stdout

        # Every task is pre-annotated by it; the pool is ranked (the queue published in Label Studio).
        info = server.status(Workspace(ws))
        ls = LabelStudio.for_server(info)
        (project,) = [p["id"] for p in ls.projects() if p["title"] == DEFAULT_PROJECT]
        tasks = ls.list_tasks(project, full=True)
        assert sorted(t["data"]["image_id"] for t in tasks) == sorted(r.image_id for r in records)
        assert all(any(model_version_of(p["model_version"]) == current.version_id for p in t["predictions"])
                   for t in tasks)
        pool = [t for t in tasks if t["data"]["image_id"] not in seed]
        queue, _ = published_queue(ls, project)
        assert sorted(queue) == sorted(t["data"]["image_id"] for t in pool)

        # The ML backend serves that version and is connected to the project; Prefect serves the deployments.
        running = backend.status(Workspace(ws))
        assert running is not None and running.model_version == current.version_id
        assert any(b["url"] == running.url for b in ls.request("GET", "/api/ml", params={"project": project}))
        prefect = prefect_server.status(Workspace(ws))
        assert prefect is not None and prefect.runner_pid is not None
        assert prefect.url.startswith("http://127.0.0.1:")
        assert f"{info.url}/projects/{project}/data?tab=" in first.stderr and "cxr retrain" in first.stderr
        assert f"Every {RETRAIN_EVERY} images you label start the next round by itself" in first.stderr

        again = cxr(*args, env_extra=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "synthetic study already generated" in again.stderr
        assert "ingested 0, skipped 60" in again.stderr
        assert "Label Studio: imported 0 tasks, 60 already there, 0 failed" in again.stderr
        assert f"labels unchanged since round 1: model {current.version_id} kept" in again.stderr
        assert server.status(Workspace(ws)).pid == info.pid  # the same servers, found running
        assert backend.status(Workspace(ws)).pid == running.pid
        assert prefect_server.status(Workspace(ws)) == prefect
        assert Registry(Workspace(ws).models_dir).current_id() == current.version_id
        assert len(ls.list_tasks(project)) == 60

        run = turn_the_loop_through_label_studio(ws, ls, project, pool[:RETRAIN_EVERY], prefect, current.version_id)
        # `cxr status` shows the loop: Prefect and its runner, the backend, the trigger and its flow run.
        status = cxr("status", "-w", str(ws))
        assert status.returncode == 0, status.stderr
        assert f"Prefect: {prefect.url}, runner serving the deployments" in status.stderr
        assert f"flow run {run['id']}" in status.stderr
    finally:
        backend.stop(Workspace(ws))
        prefect_server.stop(Workspace(ws))
        server.stop(Workspace(ws))


def turn_the_loop_through_label_studio(ws, ls, project, tasks, prefect, first_version):
    """A radiologist submits RETRAIN_EVERY annotations; no command is typed after that. Returns
    the flow run the webhook started, once it has retrained, hot-swapped the backend and re-ranked."""
    schema = load_schema()
    for task in tasks:
        width, height = task["data"]["width"], task["data"]["height"]
        box = Box(x=0.2 * width, y=0.3 * height, w=0.25 * width, h=0.3 * height, finding=schema.findings[0])
        ls.create_annotation(task["id"], boxes_to_results([box], width, height, schema))

    # The webhook started a flow run of retrain/retrain on the demo's Prefect; wait for it to finish.
    deadline, runs = time.monotonic() + 1200, []
    while time.monotonic() < deadline:
        runs = retrain_runs(prefect.api_url) or []
        if runs and all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
            break
        time.sleep(3)
    assert len(runs) == 1, runs
    assert runs[0]["state_type"] == "COMPLETED" and runs[0]["state_name"] == "Retrained", \
        flow_run_report(prefect.api_url, runs[0])
    assert f"{RETRAIN_EVERY} new annotations" in runs[0]["parameters"]["reason"]

    # It trained with the params the workspace is configured with (the demo's), as `cxr retrain` would.
    round_info = json.loads((ws / "round.json").read_text())
    demo_params = load_params(ws / "params-demo.yaml")
    assert round_info["round"] == 2 and round_info["params_hash"] == params_hash(model_params(demo_params))
    assert load_params(ws / "params.yaml") == demo_params

    # The new version serves, and the view is re-ranked with it: the labeled tasks have left the queue.
    new_version = Registry(Workspace(ws).models_dir).current_id()
    assert new_version == round_info["model_version"] != first_version
    assert backend.status(Workspace(ws)).model_version == new_version
    labeled = {t["id"] for t in tasks}
    seed = {r.image_id for r in read_manifest(ws / "data" / "manifest.jsonl") if r.labeled}
    unlabeled = {t["data"]["image_id"] for t in ls.list_tasks(project) if not t["total_annotations"]
                 and t["id"] not in labeled and t["data"]["image_id"] not in seed}
    queue, _ = published_queue(ls, project)
    assert queue and sorted(queue) == sorted(unlabeled)
    assert model_version_of(ls.project(project)["model_version"]) == new_version
    return runs[0]


def flow_run_report(api_url: str, run: dict, lines: int = 40) -> str:
    """Why a flow run ended as it did, for an assertion's message: its state and message, then the
    last `lines` of its log as the Prefect API keeps it (the run's temp folders die with the test)."""
    state = run.get("state") or {}
    head = f"flow run {run.get('id')} ended {state.get('type')} {state.get('name')!r}: {state.get('message')}"
    try:
        resp = requests.post(f"{api_url}/logs/filter", timeout=10, json={
            "logs": {"flow_run_id": {"any_": [run["id"]]}}, "sort": "TIMESTAMP_DESC", "limit": lines})
        logs = reversed(resp.json()) if resp.status_code == 200 else []
    except (requests.RequestException, ValueError) as exc:
        return f"{head}\n(its log could not be read: {exc})"
    return "\n".join([head, *(f"{log['timestamp']} {log['name']}: {log['message']}" for log in logs)])


def retrain_runs(api_url: str) -> list[dict] | None:
    """The flow runs of retrain/retrain, or None while the API does not answer (a restart under it)."""
    try:
        deployment = requests.get(f"{api_url}/deployments/name/retrain/retrain", timeout=10).json()["id"]
        resp = requests.post(f"{api_url}/flow_runs/filter", timeout=10,
                             json={"flow_runs": {"deployment_id": {"any_": [deployment]}}})
        return resp.json() if resp.status_code == 200 else None
    except (requests.RequestException, ValueError, KeyError):
        return None


def test_synth_ingest_summary(tmp_path):
    study, ws = tmp_path / "study", tmp_path / "ws"
    made = cxr("synth", str(study), "--n", "5", "--size", "192", "--seed", "3")
    assert made.returncode == 0, made.stderr
    assert len(list(study.glob("*.dcm"))) == 5 and (study / "truth.jsonl").exists()
    ingested = cxr("ingest", str(study), "--dataset", "synthetic", "--workspace", str(ws))
    assert ingested.returncode == 0, ingested.stderr
    summary = cxr("summary", "--workspace", str(ws))
    assert summary.returncode == 0
    row = next(line for line in summary.stderr.splitlines() if "synthetic" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")[1:4]] == ["synthetic", "5", "5"]


def test_unknown_dataset_is_a_clear_error(tmp_path):
    result = cxr("ingest", str(tmp_path), "--dataset", "mimic", "--workspace", str(tmp_path / "ws"))
    assert result.returncode == 2
    assert "unknown dataset 'mimic'" in result.stderr


def test_a_workspace_remembers_its_params_file(tmp_path, monkeypatch):
    """Every round on a workspace takes the same params, however it starts: the explicit file, else
    $CXR_PARAMS, else the workspace's own setting (which `cxr demo` writes), else params.yaml."""
    from cxrkit.core.params import (
        DEFAULT_PARAMS,
        configure_workspace_params,
        params_file_for,
    )

    monkeypatch.delenv("CXR_PARAMS", raising=False)
    ws = tmp_path / "ws"
    assert params_file_for(ws) == DEFAULT_PARAMS.resolve()
    (ws / ".env").parent.mkdir()
    (ws / ".env").write_text("CXR_DEID_SALT=abc\n")
    configure_workspace_params(ws, tmp_path / "mine.yaml")
    configure_workspace_params(ws, tmp_path / "mine.yaml")  # once only
    assert (ws / ".env").read_text() == f"CXR_DEID_SALT=abc\nCXR_PARAMS={tmp_path / 'mine.yaml'}\n"
    assert (ws / ".env").stat().st_mode & 0o777 == 0o600
    assert params_file_for(ws) == tmp_path / "mine.yaml"
    assert params_file_for(ws, tmp_path / "given.yaml") == tmp_path / "given.yaml"
    monkeypatch.setenv("CXR_PARAMS", str(tmp_path / "env.yaml"))
    assert params_file_for(ws) == tmp_path / "env.yaml"
