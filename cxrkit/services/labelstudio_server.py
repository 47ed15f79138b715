"""Start and stop the workspace's Label Studio server.

Label Studio runs from its own virtual environment (`.venv-labelstudio`, see the README), as a
child process detached from the caller so that `cxr labelstudio start` can return:

    workspace/labelstudio/               LABEL_STUDIO_BASE_DATA_DIR: SQLite database, media, secret key
                                         (the database copied from the install's migrated empty one
                                         before the first start: labelstudio_database)
    workspace/labelstudio/server.log     the server's stdout and stderr
    workspace/labelstudio/server.json    PID file: pid, process start time, host, port, url

Settings, each with the reason:

- Bound to 127.0.0.1 unless $CXR_LS_HOST says otherwise. Label Studio serves the workspace's
  images and an admin login; on 0.0.0.0 anyone who can reach the port can try that login and,
  once in, read every image. Open it only on a trusted network, behind TLS.
- Port $CXR_LS_PORT (default 8080). Label Studio would silently move to the next free port when
  its port is taken; we refuse instead, so the URL we print is the server we started.
- The admin account: $LABEL_STUDIO_USERNAME / $LABEL_STUDIO_PASSWORD / $LABEL_STUDIO_USER_TOKEN,
  else generated once into the workspace .env (mode 600, never committed) and printed once.
  The user token is the legacy API token (`Authorization: Token ...`), which the client and the
  ML backend use; the organisation is created with legacy tokens enabled.
- Offline: no PyPI version check (LATEST_VERSION_CHECK), no usage analytics (COLLECT_ANALYTICS),
  no Sentry error reports from server or browser (SENTRY_DSN, FRONTEND_SENTRY_DSN set empty), no
  resource downloads on export (CONVERTER_DOWNLOAD_RESOURCES). Each is set with the
  LABEL_STUDIO_ prefix, which Label Studio reads before the bare name, so a stray environment
  variable cannot turn it back on.
- Local files served from the workspace data folder only (LOCAL_FILES_DOCUMENT_ROOT); a project
  reads them through a Local Files storage on data/images (see client.ensure_project).
- Sign-up without an invitation link is off: the admin account is the only way in.
- Bulk prediction import that scales (SCALE_ENV): Label Studio 1.23's default import recounts
  the annotations and predictions of every task in the project after each request, so a queue
  published in requests of 5,000 cost time quadratic in the project (at 100,000 tasks the 13th
  request took 87 s, the first 16 s). Its own feature flag for the batched import recounts only
  the tasks each request touched.
- SQLite waits for a busy database (SITE_DIR): Label Studio deletes a superseded queue of
  predictions in one transaction (20 s for 5,000, 11 minutes for 100,000), and with Python's
  default 5 s busy timeout a radiologist's submission in that time failed with HTTP 500 and was
  not saved. The server's `sitecustomize` (labelstudio_site/) sets SQLite's busy timeout to
  $CXR_LS_SQLITE_BUSY_SECONDS (default 900 s): the submission waits and is saved.
"""
from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from cxrkit.core.checkout import CODE_ROOT
from cxrkit.core.workspace import Workspace, stored_secret
from cxrkit.services import labelstudio_database, process

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_USERNAME = "admin@cxrkit.local"
START_TIMEOUT_S = 300.0  # an install's first start migrates: about 25 s idle, 3+ min on two busy cores

# Phone-home and exposure settings, passed to the server process (see the module docstring).
OFFLINE_ENV = {
    "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    "LABEL_STUDIO_SENTRY_DSN": "",
    "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    "LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES": "false",
    "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
}

# Label Studio's feature flags are read from the environment (LABEL_STUDIO_ + the flag's name
# first). This one makes POST /api/projects/<id>/import/predictions recount only the tasks it
# touched (data_import.api.ImportPredictionsAPI._create_memory_efficient), not the whole project.
SCALE_ENV = {"LABEL_STUDIO_fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short": "true"}

# What we change in the server's process (its sitecustomize.py says what and why): this folder
# holds that one module, so on the server's PYTHONPATH it adds nothing else of this checkout.
SITE_DIR = Path(__file__).resolve().parent / "labelstudio_site"

# SSRF. The ML backend (`cxr backend start`) listens on 127.0.0.1, and Label Studio refuses ML
# backends and webhooks on loopback (its default banned subnets). SSRF protection stays on; the
# default list is replaced by the same list without 127.0.0.0/8 and ::1/128, so private networks,
# link-local (cloud metadata) and the other reserved ranges stay banned. What this opens: the
# admin (the only account; sign-up is off) can point an ML backend, webhook or storage at a
# service on this machine. docker-compose.yml makes the mirror-image choice for its network.
LOOPBACK_ML_BACKEND_ENV = {
    "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "true",
    "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
    "LABEL_STUDIO_USER_ADDITIONAL_BANNED_SUBNETS": ",".join([
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
        "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "233.252.0.0/24", "240.0.0.0/4", "255.255.255.255/32", "::/128",
        "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:0000::/32",
        "2001:20::/28", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
    ]),  # fmt: skip
}


class LabelStudioServerError(process.ServiceError):
    """The server could not be started, or is not the one this workspace started."""


@dataclass(frozen=True)
class Credentials:
    username: str  # the admin's e-mail: the web login
    password: str = field(repr=False)
    token: str = field(repr=False)  # legacy API token: `Authorization: Token <token>`


