"""Ingest end to end through the real CLI: de-identification, bad input, idempotence, resume, parallelism."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from cxrkit.core.manifest import Box, read_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.data.dicom_write import write_dicom
from cxrkit.data.ingest import IngestOptions, ingest
from cxrkit.data.sources import SourceImage

PATIENTS = [
    {"PatientName": "PHIDOE^JANE", "PatientID": "PHI-PID-0001", "PatientBirthDate": "19600101", "PatientSex": "F"},
    {"PatientName": "PHIROE^RICHARD", "PatientID": "PHI-PID-0002", "PatientBirthDate": "19451231", "PatientSex": "M"},
    {"PatientName": "PHISMITH^ALEX", "PatientID": "PHI-PID-0003", "PatientBirthDate": "19990615", "PatientSex": "O"},
]
STUDY_PHI = {
    "InstitutionName": "PHI Saint Example Hospital",
    "InstitutionAddress": "1 PHI Street, Springfield",
    "ReferringPhysicianName": "PHIHOUSE^GREGORY",
    "AccessionNumber": "PHIACC778899",
    "StudyDate": "20240229",
    "StudyTime": "101112",
    "StudyID": "PHISTUDY42",
    "PatientAddress": "42 PHI Road",
    "OtherPatientIDs": "PHI-OTHER-77",
    "ImageComments": "PHI follow-up for Jane Doe, call 555-0199",
}
SYNTAXES = ["explicit", "implicit", "jpeg2000", "jpegls", "rle", "jpeg-baseline"]
BAD_REASONS = {  # file name -> start of its expected reason
    "truncated.dcm": "truncated file",
    "notes.txt": "not a DICOM file",
    "no_pixels.dcm": "no pixel data",
    "mpeg.dcm": "unsupported transfer syntax",
    "ct.dcm": "modality CT is not a radiograph",
    "knee.dcm": "body part KNEE is not the chest",
    "zero.dcm": "zero-size image",
}


def chest_like(seed: int, size: int, bits: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + np.exp(
        -(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)
    )
    img = np.clip(1 - 0.7 * lungs + rng.normal(0, 0.03, (size, size)), 0, 1)
    return np.rint(img * ((1 << bits) - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def write_good(folder: Path, n: int, size: int = 128) -> list[dict]:
    """n chest DICOMs across syntaxes and patients, PHI in the headers, and PHI in some file names."""
    written = []
    for i in range(n):
        syntax = SYNTAXES[i % len(SYNTAXES)]
        bits = 8 if syntax == "jpeg-baseline" else (12, 16)[i % 2]
        header = PATIENTS[i % len(PATIENTS)] | STUDY_PHI | {"PatientAge": f"0{40 + i}Y"}
        name = f"PHIDOE_JANE_{i:03d}.dcm" if i % 3 == 0 else f"img{i:03d}.dcm"
        photometric = "MONOCHROME1" if i % 4 == 1 else "MONOCHROME2"
        pixels = chest_like(i, size, bits)
        if photometric == "MONOCHROME1":
            pixels = ((1 << bits) - 1 - pixels.astype(np.int64)).astype(pixels.dtype)
        write_dicom(folder / name, pixels, bits_stored=bits, transfer_syntax=syntax, photometric=photometric,
                    view_position="PA", pixel_spacing=0.14, header=header)
        written.append({"name": name, "header": header})
    return written


def write_bad(folder: Path) -> None:
    header = PATIENTS[0] | STUDY_PHI
    template = folder / "template.dcm.src"
    write_dicom(template, chest_like(0, 64, 12), bits_stored=12, transfer_syntax="rle", header=header)

    def variant(name, mutate):
        ds = pydicom.dcmread(template)
        mutate(ds)
        ds.save_as(folder / name)

    full = (folder.parent / "full.dcm")
    write_dicom(full, chest_like(1, 64, 12), bits_stored=12, header=header)
    (folder / "truncated.dcm").write_bytes(full.read_bytes()[:-3000])
    (folder / "notes.txt").write_text("Patient PHIDOE^JANE called about results\n")
    variant("no_pixels.dcm", lambda ds: delattr(ds, "PixelData"))

    def mpeg(ds):
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])

    variant("mpeg.dcm", mpeg)
    variant("ct.dcm", lambda ds: setattr(ds, "Modality", "CT"))
    variant("knee.dcm", lambda ds: setattr(ds, "BodyPartExamined", "KNEE"))
    variant("zero.dcm", lambda ds: setattr(ds, "Columns", 0))
    template.unlink()


def run_cli(*args, env_extra=None, timeout=300):
    env = os.environ | (env_extra or {})
    env.pop("CXR_DEID_SALT", None)
    return subprocess.run([sys.executable, "-m", "cxrkit.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


def phi_strings(written: list[dict]) -> set[str]:
    values = set()
    for item in written:
        for key, value in item["header"].items():
            if key not in ("PatientSex", "PatientAge"):
                values.add(str(value))
    values |= {"PHIDOE", "JANE", "Jane Doe", "555-0199", "19600101", "20240229"}
    return values


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    incoming = root / "incoming"
    incoming.mkdir()
    written = write_good(incoming, 12)
    write_bad(incoming)
    ws = root / "ws"
    first = run_cli("ingest", str(incoming), "--workspace", str(ws))
    return {"root": root, "incoming": incoming, "ws": ws, "written": written, "first": first}


def test_bad_files_reported_and_good_files_land(ingested):
    first, ws = ingested["first"], ingested["ws"]
    assert first.returncode == 1, first.stderr  # something failed: exit status says so
    report = json.loads((ws / "reports" / "ingest_report.json").read_text())
    assert report["ingested"] == 12 and report["skipped"] == 0 and report["ok"] is False
    reasons = {f["path"]: f["reason"] for f in report["failed"]}
    assert set(reasons) == set(BAD_REASONS)
    for name, start in BAD_REASONS.items():
        assert reasons[name].startswith(start), (name, reasons[name])
        assert "\n" not in reasons[name]
        assert f"{name}: {reasons[name]}" in first.stderr  # the operator sees it too
    records = read_manifest(ws / "data" / "manifest.jsonl")
    assert len(records) == 12
    for rec in records:
        png = cv2.imread(str(ws / "data" / rec.path), cv2.IMREAD_UNCHANGED)
        assert png is not None and png.dtype == np.uint8 and png.shape == (rec.height, rec.width) == (128, 128)
        assert rec.metadata["view"] == "PA" and rec.metadata["body_part"] == "CHEST"
        assert rec.source == "dicom" and rec.labeled is False


def test_monochrome1_is_displayed_like_monochrome2(ingested):
    # The fixtures store every 4th image inverted; after ingest all lungs must be dark (low values).
    ws = ingested["ws"]
    for rec in read_manifest(ws / "data" / "manifest.jsonl"):
        png = cv2.imread(str(ws / "data" / rec.path), cv2.IMREAD_UNCHANGED).astype(float)
        lung, mediastinum = png[48:80, 30:46].mean(), png[48:80, 60:68].mean()
        assert lung < mediastinum - 40, (rec.metadata["photometric"], lung, mediastinum)


def test_no_phi_downstream(ingested):
    ws, written = ingested["ws"], ingested["written"]
    phi = phi_strings(written)
    downstream = [p for p in ws.rglob("*") if p.is_file() and p.name != ".env"]
    assert downstream, "nothing was written"
    for path in downstream:
        rel = str(path.relative_to(ws))
        blob = path.read_bytes()
        for value in phi:
            assert value not in rel, f"PHI {value!r} in file name {rel}"
            assert value.encode() not in blob, f"PHI {value!r} inside {rel}"
        if path.suffix == ".png":
            assert png_chunks(blob) <= {b"IHDR", b"IDAT", b"IEND"}, f"metadata chunks in {rel}"
    for value in phi:  # and nothing in what the command printed (its log)
        assert value not in ingested["first"].stdout + ingested["first"].stderr
    # good files named after the patient: neither the name nor the path survives
    for rec in read_manifest(ws / "data" / "manifest.jsonl"):
        assert "img" not in rec.path and "PHIDOE" not in rec.to_json()


def png_chunks(blob: bytes) -> set[bytes]:
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, set()
    while pos < len(blob):
        length = int.from_bytes(blob[pos : pos + 4], "big")
        kinds.add(blob[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def test_pseudonyms_are_consistent_keyed_and_opaque(ingested, tmp_path):
    ws, written = ingested["ws"], ingested["written"]
    records = read_manifest(ws / "data" / "manifest.jsonl")
    # Record order follows input order within a run; map back through the same sort the CLI uses.
    by_patient: dict[str, set[str]] = {}
    names = sorted(w["name"] for w in written)
    header_by_name = {w["name"]: w["header"] for w in written}
    for name, rec in zip(names, records):
        by_patient.setdefault(header_by_name[name]["PatientID"], set()).add(rec.patient_id)
    assert all(len(ids) == 1 for ids in by_patient.values())  # same patient -> same pseudonym
    assert len({next(iter(ids)) for ids in by_patient.values()}) == len(PATIENTS)  # different -> different
    assert len({r.image_id for r in records}) == 12
    # The salt was generated once for this workspace and kept out of the manifest.
    salt = (ws / ".env").read_text().split("CXR_DEID_SALT=")[1].split()[0]
    assert len(salt) >= 32 and salt not in (ws / "data" / "manifest.jsonl").read_text()
    assert oct((ws / ".env").stat().st_mode)[-3:] == "600"
    # Another workspace has another salt: the same images get unrelated pseudonyms.
    other = tmp_path / "other"
    run_cli("ingest", str(ingested["incoming"]), "--workspace", str(other))
    other_ids = {r.image_id for r in read_manifest(other / "data" / "manifest.jsonl")}
    assert other_ids.isdisjoint({r.image_id for r in records})


def test_rerun_skips_everything(ingested):
    again = run_cli("ingest", str(ingested["incoming"]), "--workspace", str(ingested["ws"]))
    assert again.returncode == 1  # the bad files are still bad
    report = json.loads((ingested["ws"] / "reports" / "ingest_report.json").read_text())
    assert report["ingested"] == 0 and report["skipped"] == 12 and len(report["failed"]) == len(BAD_REASONS)
    assert len(read_manifest(ingested["ws"] / "data" / "manifest.jsonl")) == 12


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    n = 60
    write_good(incoming, n, size=384)
    ws = tmp_path / "ws"
    manifest = ws / "data" / "manifest.jsonl"
    env = os.environ.copy()
    env.pop("CXR_DEID_SALT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrkit.cli", "ingest", str(incoming), "--workspace", str(ws), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "ingest finished before it could be killed; make the study bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = manifest.read_text().count("\n")
    assert 5 <= done_before < n

    resumed = run_cli("ingest", str(incoming), "--workspace", str(ws))
    assert resumed.returncode == 0, resumed.stderr
    records = read_manifest(manifest)
    assert len(records) == n and len({r.image_id for r in records}) == n
    pngs = sorted((ws / "data" / "images").iterdir())
    assert [p.name for p in pngs] == sorted(f"{r.image_id}.png" for r in records)  # no stray temp files
    for p in pngs:
        assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (384, 384)


def test_parallel_equals_serial(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_good(incoming, 10)
    results = []
    for workers in (1, 2):
        ws = Workspace(tmp_path / f"ws{workers}")
        sources = [SourceImage(path=p, source="dicom", original_id=p.name) for p in sorted(incoming.iterdir())]
        os.environ["CXR_DEID_SALT"] = "fixed-salt-for-this-test-0123456789"
        try:
            report = ingest(sources, ws, IngestOptions(workers=workers))
        finally:
            del os.environ["CXR_DEID_SALT"]
        assert report.ingested == 10 and report.ok
        records = read_manifest(ws.manifest_path)
        results.append(([r.to_json() for r in records], {p.name: p.read_bytes() for p in ws.images_dir.iterdir()}))
    assert results[0] == results[1]


def test_boxes_follow_downscaling_and_clipping(tmp_path):
    path = tmp_path / "big.dcm"
    write_dicom(path, chest_like(3, 400, 12), bits_stored=12, header={"PatientID": "P1"})
    boxes = [Box(x=100, y=40, w=200, h=100, finding="Lung Opacity", subtype="Viral"),
             Box(x=350, y=350, w=100, h=100, finding="Lung Opacity")]  # runs off the image: clipped
    src = SourceImage(path=path, source="test", original_id="big", labeled=True, boxes=boxes, impression="Pneumonia")
    ws = Workspace(tmp_path / "ws")
    report = ingest([src], ws, IngestOptions(max_side=200, workers=1))
    assert report.ok
    (rec,) = read_manifest(ws.manifest_path)
    assert (rec.width, rec.height) == (200, 200)
    assert [(b.x, b.y, b.w, b.h) for b in rec.boxes] == [(50, 20, 100, 50), (175, 175, 25, 25)]
    assert rec.boxes[0].subtype == "Viral" and rec.impression == "Pneumonia" and rec.labeled
    assert rec.metadata["rows"] == 400  # the source size stays in the metadata


# ---------------------------------------------------------------- one id, one picture; one writer


def _salted(monkeypatch):
    monkeypatch.setenv("CXR_DEID_SALT", "ingest-identity-salt-0123456789")


def test_an_id_taken_by_other_pixels_is_refused_and_the_first_kept(tmp_path, monkeypatch):
    """A `1.png` in two batches gets one id (source + relative path): the second must not replace
    the first's pixels under the first's manifest line. The same pixels in another file are a duplicate."""
    from cxrkit.data.ingest import sources_from_folder

    _salted(monkeypatch)
    first, other, same = (tmp_path / name for name in ("batch1", "batch2", "batch3"))
    for folder in (first, other, same):
        folder.mkdir()
    cv2.imwrite(str(first / "1.png"), chest_like(1, 96, 8))
    cv2.imwrite(str(other / "1.png"), chest_like(2, 96, 8))
    cv2.imwrite(str(same / "1.png"), chest_like(1, 96, 8), [cv2.IMWRITE_PNG_COMPRESSION, 9])  # other bytes
    assert (same / "1.png").read_bytes() != (first / "1.png").read_bytes()
    ws = Workspace(tmp_path / "ws")
    assert ingest(sources_from_folder(first), ws, IngestOptions(workers=1)).ingested == 1
    (record,) = read_manifest(ws.manifest_path)
    stored = ws.data_dir / record.path
    before = stored.read_bytes()

    refused = ingest(sources_from_folder(other), ws, IngestOptions(workers=1))
    assert refused.ingested == 0 and len(refused.failed) == 1
    assert refused.failed[0].path.endswith("1.png") and "is taken by another image with other pixels" in refused.failed[0].reason
    assert stored.read_bytes() == before and read_manifest(ws.manifest_path) == [record]
    saved = json.loads(ws.report_path.read_text())
    assert "taken by another image" in saved["failed"][0]["reason"]

    duplicate = ingest(sources_from_folder(same), ws, IngestOptions(workers=1))
    assert (duplicate.ingested, duplicate.skipped, duplicate.failed) == (0, 1, [])
    assert stored.read_bytes() == before and read_manifest(ws.manifest_path) == [record]
    assert sorted(p.name for p in ws.images_dir.iterdir()) == [stored.name]  # no temporary file left


def test_one_sop_instance_uid_with_two_pictures_in_one_batch(tmp_path, monkeypatch):
    """Seen on a real film: a DICOM and a copy with the same SOP Instance UID re-tagged MONOCHROME1
    (so displayed as the negative), in one folder. The first is kept, the copy refused."""
    from cxrkit.data.ingest import sources_from_folder

    _salted(monkeypatch)
    incoming = tmp_path / "in"
    incoming.mkdir()
    pixels = chest_like(5, 96, 12)
    uid = {"SOPInstanceUID": "1.2.826.0.1.3680043.8.498.4242"}
    write_dicom(incoming / "a.dcm", pixels, bits_stored=12, header=uid)
    write_dicom(incoming / "b.dcm", pixels, bits_stored=12, photometric="MONOCHROME1", header=uid)
    ws = Workspace(tmp_path / "ws")
    report = ingest(sources_from_folder(incoming), ws, IngestOptions(workers=2))
    assert report.ingested == 1 and [f.path for f in report.failed] == [str(incoming / "b.dcm")]
    (record,) = read_manifest(ws.manifest_path)
    alone = Workspace(tmp_path / "alone")  # what a.dcm gives by itself
    ingest(sources_from_folder(incoming)[:1], alone, IngestOptions(workers=1))
    assert (ws.data_dir / record.path).read_bytes() == (alone.data_dir / record.path).read_bytes()


def test_ingest_waits_for_the_workspace_writer(tmp_path, monkeypatch):
    """A retrain's `dvc add data` (or another ingest) holds the workspace's writer lock: this ingest
    starts only when it is released, and never touches the folder before."""
    import threading

    from cxrkit.data.ingest import sources_from_folder

    _salted(monkeypatch)
    incoming = tmp_path / "in"
    incoming.mkdir()
    write_good(incoming, 3, size=96)
    ws = Workspace(tmp_path / "ws").create()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from cxrkit.core.workspace import Workspace\n"
        f"with Workspace(Path({str(ws.root)!r})).writer_lock():\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (ws.images_dir / "other-run.png.tmp").write_bytes(b"a live writer's temporary file")
        done = {}
        worker = threading.Thread(target=lambda: done.update(report=ingest(sources_from_folder(incoming), ws,
                                                                            IngestOptions(workers=1))))
        worker.start()
        worker.join(3)
        assert worker.is_alive() and not ws.manifest_path.exists()
        assert (ws.images_dir / "other-run.png.tmp").exists()
    finally:
        holder.kill()
        holder.wait()
    worker.join(120)
    assert done["report"].ingested == 3 and len(read_manifest(ws.manifest_path)) == 3
