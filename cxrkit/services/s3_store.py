"""An S3-compatible object store for the native scale-out stack: the DVC remote (issue 19).

    info = start(folder, port)                  # moto's S3 server on 127.0.0.1
    ensure_bucket(info, "cxr-dvc")              # create the bucket when it is missing
    info.environment("cxr-dvc")                 # CXR_DVC_REMOTE_URL, CXR_DVC_ENDPOINT_URL, ...
    running(folder), stop(folder)

docker-compose runs MinIO; MinIO is neither in Debian nor on PyPI, so the native stack runs
moto's standalone server (`moto_server`, PyPI `moto[server]` 5.2.5), the one S3 server that
installs here from a registry and that DVC's own s3 remote was checked against (push and pull,
../shared/REFERENCES.md). It speaks S3's HTTP API: DVC reaches it exactly as it reaches MinIO
or AWS, with `s3://bucket` as the remote, the server as `endpointurl` and the key pair in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, signed with SigV4. It runs from its own venv
(`.venv-s3`, requirements-s3.lock, made by scripts/bootstrap.sh): its boto3 need not match the
botocore that DVC's s3fs pins.

What it is not, said plainly:
- It keeps objects in memory: a restart empties the store. Nothing is lost with it, because
  the remote is a copy: every pushed object is also in the workspace's DVC cache, and the next
  `dvc push` (every retrain ends with one) uploads what the remote lacks. A team that keeps its
  data versions for years points CXR_DVC_REMOTE_URL/CXR_DVC_ENDPOINT_URL at a real S3 or MinIO.
- It accepts any well-formed signature; it does not check the key pair. It is bound to
  127.0.0.1 for that reason, and the stack still passes the key pair from the environment
  (DVC_S3_ACCESS_KEY_ID, DVC_S3_SECRET_ACCESS_KEY, compose's names; cxrkit.services.stack) so that clients are configured
  as they will be against a store that checks.

One folder holds its log (`server.log`) and PID file (`server.json`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import requests

from cxrkit.core.checkout import CODE_ROOT
from cxrkit.services import process

DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


class S3StoreError(process.ServiceError):
    """The store is missing, cannot start, or refused a request; the message says why."""


@dataclass(frozen=True)
class S3Info:
    endpoint: str      # http://127.0.0.1:<port>
    access_key: str
    secret_key: str

    def environment(self, bucket: str) -> dict[str, str]:
        """What the workspace's DVC remote reads (cxrkit.pipeline.project_repo) and DVC's s3fs signs with."""
        return {"CXR_DVC_REMOTE_URL": f"s3://{bucket}", "CXR_DVC_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_S3": self.endpoint,  # for AWS tools beside DVC (compose sets it too)
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self):
        """A botocore S3 client for this store (botocore is DVC's own dependency)."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)


def server_bin() -> str:
    path = Path(os.environ.get("CXR_S3_SERVER_BIN") or CODE_ROOT / ".venv-s3" / "bin" / "moto_server")
    if not path.is_file():
        raise S3StoreError(f"the S3 server is not installed at {path}: run scripts/bootstrap.sh "
                           "(it makes .venv-s3 from requirements-s3.lock)")
    return str(path)


def pid_path(folder: Path) -> Path:
    return Path(folder) / "server.json"


def log_path(folder: Path) -> Path:
    return Path(folder) / "server.log"


def running(folder: Path) -> dict | None:
    return process.running(pid_path(folder))


def start(folder: str | os.PathLike, port: int, access_key: str, secret_key: str, host: str = DEFAULT_HOST,
          timeout: float = START_TIMEOUT_S) -> S3Info:
    """Start the folder's store on host:port, or find it running. The key pair is the clients'
    (there is no default: an empty one is refused, as MinIO refuses it)."""
    if not access_key or not secret_key:
        raise S3StoreError("no S3 key pair: set DVC_S3_ACCESS_KEY_ID and DVC_S3_SECRET_ACCESS_KEY (there is no default)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = S3Info(process.connect_url(host, port), access_key, secret_key)
    if running(folder) is not None:
        process.wait_until_ready(lambda: _ready(info), timeout, "the S3 store", log_path(folder),
                                 pid_file=pid_path(folder), error=S3StoreError)
        return info
    if process.port_taken(host, port):
        raise S3StoreError(f"port {port} on {host} is already in use by another program; choose another (CXR_S3_PORT)")
    # moto reads its own settings from the environment; nothing of ours (AWS keys included) goes to it.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), "LANG": "C.UTF-8"}
    process.launch([server_bin(), "-H", host, "-p", str(port)], env=env, cwd=folder, log=log_path(folder),
                   pid_file=pid_path(folder), address=(host, int(port), info.endpoint), ready=lambda: _ready(info),
                   timeout=timeout, what="the S3 store", error=S3StoreError)
    return info


def stop(folder: str | os.PathLike, timeout: float = 15.0) -> bool:
    """Stop the folder's store (its objects go with it: see the module's docstring). False when none ran."""
    return process.stop(pid_path(Path(folder)), timeout)


def ensure_bucket(info: S3Info, bucket: str) -> bool:
    """Create `bucket` unless it exists. True when it was created."""
    import botocore.exceptions

    s3 = info.client()
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise S3StoreError(f"the S3 store at {info.endpoint} refused HEAD {bucket}: {exc}") from exc
    except botocore.exceptions.EndpointConnectionError as exc:
        raise S3StoreError(f"the S3 store at {info.endpoint} is unreachable: {exc}") from exc
    s3.create_bucket(Bucket=bucket)
    return True


def object_keys(info: S3Info, bucket: str) -> list[str]:
    """Every key in `bucket` (paged)."""
    keys: list[str] = []
    for page in info.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def _ready(info: S3Info) -> bool:
    try:
        return requests.get(f"{info.endpoint}/moto-api/", timeout=3).status_code == 200
    except requests.RequestException:
        return False
