"""The PID file of a detached server the workbench starts (Label Studio, the ML backend, Prefect).

One JSON object: pid, the process's start time, host, port, url. The start time is what
tells our process from an unrelated one that got the same PID after ours died.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import psutil


def record(path: Path, pid: int, host: str, port: int, url: str) -> dict:
    """Write the PID file for a just-started process; returns its entry."""
    running = {"pid": pid, "create_time": psutil.Process(pid).create_time(), "host": host, "port": port, "url": url}
    path.write_text(json.dumps(running))
    return running


def running(path: Path) -> dict | None:
    """The PID file's entry when that process still runs (and is the one we started), else None."""
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        proc = psutil.Process(entry["pid"])
        # A recycled PID belongs to a process started at another time.
        alive = proc.create_time() == entry["create_time"] and proc.status() != psutil.STATUS_ZOMBIE
    except (ValueError, KeyError, psutil.NoSuchProcess):
        alive = False
    return entry if alive else None


def stop(path: Path, timeout: float) -> bool:
    """SIGTERM the recorded process (SIGKILL after `timeout` s) and remove the file. False if none ran."""
    entry = running(path)
    if entry is None:
        path.unlink(missing_ok=True)
        return False
    proc = psutil.Process(entry["pid"])
    proc.terminate()
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    path.unlink(missing_ok=True)
    return True


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def log_tail(path: Path, offset: int | None = None, lines: int = 30) -> str:
    """The last lines a detached server wrote to its log since `offset`, for an error message."""
    try:
        with open(path, errors="replace") as fh:
            fh.seek(offset or 0)
            tail = fh.read().splitlines()[-lines:]
    except OSError:
        return f"no log at {path}"
    return f"last lines of {path}:\n" + ("\n".join(tail) or "(nothing logged)")
