"""The one way the workbench replaces a file: all at once, or not at all.

A reader (the ML backend reading `current`, DVC hashing `data/`), or the next run after a kill,
sees the old file or the new one, never a part of either. The bytes go to a temporary file in
the same folder (a rename is atomic only within one file system), are flushed to disk (fsync:
a power cut must not leave an empty file under the new name), and the temporary file is renamed
over the target. A failure removes the temporary file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> Path:
    """Replace `path` with `data` (text is written as UTF-8); `mode` 0o600 for secrets. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def own_copy(path: str | os.PathLike) -> Path:
    """Make `path` a file of its own before it is written in place (appended to, truncated).

    DVC links the files it tracks to its cache (the workspace sets cache.type hardlink: one copy
    of every image on disk instead of two) and makes them read-only; a write in place would
    change the cached copy as well, and with it every data version that holds those bytes. A
    file with other links is replaced by a writable copy (DVC's `unprotect` of one file)."""
    path = Path(path)
    if path.exists() and (path.stat().st_nlink > 1 or not os.access(path, os.W_OK)):
        write_atomic(path, path.read_bytes())
    return path
