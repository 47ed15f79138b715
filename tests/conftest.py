"""Shared test setup: Prefect runs against a throwaway local server, offline."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

from cxrkit.core import offline

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


@pytest.fixture
def label_config(tmp_path_factory, monkeypatch):
    """A factory: label_config.xml with values renamed ({old: new}), in force through
    $CXR_LABEL_CONFIG for the rest of the test (a fresh path: load_schema caches by path).
    Returns its schema."""
    from cxrkit.core.labels import DEFAULT_CONFIG, load_schema

    def make(renames: dict[str, str]):
        text = DEFAULT_CONFIG.read_text()
        for old, new in renames.items():
            assert f'value="{old}"' in text, old
            text = text.replace(f'value="{old}"', f'value="{new}"')
        path = tmp_path_factory.mktemp("label-config") / "label_config.xml"
        path.write_text(text)
        monkeypatch.setenv("CXR_LABEL_CONFIG", str(path))
        return load_schema()

    return make


@pytest.fixture
def renamed_roles(label_config):
    """The schema of a label config whose four role names are renamed: the opacity finding
    "Pneumonic Opacity"; the impressions, in order, "Unremarkable", "Infection", "Something else"."""
    return label_config({"Lung Opacity": "Pneumonic Opacity", "Normal": "Unremarkable",
                         "Pneumonia": "Infection", "Other abnormality": "Something else"})
