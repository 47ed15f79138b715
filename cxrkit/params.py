"""The ML knobs: one `params.yaml` at the repo root, one top-level section per part.

DVC reads the same file (`params:` in dvc.yaml), so a change of a knob is a change of
the pipeline's inputs. `$CXR_PARAMS` points at another file (an experiment, a test).
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

PARAMS_ENV = "CXR_PARAMS"
DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


def load_params(path: str | os.PathLike | None = None) -> dict:
    """The whole params file as a dict of sections: `path`, else $CXR_PARAMS, else the repo's params.yaml."""
    chosen = Path(path or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS)
    if not chosen.is_file():
        raise FileNotFoundError(f"params file {chosen} not found (set ${PARAMS_ENV} or pass a path)")
    try:
        data = yaml.safe_load(chosen.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{chosen}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{chosen}: expected a mapping of sections (detector: ...), got {type(data).__name__}")
    return data
