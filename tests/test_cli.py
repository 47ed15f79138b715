"""The `cxr` front door as a user runs it: real processes, real files."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from cxrkit import backend
from cxrkit.labelstudio import server
from cxrkit.labelstudio.client import DEFAULT_PROJECT, LabelStudio
from cxrkit.manifest import read_manifest
from cxrkit.models.registry import Registry
from cxrkit.params import load_params
from cxrkit.workspace import Workspace
from tests.labelstudio_server import free_port


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
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.timeout(1800)  # two demo runs, one with training; minutes on a quiet machine, more on a busy one
def test_demo_runs_the_whole_loop_and_reruns_fast(tmp_path):
    """`cxr demo` as the README runs it, small: study -> ingest -> Label Studio -> first model on the
    seed labels (retrain flow, DVC) -> pre-annotations + ranking (select flow) -> ML backend connected."""
    ws = tmp_path / "ws"
    env = {"CXR_LS_PORT": str(free_port()), "CXR_BACKEND_PORT": str(free_port())}
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

        # Every task is pre-annotated by it; the pool is ranked (scores and ranks on the tasks).
        info = server.status(Workspace(ws))
        ls = LabelStudio.for_server(info)
        (project,) = [p["id"] for p in ls.projects() if p["title"] == DEFAULT_PROJECT]
        tasks = ls.list_tasks(project)
        assert sorted(t["data"]["image_id"] for t in tasks) == sorted(r.image_id for r in records)
        assert all(any(p["model_version"] == current.version_id for p in t["predictions"]) for t in tasks)
        pool = [t for t in tasks if t["data"]["image_id"] not in seed]
        assert all(t["data"].get("uncertainty") is not None for t in pool)
        assert sorted(int(t["data"]["uncertainty_rank"]) for t in pool) == list(range(1, len(pool) + 1))

        # The ML backend serves that version and is connected to the project.
        running = backend.status(Workspace(ws))
        assert running is not None and running.model_version == current.version_id
        assert any(b["url"] == running.url for b in ls.request("GET", "/api/ml", params={"project": project}))
        assert f"{info.url}/projects/{project}/data?tab=" in first.stderr and "cxr retrain" in first.stderr

        again = cxr(*args, env_extra=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "synthetic study already generated" in again.stderr
        assert "ingested 0, skipped 60" in again.stderr
        assert "Label Studio: imported 0 tasks, 60 already there, 0 failed" in again.stderr
        assert f"labels unchanged since round 1: model {current.version_id} kept" in again.stderr
        assert server.status(Workspace(ws)).pid == info.pid  # the same servers, found running
        assert backend.status(Workspace(ws)).pid == running.pid
        assert Registry(Workspace(ws).models_dir).current_id() == current.version_id
        assert len(ls.list_tasks(project)) == 60
    finally:
        backend.stop(Workspace(ws))
        server.stop(Workspace(ws))


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
