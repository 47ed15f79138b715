"""Postgres for the scale-out stack: the database of Label Studio and of the Prefect server (issue 19).

    info = start(folder, password, port=None)       # initdb on the first start, then the server
    ensure_database(info, "prefect")                # CREATE DATABASE when it is missing
    info.url("prefect", "postgresql+asyncpg")       # what Prefect's PREFECT_SERVER_DATABASE_CONNECTION_URL takes
    running(folder), stop(folder)

Debian's `postgresql` package (`apt-get install postgresql`; .ci/run installs it when missing):
its binaries are found in /usr/lib/postgresql/<newest version>/bin, else on PATH. One folder
holds everything of one server:

    folder/data/          the cluster (initdb), owned by the server's OS user, mode 0700
    folder/socket/        its Unix socket (not /var/run/postgresql, which needs root to create)
    folder/server.log     the server's output
    folder/server.json    its PID file (cxrkit.services.process)

Settings, each with the reason:
- Bound to 127.0.0.1 (`listen_addresses`) unless `host` says otherwise: the databases hold every
  annotation. The port is the caller's (the stack reads $CXR_POSTGRES_PORT; tests take a free one).
- One role, the cluster's superuser (`cxr` unless the caller names another; the stack reads
  $POSTGRES_USER, as compose does), with the password the caller passes (the stack reads
  $POSTGRES_PASSWORD; there is no default), and scram-sha-256 for every connection, TCP and
  socket alike: nothing connects without it. The password reaches initdb through a file made
  0600 and removed at once, and psql through PGPASSWORD, never a command line.
- Postgres refuses to run as root. Started by root, the server runs as the `postgres` OS user
  that Debian's package creates: `data/` is made its own, and the folder must be one it can reach
  (every parent searchable by it); a folder it cannot reach is refused with the parent named.
- Stopped with SIGINT, Postgres' "fast" shutdown: open sessions (the Prefect server keeps some)
  are ended and every committed transaction is on disk, so the next start needs no recovery.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cxrkit.services import process

DEFAULT_HOST = "127.0.0.1"
ROLE = "cxr"
SERVER_USER = "postgres"  # the OS user Debian's package creates; the server runs as it when we are root
START_TIMEOUT_S = 60.0


class PostgresError(process.ServiceError):
    """Postgres is missing, cannot start, or refused a command; the message says which and why."""


@dataclass(frozen=True)
class PostgresInfo:
    host: str
    port: int
    password: str
    role: str = ROLE

    def url(self, database: str, driver: str = "postgresql") -> str:
        """A connection URL for `database` (e.g. driver postgresql+asyncpg for Prefect)."""
        return f"{driver}://{quote(self.role, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"

    def environment(self, database: str) -> dict[str, str]:
        """Label Studio's settings for this server (its core/settings/base.py reads POSTGRE_*)."""
        return {"DJANGO_DB": "default", "POSTGRE_NAME": database, "POSTGRE_USER": self.role,
                "POSTGRE_PASSWORD": self.password, "POSTGRE_HOST": self.host, "POSTGRE_PORT": str(self.port)}


def binary(name: str) -> str:
    """The path of a Postgres program: the newest /usr/lib/postgresql/<version>/bin first (Debian
    keeps the server's programs there, off PATH), else PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name))
    for folder in reversed(versions):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise PostgresError(f"{name} not found: install Postgres (Debian: apt-get install postgresql)")
    return found


def pid_path(folder: Path) -> Path:
    return Path(folder) / "server.json"


def log_path(folder: Path) -> Path:
    return Path(folder) / "server.log"


def running(folder: Path) -> dict | None:
    """The PID file's entry when the folder's server runs, else None."""
    return process.running(pid_path(folder))


def start(folder: str | os.PathLike, password: str, port: int, host: str = DEFAULT_HOST,
          timeout: float = START_TIMEOUT_S, role: str = ROLE) -> PostgresInfo:
    """Start the folder's server (creating its cluster, with `role` its superuser, on the first
    start), or find it running."""
    if not password:
        raise PostgresError("no Postgres password: set POSTGRES_PASSWORD (there is no default)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not role.replace("_", "").isalnum():
        raise PostgresError(f"Postgres role {role!r}: letters, digits and _ only")
    info = PostgresInfo("127.0.0.1" if host in ("0.0.0.0", "") else host, int(port), password, role)
    if running(folder) is not None:
        process.wait_until_ready(lambda: _ready(info), timeout, "Postgres", log_path(folder),
                                 pid_file=pid_path(folder), error=PostgresError)
        return info
    if process.port_taken(host, port):
        raise PostgresError(f"port {port} on {host} is already in use by another program; choose another "
                            "(CXR_POSTGRES_PORT)")
    user = _server_user(folder)
    data, sockets = folder / "data", folder / "socket"
    if not (data / "PG_VERSION").is_file():
        _initdb(data, password, user, role)
    sockets.mkdir(exist_ok=True)
    _give(sockets, user)
    command = [binary("postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
               "-c", f"listen_addresses={host}"]
    process.launch(command, env=_environment(), cwd=folder, log=log_path(folder), pid_file=pid_path(folder),
                   address=(host, int(port), f"postgresql://{info.host}:{port}"), ready=lambda: _ready(info),
                   timeout=timeout, what="Postgres", error=PostgresError, user=user)
    return info


def stop(folder: str | os.PathLike, timeout: float = 30.0) -> bool:
    """Stop the folder's server (fast shutdown). False when none ran."""
    return process.stop(pid_path(Path(folder)), timeout, sig=signal.SIGINT)


