"""The retrain pipeline's stages, one module each, run by `dvc repro` (the code repo's dvc.yaml).

    code_version      the code each stage runs         -> pipeline/code_version/<stage>.txt
    prepare           data/ (manifest + labels.jsonl)  -> pipeline/prepared/{train,val}.jsonl
                      + pseudo/ (the teacher's answers, cxrkit.pipeline.pseudo: pseudo-labels, training only)
    train_detector    pipeline/prepared                -> pipeline/detector/detector.pt
    train_classifier  pipeline/prepared                -> pipeline/classifier/classifier.pt
    evaluate          both models + the val records    -> metrics/metrics.json, plots/confusion.csv

Every stage is `python -m cxrkit.pipeline.<stage>` with explicit path arguments (dvc.yaml
spells them out) and a `run(...)` function with the same arguments for tests. Paths are
relative to the workspace (the labeling project's repository, cxrkit.pipeline.project_repo).
The constants below name the same paths as dvc.yaml (tests/test_pipeline.py checks that).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cxrkit.core.atomic import write_atomic
from cxrkit.core.manifest import Record, read_manifest

LABELS_FILE = "data/labels.jsonl"  # ground truth exported from Label Studio (cxrkit.pipeline.labels)
PREPARED_DIR = "pipeline/prepared"
DETECTOR_WEIGHTS = "pipeline/detector/detector.pt"
CLASSIFIER_CHECKPOINT = "pipeline/classifier/classifier.pt"
METRICS_FILE = "metrics/metrics.json"
PREPARE_METRICS_FILE = "metrics/prepare.json"
# Correction effort per model version shown (cxrkit.labelstudio.effort): written by the retrain
# flow from its export, not by a stage; dvc.yaml lists it among the metrics `dvc metrics diff` reads.
EFFORT_FILE = "metrics/effort.json"
CODE_VERSION_DIR = "pipeline/code_version"
STAGES = ("code_version", "prepare", "train_detector", "train_classifier", "evaluate")
# Training scratch space (ultralytics' run folder, YOLO dataset links) and stage timings:
# git-ignored and outside DVC's outputs, so only the models themselves are versioned.
SCRATCH_DIR = "scratch"


class PipelineError(RuntimeError):
    """A stage cannot run on this data (e.g. no labeled validation image); the message says what to do."""


def read_prepared(prepared_dir: str | os.PathLike) -> tuple[list[Record], list[Record]]:
    """(train, val) records written by the `prepare` stage (here, not in prepare.py: the training
    stages read them without importing, and so depending on, the code that pseudo-labels)."""
    return read_manifest(Path(prepared_dir) / "train.jsonl"), read_manifest(Path(prepared_dir) / "val.jsonl")


def write_json(path: str | os.PathLike, obj) -> None:
    """Pretty, key-sorted JSON written atomically (a killed stage leaves the old file or none)."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def record_timing(stage: str, seconds: float, root: str | os.PathLike = ".") -> None:
    """How long the stage's own work took (the retrain flow and benchmark split DVC time from it)."""
    write_json(Path(root) / SCRATCH_DIR / "timings" / f"{stage}.json", {"seconds": seconds, "finished": time.time()})


def read_effort(root: str | os.PathLike) -> dict | None:
    """The workspace's metrics/effort.json as the last retrain wrote it; None before any did."""
    try:
        return json.loads((Path(root) / EFFORT_FILE).read_text())
    except (OSError, ValueError):
        return None


def read_timing(stage: str, root: str | os.PathLike = ".") -> dict | None:
    path = Path(root) / SCRATCH_DIR / "timings" / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None
