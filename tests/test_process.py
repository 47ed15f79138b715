"""The helpers every server start goes through (cxrkit.services.process)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess

import psutil
import pytest

from cxrkit.services import process


def test_free_port_keeps_out_of_the_range_outgoing_connections_take():
    """The tests' servers get ports no client connection can take before they start: CI once lost
    the demo's backend port, chosen minutes before the backend started, to an outgoing connection."""
    ports = [process.free_port() for _ in range(20)]
    assert len(set(ports)) == 20  # never the same port twice in one process
    low = process._ephemeral_low()
    if low is not None and low > process.LOWEST_FREE_PORT:  # room below the range (Linux's default: 32768)
        assert all(process.LOWEST_FREE_PORT <= port < low for port in ports), (ports, low)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))  # and it is free
    assert not process.port_taken("127.0.0.1", ports[1])


def test_port_taken_sees_a_listener():
    with socket.socket() as other:
        other.bind(("127.0.0.1", process.free_port()))
        other.listen()
        assert process.port_taken("127.0.0.1", other.getsockname()[1])


def test_free_port_falls_back_to_the_kernels_choice_where_the_range_leaves_no_room(tmp_path, monkeypatch):
    """A kernel whose ephemeral range starts low (or no range file at all): the kernel picks, and
    the ports are still free and never handed out twice."""
    for text in ("1024 65000\n", None):
        range_file = tmp_path / "ip_local_port_range"
        if text is None:
            range_file.unlink()
        else:
            range_file.write_text(text)
        monkeypatch.setattr(process, "EPHEMERAL_RANGE_FILE", range_file)
        assert process._ephemeral_low() == (1024 if text else None)
        ports = [process.free_port() for _ in range(20)]
        assert len(set(ports)) == 20
        assert not any(process.port_taken("127.0.0.1", port) for port in ports)


def test_a_running_server_stays_found_when_the_wall_clock_moves(tmp_path):
    """psutil's create_time moves when NTP adjusts the wall clock (psutil #2541); the PID file's
    start does not. A record whose create_time is a second off still names the running process; one
    of another start names none; a PID file of before `started` allows the second, no more."""
    odd = tmp_path / "srv) 1 (x"  # a command name with parentheses and spaces, as /proc/<pid>/stat shows it
    odd.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen([str(odd), "60"])
    pid_file = tmp_path / "srv.pid"
    try:
        assert psutil.Process(proc.pid).name() == odd.name
        entry = process.record(pid_file, proc.pid, "127.0.0.1", 1, "http://127.0.0.1:1")
        assert process.running(pid_file) == entry
        for changed, found in (({"create_time": entry["create_time"] + 1}, True), ({"started": entry["started"] + 1}, False)):
            pid_file.write_text(json.dumps({**entry, **changed}))
            assert (process.running(pid_file) is not None) == found, changed
        legacy = {k: v for k, v in entry.items() if k != "started"}
        for shift, found in ((1, True), (60, False)):
            pid_file.write_text(json.dumps({**legacy, "create_time": legacy["create_time"] + shift}))
            assert (process.running(pid_file) is not None) == found, shift
        pid_file.write_text(json.dumps(entry))
    finally:
        proc.kill()
        proc.wait()
    assert process.running(pid_file) is None
    with pytest.raises(psutil.NoSuchProcess):
        process.started(proc.pid)
