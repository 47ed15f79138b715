"""Detection and classification metrics.

Boxes are (x, y, w, h) in pixels, as in the manifest. The confusion matrix counts as scikit-learn's
(tests/test_metrics.py compares them), without importing it: every pipeline stage imports this module.
AUROC is the Mann-Whitney statistic over scipy's ranks: the same number as scikit-learn's
roc_auc_score (tests/test_metrics.py checks it on random scores with ties) at about 1/20 of its
cost per call (54-61 us against 1.3 ms for 20 to 300 images, dev VM, 2026-12-05), which the
promotion gate's bootstrap pays thousands of times
(cxrkit/pipeline/compare.py). The detection metrics have no standard package in the form we
report them, so they are written out from their definitions and tested against one:
tests/test_metrics.py checks that `precision_recall_curve` gives, on the same boxes, the curve
pycocotools' COCOeval builds (its 101-point AP, to float precision), so the matching rules are
COCO's.

- `rsna_score`: the RSNA Pneumonia Detection Challenge metric. Per image and per IoU
  threshold t in 0.40, 0.45, ..., 0.75: predictions, highest confidence first, are
  matched greedily to an unmatched ground-truth box with IoU > t; the image scores
  TP / (TP + FP + FN) at t, and the mean over thresholds. The dataset score is the
  mean over images. As in the challenge, an image with neither ground truth nor
  predictions is left out of the mean (0/0); one with predictions but no ground
  truth scores 0, and so does one with ground truth but no predictions.
- `rsna_operating_point`: a detector's operating point, the threshold of OPERATING_GRID whose
  boxes score the best RSNA metric on given images (ties: the higher threshold, fewer boxes);
  the evaluate stage records it, the promotion gate chooses it again on every resample.
- `average_precision`: PASCAL VOC 2010+ all-point interpolated AP for one class at one
  IoU threshold (mAP@0.4 is VinBigData's metric, mAP@0.5 the usual one); a ground-truth
  box can be matched once, later matches to it are false positives.
- `auroc`: area under the ROC curve, P(score of a random positive > a random negative), ties
  counting half; nan when one class is absent.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RSNA_THRESHOLDS = tuple(np.round(np.arange(0.40, 0.751, 0.05), 2))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4), xywh -> (n, m)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    inter = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None) * np.clip(
        np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None
    )
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _greedy_matches(gt: np.ndarray, pred: np.ndarray, scores: np.ndarray, threshold: float, strict: bool) -> np.ndarray:
    """For predictions in descending score order: True where matched to a still-free GT box.

    strict: IoU must exceed the threshold (RSNA) rather than reach it (VOC).
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    matched = np.zeros(len(order), dtype=bool)
    if len(gt) == 0 or len(order) == 0:
        return matched
    ious = iou_matrix(pred[order], gt)
    free = np.ones(len(gt), dtype=bool)
    for i in range(len(order)):
        candidates = np.where(free, ious[i], -1.0)
        best = int(np.argmax(candidates))
        ok = candidates[best] > threshold if strict else candidates[best] >= threshold
        if ok and free[best]:
            free[best] = False
            matched[i] = True
    return matched


def rsna_image_score(gt, pred, scores, thresholds: Sequence[float] = RSNA_THRESHOLDS) -> float | None:
    """One image's RSNA score, or None when it has neither ground truth nor predictions."""
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    if len(gt) == 0 and len(pred) == 0:
        return None
    values = []
    for t in thresholds:
        tp = int(_greedy_matches(gt, pred, scores, t, strict=True).sum())
        fp, fn = len(pred) - tp, len(gt) - tp
        values.append(tp / (tp + fp + fn))
    return float(np.mean(values))


def scored_at_least(images: Sequence[tuple], threshold: float) -> list[tuple]:
    """Images (gt_boxes, pred_boxes, pred_scores as arrays) with only the predictions scored >=
    threshold: the RSNA score counts every box as a guess, so it is read at a threshold."""
    return [(gt, pred[scores >= threshold], scores[scores >= threshold]) for gt, pred, scores in images]


def rsna_score(images: Sequence[tuple]) -> float:
    """Mean RSNA score over images given as (gt_boxes, pred_boxes, pred_scores); nan if none count."""
    per_image = [s for s in (rsna_image_score(*img) for img in images) if s is not None]
    return float(np.mean(per_image)) if per_image else float("nan")


# Candidate box score thresholds for a detector's operating point: the threshold its validation
# images score best on (the evaluate stage's operating_conf, the gate's detector.rsna_operating).
OPERATING_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7)


def best_rsna_threshold(scores: dict[float, float]) -> tuple[float | None, float]:
    """(threshold, RSNA score) with the best score, the higher threshold on ties; (None, nan)
    when no threshold has a score (no image counts)."""
    valid = {t: s for t, s in scores.items() if not np.isnan(s)}
    if not valid:
        return None, float("nan")
    best = max(valid, key=lambda t: (round(valid[t], 9), t))
    return best, valid[best]


