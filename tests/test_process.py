"""The helpers every server start goes through (cxrkit.services.process)."""
from __future__ import annotations

import socket

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
