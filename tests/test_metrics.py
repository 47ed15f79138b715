"""Metric functions against hand-computed cases, including the RSNA metric's edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cxrkit.evaluation.metrics import (
    RSNA_THRESHOLDS,
    auroc,
    average_precision,
    best_rsna_threshold,
    confusion_matrix,
    iou_matrix,
    mean_average_precision,
    one_vs_rest_auroc,
    precision_recall_curve,
    rsna_image_score,
    rsna_score,
)

BOX = [0, 0, 10, 10]
HALF = [0, 0, 10, 5]  # IoU with BOX = 50 / 100 = 0.5 exactly


def test_iou_matrix():
    ious = iou_matrix([BOX, [20, 20, 5, 5]], [BOX, HALF, [5, 0, 10, 10]])
    np.testing.assert_allclose(ious, [[1.0, 0.5, 50 / 150], [0, 0, 0]])


def test_rsna_thresholds():
    assert RSNA_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)


def test_rsna_perfect_and_empty_cases():
    assert rsna_image_score([BOX], [BOX], [0.9]) == 1.0
    assert rsna_image_score([], [], []) is None  # 0/0: left out of the mean
    assert rsna_image_score([], [BOX], [0.9]) == 0.0  # a false alarm on a normal image
    assert rsna_image_score([BOX], [], []) == 0.0  # a miss
    # The empty image does not dilute the mean; the false alarm does.
    assert rsna_score([([BOX], [BOX], [0.9]), ([], [], [])]) == 1.0
    assert rsna_score([([BOX], [BOX], [0.9]), ([], [BOX], [0.2])]) == 0.5
    assert math.isnan(rsna_score([([], [], [])]))


def test_rsna_iou_must_exceed_threshold():
    # IoU 0.5: a hit at 0.40 and 0.45 only (0.5 > 0.5 is false): 2 of 8 thresholds.
    assert rsna_image_score([BOX], [HALF], [0.9]) == pytest.approx(2 / 8)


def test_rsna_counts_fn_and_fp():
    # Two findings, one found: 1 / (1 + 0 + 1) at every threshold.
    assert rsna_image_score([BOX, [50, 50, 10, 10]], [BOX], [0.9]) == pytest.approx(0.5)
    # One finding, found twice: the second box is a false positive: 1 / (1 + 1 + 0).
    assert rsna_image_score([BOX], [BOX, BOX], [0.9, 0.8]) == pytest.approx(0.5)


def test_rsna_matches_by_confidence_order():
    gt = [BOX]
    preds = [HALF, BOX]  # the poorer box has the higher score
    # t = 0.4: HALF (0.9) takes the finding, BOX is a false positive -> 1/2.
    # t = 0.6: HALF can't match (0.5), BOX takes it, HALF is a false positive -> 1/2.
    assert rsna_image_score(gt, preds, [0.9, 0.8], thresholds=[0.4]) == 0.5
    assert rsna_image_score(gt, preds, [0.9, 0.8], thresholds=[0.6]) == 0.5
    # A second, missed finding adds a false negative: 1 / (1 TP + 1 FP + 1 FN) at t = 0.4.
    assert rsna_image_score([BOX, [50, 50, 10, 10]], preds, [0.9, 0.8], thresholds=[0.4]) == pytest.approx(1 / 3)


def test_average_precision_hand_computed():
    a, b, c = BOX, [50, 50, 10, 10], [100, 100, 10, 10]
    images = [
        ([a], [a, [200, 200, 5, 5]], [0.9, 0.8]),  # TP at 0.9, FP at 0.8
        ([b], [b], [0.7]),  # TP at 0.7
    ]
    # ranked: TP, FP, TP -> recall .5 .5 1, precision 1 .5 .667 -> AP = .5*1 + .5*(2/3)
    assert average_precision(images, 0.5) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a third finding nobody found: recall tops out at 2/3
    assert average_precision(images + [([c], [], [])], 0.5) == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)
    # a duplicate detection of the same finding is a false positive
    assert average_precision([([a], [a, a], [0.9, 0.8])], 0.5) == pytest.approx(1.0)
    assert average_precision([([a], [a, a], [0.8, 0.9])], 0.5) == pytest.approx(1.0)
    # VOC counts IoU >= threshold: exactly 0.5 is a hit at 0.5, unlike RSNA's strict >
    assert average_precision([([BOX], [HALF], [0.9])], 0.5) == 1.0
    assert average_precision([([BOX], [HALF], [0.9])], 0.51) == 0.0
    assert math.isnan(average_precision([([], [a], [0.9])], 0.5))  # no ground truth: undefined


def test_mean_average_precision_skips_classes_without_ground_truth():
    per = {"Lung Opacity": [([BOX], [BOX], [0.9])], "Pneumothorax": [([], [BOX], [0.5])],
           "Nodule/Mass": [([BOX], [], [])]}
    m, classes = mean_average_precision(per, 0.4)
    assert classes["Lung Opacity"] == 1.0 and classes["Nodule/Mass"] == 0.0 and math.isnan(classes["Pneumothorax"])
    assert m == 0.5


def test_auroc_hand_computed():
    assert auroc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == 0.75  # 3 of 4 pairs ordered right
    assert auroc([1, 0], [0.5, 0.5]) == 0.5  # a tie counts half
    assert auroc([1, 1, 0], [0.2, 0.3, 0.9]) == 0.0
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def test_one_vs_rest_and_confusion():
    classes = ["Bacterial", "Viral", "COVID-19"]
    labels = ["Bacterial", "Viral", "COVID-19", "Viral"]
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.3, 0.4, 0.3]])
    macro, per = one_vs_rest_auroc(labels, probs, classes)
    assert per["Bacterial"] == 1.0  # 0.8 beats 0.2, 0.1, 0.3
    assert per["Viral"] == 0.75  # positives .7 .4 vs negatives .1 .6: (.7>.1,.7>.6,.4>.1,.4<.6) = 3/4
    assert per["COVID-19"] == pytest.approx(2.5 / 3)  # 0.3 vs .1 .1 .3: two wins and a tie
    assert macro == pytest.approx((1.0 + 0.75 + 2.5 / 3) / 3)
    predicted = [classes[k] for k in probs.argmax(axis=1)]
    np.testing.assert_array_equal(confusion_matrix(labels, predicted, classes), [[1, 0, 0], [0, 2, 0], [0, 1, 0]])


def _coco_ap(images: list[tuple], iou_threshold: float) -> float:
    """pycocotools' COCOeval on the same boxes: one class, one IoU threshold, every box size."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations = [{"image_id": i, "category_id": 1, "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                    "iscrowd": 0} for i, (gt, _, _) in enumerate(images) for box in gt]
    for k, annotation in enumerate(annotations, start=1):
        annotation["id"] = k
    truth = COCO()
    truth.dataset = {"images": [{"id": i} for i in range(len(images))], "categories": [{"id": 1}],
                     "annotations": annotations}
    truth.createIndex()
    detections = [{"image_id": i, "category_id": 1, "bbox": [float(v) for v in box], "score": float(score)}
                  for i, (_, pred, scores) in enumerate(images) for box, score in zip(pred, scores)]
    evaluation = COCOeval(truth, truth.loadRes(detections), iouType="bbox")
    evaluation.params.iouThrs = np.array([iou_threshold])
    evaluation.params.maxDets = [100]
    evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
    evaluation.evaluate()
    evaluation.accumulate()
    return float(np.mean(evaluation.eval["precision"][0, :, 0, 0, 0]))  # (T, R, K, A, M): the 101 recall points