def rsna_operating_point(images: Sequence[tuple], thresholds: Sequence[float]
                         ) -> Callable[[np.ndarray], tuple[float | None, float]]:
    """One class's images (gt_boxes, pred_boxes, pred_scores) -> a function of image indices: the
    best_rsna_threshold over `thresholds` on those images, each threshold's score being
    `rsna_score` of the boxes scored at least that much. Every image's score at every threshold
    is computed once, so a bootstrap can choose the threshold again on each resample cheaply."""
    scores = np.array([[np.nan if (s := rsna_image_score(*img)) is None else s for img in scored_at_least(images, t)]
                       for t in thresholds], dtype=np.float64).reshape(len(thresholds), len(images))

    def choose(idx: np.ndarray) -> tuple[float | None, float]:
        drawn = scores[:, idx]
        return best_rsna_threshold({t: float(np.nanmean(row)) if not np.all(np.isnan(row)) else np.nan
                                    for t, row in zip(thresholds, drawn)})
    return choose


def average_precision(images: Sequence[tuple], iou_threshold: float) -> float:
    """All-point AP over images (gt_boxes, pred_boxes, pred_scores) for one class; nan without GT."""
    return curve_average_precision(precision_recall_curve(images, iou_threshold))


def precision_recall_curve(images: Sequence[tuple], iou_threshold: float) -> dict | None:
    """One class's PR curve over images (gt_boxes, pred_boxes, pred_scores): with predictions in
    descending score order, {"scores", "precision", "recall"} after each (arrays), and "n_gt".
    None without ground truth; empty arrays without predictions."""
    return curve_from_matches(image_matches(images, iou_threshold))


def image_matches(images: Sequence[tuple], iou_threshold: float) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per image (gt_boxes, pred_boxes, pred_scores): its predictions' scores in descending
    order, whether each matched a ground-truth box (VOC rule), and its number of ground-truth
    boxes. Matching is per image, so a curve over any subset of images (a bootstrap resample)
    is `curve_from_matches` of their entries, without matching again."""
    out = []
    for gt, pred, scores in images:
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        out.append((scores[order], _greedy_matches(gt, pred, scores, iou_threshold, strict=False), len(gt)))
    return out


def curve_from_matches(matches: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> dict | None:
    """The PR curve of `image_matches` entries (see precision_recall_curve)."""
    n_gt = sum(n for _, _, n in matches)
    if n_gt == 0:
        return None
    scores = np.concatenate([s for s, _, _ in matches]) if matches else np.zeros(0)
    tp = np.concatenate([t for _, t, _ in matches]).astype(np.float64) if matches else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    cum_tp, cum_fp = np.cumsum(tp), np.cumsum(1.0 - tp)
    return {"scores": scores, "precision": cum_tp / np.maximum(cum_tp + cum_fp, 1e-12), "recall": cum_tp / n_gt,
            "n_gt": n_gt}


def curve_average_precision(curve: dict | None) -> float:
    """All-point AP of a curve from precision_recall_curve / curve_from_matches; nan without GT."""
    if curve is None:
        return float("nan")
    if len(curve["scores"]) == 0:
        return 0.0
    return _interpolated_area(curve["recall"], curve["precision"])


def _interpolated_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the PR curve with precision made monotone (VOC 2010+ all-point)."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(images_by_class: dict[str, Sequence[tuple]], iou_threshold: float) -> tuple[float, dict[str, float]]:
    """mAP over the classes that have ground truth, and each class's AP."""
    per_class = {name: average_precision(imgs, iou_threshold) for name, imgs in images_by_class.items()}
    scored = [ap for ap in per_class.values() if not np.isnan(ap)]
    return (float(np.mean(scored)) if scored else float("nan")), per_class


def auroc(y_true: Sequence[bool], scores: Sequence[float]) -> float:
    """Binary AUROC: P(score of a random positive > a random negative), ties half. nan if one class is absent."""
    y = np.asarray(y_true, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Imported here, not at the top: scipy.stats takes most of a second to import, and every
    # pipeline stage's process imports this module, most without computing an AUROC.
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(scores, dtype=np.float64))  # ties share their average rank
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def one_vs_rest_auroc(labels: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Macro AUROC over classes present as positives and negatives, and each class's AUROC.

    probabilities: (n, len(classes)), column k the probability of classes[k].
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    per_class = {c: auroc(labels == c, probabilities[:, k]) for k, c in enumerate(classes)}
    scored = [v for v in per_class.values() if not np.isnan(v)]
    return (float(np.mean(scored)) if scored else float("nan")), per_class


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class, in `classes` order."""
    unknown = (set(y_true) | set(y_pred)) - set(classes)
    if unknown:  # an error, not a count silently dropped
        raise ValueError(f"labels {sorted(unknown)} are not among the classes {list(classes)}")
    index = {c: k for k, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    rows = np.array([index[c] for c in y_true], dtype=np.intp)
    columns = np.array([index[c] for c in y_pred], dtype=np.intp)
    np.add.at(counts, (rows, columns), 1)
    return counts
