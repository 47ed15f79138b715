"""How long the Label Studio client waits, against a server that answers some paths and hangs on
others (a local HTTP server on a free port): a slow export or prune of a 100,000-task project
cannot be caused here in test time, a hung answer can.

- every request gives up after the client's timeout with a LabelStudioError saying so;
- the two requests whose work grows with the project (the export, deleting a model version) wait
  longer in proportion to the tasks or predictions they cover.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cxrkit.labelstudio import client as client_module
from cxrkit.labelstudio.client import LabelStudio, LabelStudioError

TASKS = 40  # what the server says the project holds
PREDICTIONS = 30  # and the model version to delete


class HangingLabelStudio(BaseHTTPRequestHandler):
    """Answers the project's details and its model versions at once; never answers anything else
    (the connection is held open until the test ends)."""

    release = threading.Event()

    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") == "/api/projects/1":
            return self._answer({"id": 1, "task_number": TASKS})
        if self.path.rstrip("/") == "/api/projects/1/model-versions":
            return self._answer({"v1@old": PREDICTIONS})
        self.release.wait(30)

    def do_DELETE(self):  # noqa: N802
        self.release.wait(30)

    def log_message(self, *args):
        pass


@pytest.fixture
def hanging():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HangingLabelStudio)
    server.daemon_threads = True
    HangingLabelStudio.release.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    HangingLabelStudio.release.set()
    server.shutdown()
    server.server_close()


def waited(call) -> tuple[float, str]:
    start = time.monotonic()
    with pytest.raises(LabelStudioError) as err:
        call()
    return time.monotonic() - start, str(err.value)


def test_a_hung_server_is_reported_after_the_clients_timeout(hanging):
    ls = LabelStudio(hanging, "token", timeout=0.3)
    seconds, message = waited(lambda: ls.request("GET", "/api/tasks", params={"project": 1}))
    assert 0.25 < seconds < 5
    assert "GET /api/tasks" in message and "did not answer within 0.3 s" in message and hanging in message


def test_the_export_and_a_prune_wait_in_proportion_to_the_project(hanging, monkeypatch):
    monkeypatch.setattr(client_module, "EXPORT_SECONDS_PER_TASK", 0.02)  # 40 tasks: 0.8 s more
    monkeypatch.setattr(client_module, "DELETE_SECONDS_PER_PREDICTION", 0.03)  # 30 predictions: 0.9 s more
    ls = LabelStudio(hanging, "token", timeout=0.3)
    seconds, message = waited(lambda: ls.export_snapshot(1))
    assert 0.3 + 0.8 - 0.05 < seconds < 6 and "/api/projects/1/export" in message
    seconds, message = waited(lambda: ls.delete_model_version(1, "v1@old"))  # its size asked of the server
    assert 0.3 + 0.9 - 0.05 < seconds < 6 and "DELETE /api/projects/1/model-versions" in message
    seconds, _ = waited(lambda: ls.delete_model_version(1, "v1@old", predictions=0))
    assert seconds < 0.3 + 0.6  # no predictions to delete: the ordinary timeout
