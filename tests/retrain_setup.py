"""What the tests that run a real retrain round share: tiny training params and the services'
environment (tests/test_flow_retrain.py, tests/test_radiologist_flow.py)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxrkit.core.params import load_params


def tiny_retrain_params(split_salt: str) -> dict:
    """params.yaml with 1-epoch trainings at 128 px (detector) / 64 px (classifier), a 30 % validation
    split salted by `split_salt`, and a gate that promotes any model: these tests are about the flow."""
    params = load_params()
    params["detector"] |= {"imgsz": 128, "epochs": 1, "batch": 8, "nbs": 8, "warmup_epochs": 0, "val": False}
    params["classifier"] |= {"input_size": 64, "epochs": 1, "patience": 0, "batch": 16}
    params["predictor"] |= {"flip": False}
    params["split"] = {"val_fraction": 0.3, "salt": split_salt}
    params["registry"]["tolerance"] = 1.0  # tiny models are noisy; the first model is promoted whatever its quality
    return params


@contextlib.contextmanager
def retrain_environment(labelstudio, dvc_remote: Path) -> Iterator[dict]:
    """The environment a retrain reads, set for the duration: the Label Studio server and its token,
    a DVC remote folder, and no CXR_BACKEND_URL (the flow finds the workspace's own backend)."""
    env = {"LABEL_STUDIO_URL": labelstudio.url, "LABEL_STUDIO_API_KEY": labelstudio.credentials.token,
           "CXR_DVC_REMOTE_URL": str(dvc_remote)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CXR_BACKEND_URL", raising=False)
        yield env
