"""Keyed pseudonyms: the same identifier always maps to the same opaque id.

HMAC-SHA256 with a per-workspace secret salt: nobody without the salt can
reverse a pseudonym or confirm a guess by hashing candidate ids.
"""
from __future__ import annotations

import hashlib
import hmac

SALT_ENV = "CXR_DEID_SALT"


class Pseudonymizer:
    def __init__(self, salt: str):
        if len(salt) < 16:
            raise ValueError(f"{SALT_ENV} must be at least 16 characters")
        self._key = salt.encode()

    def __call__(self, kind: str, identifier: str, length: int = 16) -> str:
        """Pseudonym of `identifier` in namespace `kind` (e.g. "patient", "image")."""
        digest = hmac.new(self._key, f"{kind}\x00{identifier}".encode(), hashlib.sha256).hexdigest()
        return digest[:length]

    @classmethod
    def for_workspace(cls, workspace) -> "Pseudonymizer":
        return cls(workspace.secret(SALT_ENV))
