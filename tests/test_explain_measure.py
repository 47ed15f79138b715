"""Heatmaps measured, not just drawn (issue 21): the synthetic generator's lung and distractor masks,
the evaluate stage's `explain` block (pointing game) and how `cxr status` shows it."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cxrkit.core.manifest import write_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.data.synthetic import generate_case
from cxrkit.models.registry import Registry
from cxrkit.pipeline import evaluate
from cxrkit.services.status import (
    explain_lines,
    model_status,
    pointing_drop,
    render_lines,
    workspace_status,
)

CASES = [(0, {}), (1, {"positive": True, "difficulty": 0.9}), (2, {"other_abnormality": True}),
         (3, {"view": "AP", "difficulty": 1.0}), (4, {"subtype": "Viral", "view": "PA"})]


# --- the generator's masks ------------------------------------------------------------


@pytest.mark.parametrize("seed,kw", CASES)
def test_masks_leave_the_image_and_its_truth_unchanged(seed, kw):
    plain = generate_case(seed, 256, **kw)
    masked = generate_case(seed, 256, masks=True, **kw)
    assert plain.lung_mask is None and plain.distractor_mask is None
    assert masked.image.tobytes() == plain.image.tobytes()
    assert masked.boxes == plain.boxes and masked.phi == plain.phi and masked.view == plain.view
    for mask in (masked.lung_mask, masked.distractor_mask):
        assert mask.shape == masked.image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


@pytest.mark.parametrize("seed", range(6))
def test_lung_mask_covers_the_lungs(seed):
    case = generate_case(seed, 256, positive=True, difficulty=0.2, masks=True)
    lung = case.lung_mask.astype(bool)
    assert 0.12 < lung.mean() < 0.45
    # Two lung fields, one on each side of the midline, with the mediastinum between them.
    n, _, _, centroids = cv2.connectedComponentsWithStats(case.lung_mask)
    assert n - 1 == 2
    left, right = sorted(centroids[1:, 0])
    assert left < 256 * 0.4 and right > 256 * 0.6
    # Aerated lung is darker than the body just around it (the image is bright where dense).
    ring = cv2.dilate(case.lung_mask, np.ones((15, 15), np.uint8)).astype(bool) & ~lung
    assert case.image[lung].mean() < case.image[ring].mean() - 0.05
    # Every opacity box lies mostly on lung.
    assert case.boxes
    for b in case.boxes:
        inside = lung[int(b.y): int(b.y + b.h), int(b.x): int(b.x + b.w)]
        assert inside.mean() > 0.4, b


def test_distractor_mask_marks_electrodes_tubes_and_markers():
    # Seed 0, AP at difficulty 1: ECG electrodes with their wires, a tube, "AP PORTABLE" and "L".
    case = generate_case(0, 256, view="AP", difficulty=1.0, masks=True)
    mask = case.distractor_mask.astype(bool)
    top = int(256 * 0.12)  # the burnt-in text sits in the top band
    assert mask[:top].sum() > 100 and mask[top:].sum() > 200
    # Dense objects are bright: brighter on the mask than in the band just around it.
    ring = cv2.dilate(case.distractor_mask, np.ones((7, 7), np.uint8)).astype(bool) & ~mask
    assert case.image[mask].mean() > case.image[ring].mean() + 0.03
    # A clean PA film: the side marker only (seed 5: no marker either, so an empty mask).
    assert generate_case(1, 256, view="PA", difficulty=0.0, masks=True).distractor_mask[top:].sum() == 0
    assert generate_case(1, 256, view="PA", difficulty=0.0, masks=True).distractor_mask[:top].sum() > 0
    assert generate_case(5, 256, view="PA", difficulty=0.0, masks=True).distractor_mask.sum() == 0


# --- the evaluate stage's explain block -------------------------------------------------


def test_explain_block_never_fails_the_stage(trained_models):
    val = [r for r in trained_models.records if r.split == "val"]
    assert evaluate.explain_metrics(None, val, trained_models.data_dir, trained_models.params)["error"].startswith(
        "AttributeError")
    off = {**trained_models.params, "explain": {"eval_images": 0}}
    assert evaluate.explain_metrics(None, val, trained_models.data_dir, off) == {"skipped": "explain.eval_images is 0"}


def test_evaluate_stage_measures_the_pointing_game(trained_models, tmp_path):
    t = trained_models
    prepared = tmp_path / "prepared"
    train = [r for r in t.records if r.split == "train"]
    val = [r for r in t.records if r.split == "val"]
    write_manifest(prepared / "train.jsonl", train)
    write_manifest(prepared / "val.jsonl", val)
    with_boxes = [r for r in val if r.labeled and r.boxes]
    assert len(with_boxes) >= 3
    params = {**t.params, "explain": {"eval_images": 3}}
    metrics = evaluate.run(prepared, t.data_dir, params, t.detector_weights, t.classifier_checkpoint,
                           tmp_path / "metrics.json", tmp_path / "confusion.csv")
    block = metrics["explain"]
    assert block["n"] == 3 and block["candidates"] == len(with_boxes)  # capped at eval_images
    for key in ("hit_rate", "uniform_hit_rate", "centre_hit_rate"):
        assert 0.0 <= block[key] <= 1.0
    assert 0.0 < block["uniform_hit_rate"] < 0.5  # the boxes' mean area share
    assert json.loads((tmp_path / "metrics.json").read_text())["explain"] == block

    # The same films by hand: the first three by image id, the whole-image heatmap's peak in a box.
    from cxrkit.models.classifier import load_classifier, read_grey
    from cxrkit.models.explain import explain_image, pointing_hit

    model = load_classifier(t.classifier_checkpoint)
    first = sorted(with_boxes, key=lambda r: r.image_id)[:3]
    hits = [pointing_hit(explain_image(model, read_grey(t.data_dir / r.path), [], 0.25).heatmap, r.boxes)
            for r in first]
    assert block["hit_rate"] == pytest.approx(np.mean(hits))

    # This version's block is what `cxr status` shows (the metrics as the registry stores them).
    ws = Workspace(tmp_path / "ws")
    registry = Registry(ws.models_dir)
    version = registry.register(t.detector_weights, t.classifier_checkpoint, data_version="d1", params={},
                                metrics=metrics)
    registry.promote(version.version_id)
    lines = render_lines(workspace_status(ws, "t"))
    assert f"heatmaps: pointing game {block['hit_rate']:.2f} (uniform {block['uniform_hit_rate']:.2f}, " \
           f"centre {block['centre_hit_rate']:.2f}) on 3 films" in lines
    assert not any("dropped" in line for line in lines)


# --- cxr status ------------------------------------------------------------------------


def _metrics(hit_rate: float | None, n: int, error: str | None = None) -> dict:
    """Metrics in the shape the evaluate stage writes them."""
    out = {"detector": {"rsna": 0.3, "map50": 0.5, "map40": 0.55, "rsna_operating": 0.31, "operating_conf": 0.2,
                        "effort_conf": 0.25, "edits_per_image": 1.2, "n_images": 40},
           "classifier": {"macro_auroc": 0.8, "accuracy": 0.7, "ece": 0.05, "nll": 0.6, "n": 60}}
    if error is not None:
        out["explain"] = {"error": error}
    elif hit_rate is not None:
        out["explain"] = {"n": n, "hit_rate": hit_rate, "uniform_hit_rate": 0.1, "centre_hit_rate": 0.2,
                          "candidates": n + 5, "seconds": 4.2}
    return out


def _registry_of(tmp_path, *metrics: dict) -> tuple[Workspace, list[str]]:
    """A workspace whose registry has one version per metrics dict, each promoted in turn."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    ws = Workspace(tmp_path / "ws")
    registry = Registry(ws.models_dir)
    ids = []
    for k, m in enumerate(metrics):
        (tmp_path / "d.pt").write_bytes(b"d%d" % k)
        (tmp_path / "c.pt").write_bytes(b"c%d" % k)
        version = registry.register(tmp_path / "d.pt", tmp_path / "c.pt", data_version=f"data{k}", params={"k": k},
                                    metrics=m)
        assert registry.promote(version.version_id, force=True).promoted
        ids.append(version.version_id)
    return ws, ids


