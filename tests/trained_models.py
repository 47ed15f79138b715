"""pytest plugin: a tiny detector and subtype classifier, trained once per test session.

For tests that need *trained* models without caring how well they are trained (the
predictor, later the ML backend and the flows). One synthetic study (72 images, 256 px,
80 % pneumonia, difficulty 0.15) is generated, ingested and trained on:
the detector at 128 px for 15 epochs, the classifier at 64 px for 6 epochs
(about 70 s on 2 CPU cores). The detector and classifier test modules keep their own
(module-scoped) training, since they test training itself.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.training_seed import TRAINING_SEED

DETECTOR = {"imgsz": 128, "epochs": 15, "batch": 8, "nbs": 8, "warmup_epochs": 1, "val": False, "seed": TRAINING_SEED}
CLASSIFIER = {"input_size": 64, "epochs": 6, "patience": 0, "batch": 16, "seed": TRAINING_SEED}


@dataclass
class TrainedModels:
    root: Path
    data_dir: Path  # the workspace's data folder (record paths are relative to it)
    records: list  # the manifest's records
    detector_weights: Path
    classifier_checkpoint: Path
    params: dict  # the whole params file with the test overrides above (detector imgsz 128, ...)


def train_tiny_models(root: Path) -> TrainedModels:
    from cxrkit.core.params import load_params
    from cxrkit.models.classifier import train_classifier
    from cxrkit.models.detector import train_detector
    from tests.synthetic_study import ingested_study

    root = Path(root)
    with pytest.MonkeyPatch.context() as mp:
        if "ultralytics" not in sys.modules:  # read once, at import: keep ultralytics' settings in the tmp dir
            mp.setenv("YOLO_CONFIG_DIR", str(root / "ultralytics-config"))
        workspace, records = ingested_study(root, n=72, seed=3, size=256, positive_fraction=0.8, difficulty=0.15,
                                            salt="trained-models-salt-0123456789", workers=2)
        base = load_params()
        params = dict(base)
        params["detector"] = base["detector"] | DETECTOR
        params["classifier"] = base["classifier"] | CLASSIFIER
        train = [r for r in records if r.split == "train"]
        val = [r for r in records if r.split == "val"]
        weights = train_detector(train, workspace.data_dir, root / "detector", params["detector"], val_records=val)
        checkpoint = train_classifier(train, workspace.data_dir, root / "classifier", params["classifier"], val)
    return TrainedModels(root, workspace.data_dir, records, weights, checkpoint, params)


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory) -> TrainedModels:
    """Tiny trained detector + classifier (see the module docstring), shared by the session."""
    return train_tiny_models(tmp_path_factory.mktemp("trained-models"))
