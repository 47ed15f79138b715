"""A real Orthanc PACS for the tests (Debian's `orthanc` and `orthanc-dicomweb`; .ci/run installs
them): started in a temporary folder on free HTTP and DICOM ports, loopback only, one user with
a password, the DICOMweb plugin on /dicom-web/. Stopped when the fixture ends."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.labelstudio_server import free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "TESTPACS"


@dataclass
class Orthanc:
    url: str                       # http://127.0.0.1:<port>
    dicom_port: int
    user: str
    password: str = field(repr=False)
    log: Path | None = None

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        resp = requests.request(method, self.url + path, auth=(self.user, self.password), timeout=60, **kwargs)
        resp.raise_for_status()
        return resp

    def upload(self, dicom: Path) -> dict:
        return self.request("POST", "/instances", data=dicom.read_bytes()).json()


@pytest.fixture
def orthanc(tmp_path):
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(binary).is_file() or not PLUGIN.is_file():
        missing = "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: .ci/run must install it")
        pytest.skip(missing)
    folder = tmp_path / "orthanc"
    folder.mkdir()
    http_port, dicom_port = free_port(), free_port()
    password = secrets.token_urlsafe(16)
    config = {
        "Name": "cxr-test-pacs", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": AET,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {"pacs": password},
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {}, "DicomAlwaysAllowStore": True, "StableAge": 1,
    }
    (folder / "config.json").write_text(json.dumps(config))
    log = folder / "orthanc.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([binary, str(folder / "config.json")], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=folder, start_new_session=True)
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, "pacs", password, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(server.url + "/system", auth=("pacs", password), timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Orthanc did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    yield server
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
