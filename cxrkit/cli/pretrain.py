"""`cxr pretrain-detector`: teach the detector what the workspace's films look like, before any label."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrkit.cli.common import WorkspaceOpt, console
from cxrkit.core.workspace import Workspace


def pretrain_detector_cmd(
    out: Path = typer.Option(..., "--out", "-o", dir_okay=False,
                             help="The weights file to write (.pt); set it as detector.weights in params.yaml."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs over the films (default: params.yaml "
                                                           "detector_pretrain.epochs)."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Pretrain the detector on the workspace's films without reading a label (masked image modelling:
    cxrkit/models/detector_pretrain.py). Films of validation patients (params.yaml `split`, the rule the
    retrain's prepare stage uses) are left out, so the promotion gate still judges on films the model has
    never seen. Every retrain then starts from the written weights once detector.weights names them."""
    from cxrkit.core.manifest import read_manifest
    from cxrkit.core.params import load_params
    from cxrkit.models.detector_pretrain import PretrainError, pretrain_detector
    from cxrkit.pipeline.prepare import split_of, split_settings

    ws = Workspace.from_env(workspace)
    params = load_params()
    if epochs is not None:
        params = {**params, "detector_pretrain": {**(params.get("detector_pretrain") or {}), "epochs": epochs}}
    val_fraction, salt = split_settings(params)
    records = read_manifest(ws.manifest_path) if ws.manifest_path.is_file() else []
    films = [r for r in records if split_of(r, val_fraction, salt) == "train"]
    if not films:
        console.print(f"[red]error:[/red] {ws.manifest_path}: no films outside the validation patients "
                      "(`cxr ingest` some first)")
        raise typer.Exit(2)
    try:
        written = pretrain_detector([ws.data_dir / r.path for r in films], out, params)
    except (PretrainError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    console.print(f"pretrained on {len(films)} films ({len(records) - len(films)} of validation patients left out); "
                  f"wrote {written}. Set `detector.weights: {written}` in params.yaml to start every retrain from it.")
