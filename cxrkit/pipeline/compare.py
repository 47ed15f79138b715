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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Record
from cxrkit.evaluation.metrics import (
    OPERATING_GRID,
    curve_average_precision,
    curve_from_matches,
    image_matches,
    one_vs_rest_auroc,
    rsna_operating_point,
)
from cxrkit.models.classifier import classifier_probabilities, load_classifier
from cxrkit.models.detector import evaluate_detector, load_detector
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
    conf, rsna_conf = float(det.get("conf", 0.01)), float(det.get("rsna_conf", 0.3))
    evaluated = [evaluate_detector(load_detector(v.detector_weights), records, data_dir, int(v.params["detector"]["imgsz"]),
                                   conf=conf, rsna_conf=rsna_conf, schema=schema, keep_images=True)["images"]
                 for v in (candidate, current)]
    n = len(evaluated[0]["image_ids"])
    if n == 0:
        return {}
    if evaluated[0]["image_ids"] != evaluated[1]["image_ids"]:
        raise ValueError("the two detectors were scored on different images: a paired comparison needs the same ones")
    draws = [np.arange(n)] + [rng.integers(0, n, n) for _ in range(resamples)]  # the first: every image once
    readers = detector_readers(schema.opacity, conf, rsna_conf)
    out = {}
    for name, reader in readers.items():
        entry = paired(reader(evaluated[0]["by_class"]), reader(evaluated[1]["by_class"]), draws)
        if entry is not None:
            out[name] = entry
    return out


def detector_readers(opacity: str, conf: float, rsna_conf: float) -> dict:
    """{gate metric: a function of one model's kept images per finding (evaluate_detector's
    images["by_class"]) that returns a function of drawn image indices -> the metric on them}.
    detector.rsna: boxes >= the fixed rsna_conf; detector.rsna_operating: the model's best RSNA
    score over OPERATING_GRID (>= conf), the evaluate stage's operating point, chosen again on
    every draw so that an interval holds the choice's noise too. Why both: the score counts every
    box as a guess, so two models whose box scores run differently are read unequally at one
    threshold (BENCHMARKS.md, "The promotion gate at one threshold or at each model's own": the
    default gate reads the fixed one)."""
    grid = [t for t in OPERATING_GRID if t >= conf]
    return {"detector.rsna": lambda by_class: read_best_rsna(by_class[opacity], [rsna_conf]),
            "detector.rsna_operating": lambda by_class: read_best_rsna(by_class[opacity], grid),
            "detector.map50": read_map50}


def paired(candidate: Callable[[np.ndarray], float], current: Callable[[np.ndarray], float],
           draws: list[np.ndarray]) -> dict | None:
    """_summary of candidate - current over `draws` of image indices (the first: the images
    compared, the rest their bootstrap resamples); None when the first draw leaves a metric undefined."""
    values = np.array([[candidate(idx), current(idx)] for idx in draws])
    if np.isnan(values[0]).any():
        return None
    return _summary(values[0, 0], values[0, 1], values[1:, 0] - values[1:, 1], len(draws[0]))


def read_best_rsna(images: list[tuple], thresholds: list[float]) -> Callable[[np.ndarray], float]:
    """One class's kept images (gt, boxes, scores) -> a function of drawn image indices: the best
    RSNA score over `thresholds` on those images, chosen as the evaluate stage chooses its
    operating point (cxrkit.evaluation.metrics.rsna_operating_point)."""
    choose = rsna_operating_point(images, thresholds)
    return lambda idx: choose(idx)[1]


def read_map50(by_class: dict) -> Callable[[np.ndarray], float]:
    """One model's kept images per finding -> a function of drawn image indices: mAP@0.5 on them
    (per finding the AP of their matches, matched once; the mean over findings with ground truth)."""
    matches = {finding: image_matches(images, 0.5) for finding, images in by_class.items()}

    def read(idx: np.ndarray) -> float:
        aps = [curve_average_precision(curve_from_matches([m[i] for i in idx])) for m in matches.values()]
        aps = [a for a in aps if not np.isnan(a)]
        return float(np.mean(aps)) if aps else np.nan
    return read


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
