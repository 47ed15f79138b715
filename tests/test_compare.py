"""The promotion gate's evidence: two registered versions of the session's tiny models predict
the same validation images (cxrkit.pipeline.compare), and the gate decides on the paired
differences and their bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pytest

from cxrkit.evaluation.metrics import (
    OPERATING_GRID,
    best_rsna_threshold,
    rsna_score,
    scored_at_least,
)
from cxrkit.models.detector import evaluate_detector, load_detector
from cxrkit.models.registry import Registry
from cxrkit.pipeline.compare import (
    compare_versions,
    detector_readers,
    paired,
    read_best_rsna,
)


def _versions(tmp_path, trained_models):
    """v1: the tiny models; v2: the same detector, a classifier whose output biases are shifted
    (so its probabilities, and its AUROC, differ)."""
    import torch

    checkpoint = torch.load(trained_models.classifier_checkpoint, weights_only=True)
    head = [k for k in checkpoint["state_dict"] if k.endswith(".bias")][-1]
    checkpoint["state_dict"][head] = checkpoint["state_dict"][head] + torch.linspace(-3.0, 3.0,
                                                                                      checkpoint["state_dict"][head].numel())
    shifted = tmp_path / "classifier-shifted.pt"
    torch.save(checkpoint, shifted)
    registry = Registry(tmp_path / "models")
    metrics = {"detector": {"rsna": 0.9, "map50": 0.9}, "classifier": {"macro_auroc": 0.99}}  # stored: not read
    v1, v2 = (registry.register(trained_models.detector_weights, classifier, data_version=d,
                                params=trained_models.params, metrics=metrics)
              for d, classifier in (("aaaa1111", trained_models.classifier_checkpoint), ("bbbb2222", shifted)))
    registry.set_current(v1.version_id)
    return registry, v1, v2


@pytest.mark.slow
def test_both_versions_predict_the_same_validation_images(tmp_path, trained_models):
    registry, v1, v2 = _versions(tmp_path, trained_models)
    val = [r for r in trained_models.records if r.split == "val"]
    compared = compare_versions(v2, v1, val, trained_models.data_dir, trained_models.params, resamples=300)
    assert set(compared) == {"detector.rsna", "detector.rsna_operating", "detector.map50", "classifier.macro_auroc"}
    # At each model's own threshold: the evaluate stage's operating point on the same images.
    det = trained_models.params["detector"]
    evaluated = evaluate_detector(load_detector(trained_models.detector_weights), val, trained_models.data_dir,
                                  int(det["imgsz"]), float(det.get("conf", 0.01)), float(det.get("rsna_conf", 0.3)))
    assert compared["detector.rsna_operating"]["candidate"] == pytest.approx(evaluated["rsna_operating"])
    assert evaluated["rsna_operating"] > 0  # a score of 0 at every threshold would match any choice
    for name in ("detector.rsna", "detector.rsna_operating", "detector.map50"):
        # One detector, the same resampled images for both sides: every resample's difference is 0.
        # Resampled independently, the two sides would differ and the interval would not be [0, 0].
        entry = compared[name]
        assert entry["candidate"] == entry["current"] and (entry["low"], entry["high"]) == (0.0, 0.0), entry
        assert entry["n"] == len(val)
    auroc = compared["classifier.macro_auroc"]
    assert auroc["difference"] == pytest.approx(auroc["candidate"] - auroc["current"]) and auroc["difference"] != 0
    assert auroc["low"] <= auroc["difference"] <= auroc["high"] and auroc["high"] > auroc["low"]

    decision = registry.promote(v2.version_id, ("detector.rsna", "classifier.macro_auroc"), 0.02, comparison=compared)
    assert all(f"on the same {len(val)} validation images" in r for r in decision.reasons), decision.reasons
    assert decision.promoted == (auroc["high"] >= -0.02)  # the stored 0.99s were not what it read
    assert registry.promotions()[-1]["comparison"]["classifier.macro_auroc"] == auroc


def test_each_model_is_read_at_its_own_threshold_as_well_as_the_fixed_one():
    """Two detectors that find the same 10 opacities and draw one false box on each of 10 films
    without one; the candidate's scores run higher (0.9 and 0.2 against 0.15 and 0.05). At the
    fixed 0.1 the candidate's false boxes count and the serving model's do not, so it reads as
    worse beyond noise; each at its own best threshold (the candidate above 0.2, the serving
    model at 0.1 or 0.15) the two are the same on every resample."""
    opacity, box = "Lung Opacity", np.array([[10.0, 10.0, 20.0, 20.0]])
    none, false_box = np.zeros((0, 4)), np.array([[50.0, 50.0, 10.0, 10.0]])

    def by_class(true_score: float, false_score: float) -> dict:
        return {opacity: [(box, box, np.array([true_score])) for _ in range(10)]
                + [(none, false_box, np.array([false_score])) for _ in range(10)]}

    rng = np.random.default_rng(0)
    draws = [np.arange(20)] + [rng.integers(0, 20, 20) for _ in range(200)]
    compared = {name: paired(reader(by_class(0.9, 0.2)), reader(by_class(0.15, 0.05)), draws)
                for name, reader in detector_readers(opacity, conf=0.01, rsna_conf=0.1).items()}
    fixed, own = compared["detector.rsna"], compared["detector.rsna_operating"]
    assert (fixed["candidate"], fixed["current"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert fixed["high"] < -0.02  # the gate would refuse it on this reading
    assert (own["candidate"], own["current"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert (own["low"], own["high"]) == (0.0, 0.0)
    # Ranked by score, the two find the same boxes in the same order: the same AP.
    assert compared["detector.map50"]["difference"] == pytest.approx(0.0)


def test_the_best_threshold_is_chosen_again_on_every_draw():
    """On random films and boxes, the reading at each model's own threshold equals the evaluate
    stage's rule (the best of the grid's RSNA scores) computed afresh on each draw's images,
    repeats included; the thresholds the draws choose differ, so one choice for all would not pass."""
    rng = np.random.default_rng(1)
    images = []

    def boxes(k: int) -> np.ndarray:  # k boxes (x, y, w, h) in a 110-pixel film
        return np.hstack([rng.uniform(0, 80, (k, 2)), rng.uniform(10, 30, (k, 2))])

    for _ in range(40):
        gt = boxes(int(rng.integers(0, 3)))
        found = gt + rng.normal(0, 3, gt.shape)  # roughly where the truth is
        predicted = np.vstack([found, boxes(int(rng.integers(0, 3)))])  # and some false boxes
        images.append((gt, predicted, rng.uniform(0.01, 0.9, len(predicted))))
    grid = [t for t in OPERATING_GRID if t >= 0.01]
    read = read_best_rsna(images, grid)
    chosen = set()
    for idx in [np.arange(40)] + [rng.integers(0, 40, 40) for _ in range(30)]:
        drawn = [images[i] for i in idx]
        threshold, expected = best_rsna_threshold({t: rsna_score(scored_at_least(drawn, t)) for t in grid})
        chosen.add(threshold)
        assert read(idx) == pytest.approx(expected)
    assert len(chosen) > 1, chosen
