"""Shared test setup: Prefect runs against a throwaway local server, offline."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

from cxrkit import offline

pytest_plugins = ["tests.labelstudio_server", "tests.trained_models"]

offline.apply()
import tests.environment_at_start  # noqa: E402,F401  (before any test imports ultralytics)
# Before anything imports prefect: its home (profiles, local storage) is a temporary folder, not ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cxr-test-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API (a local server subprocess on a temporary SQLite database), started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
