"""The Prefect ingest flow end to end: real DICOMs, a real (local, temporary) Prefect API, no mocks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrkit.core.manifest import read_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.data.dicom_write import write_dicom
from flows.ingest import IngestFailures, ingest_flow, main

# PHI in headers and in two file names: neither may reach Prefect's logs.
GOOD = [
    ("PHIDOE_JANE_0001.dcm", "explicit", 12, {"PatientName": "PHIDOE^JANE", "PatientID": "PHI-PID-0001"}),
    ("img0002.dcm", "jpeg2000", 16, {"PatientName": "PHIROE^RICHARD", "PatientID": "PHI-PID-0002"}),
    ("PHIROE_RICHARD_0003.dcm", "rle", 12, {"PatientName": "PHIROE^RICHARD", "PatientID": "PHI-PID-0002"}),
    ("img0004.dcm", "jpeg-baseline", 8, {"PatientName": "PHISMITH^ALEX", "PatientID": "PHI-PID-0003"}),
]


def write_good(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    for name, syntax, bits, header in GOOD:
        pixels = rng.integers(0, 1 << bits, (96, 80)).astype(np.uint8 if bits == 8 else np.uint16)
        write_dicom(folder / name, pixels, bits_stored=bits, transfer_syntax=syntax, view_position="PA",
                    pixel_spacing=0.14, header=header)
    return [name for name, *_ in GOOD]


def _flow_run_logs(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_ingest_flow(prefect_server, tmp_path, monkeypatch, caplog):
    from prefect import get_client

    monkeypatch.delenv("CXR_DEID_SALT", raising=False)  # the workspace generates its own
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    good = write_good(incoming)
    (incoming / "notes.txt").write_text("meeting notes, not an image\n")
    ws = Workspace(tmp_path / "ws")

    # First run: 4 ingested, the bad file reported, the run Failed, the good images kept.
    state = ingest_flow(str(incoming), workspace=str(ws.root), max_side=64, workers=2, return_state=True)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, IngestFailures)
    report = exc.report
    assert (report["ingested"], report["skipped"], report["ok"]) == (4, 0, False)
    assert report["failed"] == [{"path": "notes.txt", "reason": "not a DICOM file"}]
    assert "1 of 5 files failed" in str(exc) and str(ws.report_path) in str(exc)
    records = read_manifest(ws.manifest_path)
    assert len(records) == 4 and len({r.image_id for r in records}) == 4
    assert all((ws.data_dir / r.path).exists() and max(r.width, r.height) <= 64 for r in records)
    assert json.loads(ws.report_path.read_text()) == report

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        task_runs = client.read_task_runs()
    assert flow_run.state.is_failed() and "IngestFailures" in flow_run.state.message
    ours = [t for t in task_runs if t.flow_run_id == flow_run.id]
    assert sorted(t.name.rsplit("-", 1)[0] for t in ours) == ["ingest images", "list sources"]
    assert all(t.state.is_completed() for t in ours)  # the ingest task did its job; the flow flags the failure

    # The run's logs (stored by Prefect's API) carry figures and reasons, never a file's name; the
    # failed file's path is in the report (above) and in this machine's console log.
    messages = "\n".join(_flow_run_logs(flow_run.id))
    assert "ingested 4, skipped 0" in messages and "files/s" in messages
    assert "1 files failed: not a DICOM file (1)" in messages and str(ws.report_path) in messages
    for name in [*good, "notes.txt"]:
        assert Path(name).stem not in messages
    assert "failed: notes.txt: not a DICOM file" in caplog.text

    # Second run, through the command-line entry point: all 4 skipped, the bad file still fails, exit 1.
    assert main([str(incoming), "--workspace", str(ws.root), "--max-side", "64", "--workers", "1"]) == 1
    report2 = json.loads(ws.report_path.read_text())
    assert (report2["ingested"], report2["skipped"], len(report2["failed"])) == (0, 4, 1)
    assert len(read_manifest(ws.manifest_path)) == 4

    # Without the bad file: the run Completes and returns the report dict.
    (incoming / "notes.txt").unlink()
    report3 = ingest_flow(str(incoming), workspace=str(ws.root), max_side=64)
    assert (report3["ingested"], report3["skipped"], report3["failed"], report3["ok"]) == (0, 4, [], True)
    assert len(read_manifest(ws.manifest_path)) == 4


def test_ingest_flow_bad_input(prefect_server, tmp_path):
    """No such folder / unknown dataset: the run fails with a clear error, exit status 2."""
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ingest_flow(str(tmp_path / "missing"), workspace=str(tmp_path / "ws"))
    assert main([str(tmp_path), "--dataset", "nope", "--workspace", str(tmp_path / "ws")]) == 2


def test_ingest_flow_imports_tasks_and_preannotates(prefect_server, labelstudio, labelstudio_workspace, trained_models,
                                                    tmp_path, monkeypatch):
    """With Label Studio: before any model the new tasks are ranked by the cold start (no pre-annotations);
    with a serving model they get its pre-annotations and a place in the uncertainty queue; a re-run adds
    nothing."""
    import uuid

    from cxrkit.core.labels import DEFAULT_CONFIG
    from cxrkit.labelstudio.client import LabelStudio
    from cxrkit.labelstudio.tasks import model_version_of
    from cxrkit.models.registry import Registry
    from tests.labelstudio_server import published_queue

    monkeypatch.setenv("LABEL_STUDIO_URL", labelstudio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", labelstudio.credentials.token)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_good(incoming)
    # Label Studio serves local files below its workspace's data folder only: the workspace goes there.
    ws = Workspace(labelstudio_workspace.data_dir / f"ingest-{uuid.uuid4().hex[:8]}")
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(trained_models.params))  # JSON is YAML
    ls = LabelStudio.for_server(labelstudio)
    project = ls.ensure_project(f"ingest test {uuid.uuid4().hex[:6]}", DEFAULT_CONFIG.read_text())

    report = ingest_flow(str(incoming), workspace=str(ws.root), max_side=64, workers=1, project=project,
                         params=str(params))
    assert report["ingested"] == 4
    assert report["labelstudio"]["tasks"] == {"project": project, "imported": 4, "skipped": 0, "failed": 0}
    cold = report["labelstudio"]["select"]  # no model yet: the cold start ranked the new tasks
    assert cold["model_version"] is None and len(cold["ranking"]) == 4
    # params.yaml's first batch: random order, as measured (BENCHMARKS.md "A random first batch")
    assert cold["strategy"] == "random (cold start)"
    queue, shown = published_queue(ls, project)  # the ranking, with nothing drawn
    assert queue == cold["ranking"] and not any(p["result"] for p in shown.values())

    registry = Registry(ws.models_dir)
    version = registry.register(trained_models.detector_weights, trained_models.classifier_checkpoint,
                                data_version="session-fixture", params=trained_models.params, metrics={})
    registry.promote(version.version_id)
    report = ingest_flow(str(incoming), workspace=str(ws.root), max_side=64, workers=1, project=project,
                         params=str(params))
    assert report["skipped"] == 4 and report["labelstudio"]["tasks"]["skipped"] == 4
    selected = report["labelstudio"]["select"]
    assert selected["model_version"] == version.version_id and selected["predictions_pushed"] == 4
    tasks = ls.tasks_by_image(project)
    assert sorted(tasks) == sorted(r.image_id for r in read_manifest(ws.manifest_path))
    queue, shown = published_queue(ls, project)
    assert queue == selected["ranking"] and model_version_of(selected["queue_label"]) == version.version_id

    again = ingest_flow(str(incoming), workspace=str(ws.root), max_side=64, workers=1, project=project,
                        params=str(params))
    assert again["skipped"] == 4 and again["labelstudio"]["tasks"]["imported"] == 0
    assert again["labelstudio"]["select"]["predictions_pushed"] == 0 and again["labelstudio"]["select"]["cached"] == 4
