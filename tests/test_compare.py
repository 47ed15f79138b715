"""The promotion gate's evidence: two registered versions of the session's tiny models predict
the same validation images (cxrkit.pipeline.compare), and the gate decides on the paired
differences and their bootstrap intervals."""
from __future__ import annotations

import pytest

from cxrkit.models.registry import Registry
from cxrkit.pipeline.compare import compare_versions

pytestmark = pytest.mark.slow


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


def test_both_versions_predict_the_same_validation_images(tmp_path, trained_models):
    registry, v1, v2 = _versions(tmp_path, trained_models)
    val = [r for r in trained_models.records if r.split == "val"]
    compared = compare_versions(v2, v1, val, trained_models.data_dir, trained_models.params, resamples=300)
    assert set(compared) == {"detector.rsna", "detector.map50", "classifier.macro_auroc"}
    for name in ("detector.rsna", "detector.map50"):
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
