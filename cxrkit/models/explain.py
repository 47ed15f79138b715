"""Where the subtype classifier looked: class-activation heatmaps, their overlays, and how they are scored.

    explain_image(classifier, grey, boxes, crop_margin) -> Explanation (whole image + each opacity box's crop)
    write_overlay(path, grey, explanation, max_side)     -> the film with the heatmap over it, as a PNG
    explain_settings(params)                             -> params.yaml `explain:` with its defaults, checked
    pointing_game(heatmaps, boxes_per_image)             -> the share of heatmap peaks inside a true box, vs baselines
    peak / peak_cell / box_mask / pointing_hit / mass_inside / peak_inside / uniform_map / centre_map

Method: HiResCAM (Draelos & Carin, 2020), the variant of Grad-CAM (Selvaraju et al., ICCV 2017)
that multiplies each activation map by its gradient cell by cell instead of by the gradient's
spatial mean, on the classifier's last convolutional block (resnet18 `layer4`, densenet121 and
efficientnet_b0 `features`; a shallower block where the input is too small for 7 x 7 cells,
`feature_block`): sum over channels k of dScore/dA_k * A_k, clipped at zero, stretched back over
the image (the classifier sees the film resized to a square without keeping its aspect, so a
plain stretch maps the grid back to the film) and divided by its maximum. Why not plain
Grad-CAM: averaging the gradient over the grid lets a cell that is active for another reason
light up. On two classifiers trained on the same synthetic films with and without their
opacities (the opacity the only thing to learn; 128-px input, an 8 x 8 grid), Grad-CAM's peak
fell in the opacity box on 44 % and 0 % of 16 held-out films, HiResCAM's on 56 % and 38 %, where
a peak drawn at random would on 13 % (tests/test_explain.py has the setting). At 224 px a resnet18 grid is 7 x 7 cells of 32 px: coarse, but it is
what drives the prediction.

Targets, in the classifier's logits z (subtypes first, Normal last, `classifier_classes`):
- the whole image: the evidence for pneumonia of any subtype against Normal,
  logsumexp(z_subtypes) - z_Normal, i.e. log P(pneumonia) - log P(Normal): "what made this film
  look like pneumonia", the question a radiologist (and the pointing game) asks;
- each opacity box's crop (`crop_region`, the classifier's context margin): the subtype the
  crop is given (its top subtype logit), "what made this box Viral".
Gradients are taken with the temperature left out: a positive scalar does not move a map
that is divided by its maximum.

The detector is not explained: its boxes already say where it looked, and a gradient map of a
YOLO head mixes every anchor of the image; the shown boxes are outlined on the overlay instead.

An Explanation keeps only the HiResCAM grids (7 x 7 numbers per map) and the crop windows, so
it is small enough to cache as JSON beside the predictions (Predictor.explain_paths) and
is stretched to the film's pixels on demand (`heatmap`, `box_heatmaps`, `shown_map`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cxrkit.core.atomic import write_atomic
from cxrkit.core.manifest import Box

# params.yaml `explain:` (what an older params file without the section gets).
DEFAULTS = {"enabled": True, "queue_top": 200, "max_side": 768, "eval_images": 100}


class ExplainError(ValueError):
    """A heatmap that cannot be computed (unknown architecture, bad image); the message says why."""


def explain_settings(params: dict) -> dict:
    """params.yaml `explain:` with defaults: enabled, queue_top (>= 0), max_side (>= 16). The select
    flow reads the workspace's params with it, the ML backend the serving version's."""
    settings = {**DEFAULTS, **(params.get("explain") or {})}
    if int(settings["queue_top"]) < 0 or int(settings["max_side"]) < 16:
        raise ExplainError(f"explain.queue_top must be >= 0 and explain.max_side >= 16, got {settings}")
    return {"enabled": bool(settings["enabled"]), "queue_top": int(settings["queue_top"]),
            "max_side": int(settings["max_side"])}


@dataclass
class Explanation:
    """The heatmaps of one film (or why there are none: `error`)."""

    width: int = 0
    height: int = 0
    grid: list[list[float]] = field(default_factory=list)  # whole-image HiResCAM cells, in [0, 1]
    boxes: list[Box] = field(default_factory=list)  # the explained opacity boxes
    box_grids: list[list[list[float]]] = field(default_factory=list)  # per box, its crop's cells
    windows: list[list[int]] = field(default_factory=list)  # per box, its crop window x0, y0, x1, y1
    box_targets: list[str] = field(default_factory=list)  # per box, the subtype its map explains
    model_version: str = ""
    path: str | None = None
    image_sha256: str | None = None
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def heatmap(self) -> np.ndarray:
        """The whole-image map on the film's pixels, float32 (height, width) in [0, 1]."""
        return _stretch(np.asarray(self.grid, np.float32), self.width, self.height)

    @property
    def box_heatmaps(self) -> list[np.ndarray]:
        """Per box, its crop's map placed in the crop window of a film-sized map (zero elsewhere)."""
        out = []
        for cells, (x0, y0, x1, y1) in zip(self.box_grids, self.windows):
            full = np.zeros((self.height, self.width), np.float32)
            full[y0:y1, x0:x1] = _stretch(np.asarray(cells, np.float32), x1 - x0, y1 - y0)
            out.append(full)
        return out

    def shown_map(self) -> np.ndarray:
        """What the overlay shows: the whole-image map, and inside each box's crop window the map
        of that crop (the subtype of a box comes from its crop, not from the whole film)."""
        shown = self.heatmap
        for cells, (x0, y0, x1, y1) in zip(self.box_grids, self.windows):
            shown[y0:y1, x0:x1] = _stretch(np.asarray(cells, np.float32), x1 - x0, y1 - y0)
        return shown

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "grid": self.grid,
                "boxes": [vars(b).copy() for b in self.boxes], "box_grids": self.box_grids,
                "windows": self.windows, "box_targets": self.box_targets, "model_version": self.model_version,
                "path": self.path, "image_sha256": self.image_sha256, "error": self.error, "cached": self.cached}

    @classmethod
    def from_dict(cls, d: dict) -> "Explanation":
        d = dict(d)
        d["boxes"] = [Box.from_dict(b) for b in d.get("boxes", [])]
        return cls(**d)