def test_status_shows_the_pointing_game_and_flags_a_drop(tmp_path):
    ws, (first, second) = _registry_of(tmp_path, _metrics(0.8, 100), _metrics(0.45, 100))
    current = model_status(ws)["current"]
    assert current["previous"]["version"] == first and current["version"] == second
    lines = render_lines(workspace_status(ws, "t"))
    assert "heatmaps: pointing game 0.45 (uniform 0.10, centre 0.20) on 100 films" in lines
    warning = [line for line in lines if "dropped" in line]
    assert warning == [f"WARNING: heatmap pointing game dropped from 0.80 to 0.45 since {first} (more than 0.12: "
                       "the classifier may look elsewhere than at the opacities, e.g. at markers or tubes; "
                       "check its heatmaps)"]


@pytest.mark.parametrize("before,after", [
    ((0.62, 100), (0.55, 100)),  # within the 0.1 margin
    ((0.8, 6), (0.4, 6)),        # 0.4 lower, but six films each: within sampling noise
    ((0.5, 100), (0.7, 100)),    # better
])
def test_status_does_not_flag_noise_or_gains(tmp_path, before, after):
    ws, _ = _registry_of(tmp_path, _metrics(*before), _metrics(*after))
    lines = render_lines(workspace_status(ws, "t"))
    assert f"heatmaps: pointing game {after[0]:.2f} (uniform 0.10, centre 0.20) on {after[1]} films" in lines
    assert not any("dropped" in line for line in lines)