def _ap_101(curve: dict) -> float:
    """The 101-point interpolated AP of a PR curve, as COCO defines it."""
    precision = np.maximum.accumulate(curve["precision"][::-1])[::-1]  # the monotone envelope
    found = np.searchsorted(curve["recall"], np.linspace(0, 1, 101), side="left")
    return float(np.mean([precision[k] if k < len(precision) else 0.0 for k in found]))


def _boxes(rng, n: int) -> np.ndarray:
    return np.column_stack([rng.uniform(0, 400, (n, 2)), rng.uniform(20, 120, (n, 2))])


def _scene(rng) -> tuple:
    """0-3 true boxes; a detection near most (jittered: some fall below the IoU threshold), a
    duplicate, 0-2 detections of nothing; random scores."""
    gt = _boxes(rng, int(rng.integers(0, 4)))
    near = (gt + rng.normal(0, 10, gt.shape))[rng.random(len(gt)) < 0.8]
    pred = np.vstack([near, near[:1] + 3, _boxes(rng, int(rng.integers(0, 3)))])
    pred[:, 2:] = np.abs(pred[:, 2:]) + 1
    return gt, pred, rng.random(len(pred))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("iou_threshold", [0.4, 0.5, 0.75])
def test_precision_recall_curve_is_cocos(seed, iou_threshold):
    """On random scenes our PR curve is the one COCOeval builds: its 101-point AP equals
    pycocotools' to float precision. Our all-point AP (VOC 2010+, what we report) integrates
    that same curve, so it differs from COCO's only by the interpolation."""
    rng = np.random.default_rng(seed)
    images = [_scene(rng) for _ in range(30)]
    curve = precision_recall_curve(images, iou_threshold)
    assert _ap_101(curve) == pytest.approx(_coco_ap(images, iou_threshold), abs=1e-12)
    assert average_precision(images, iou_threshold) == pytest.approx(_ap_101(curve), abs=0.02)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_is_scikit_learns(seed):
    """Random labels and scores, many of them tied (rounded to one decimal)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.3 * y, 1)
    assert auroc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_confusion_matrix_is_scikit_learns(seed):
    """Random labels over four classes, one of them never predicted."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d"]
    y_true = list(rng.choice(classes, 100))
    y_pred = list(rng.choice(classes[:3], 100))
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, classes),
                                  sk_confusion(y_true, y_pred, labels=classes))


def test_auroc_and_confusion_are_scikit_learns():
    """What we add to scikit-learn: nan for a missing class, unknown labels refused."""
    assert math.isnan(auroc([0, 0], [0.2, 0.3]))
    with pytest.raises(ValueError, match="not among the classes"):
        confusion_matrix(["Viral"], ["Fungal"], ["Viral", "Bacterial"])
    np.testing.assert_array_equal(confusion_matrix([], [], ["a", "b"]), [[0, 0], [0, 0]])


def test_operating_point_is_the_best_rsna_threshold():
    assert best_rsna_threshold({0.05: 0.40, 0.1: 0.45, 0.3: 0.20}) == (0.1, 0.45)
    assert best_rsna_threshold({0.05: 0.45, 0.1: 0.45, 0.3: 0.20}) == (0.1, 0.45)  # a tie: fewer boxes
    assert best_rsna_threshold({0.05: 0.3, 0.5: math.nan}) == (0.05, 0.3)  # nan: no image counted there
    threshold, score = best_rsna_threshold({0.05: math.nan})
    assert threshold is None and math.isnan(score)
