"""Where a workspace keeps its files, and its secrets.

A workspace is one folder (default `./workspace`, or $CXR_WORKSPACE) holding:

    .env                 secrets generated once (de-identification salt, ...) and the workspace's
                         settings (CXR_PARAMS: its params file); never committed
    .writer.lock         held by whoever writes data/ (ingest, a retrain round): one at a time
    data/images/         de-identified 8-bit PNGs, named by pseudonym
    data/manifest.jsonl  one record per image (cxrkit.core.manifest)
    reports/ingest_report.json  what the last ingest did, and every file it refused (with its path:
                         kept outside data/, which is versioned and shared)
"""
from __future__ import annotations

import fcntl
import logging
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cxrkit.core.atomic import write_atomic

log = logging.getLogger(__name__)
WRITER_LOCK = ".writer.lock"  # git-ignored in the workspace repository (cxrkit/pipeline/project_repo.py)


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> "Workspace":
        chosen = root or os.environ.get("CXR_WORKSPACE") or "workspace"
        return cls(Path(chosen).resolve())

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "manifest.jsonl"

    @property
    def report_path(self) -> Path:
        return self.root / "reports" / "ingest_report.json"

    @property
    def models_dir(self) -> Path:
        """The model registry (cxrkit.models.registry): versions/, current, promotions.jsonl."""
        return self.root / "models"

    @property
    def env_path(self) -> Path:
        return self.root / ".env"

    def create(self) -> "Workspace":
        self.images_dir.mkdir(parents=True, exist_ok=True)
        return self

    @contextmanager
    def writer_lock(self, what: str = "a writer"):
        """The workspace's one-writer lock: ingest, and the retrain's `dvc add data` / `dvc repro`,
        write `data/` and the workspace's git + DVC repository; one at a time. A kernel file lock:
        released the moment its holder dies, so a killed run never blocks the next one."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / WRITER_LOCK, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s waits for the workspace %s: another ingest or retrain writes it", what, self.root)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def secret(self, name: str) -> str:
        """$name from the environment, else from the workspace .env, else generated once and stored there."""
        return stored_secret(self.env_path, name, lambda: secrets.token_hex(32))[0]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file; blank lines and # comments ignored."""
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def stored_secret(path: Path, name: str, make) -> tuple[str, bool]:
    """$name from the environment, else from the .env file at `path`, else `make()`, stored there.
    Returns the value and whether it was generated just now.

    The file is created with mode 600 (never readable by others, not even for a moment), and two
    processes that need the secret for the first time at once agree on one value: the second
    waits for the first's lock and reads what it wrote (de-identification salts must never diverge).
    """
    if os.environ.get(name):
        return refuse_placeholder(name, os.environ[name]), False
    with _env_lock(path):
        stored = read_env_file(path)
        if stored.get(name):
            return stored[name], False
        value = make()
        # Mode 600 even for a file made by hand: it holds secrets now.
        _write_env(path, (path.read_text() if path.exists() else "").splitlines() + [f"{name}={value}"])
        return value, True


PLACEHOLDER_PREFIX = "change-me"  # every secret's value in .env.example starts so


class PlaceholderSecret(ValueError):
    """A secret still holds the .env.example placeholder."""


def refuse_placeholder(name: str, value: str) -> str:
    """`value`, unless it is .env.example's placeholder: copied as it is, it satisfies compose's
    "required" checks and would make a known password. Refused with a message that says what to do."""
    if value.strip().lower().startswith(PLACEHOLDER_PREFIX):
        raise PlaceholderSecret(f"{name} is still the .env.example placeholder ({value!r}): set a real secret, "
                                "e.g. python3 -c \"import secrets; print(secrets.token_urlsafe(24))\"")
    return value


def set_env_setting(path: Path, key: str, value: str) -> None:
    """Set KEY=value in a .env file (replacing an earlier line of that key), atomically, mode 600."""
    with _env_lock(path):
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.strip().partition("=")[0].strip() != key]
        if f"{key}={value}" in lines and len(kept) == len(lines) - 1:
            return  # already so
        _write_env(path, kept + [f"{key}={value}"])


def _write_env(path: Path, lines: list[str]) -> None:
    """Replace a .env file with `lines`, atomically and readable by its owner only. Under _env_lock."""
    write_atomic(path, "".join(line + "\n" for line in lines), mode=0o600)


@contextmanager
def _env_lock(path: Path):
    """One writer of a .env file at a time (a lock file beside it: the .env itself is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield

