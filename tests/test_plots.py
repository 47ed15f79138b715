"""Plots render real PNGs from real evaluation output (the session's tiny trained models)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrkit.evaluation.plots import (
    plot_confusion_matrix,
    plot_learning_curve,
    plot_pr_curves,
    slug,
)
from cxrkit.models.classifier import evaluate_classifier, load_classifier
from cxrkit.models.detector import evaluate_detector, load_detector

pytestmark = pytest.mark.slow


def decoded(path):
    """The PNG as pixels; fails when it does not decode or is one flat colour."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode as an image"
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20, f"{path} looks blank"
    return img


@pytest.fixture(scope="module")
def evaluation(trained_models):
    held_out = [r for r in trained_models.records if r.split != "train"]
    det = trained_models.params["detector"]
    detector = evaluate_detector(load_detector(trained_models.detector_weights), held_out, trained_models.data_dir,
                                 det["imgsz"], conf=det["conf"], rsna_conf=det["rsna_conf"])
    classifier = evaluate_classifier(load_classifier(trained_models.classifier_checkpoint), held_out,
                                     trained_models.data_dir, trained_models.params["classifier"])
    return detector, classifier


def test_pr_curve_per_finding(evaluation, tmp_path):
    detector, _ = evaluation
    assert set(detector["pr50"]) == set(detector["ap50"])  # a curve for every finding with ground truth
    opacity = detector["pr50"]["Lung Opacity"]
    assert len(opacity["precision"]) == len(opacity["recall"]) == len(opacity["scores"]) > 0
    assert opacity["scores"] == sorted(opacity["scores"], reverse=True)
    assert np.all(np.diff(opacity["recall"]) >= 0) and opacity["recall"][-1] <= 1
    paths = plot_pr_curves(detector["pr50"], tmp_path, ap=detector["ap50"])
    assert [p.name for p in paths] == [f"pr-{slug(f)}.png" for f in detector["pr50"]]
    for p in paths:
        decoded(p)


def test_confusion_matrix_png(evaluation, tmp_path):
    _, classifier = evaluation
    out = plot_confusion_matrix(classifier["all"]["confusion"], classifier["classes"], tmp_path / "cm.png")
    decoded(out)
    with pytest.raises(ValueError, match="does not fit"):
        plot_confusion_matrix([[1, 2], [3, 4]], classifier["classes"], tmp_path / "bad.png")


def test_learning_curve_png(evaluation, tmp_path):
    detector, classifier = evaluation
    rows = [{"labels": n, "strategy": s, "map50": detector["map50"] * f, "macro_auroc": classifier["all"]["macro_auroc"] * f}
            for s, g in (("random", 0.8), ("entropy", 1.0)) for n, f in ((20, 0.5 * g), (40, 0.8 * g), (60, g))]
    rows.append({"labels": 80, "strategy": "random", "map50": float("nan")})  # skipped, not drawn as a gap
    out = plot_learning_curve(rows, "labels", ["map50", "macro_auroc"], tmp_path / "curve.png", "AL", group="strategy")
    decoded(out)
    single = plot_learning_curve(rows, "labels", "map50", tmp_path / "single.png", "mAP")
    decoded(single)
    with pytest.raises(ValueError, match="no row has rsna"):
        plot_learning_curve(rows, "labels", "rsna", tmp_path / "x.png", "x")
