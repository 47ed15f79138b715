"""Films from a PACS, for real: a real Orthanc (tests/orthanc_server.py) loaded with synthetic
chest DICOMs that carry fake PHI, read over DICOMweb (QIDO-RS + WADO-RS)."""
from __future__ import annotations

import numpy as np
import pytest

from cxrkit.core.manifest import read_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.data.dicom_write import write_dicom
from cxrkit.data.dicomweb import PacsError, PacsQuery, ingest_from_dicomweb, staging_dir
from cxrkit.data.ingest import IngestOptions
from tests.orthanc_server import orthanc  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow
PHI = ["PHIDOE^JANE", "PHI-PID-0001", "ACC-PHI-0042", "PHIROE^RICHARD", "PHI-PID-0002"]


def study(folder, name, *, modality="DX", body_part="CHEST", date="20260105", accession="ACC-PHI-0042",
          patient=("PHIDOE^JANE", "PHI-PID-0001"), seed=0, broken=False, study_uid=None):
    """One synthetic film with fake PHI in its header, written to folder/name."""
    pixels = np.random.default_rng(seed).integers(0, 4096, (96, 80)).astype(np.uint16)
    header = {"PatientName": patient[0], "PatientID": patient[1], "StudyDate": date, "AccessionNumber": accession,
              "BodyPartExamined": body_part, "Modality": modality}
    if study_uid:
        header["StudyInstanceUID"] = study_uid
    path = folder / name
    write_dicom(path, pixels, bits_stored=12, view_position="PA", pixel_spacing=0.14, header=header)
    if broken:  # a well-formed file whose pixel data is short of Rows x Columns: the PACS stores it, decoding fails
        import pydicom

        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def loaded(orthanc, tmp_path):  # noqa: F811
    """Orthanc with: a study of two chest DX films, a CT series in it, a skull DX study, a chest
    film whose pixels are cut short, and a chest film of an older date."""
    from pydicom.uid import generate_uid

    folder = tmp_path / "dicoms"
    folder.mkdir()
    uid = generate_uid()
    films = [study(folder, "a.dcm", seed=1, study_uid=uid), study(folder, "b.dcm", seed=2, study_uid=uid),
             study(folder, "ct.dcm", modality="CT", seed=3, study_uid=uid),
             study(folder, "skull.dcm", body_part="SKULL", seed=4, accession="ACC-PHI-0050"),
             study(folder, "broken.dcm", seed=5, accession="ACC-PHI-0051", patient=("PHIROE^RICHARD", "PHI-PID-0002"),
                   broken=True),
             study(folder, "old.dcm", seed=6, date="20250101", accession="ACC-PHI-0001")]
    for path in films:
        orthanc.upload(path)
    return orthanc


def test_dicomweb_ingest_fetches_chest_x_rays_once_without_phi(loaded, tmp_path):
    ws = Workspace(tmp_path / "ws").create()
    auth = (loaded.user, loaded.password)
    query = PacsQuery(since="20260101")
    summary = ingest_from_dicomweb(loaded.dicomweb, ws, query, IngestOptions(workers=1), auth=auth)
    assert summary.studies == 3  # the old study is outside the dates
    assert summary.fetched == 3 and summary.already == 0  # a, b and the broken one
    assert sorted(r.split(": ")[1] for r in summary.skipped_series) == ["body part SKULL, not CHEST",
                                                                         "modality CT, not CR or DX"]
    assert summary.report.ingested == 2 and len(summary.report.failed) == 1
    (failure,) = summary.report.failed
    kept = list(staging_dir(ws).glob("*.dcm"))
    assert len(kept) == 1 and failure.path == str(kept[0].relative_to(ws.root)), "the failed film is kept"
    records = read_manifest(ws.manifest_path)
    assert len(records) == 2 and {r.source for r in records} == {"dicomweb"}

    # No PHI downstream: manifest, report, file names.
    text = ws.manifest_path.read_text() + ws.report_path.read_text() + " ".join(p.name for p in ws.root.rglob("*"))
    for phi in PHI:
        assert phi not in text, phi

    again = ingest_from_dicomweb(loaded.dicomweb, ws, query, IngestOptions(workers=1), auth=auth)
    assert (again.fetched, again.already) == (0, 3)  # only what is new is fetched: nothing
    assert len(read_manifest(ws.manifest_path)) == 2

    only = ingest_from_dicomweb(loaded.dicomweb, Workspace(tmp_path / "ws2").create(),
                                PacsQuery(accession_from="ACC-PHI-0040", accession_to="ACC-PHI-0049"),
                                IngestOptions(workers=1), auth=auth)
    assert only.studies == 1 and only.fetched == 2  # the accession range picks the first study alone


def test_a_pacs_that_refuses_or_is_unreachable_is_reported(loaded, tmp_path):
    ws = Workspace(tmp_path / "ws").create()
    with pytest.raises(PacsError, match="refused the credentials"):
        ingest_from_dicomweb(loaded.dicomweb, ws, auth=(loaded.user, "wrong"))
    from tests.labelstudio_server import free_port

    with pytest.raises(PacsError, match="is unreachable"):
        ingest_from_dicomweb(f"http://127.0.0.1:{free_port()}/dicom-web", ws, auth=(loaded.user, loaded.password))
    assert not ws.manifest_path.exists() or not read_manifest(ws.manifest_path)  # nothing half-done


