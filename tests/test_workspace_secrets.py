"""Workspace secrets (cxrkit/core/workspace.py): generated once, mode 600, one value however many
processes ask for it first at the same time."""
from __future__ import annotations

import multiprocessing
import secrets
import stat
import time
from pathlib import Path

from cxrkit.core.workspace import Workspace, stored_secret


def _slow_token() -> str:
    time.sleep(0.3)  # a slow source of randomness widens the window two first-time readers share
    return secrets.token_hex(16)


def _first_secret(path: str, barrier, out) -> None:
    barrier.wait()  # every process finds the secret missing at the same moment
    out.put(stored_secret(Path(path), "CXR_DEID_SALT", _slow_token))


def test_first_time_processes_agree_on_one_salt(tmp_path, monkeypatch):
    """Two ingests started at once on a new workspace must not write two salts: their images'
    pseudonyms would diverge (before, each generated its own and the last line won)."""
    monkeypatch.delenv("CXR_DEID_SALT", raising=False)
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(4), context.Queue()
    procs = [context.Process(target=_first_secret, args=(str(tmp_path / ".env"), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    values = {value for value, _ in results}
    assert len(values) == 1 and sum(generated for _, generated in results) == 1
    assert (tmp_path / ".env").read_text().splitlines() == [f"CXR_DEID_SALT={values.pop()}"]
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_a_secret_file_made_by_hand_is_closed_to_others(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_BACKEND_PASSWORD", raising=False)
    env = tmp_path / ".env"
    env.write_text("CXR_PARAMS=/somewhere/params.yaml\n")
    env.chmod(0o644)
    password = Workspace(tmp_path).secret("CXR_BACKEND_PASSWORD")
    assert env.read_text() == f"CXR_PARAMS=/somewhere/params.yaml\nCXR_BACKEND_PASSWORD={password}\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert Workspace(tmp_path).secret("CXR_BACKEND_PASSWORD") == password


def test_the_env_example_placeholders_are_refused(tmp_path, monkeypatch):
    """.env.example's "change-me-..." values satisfy compose's required-variable checks: copied as
    they are, they would be known passwords. Every process of ours refuses them, naming the variable."""
    import pytest

    from ml_backend.model import Settings

    placeholders = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in
                    (Path(__file__).resolve().parent.parent / ".env.example").read_text().splitlines()
                    if "=" in line and not line.startswith("#") and "change-me" in line}
    assert {"LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "CXR_BACKEND_PASSWORD"} <= set(placeholders)
    for name in ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "CXR_BACKEND_PASSWORD"):
        monkeypatch.setenv(name, placeholders[name])
        with pytest.raises(ValueError, match=f"{name} is still the .env.example placeholder"):
            stored_secret(tmp_path / ".env", name, lambda: "generated")
    with pytest.raises(ValueError, match="CXR_BACKEND_PASSWORD is still the .env.example placeholder"):
        Settings.from_env({"CXR_WORKSPACE": str(tmp_path), "CXR_BACKEND_USER": "labelstudio",
                           "CXR_BACKEND_PASSWORD": placeholders["CXR_BACKEND_PASSWORD"]})
    from flows.connect import labelstudio_for

    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # never reached: refused before
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", placeholders["LABEL_STUDIO_USER_TOKEN"])
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY is still the .env.example placeholder"):
        labelstudio_for(Workspace(tmp_path))
    monkeypatch.setenv("CXR_BACKEND_PASSWORD", "a-real-secret-0123456789")
    assert Workspace(tmp_path).secret("CXR_BACKEND_PASSWORD") == "a-real-secret-0123456789"