def ensure_database(info: PostgresInfo, name: str) -> bool:
    """Create database `name` (owned by the role) unless it exists. True when it was created."""
    if not name.replace("_", "").isalnum():
        raise PostgresError(f"database name {name!r}: letters, digits and _ only")
    exists = sql(info, f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() == "1"
    if not exists:
        sql(info, f'CREATE DATABASE "{name}" OWNER "{info.role}"')
    return not exists


def sql(info: PostgresInfo, statement: str, database: str = "postgres") -> str:
    """Run one statement with psql over TCP; its unaligned output. A refusal raises PostgresError."""
    result = subprocess.run(
        [binary("psql"), "-h", info.host, "-p", str(info.port), "-U", info.role, "-d", database, "-v", "ON_ERROR_STOP=1",
         "-tAc", statement],
        env={**_environment(), "PGPASSWORD": info.password, "PGCONNECT_TIMEOUT": "10"},
        capture_output=True, text=True)
    if result.returncode != 0:
        raise PostgresError(f"Postgres at {info.host}:{info.port} refused {statement.split()[0]}: "
                            f"{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


# --- the cluster and the OS user ------------------------------------------------------------


def _initdb(data: Path, password: str, user: str | None, role: str) -> None:
    data.mkdir(mode=0o700, exist_ok=True)
    _give(data, user)
    fd, pwfile = tempfile.mkstemp(prefix=".pw-", dir=data.parent)  # 0600, made the server user's below
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        _give(Path(pwfile), user)
        result = subprocess.run(
            [binary("initdb"), "-D", str(data), "-U", role, f"--pwfile={pwfile}", "--auth=scram-sha-256",
             "--encoding=UTF8", "--locale=C.UTF-8"],
            env=_environment(), user=user, capture_output=True, text=True)
    finally:
        Path(pwfile).unlink(missing_ok=True)
    if result.returncode != 0:
        raise PostgresError(f"initdb {data} failed: {result.stderr.strip()[-1500:]}")


def _server_user(folder: Path) -> str | None:
    """None when we are not root (the server runs as us); else SERVER_USER, once it can reach the folder."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresError(f"Postgres refuses to run as root and there is no {SERVER_USER!r} user to run it as: "
                            "install Debian's postgresql package, or start the stack as another user") from None
    for parent in folder.resolve().parents:
        st = parent.stat()
        searchable = st.st_mode & 0o001 or (st.st_uid == pw.pw_uid and st.st_mode & 0o100) \
            or (st.st_gid == pw.pw_gid and st.st_mode & 0o010)
        if not searchable:
            raise PostgresError(f"the server runs as the {SERVER_USER} user, which cannot reach {folder}: {parent} is "
                                f"not searchable by it (chmod o+x {parent}, or keep the stack elsewhere)")
    os.chown(folder, pw.pw_uid, pw.pw_gid)
    return SERVER_USER


def _give(path: Path, user: str | None) -> None:
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _ready(info: PostgresInfo) -> bool:
    """Accepting connections (pg_isready: no login needed)."""
    try:
        with socket.create_connection((info.host, info.port), timeout=2):
            pass
    except OSError:
        return False
    result = subprocess.run([binary("pg_isready"), "-h", info.host, "-p", str(info.port), "-t", "2"],
                            env=_environment(), capture_output=True)
    return result.returncode == 0


def _environment() -> dict[str, str]:
    """The process environment without a PG* setting that would redirect a client or the server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _version(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in name.split("."))
