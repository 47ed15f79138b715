"""cxrkit.core.atomic.write_atomic: the one helper every file the workbench replaces goes through."""
from __future__ import annotations

import stat

import pytest

from cxrkit.core.atomic import write_atomic


def test_replaces_whole_files_with_the_mode_asked(tmp_path):
    target = tmp_path / "sub" / "current"
    assert write_atomic(target, "v1\n") == target
    assert target.read_text() == "v1\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomic(target, b"\x00\x01", mode=0o600)
    assert target.read_bytes() == b"\x00\x01" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["current"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "round.json"
    write_atomic(target, "old")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # not text or bytes: fails half-way through
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["round.json"]