def _send(orthanc, listener_port: int, ae_title: str = "CXRKIT") -> tuple[int, str]:  # noqa: F811
    """Orthanc sends every study it holds to our listener (C-STORE), as a PACS forwarding does."""
    import requests

    orthanc.request("PUT", "/modalities/cxr", json={"AET": ae_title, "Host": "127.0.0.1", "Port": listener_port})
    studies = orthanc.request("GET", "/studies").json()
    resp = requests.post(f"{orthanc.url}/modalities/cxr/store", json={"Resources": studies, "Synchronous": True},
                         auth=(orthanc.user, orthanc.password), timeout=120)
    return resp.status_code, resp.text


def test_a_pacs_pushes_studies_to_the_listener_and_they_are_ingested(loaded, tmp_path):
    """Orthanc (calling AE title TESTPACS, on the allow-list) sends its studies by C-STORE: every
    instance is received and written; a batch ingests the chest X-rays without PHI and reports
    the CT, the skull film and the film whose pixels are cut short, each with its reason; those
    stay in the listener's folder: nothing received is lost."""
    from cxrkit.data.dicom_listener import Listener, staging_dir
    from tests.labelstudio_server import free_port
    from tests.orthanc_server import AET

    ws = Workspace(tmp_path / "ws").create()
    port = free_port()
    listener = Listener(ws, port=port, allowed=(AET,), options=IngestOptions(workers=1))
    listener.start()
    try:
        status, text = _send(loaded, port)
        report = listener.ingest_received()
    finally:
        listener.stop()
    assert status == 200 and listener.received == 6, (status, text, listener.received)
    records = read_manifest(ws.manifest_path)
    assert {r.source for r in records} == {"dicom-push"} and len(records) == 3  # a, b, old: the chest films
    reasons = sorted(f.reason for f in report.failed)
    assert [r.split()[0] for r in reasons] == ["body", "modality", "truncated"], reasons
    assert len(list(staging_dir(ws).glob("*.dcm"))) == 3, "the films ingest refused stay, with their reasons"
    text = ws.manifest_path.read_text() + ws.report_path.read_text() + " ".join(p.name for p in ws.root.rglob("*"))
    for phi in PHI:
        assert phi not in text, phi


def test_the_listener_refuses_a_sender_not_on_its_list(loaded, tmp_path):
    from cxrkit.data.dicom_listener import Listener, ListenerError, staging_dir
    from tests.labelstudio_server import free_port
    from tests.orthanc_server import AET

    ws = Workspace(tmp_path / "ws").create()
    with pytest.raises(ListenerError, match="no calling AE title is allowed"):
        Listener(ws, allowed=())
    port = free_port()
    listener = Listener(ws, port=port, allowed=("CR_ROOM_2",), options=IngestOptions(workers=1))
    listener.start()
    try:
        status, _ = _send(loaded, port)
    finally:
        listener.stop()
    assert status >= 400  # Orthanc hears the rejection
    assert listener.refused and set(listener.refused) == {AET} and listener.received == 0
    assert not list(staging_dir(ws).glob("*.dcm")) and listener.ingest_received() is None


def test_the_commands_a_radiology_it_team_types(loaded, tmp_path):
    """`cxr pacs ingest URL` with the credentials in the environment, and `cxr listen` running as
    its own process until SIGTERM, which ingests what arrived before it stops."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.labelstudio_server import free_port
    from tests.orthanc_server import AET

    env = {**os.environ, "CXR_PACS_USER": loaded.user, "CXR_PACS_PASSWORD": loaded.password}
    pulled = subprocess.run([sys.executable, "-m", "cxrkit.cli", "pacs", "ingest", loaded.dicomweb, "--since",
                             "20260101", "-w", str(tmp_path / "pulled")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert pulled.returncode == 1, pulled.stderr  # the cut-short film failed; the rest went in
    assert "PACS: 3 studies, 3 films fetched, 0 already here" in pulled.stderr
    assert "ingested 2, skipped 0" in pulled.stderr and "skipped series 1 of study" in pulled.stderr

    port = free_port()
    pushed = tmp_path / "pushed"
    listener = subprocess.Popen([sys.executable, "-m", "cxrkit.cli", "listen", "--allow", AET, "--port", str(port),
                                 "--batch-seconds", "3600", "-w", str(pushed)], env=env, stderr=subprocess.PIPE,
                                text=True)
    try:
        deadline = time.monotonic() + 60
        while not _accepts(port) and time.monotonic() < deadline:
            time.sleep(0.3)
        status, text = _send(loaded, port)
        assert status == 200, text
    finally:
        listener.send_signal(signal.SIGTERM)
        _, stderr = listener.communicate(timeout=300)
    assert listener.returncode == 0, stderr
    assert "ingested 3, skipped 0" in stderr and "stopped: 6 films received, 0 senders refused" in stderr
    assert len(read_manifest(Workspace(pushed).manifest_path)) == 3


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