@dataclass(frozen=True)
class ServerInfo:
    url: str
    host: str
    port: int
    pid: int
    log_path: Path
    credentials: Credentials
    reused: bool  # True when start() found this workspace's server already running


def data_dir(ws: Workspace) -> Path:
    return ws.root / "labelstudio"


def log_path(ws: Workspace) -> Path:
    return data_dir(ws) / "server.log"


def pid_path(ws: Workspace) -> Path:
    return data_dir(ws) / "server.json"


def label_studio_bin() -> Path:
    path = Path(os.environ.get("CXR_LABEL_STUDIO_BIN") or CODE_ROOT / ".venv-labelstudio" / "bin" / "label-studio")
    if not path.exists():
        raise LabelStudioServerError(
            f"Label Studio not found at {path}: run scripts/bootstrap.sh, or set CXR_LABEL_STUDIO_BIN"
        )
    return path


def credentials(ws: Workspace) -> tuple[Credentials, bool]:
    """The admin login from the environment or the workspace .env; generated there when missing.

    Returns the credentials and whether any part was generated just now.
    """
    username = os.environ.get("LABEL_STUDIO_USERNAME") or DEFAULT_USERNAME
    password, new_password = stored_secret(ws.env_path, "LABEL_STUDIO_PASSWORD", lambda: secrets.token_urlsafe(18))
    # Label Studio keeps the token in Django REST framework's Token table: 40 characters at most.
    token, new_token = stored_secret(ws.env_path, "LABEL_STUDIO_USER_TOKEN", lambda: secrets.token_hex(20))
    return Credentials(username, password, token), new_password or new_token


def start(ws: Workspace, port: int | None = None, timeout: float = START_TIMEOUT_S) -> ServerInfo:
    """Start Label Studio for the workspace, or return the one already running for it."""
    creds, generated = credentials(ws)
    running = process.running(pid_path(ws))
    if running is not None:
        process.wait_until_ready(lambda: _healthy(running["url"]), timeout, "Label Studio", log_path(ws),
                                 pid_file=pid_path(ws), error=LabelStudioServerError)
        return _info(ws, running, creds, reused=True)

    host = os.environ.get("CXR_LS_HOST") or DEFAULT_HOST
    port = int(port or os.environ.get("CXR_LS_PORT") or DEFAULT_PORT)
    if process.port_taken(host, port):
        raise LabelStudioServerError(
            f"port {port} on {host} is already in use by another program (not this workspace's Label Studio); "
            "stop it or choose another port with CXR_LS_PORT"
        )

    binary = label_studio_bin()
    if not (SITE_DIR / "sitecustomize.py").is_file():
        raise LabelStudioServerError(f"{SITE_DIR / 'sitecustomize.py'} is missing: run from a checkout of cxrkit, "
                                     "not a wheel (Label Studio would fail radiologists' submissions while it prunes)")
    data_dir(ws).mkdir(parents=True, exist_ok=True)
    ws.data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The server runs in its own venv: a PYTHONPATH meant for ours would mix the two, so it holds
    # only the folder of our sitecustomize.
    env["PYTHONPATH"] = str(SITE_DIR)
    env.update(OFFLINE_ENV)
    env.update(LOOPBACK_ML_BACKEND_ENV)
    env.update(SCALE_ENV)
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir(ws)),
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(ws.data_dir),
        }
    )
    # A new workspace starts from the install's migrated empty database (labelstudio_database), not
    # from its migrations: about 20 s less on its first start.
    labelstudio_database.seed_database(data_dir(ws), binary, env, timeout)
    env.update(
        {
            "LABEL_STUDIO_USERNAME": creds.username,
            "LABEL_STUDIO_PASSWORD": creds.password,
            "LABEL_STUDIO_USER_TOKEN": creds.token,
        }
    )
    command = [
        str(binary), "start", "--no-browser", "--enable-legacy-api-token",
        "--internal-host", host, "--port", str(port),
    ]  # fmt: skip
    if generated:
        print(f"Label Studio login (generated once, kept in {ws.env_path}): {creds.username} / {creds.password}",
              file=sys.stderr)
    url = process.connect_url(host, port)
    running = process.launch(command, env=env, cwd=data_dir(ws), log=log_path(ws), pid_file=pid_path(ws),
                             address=(host, port, url), ready=lambda: _healthy(url), timeout=timeout,
                             what="Label Studio", error=LabelStudioServerError)
    return _info(ws, running, creds, reused=False)


def stop(ws: Workspace, timeout: float = 15.0) -> bool:
    """Stop the server this workspace started (SIGTERM, then SIGKILL). False when none was running."""
    return process.stop(pid_path(ws), timeout)


def status(ws: Workspace) -> ServerInfo | None:
    """The workspace's server when it runs and answers /health, else None."""
    running = process.running(pid_path(ws))
    if running is None or not _healthy(running["url"]):
        return None
    return _info(ws, running, credentials(ws)[0], reused=True)


def _info(ws: Workspace, running: dict, creds: Credentials, reused: bool) -> ServerInfo:
    return ServerInfo(
        url=running["url"],
        host=running["host"],
        port=running["port"],
        pid=running["pid"],
        log_path=log_path(ws),
        credentials=creds,
        reused=reused,
    )


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False
