"""The promotion gate's evidence: the candidate and the serving model on the same validation
images, each difference with a bootstrap interval.

Each version's stored metrics were measured on the validation images of its own round; the set
grows as images get labeled, so comparing those figures compares two different sets. Here both
models predict this round's validation images, and the difference of each gate metric gets a
95 % interval from a paired bootstrap: the same resampled images for both models, `resamples`
times. With 20 validation images an interval is wide, and a 0.02 difference inside it is noise,
not a reason to refuse a model (cxrkit.models.registry.Registry.promote reads the interval).

Detection metrics are resampled from per-image matches (cxrkit.evaluation.metrics.image_matches:
matching once, not per resample); the classifier's macro AUROC from per-sample probabilities,
resampling images (a film's crops go together).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Record
from cxrkit.evaluation.metrics import (
    curve_average_precision,
    curve_from_matches,
    image_matches,
    one_vs_rest_auroc,
    rsna_image_score,
    scored_at_least,
)
from cxrkit.models.classifier import classifier_probabilities, load_classifier
from cxrkit.models.detector import OPERATING_GRID, evaluate_detector, load_detector
from cxrkit.models.registry import ModelVersion

log = logging.getLogger(__name__)

CONFIDENCE = 0.95


def compare_versions(candidate: ModelVersion, current: ModelVersion, records: list[Record], data_dir: Path,
                     params: dict, resamples: int = 1000, seed: int = 0, schema: LabelSchema | None = None) -> dict:
    """{metric name: {"candidate", "current", "difference", "low", "high", "n"}} for detector.rsna,
    detector.rsna_operating, detector.map50 and classifier.macro_auroc, on `records` (this round's
    validation records). `params`: the round's knobs; each model predicts at its own version's
    input size, the metrics are defined by the round's (detector.conf, detector.rsna_conf,
    classifier samples).
    A metric that cannot be computed on these images (no ground truth) is left out."""
    schema = schema or load_schema()
    candidate.verify()
    current.verify()
    rng = np.random.default_rng(seed)
    out = {}
    out.update(_compare_detectors(candidate, current, records, data_dir, params, resamples, rng, schema))
    out.update(_compare_classifiers(candidate, current, records, data_dir, params, resamples, rng, schema))
    return out


def _summary(candidate_value: float, current_value: float, differences: np.ndarray, n: int) -> dict:
    differences = differences[~np.isnan(differences)]
    tail = (1 - CONFIDENCE) / 2
    low, high = (np.quantile(differences, [tail, 1 - tail]) if len(differences) else (np.nan, np.nan))
    return {"candidate": float(candidate_value), "current": float(current_value),
            "difference": float(candidate_value - current_value), "low": float(low), "high": float(high), "n": n}


def _compare_detectors(candidate: ModelVersion, current: ModelVersion, records: list[Record], data_dir: Path,
                       params: dict, resamples: int, rng: np.random.Generator, schema: LabelSchema) -> dict:
    det = params["detector"]
    conf = float(det.get("conf", 0.01))
    evaluated = [evaluate_detector(load_detector(v.detector_weights), records, data_dir, int(v.params["detector"]["imgsz"]),
                                   conf=conf, rsna_conf=float(det.get("rsna_conf", 0.3)),
                                   schema=schema, keep_images=True)["images"]
                 for v in (candidate, current)]
    n = len(evaluated[0]["image_ids"])
    if n == 0:
        return {}
    draws = [np.arange(n)] + [rng.integers(0, n, n) for _ in range(resamples)]  # the first: every image once
    return compare_detections(evaluated[0], evaluated[1], draws, schema.opacity, conf)


def compare_detections(candidate: dict, current: dict, draws: list[np.ndarray], opacity: str, conf: float) -> dict:
    """The detector metrics of two models' kept images (evaluate_detector's "images", the same
    images in the same order), each on every draw of image indices: the first draw is the
    metric's value, the rest its bootstrap resamples. {name: _summary} for detector.rsna (boxes
    >= the fixed rsna_conf), detector.rsna_operating (each model's best RSNA score over
    OPERATING_GRID, the threshold chosen again on each resample) and detector.map50."""
    evaluated = (candidate, current)
    n = len(candidate["image_ids"])
    out = {}

    # RSNA: the mean of per-image scores, over the images where the score is defined.
    per_image = [np.array([np.nan if (s := rsna_image_score(*img)) is None else s for img in e["rsna"]]) for e in evaluated]
    values = np.array([[np.nanmean(p[idx]) if not np.all(np.isnan(p[idx])) else np.nan for p in per_image]
                       for idx in draws])
    if not np.isnan(values[0]).any():
        out["detector.rsna"] = _summary(values[0, 0], values[0, 1], values[1:, 0] - values[1:, 1], n)

    # RSNA at each model's own threshold: the evaluate stage's operating point (the best of the
    # grid), chosen on the images drawn, so the interval holds the choice's noise too. Why: the
    # score counts every box as a guess, and two models whose box scores run differently are read
    # unequally at one threshold: below one's own its extra boxes count as guesses, above the
    # other's its true boxes drop out (BENCHMARKS.md, "The promotion gate at one threshold or at
    # each model's own": the default gate still reads the fixed one).
    grids = [rsna_by_threshold(e["by_class"][opacity], [t for t in OPERATING_GRID if t >= conf]) for e in evaluated]
    values = np.array([[_best_mean(g[:, idx]) for g in grids] for idx in draws])
    if not np.isnan(values[0]).any():
        out["detector.rsna_operating"] = _summary(values[0, 0], values[0, 1], values[1:, 0] - values[1:, 1], n)

    # mAP@0.5: per class, the AP of the resampled images' matches; the mean over classes with ground truth.
    matches = [{f: image_matches(imgs, 0.5) for f, imgs in e["by_class"].items()} for e in evaluated]

    def mean_ap(model: int, idx: np.ndarray) -> float:
        aps = [curve_average_precision(curve_from_matches([m[i] for i in idx])) for m in matches[model].values()]
        aps = [a for a in aps if not np.isnan(a)]
        return float(np.mean(aps)) if aps else np.nan

    values = np.array([[mean_ap(0, idx), mean_ap(1, idx)] for idx in draws])
    if not np.isnan(values[0]).any():
        out["detector.map50"] = _summary(values[0, 0], values[0, 1], values[1:, 0] - values[1:, 1], n)
    return out


def rsna_by_threshold(images: list[tuple], thresholds: list[float]) -> np.ndarray:
    """Per-image RSNA scores of one class's kept images (gt, boxes, scores) with the boxes at or
    above each threshold: [threshold, image], nan where an image has neither truth nor boxes."""
    return np.array([[np.nan if (s := rsna_image_score(*img)) is None else s for img in scored_at_least(images, t)]
                     for t in thresholds], dtype=np.float64).reshape(len(thresholds), len(images))


def _best_mean(scores: np.ndarray) -> float:
    """The best threshold's mean over images ([threshold, image], nan ignored); nan if none is defined."""
    defined = ~np.isnan(scores)
    counts = defined.sum(axis=1)
    if not counts.any():
        return np.nan
    means = np.where(defined, scores, 0.0).sum(axis=1)[counts > 0] / counts[counts > 0]
    return float(means.max())


