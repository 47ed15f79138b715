"""One helper for the tests that need labeled images: a synthetic study, ingested."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxrkit.core.manifest import Record, read_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.data.importers.synthetic import load_synthetic
from cxrkit.data.ingest import IngestOptions, ingest
from cxrkit.data.synthetic import generate_study


def ingested_study(root: Path, *, n: int, seed: int, size: int, positive_fraction: float, difficulty: float,
                   salt: str, workers: int) -> tuple[Workspace, list[Record]]:
    """Generate `n` synthetic DICOMs under root/study and ingest them into root/ws with `salt`."""
    folder = generate_study(Path(root) / "study", n=n, seed=seed, size=size, positive_fraction=positive_fraction,
                            difficulty=difficulty, workers=workers)
    workspace = Workspace(Path(root) / "ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_DEID_SALT", salt)
        report = ingest(load_synthetic(folder), workspace, IngestOptions(workers=workers))
    assert report.ok and report.ingested == n, report
    return workspace, read_manifest(workspace.manifest_path)
