"""The `cxr` front door as a user runs it: real processes, real files."""
from __future__ import annotations

import os
import subprocess
import sys

from cxrkit.importers.synthetic import read_truth
from cxrkit.labelstudio import server
from cxrkit.labelstudio.client import DEFAULT_PROJECT, LabelStudio
from cxrkit.manifest import read_manifest
from cxrkit.workspace import Workspace
from tests.labelstudio_server import free_port


def cxr(*args, cwd=None, env_extra=None):
    env = os.environ.copy() | (env_extra or {})
    env.pop("CXR_DEID_SALT", None)
    return subprocess.run([sys.executable, "-m", "cxrkit.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_demo_runs_and_reruns_fast(tmp_path):
    ws = tmp_path / "ws"
    env = {"CXR_LS_PORT": str(free_port())}
    try:
        first = cxr("demo", "--workspace", str(ws), "--n", "8", "--size", "256", env_extra=env)
        assert first.returncode == 0, first.stderr
        assert "ingested 8, skipped 0" in first.stderr
        records = read_manifest(ws / "data" / "manifest.jsonl")
        assert len(records) == 8 and all(r.source == "synthetic" and r.labeled for r in records)
        # Ground truth made it through ingest: the same number of boxes as the generator drew.
        truth = read_truth(ws / "incoming" / "synthetic-n8-s256-seed0")
        assert sum(len(r.boxes) for r in records) == sum(len(t["boxes"]) for t in truth)
        # ... and every image is a task in the running Label Studio, with the uncertainty view.
        assert "Label Studio: imported 8 tasks, 0 already there, 0 failed" in first.stderr
        info = server.status(Workspace(ws))
        assert info is not None and f"{info.url}/projects/" in first.stderr
        ls = LabelStudio.for_server(info)
        (project,) = [p["id"] for p in ls.projects() if p["title"] == DEFAULT_PROJECT]
        assert sorted(t["data"]["image_id"] for t in ls.list_tasks(project)) == sorted(r.image_id for r in records)

        again = cxr("demo", "--workspace", str(ws), "--n", "8", "--size", "256", env_extra=env)
        assert again.returncode == 0, again.stderr
        assert "synthetic study already generated" in again.stderr
        assert "ingested 0, skipped 8" in again.stderr
        assert "Label Studio: imported 0 tasks, 8 already there, 0 failed" in again.stderr
        assert server.status(Workspace(ws)).pid == info.pid  # the same server, found running
        assert len(read_manifest(ws / "data" / "manifest.jsonl")) == 8
    finally:
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