def _compare_classifiers(candidate: ModelVersion, current: ModelVersion, records: list[Record], data_dir: Path,
                         params: dict, resamples: int, rng: np.random.Generator, schema: LabelSchema) -> dict:
    settings = params["classifier"]
    models = [load_classifier(v.classifier_checkpoint) for v in (candidate, current)]
    if list(models[0].classes) != list(models[1].classes):
        log.warning("the two classifiers have different classes (%s, %s): their AUROCs are not compared",
                     models[0].classes, models[1].classes)
        return {}
    evaluated = [classifier_probabilities(m, records, data_dir, settings, schema=schema) for m in models]
    samples = evaluated[0][0]
    if not samples:
        return {}
    classes = list(models[0].classes)
    labels = np.array([s.label for s in samples])
    image_ids = sorted({s.image_id for s in samples})
    rows = {image_id: [] for image_id in image_ids}
    for i, s in enumerate(samples):
        rows[s.image_id].append(i)
    n = len(image_ids)
    draws = [np.arange(n)] + [rng.integers(0, n, n) for _ in range(resamples)]

    def macro(model: int, idx: np.ndarray) -> float:
        chosen = [row for k in idx for row in rows[image_ids[k]]]
        return one_vs_rest_auroc(labels[chosen], evaluated[model][1][chosen], classes)[0]

    values = np.array([[macro(0, idx), macro(1, idx)] for idx in draws])
    if np.isnan(values[0]).any():
        return {}
    return {"classifier.macro_auroc": _summary(values[0, 0], values[0, 1], values[1:, 0] - values[1:, 1], n)}