def test_status_without_or_with_a_failed_measurement(tmp_path):
    # A version trained before heatmaps were measured shows no line; nor is a drop computed from it.
    ws, _ = _registry_of(tmp_path, _metrics(None, 0), _metrics(0.3, 100))
    status = model_status(ws)["current"]
    assert status["previous"]["explain"] is None and status["explain_drop"] is None
    ws2, _ = _registry_of(tmp_path / "b", _metrics(0.9, 100), _metrics(None, 0))
    assert not any(line.startswith("heatmaps") for line in render_lines(workspace_status(ws2, "t")))
    ws3, _ = _registry_of(tmp_path / "c", _metrics(0.9, 100), _metrics(None, 0, error="ExplainError: no block"))
    assert "heatmaps: not measured at evaluation (ExplainError: no block)" in render_lines(workspace_status(ws3, "t"))


def test_pointing_drop_margin():
    prev = {"n": 400, "hit_rate": 0.7}
    assert pointing_drop(prev, {"n": 400, "hit_rate": 0.61}) is None  # 0.09: below 0.1
    drop = pointing_drop(prev, {"n": 400, "hit_rate": 0.55})  # noise ~0.066 < 0.1 < 0.15
    assert drop == {"from": 0.7, "to": 0.55, "margin": 0.1}
    assert pointing_drop(None, {"n": 4, "hit_rate": 0.0}) is None
    assert pointing_drop(prev, {"error": "x"}) is None
    assert explain_lines(None) == [] and explain_lines({"explain": None}) == []
    # the first promotion: no previous version, no warning
    assert explain_lines({"explain": {"n": 5, "hit_rate": 0.4, "uniform_hit_rate": 0.1, "centre_hit_rate": 0.0},
                          "previous": None, "explain_drop": None}) == [
        "heatmaps: pointing game 0.40 (uniform 0.10, centre 0.00) on 5 films"]


def test_previous_serving_skips_refusals_and_reruns(tmp_path):
    ws, (a, b) = _registry_of(tmp_path, _metrics(0.8, 100), _metrics(0.45, 100))
    registry = Registry(ws.models_dir)
    registry.promote(b)  # a re-run: "already current"
    (tmp_path / "d.pt").write_bytes(b"dx")
    refused = registry.register(tmp_path / "d.pt", tmp_path / "c.pt", data_version="x", params={"x": 1},
                                metrics={"detector": {"rsna": 0.0}, "classifier": {}})
    assert not registry.promote(refused.version_id).promoted
    assert model_status(ws)["current"]["previous"]["version"] == a
