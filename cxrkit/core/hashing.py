"""sha256 of a file, read in chunks: the registry's trust check, the predictor's cache key, the
pipeline's code version. And a salted key's place in [0, 1): the validation and gold splits."""
from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def salted_position(salt: str, key: str) -> float:
    """sha256("<salt>:<key>") as a number in [0, 1): a pure function of the key, so a split drawn
    by "position < share" never moves a key from one side to the other."""
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) / 16**12
