"""Detached servers the workbench starts (Label Studio, the ML backend, Prefect's server and
runner): start one, wait until it is ready, find it again, stop it.

Each server has a PID file: one JSON object, pid, the process's start time, host, port, url. The
start time is what tells our process from an unrelated one that got the same PID after ours
died; it is read in a form that a change of the wall clock does not move (`started`). Its output
is appended to a log; a start that fails says why with the log's last lines.
"""
from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import psutil


class ServiceError(RuntimeError):
    """A server that cannot start, or did not become ready; the message carries its log's tail."""


def launch(command: list[str], *, env: dict, cwd: Path, log: Path, pid_file: Path, address: tuple[str, int, str],
           ready: Callable[[], object], timeout: float, what: str, error: type[Exception] = ServiceError,
           user: str | None = None) -> dict:
    """Start `command` detached (its output appended to `log`), record its PID file, wait until
    `ready()` is truthy; on failure stop it and raise `error` with the log's tail. Returns the
    PID file's entry. `address`: (host, port, url) as the PID file records them. `user`: the OS
    user to run it as (Postgres, which refuses root)."""
    with open(log, "a") as fh:
        fh.write(f"\n--- cxr: {what} at {address[2]}, {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        offset = fh.tell()
        # A new session: the server outlives the command that started it and ignores its Ctrl-C.
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, user=user)
    entry = record(pid_file, proc.pid, *address)
    try:
        wait_until_ready(ready, timeout, what, log, offset, proc=proc, error=error)
    except error:
        stop(pid_file, 15)
        raise
    return entry


def wait_until_ready(ready: Callable[[], object], timeout: float, what: str, log: Path, offset: int | None = None, *,
                     proc: subprocess.Popen | None = None, pid_file: Path | None = None,
                     error: type[Exception] = ServiceError):
    """Poll `ready()` until it is truthy (returned) or `timeout` s pass; a process that exits
    meanwhile (`proc`, or the one `pid_file` names) fails at once. Errors carry the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = ready()
        if answer:
            return answer
        if proc is not None and proc.poll() is not None:
            raise error(f"{what} exited with status {proc.returncode}; {log_tail(log, offset)}")
        if proc is None and pid_file is not None and running(pid_file) is None:
            raise error(f"{what} is no longer running; {log_tail(log, offset)}")
        time.sleep(0.5)
    raise error(f"{what} was not ready within {timeout:.0f} s; {log_tail(log, offset)}")


def started(pid: int) -> float:
    """When process `pid` started, as a number only another process changes. On Linux, its start in
    clock ticks after boot (/proc/<pid>/stat, field 22). Not psutil's create_time there: that adds
    the boot time, which Linux recomputes from the wall clock at every read, so an NTP adjustment
    moves it by a second now and then (psutil issues #1724, #2541), and a PID file compared by it
    says a running server has stopped (every one at once: a possible, unproven cause of a CI failure
    here, where a test found the ML backend "not answering" without a request reaching it).
    Elsewhere (no /proc): psutil's create_time. Raises psutil.NoSuchProcess when it is gone."""
    if not Path("/proc/self/stat").exists():
        return psutil.Process(pid).create_time()
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise psutil.NoSuchProcess(pid) from None
    # The command name, field 2, is in parentheses and may hold spaces: count from its end.
    return float(text.rsplit(")", 1)[1].split()[19])


def record(path: Path, pid: int, host: str, port: int, url: str) -> dict:
    """Write the PID file for a just-started process; returns its entry."""
    running = {"pid": pid, "started": started(pid), "create_time": psutil.Process(pid).create_time(),
               "host": host, "port": port, "url": url}
    path.write_text(json.dumps(running))
    return running


def running(path: Path) -> dict | None:
    """The PID file's entry when that process still runs (and is the one we started), else None."""
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        proc = psutil.Process(entry["pid"])
        # A recycled PID belongs to a process started at another time. A PID file written before
        # `started` was recorded has only the create_time, which the wall clock moves (a second).
        same = (started(proc.pid) == entry["started"] if "started" in entry
                else abs(proc.create_time() - entry["create_time"]) < 2.0)
        alive = same and proc.status() != psutil.STATUS_ZOMBIE
    except (ValueError, KeyError, psutil.NoSuchProcess):
        alive = False
    return entry if alive else None


def stop(path: Path, timeout: float, sig: int = signal.SIGTERM) -> bool:
    """Signal the recorded process (`sig`, SIGTERM by default; SIGKILL after `timeout` s) and
    remove the file. False if none ran."""
    entry = running(path)
    if entry is None:
        path.unlink(missing_ok=True)
        return False
    proc = psutil.Process(entry["pid"])
    proc.send_signal(sig)
    if not _ended(proc, timeout):
        proc.kill()
        if not _ended(proc, timeout):
            raise ServiceError(f"process {proc.pid} ({path}) did not end after SIGKILL")
    path.unlink(missing_ok=True)
    return True


def _ended(proc: psutil.Process, timeout: float) -> bool:
    """Wait until `proc` has exited. A zombie has: its parent, maybe another process that started
    it (a test's thread), reaps it; psutil's wait would count it as alive until then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                try:
                    proc.wait(0)  # ours: reap it
                except (psutil.TimeoutExpired, ChildProcessError):
                    pass
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_FREE_PORT = 20_000  # free_port's ports start here, above those well-known servers tend to hold
_handed_out: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing uses now (for the tests' and benchmarks' servers), never
    the same one twice in one process.

    Chosen below the kernel's ephemeral range: a port from that range, free when chosen, can be
    taken minutes later as the local end of any outgoing connection (a client's keep-alive to
    Label Studio or Prefect), and the server meant for it then fails to start. CI once failed so.
    Where no such range leaves room (not Linux, or a range starting low), the kernel's choice.
    """
    low = _ephemeral_low()
    chooser = random.SystemRandom()
    for _ in range(200):
        if low is not None and low > LOWEST_FREE_PORT:
            port = chooser.randrange(LOWEST_FREE_PORT, low)
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        if port not in _handed_out and not port_taken("127.0.0.1", port):
            _handed_out.add(port)
            return port
    raise OSError("no free port on 127.0.0.1 after 200 tries")


def _ephemeral_low() -> int | None:
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def connect_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to host:port."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def log_tail(path: Path, offset: int | None = None, lines: int = 30) -> str:
    """The last lines a detached server wrote to its log since `offset`, for an error message."""
    try:
        with open(path, errors="replace") as fh:
            fh.seek(offset or 0)
            tail = fh.read().splitlines()[-lines:]
    except OSError:
        return f"no log at {path}"
    return f"last lines of {path}:\n" + ("\n".join(tail) or "(nothing logged)")
