"""The scale-out stack on one machine without Docker: docker-compose.yml's services as native
processes (issue 19). `cxr stack up | down | status | env` (cxrkit/cli/stack.py).

    compose service   here                                              state
    postgres          Debian's Postgres (cxrkit.services.postgres)       <ws>/stack/postgres
    minio             moto's S3 server (cxrkit.services.s3_store)        <ws>/stack/s3
    prefect-server    `prefect server start` on Postgres, no runner      <ws>/prefect
    prefect-worker    prefect.yaml deployed on a process pool, workers   <ws>/stack/<worker name>
    label-studio      Label Studio on Postgres                           <ws>/labelstudio
    ml-backend        gunicorn serving ml_backend (its webhook starts    <ws>/backend
                      the retrain deployment, which the worker runs)

Settings come from the environment, under compose's names where compose has one, else from
the workspace's `.env` (created 0600; a secret missing from both is generated there once):
    POSTGRES_USER (cxr), POSTGRES_PASSWORD    Postgres' role and password (databases
                                              labelstudio and prefect)
    DVC_S3_ACCESS_KEY_ID, DVC_S3_SECRET_ACCESS_KEY   the DVC remote's key pair
    MINIO_BUCKET (cxr-dvc)                    the DVC remote's bucket
    CXR_POSTGRES_PORT (5432), CXR_S3_PORT (9000), CXR_PREFECT_PORT (4200), CXR_LS_PORT (8080),
    CXR_BACKEND_PORT (9090)                   every server on 127.0.0.1
    CXR_RETRAIN_EVERY, CXR_BACKEND_USER, CXR_BACKEND_PASSWORD, LABEL_STUDIO_*   as everywhere

What every client of the stack needs (`cxr stack env` prints it: PREFECT_API_URL, the DVC
remote and its key pair, Label Studio's database) is `client_environment(ws)`; the worker and
the backend are started with it, so a flow run and a webhook reach the same servers.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxrkit.core.workspace import Workspace
from cxrkit.services import (
    backend,
    labelstudio_server,
    postgres,
    prefect_server,
    prefect_worker,
    s3_store,
)

DATABASES = ("labelstudio", "prefect")
WORKER_NAME = "worker-1"


@dataclass(frozen=True)
class StackSettings:
    postgres_role: str
    postgres_password: str
    postgres_port: int
    s3_access_key: str
    s3_secret_key: str
    s3_port: int
    bucket: str

    def postgres_info(self) -> postgres.PostgresInfo:
        return postgres.PostgresInfo(postgres.DEFAULT_HOST, self.postgres_port, self.postgres_password,
                                     self.postgres_role)

    def s3_info(self) -> s3_store.S3Info:
        return s3_store.S3Info(f"http://{s3_store.DEFAULT_HOST}:{self.s3_port}", self.s3_access_key,
                               self.s3_secret_key)


def stack_dir(ws: Workspace) -> Path:
    return ws.root / "stack"


def settings(ws: Workspace) -> StackSettings:
    """The stack's ports and secrets: the environment's, else the workspace .env's (generated once)."""
    return StackSettings(
        postgres_role=os.environ.get("POSTGRES_USER") or postgres.ROLE,
        postgres_password=ws.secret("POSTGRES_PASSWORD"),
        postgres_port=int(os.environ.get("CXR_POSTGRES_PORT") or 5432),
        s3_access_key=ws.secret("DVC_S3_ACCESS_KEY_ID"),
        s3_secret_key=ws.secret("DVC_S3_SECRET_ACCESS_KEY"),
        s3_port=int(os.environ.get("CXR_S3_PORT") or 9000),
        bucket=os.environ.get("MINIO_BUCKET") or "cxr-dvc",
    )


def up(ws: Workspace, say=print) -> dict[str, str]:
    """Start every service that is not running, in compose's dependency order; returns the
    client environment. A service that fails raises its error; those already up stay up."""
    ws.create()
    cfg = settings(ws)
    folder = stack_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)

    pg = postgres.start(folder / "postgres", cfg.postgres_password, cfg.postgres_port, role=cfg.postgres_role)
    for name in DATABASES:
        postgres.ensure_database(pg, name)
    say(f"postgres: {pg.host}:{pg.port} (databases {', '.join(DATABASES)})")

    s3 = s3_store.start(folder / "s3", cfg.s3_port, cfg.s3_access_key, cfg.s3_secret_key)
    s3_store.ensure_bucket(s3, cfg.bucket)
    say(f"s3 store: {s3.endpoint} (bucket {cfg.bucket})")

    with _environ(prefect_server_environment(pg)):
        prefect = prefect_server.start(ws, with_runner=False)
    say(f"prefect server: {prefect.url}")

    with _environ(pg.environment("labelstudio")):
        ls = labelstudio_server.start(ws)
    say(f"label studio: {ls.url}")

    env = client_environment(ws)
    with _environ(env):
        prefect_worker.deploy(prefect.api_url)
        served = backend.start(ws)
    say(f"ml backend: {served.url}")
    start_worker(ws, WORKER_NAME)
    say(f"prefect worker: {WORKER_NAME} on pool {prefect_worker.POOL}")
    return env


