"""`cxr explain IMAGE`: where the serving model's subtype classifier looked on one film, as a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrkit.cli.common import WorkspaceOpt, console
from cxrkit.core.workspace import Workspace


def read_film(path: Path):
    """A film's grey pixels from a PNG/JPEG or a DICOM file (read as ingest reads it)."""
    from cxrkit.data.dicom_read import UnreadableImage, decode_dicom, decode_raster

    data = path.read_bytes()
    is_dicom = data[128:132] == b"DICM"
    try:
        return (decode_dicom(data) if is_dicom else decode_raster(data)).pixels
    except UnreadableImage as exc:
        raise typer.BadParameter(f"{path}: {exc}") from exc


def explain(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="A PNG, JPEG or DICOM film."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The overlay PNG to write "
                                       "(default: <image name>.heatmap.png in the current folder)."),
    version: Optional[str] = typer.Option(None, help="A model version of the registry (default: the serving one)."),
    max_side: Optional[int] = typer.Option(None, min=16, help="Long side of the overlay in pixels "
                                           "(default: the version's explain.max_side in params.yaml)."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Write the film with the classifier's class-activation heatmap (HiResCAM) over it (whole film, and each shown
    opacity box from its own crop, outlined), and print what the model says about it."""
    from cxrkit.models.explain import explain_settings, write_overlay
    from cxrkit.models.registry import Registry

    ws = Workspace.from_env(workspace)
    registry = Registry(ws.models_dir)
    model = registry.get(version) if version else registry.current()
    if model is None:
        console.print("[red]error:[/red] no model serves yet: `cxr retrain` (or the demo) trains the first one")
        raise typer.Exit(2)
    grey = read_film(image)
    predictor = model.predictor()
    prediction = predictor.predict_arrays([grey], uncertainty=False)[0]
    explanation = predictor.explain(grey, prediction)
    out = out or Path(f"{image.stem}.heatmap.png")
    write_overlay(out, grey, explanation, max_side or explain_settings(model.params)["max_side"])
    boxes = ", ".join(f"{b.finding} {b.score:.2f} ({target})" for b, target in
                      zip(explanation.boxes, explanation.box_targets)) or "none"
    console.print(f"model {model.version_id}: impression {prediction.impression}; opacity boxes explained: {boxes}")
    console.print(f"heatmap of {explanation.width}x{explanation.height} film written to {out}")