def _stretch(cells: np.ndarray, width: int, height: int) -> np.ndarray:
    if cells.size == 0:
        return np.zeros((height, width), np.float32)
    return np.clip(cv2.resize(cells, (int(width), int(height)), interpolation=cv2.INTER_LINEAR), 0, 1)


# --- HiResCAM ------------------------------------------------------------------


# Per architecture, its convolutional blocks from the deepest, each with its stride in pixels.
_BLOCKS = {
    "resnet18": (("layer4", 32), ("layer3", 16), ("layer2", 8)),
    "densenet121": (("features", 32), ("features.denseblock3", 16), ("features.denseblock2", 8)),
    "efficientnet_b0": (("features", 32), ("features.5", 16), ("features.3", 8)),
}
MIN_CELLS = 7  # the coarsest grid explained: 7 x 7, a resnet's last block at the 224-px default


def feature_block(model):
    """The block the maps are read from: the last convolutional block of the architecture, or, when the
    input is so small that its grid would be coarser than MIN_CELLS cells across (a 64-px input
    gives a resnet's last block 2 x 2 cells), the deepest block that is not."""
    blocks = _BLOCKS.get(getattr(model, "arch", None))
    if blocks is None:
        raise ExplainError(f"no convolutional block known for a {getattr(model, 'arch', type(model).__name__)} "
                           f"(the maps here know {', '.join(_BLOCKS)})")
    size = int(model.input_size)
    name = next((name for name, stride in blocks if size // stride >= MIN_CELLS), blocks[-1][0])
    return model.get_submodule(name)


TOP_SUBTYPE = "top subtype"


def class_activation_maps(model, images: Sequence[np.ndarray], targets: Sequence[int | str | None]) -> tuple[list[np.ndarray], list[int | None]]:
    """HiResCAM grids, one per image (grey, any size), each (cells, cells) float32 in [0, 1], and
    the class index each explains (None: the pneumonia evidence).

    targets[k]: a class index; None for the pneumonia evidence logsumexp(z[:-1]) - z[-1];
    TOP_SUBTYPE for the image's highest subtype logit (chosen in the same forward pass)."""
    import torch

    from cxrkit.models.classifier import _normalise, to_input

    if not len(images):
        return [], []
    block = feature_block(model)
    device = next(model.parameters()).device
    size = int(model.input_size)
    batch = np.stack([to_input(img, size) for img in images])
    kept: dict = {}
    handle = block.register_forward_hook(lambda _module, _inputs, output: kept.__setitem__("maps", output))
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = _normalise(torch.from_numpy(batch).unsqueeze(1).to(device))
            x.requires_grad_(True)  # the graph reaches the block even where weights are frozen
            logits = model(x).float()
            chosen = [int(z[:-1].argmax()) if t == TOP_SUBTYPE else t for z, t in zip(logits, targets)]
            scores = [torch.logsumexp(z[:-1], 0) - z[-1] if t is None else z[int(t)] for z, t in zip(logits, chosen)]
            maps = kept["maps"]
            (grads,) = torch.autograd.grad(torch.stack(scores).sum(), maps)
    finally:
        handle.remove()
    cams = torch.relu((grads.float() * maps.float()).sum(1)).detach().cpu().numpy().astype(np.float32)
    out = []
    for cam in cams:
        top = float(cam.max())
        out.append(cam / top if top > 0 else np.zeros_like(cam))
    return out, chosen


def explain_image(classifier, grey: np.ndarray, boxes: Sequence[Box], crop_margin: float,
                  model_version: str = "") -> Explanation:
    """The whole-image map of a grey film and one map per box in `boxes` (the opacity boxes
    the predictor showed), in one forward and backward pass of the classifier."""
    from cxrkit.models.classifier import crop_region

    grey = np.asarray(grey)
    if grey.ndim != 2 or grey.shape[0] < 2 or grey.shape[1] < 2:
        raise ExplainError(f"expected a 2-D grey image, got shape {grey.shape}")
    h, w = grey.shape
    windows = [crop_region(b, w, h, crop_margin) for b in boxes]
    crops = [grey[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    subtypes = list(classifier.classes[:-1])
    grids, chosen = class_activation_maps(classifier, [grey, *crops], [None] + [TOP_SUBTYPE] * len(crops))
    return Explanation(width=int(w), height=int(h), grid=_rounded(grids[0]), boxes=list(boxes),
                       box_grids=[_rounded(g) for g in grids[1:]], windows=[list(win) for win in windows],
                       box_targets=[subtypes[t] for t in chosen[1:]], model_version=model_version)


def _rounded(grid: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in grid]


# --- the overlay a radiologist sees ----------------------------------------------


def overlay(grey: np.ndarray, explanation: Explanation, max_side: int = DEFAULTS["max_side"],
            alpha: float = 0.55) -> np.ndarray:
    """The film (at most `max_side` pixels on its long side) in grey, the heatmap blended over it
    in the JET colours (blue low, red high) with an opacity that grows with the map, so the film
    stays readable where the model did not look, and each explained box outlined in white."""
    grey = np.asarray(grey)
    h, w = grey.shape
    scale = min(1.0, float(max_side) / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = cv2.cvtColor(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR).astype(np.float32)
    heat = cv2.resize(explanation.shown_map(), size, interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    a = (alpha * np.sqrt(np.clip(heat, 0, 1)))[..., None]
    out = ((1 - a) * base + a * colour).clip(0, 255).astype(np.uint8)
    thickness = max(1, round(2 * scale * max(h, w) / 1024))
    for b in explanation.boxes:
        p0 = (round(b.x * scale), round(b.y * scale))
        p1 = (round((b.x + b.w) * scale), round((b.y + b.h) * scale))
        cv2.rectangle(out, p0, p1, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def write_overlay(path: str | os.PathLike, grey: np.ndarray, explanation: Explanation,
                  max_side: int = DEFAULTS["max_side"]) -> None:
    """`overlay` as a PNG at `path`, written atomically (a reader never sees half a file)."""
    ok, data = cv2.imencode(".png", overlay(grey, explanation, max_side))
    if not ok:
        raise ExplainError(f"cannot encode the overlay of {path}")
    write_atomic(path, data.tobytes())


# --- scoring a heatmap against the truth ---------------------------------------------


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) of the map's maximum: the centre of the pixels at the maximum (a grid cell at the
    film's edge, stretched, is a flat top reaching the edge; its centre stays inside the cell)."""
    ys, xs = np.nonzero(heatmap >= float(np.max(heatmap)) - 1e-6)
    return int(round(float(xs.mean()))), int(round(float(ys.mean())))


def peak_cell(explanation: Explanation) -> tuple[int, int, int, int]:
    """The film window x0, y0, x1, y1 of the whole-image map's highest grid cell: where the
    classifier looked, at the resolution it looked with (a 7 x 7 grid cannot point at a 1-px
    wire or a letter, but its top cell can cover one)."""
    grid = np.asarray(explanation.grid, np.float32)
    row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
    (rows, cols), w, h = grid.shape, explanation.width, explanation.height
    return (math.floor(col * w / cols), math.floor(row * h / rows),
            math.ceil((col + 1) * w / cols), math.ceil((row + 1) * h / rows))


def cell_windows(explanation: Explanation) -> list[tuple[int, int, int, int]]:
    """Every grid cell's film window, row by row (the baseline of `peak_cell`: a cell drawn at random)."""
    rows, cols = np.asarray(explanation.grid).shape
    w, h = explanation.width, explanation.height
    return [(math.floor(c * w / cols), math.floor(r * h / rows), math.ceil((c + 1) * w / cols),
             math.ceil((r + 1) * h / rows)) for r in range(rows) for c in range(cols)]


def box_mask(shape: tuple[int, int], boxes: Sequence[Box]) -> np.ndarray:
    """A (height, width) bool mask of the pixels inside any of `boxes`."""
    mask = np.zeros(shape, bool)
    for b in boxes:
        x0, y0 = max(0, math.floor(b.x)), max(0, math.floor(b.y))
        x1, y1 = min(shape[1], math.ceil(b.x + b.w)), min(shape[0], math.ceil(b.y + b.h))
        mask[y0:y1, x0:x1] = True
    return mask


def peak_inside(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum falls on a True pixel of `mask` (same shape). A map that is zero
    everywhere has no peak and points nowhere."""
    if float(np.max(heatmap)) <= 0:
        return False
    x, y = peak(heatmap)
    return bool(mask[y, x])


def pointing_hit(heatmap: np.ndarray, boxes: Sequence[Box]) -> bool:
    """The pointing game (Zhang et al., ECCV 2016) for one film: its heatmap's peak inside a true box."""
    return peak_inside(heatmap, box_mask(heatmap.shape, boxes))


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's total inside `mask` (0 for a map that is zero everywhere)."""
    total = float(np.sum(heatmap))
    return float(np.sum(heatmap[mask.astype(bool)])) / total if total > 0 else 0.0


def uniform_map(shape: tuple[int, int]) -> np.ndarray:
    """The baseline that looks everywhere alike."""
    return np.ones(shape, np.float32)


def centre_map(shape: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """The baseline that looks at the middle of the film: a Gaussian of `sigma` x the film's size,
    peaking at its centre (where the lungs and most opacities of a chest film are)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-(((x - (w - 1) / 2) / (sigma * w)) ** 2 + ((y - (h - 1) / 2) / (sigma * h)) ** 2) / 2)


def pointing_game(heatmaps: Sequence[np.ndarray], boxes_per_image: Sequence[Sequence[Box]]) -> dict:
    """The share of films (each with at least one true box) whose heatmap peaks inside a box,
    beside two maps that know nothing: `uniform_hit_rate`, the chance that a peak drawn uniformly
    over the film falls in a box (the boxes' mean area share), and `centre_hit_rate`, the share of
    films with a box over the centre pixel (where `centre_map` peaks)."""
    hits, uniform, centre = [], [], []
    for heat, boxes in zip(heatmaps, boxes_per_image):
        if not boxes:
            continue
        mask = box_mask(heat.shape, boxes)
        hits.append(peak_inside(heat, mask))
        uniform.append(float(mask.mean()))
        h, w = heat.shape
        centre.append(bool(mask[(h - 1) // 2, (w - 1) // 2]))
    n = len(hits)
    return {"n": n,
            "hit_rate": float(np.mean(hits)) if n else None,
            "uniform_hit_rate": float(np.mean(uniform)) if n else None,
            "centre_hit_rate": float(np.mean(centre)) if n else None}
