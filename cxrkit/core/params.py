"""The ML knobs: one `params.yaml` at the repo root, one top-level section per part.

DVC reads the same file (`params:` in dvc.yaml), so a change of a knob is a change of
the pipeline's inputs. `$CXR_PARAMS` points at another file (an experiment, a test).

A workspace can be configured with its own params file (`CXR_PARAMS=` in its .env; `cxr demo`
sets its params-demo.yaml): every round on that workspace then uses it, whether it was started
by hand (`cxr retrain`), by the ML backend's webhook or from the Prefect UI (`params_file_for`).
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from cxrkit.core.checkout import CODE_ROOT

PARAMS_ENV = "CXR_PARAMS"
DEFAULT_PARAMS = CODE_ROOT / "params.yaml"


def params_file_for(workspace_root: str | os.PathLike, explicit: str | os.PathLike | None = None) -> Path:
    """The params file a flow run on this workspace uses: `explicit`, else $CXR_PARAMS, else the
    file the workspace is configured with (CXR_PARAMS in its .env), else the repo's params.yaml."""
    from cxrkit.core.workspace import read_env_file

    configured = read_env_file(Path(workspace_root) / ".env").get(PARAMS_ENV)
    return Path(explicit or os.environ.get(PARAMS_ENV) or configured or DEFAULT_PARAMS).resolve()


def configure_workspace_params(workspace_root: str | os.PathLike, params_file: str | os.PathLike) -> None:
    """Make `params_file` the workspace's params file (CXR_PARAMS in its .env)."""
    from cxrkit.core.workspace import set_env_setting

    set_env_setting(Path(workspace_root) / ".env", PARAMS_ENV, str(Path(params_file).resolve()))


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