def start_worker(ws: Workspace, name: str, pool: str = prefect_worker.POOL) -> dict:
    """Start a Prefect worker `name` on `pool` (its log and PID file in <ws>/stack/<name>), with the
    settings compose gives its prefect-worker; another name is another worker beside it."""
    if pool not in (prefect_worker.POOL, prefect_worker.GPU_POOL):
        raise prefect_worker.PrefectWorkerError(f"pool {pool!r}: the stack's pools are {prefect_worker.POOL} and "
                                                f"{prefect_worker.GPU_POOL}")
    if not name.replace("-", "").replace("_", "").isalnum() or name in ("postgres", "s3"):
        raise prefect_worker.PrefectWorkerError(f"worker name {name!r}: letters, digits, - and _ (not postgres or s3)")
    prefect, ls, served = prefect_server.status(ws), labelstudio_server.status(ws), backend.status(ws)
    if prefect is None or ls is None or served is None:
        raise prefect_worker.PrefectWorkerError("the stack is not up (Prefect server, Label Studio and the ML "
                                                "backend must run): cxr stack up")
    env = worker_environment(ws, prefect.api_url, ls.url, ls.credentials.token, served.url)
    with _environ(env):
        return prefect_worker.start(stack_dir(ws) / name, prefect.api_url, ws.root, name=name, pool=pool)


def prefect_server_environment(pg: postgres.PostgresInfo) -> dict[str, str]:
    """The Prefect server's database: Postgres (compose's prefect-server sets the same variable)."""
    return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": pg.url("prefect", "postgresql+asyncpg")}


def worker_environment(ws: Workspace, prefect_api: str, ls_url: str, ls_token: str, backend_url: str) -> dict[str, str]:
    """What a worker's flow runs need beyond the environment passed through (prefect_worker adds
    CXR_WORKSPACE and CXR_CODE_DIR): the Prefect API, Label Studio, the backend to tell of a
    promoted model, the DVC remote and its key pair. compose's prefect-worker sets the same
    variables (tests/test_compose.py)."""
    cfg = settings(ws)
    user, password = backend.login(ws)
    return {"PREFECT_API_URL": prefect_api, "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": ls_token,
            "CXR_BACKEND_URL": backend_url, "CXR_BACKEND_USER": user, "CXR_BACKEND_PASSWORD": password,
            **cfg.s3_info().environment(cfg.bucket)}


def down(ws: Workspace, say=print) -> None:
    """Stop every service, the reverse of `up`."""
    folder = stack_dir(ws)
    workers = _worker_folders(ws)
    for name, stop in (("prefect workers", lambda: any([prefect_worker.stop(w) for w in workers])),
                       ("ml backend", lambda: backend.stop(ws)),
                       ("label studio", lambda: labelstudio_server.stop(ws)),
                       ("prefect server", lambda: prefect_server.stop(ws)),
                       ("s3 store", lambda: s3_store.stop(folder / "s3")),
                       ("postgres", lambda: postgres.stop(folder / "postgres"))):
        say(f"{name}: {'stopped' if stop() else 'was not running'}")


def status(ws: Workspace) -> dict[str, str | None]:
    """Each service's address when it runs, else None."""
    folder = stack_dir(ws)
    prefect = prefect_server.status(ws)
    ls = labelstudio_server.status(ws)
    served = backend.status(ws)
    pg, s3 = postgres.running(folder / "postgres"), s3_store.running(folder / "s3")
    workers = [w.name for w in _worker_folders(ws) if prefect_worker.running(w)]
    return {"postgres": pg and pg["url"], "s3 store": s3 and s3["url"], "prefect server": prefect and prefect.url,
            "label studio": ls and ls.url, "ml backend": served and served.url,
            "prefect workers": ", ".join(workers) or None}


def client_environment(ws: Workspace) -> dict[str, str]:
    """What a process that uses the stack needs in its environment: the Prefect API, the DVC
    remote on the S3 store with its key pair, Label Studio's database (so a `cxr` command that
    starts Label Studio again starts it on Postgres)."""
    cfg = settings(ws)
    prefect = prefect_server.status(ws)
    env = {**cfg.postgres_info().environment("labelstudio"), **cfg.s3_info().environment(cfg.bucket)}
    if prefect is not None:
        env["PREFECT_API_URL"] = prefect.api_url
    return env


def _worker_folders(ws: Workspace) -> list[Path]:
    """The folders of the workers `up` and `start_worker` made (each holds a PID file)."""
    return sorted(p.parent for p in stack_dir(ws).glob("*/worker.json"))


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in os.environ for the block (the services read their settings there)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
