"""Acquisition strategies: which unlabeled images to label next.

    STRATEGIES                                  name -> Strategy class
    get_strategy(name, params=None)             -> a Strategy (params: its keyword settings)
    pool_from_predictions(image_ids, predictions, embeddings=None, labeled_embeddings=None,
                          labeled_counts=None) -> Pool
    labeled_class_counts(records, schema=None)  -> class name -> labeled images (Pool.labeled_counts)
    image_embeddings(classifier_model, images_or_paths, batch)  (cxrkit.selection.embeddings)
    thumbnail_embeddings(paths, size, components)               (the same; no model needed)

Every strategy is called as `strategy.select(pool, k, rng)` (cxrkit.selection.base). The
settings of each live in params.yaml under `select: strategies: <name>:`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from cxrkit.selection.base import Pool, SelectionError, Strategy
from cxrkit.selection.class_balanced import ClassBalanced, labeled_class_counts
from cxrkit.selection.coreset import CoreSet
from cxrkit.selection.detector_uncertainty import DetectorUncertainty
from cxrkit.selection.entropy import Entropy
from cxrkit.selection.flip import FlipDisagreement
from cxrkit.selection.hybrid import Hybrid
from cxrkit.selection.hybrid_random import HybridRandom
from cxrkit.selection.least_confidence import LeastConfidence
from cxrkit.selection.likely_positive import LikelyPositive
from cxrkit.selection.margin import Margin
from cxrkit.selection.random import RandomStrategy
from cxrkit.selection.typiclust import TypiClust
from cxrkit.selection.uncertainty import Uncertainty

log = logging.getLogger(__name__)

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (RandomStrategy, LeastConfidence, Entropy, Margin, FlipDisagreement, Uncertainty, CoreSet, Hybrid,
                TypiClust, ClassBalanced, LikelyPositive, DetectorUncertainty, HybridRandom)
}
# Strategies that read image embeddings (the caller computes them only for these), and those that
# rank without a model (no signals, no probabilities: the select flow's cold start); each class says.
NEEDS_EMBEDDINGS = frozenset(name for name, cls in STRATEGIES.items() if cls.needs_embeddings)
MODEL_FREE = frozenset(name for name, cls in STRATEGIES.items() if cls.model_free)
# The predictor's signals a pool carries (cxrkit.models.predictor.SIGNALS) plus the combined one,
# and "opacity": the detector's best opacity score (Prediction.top_opacity), evidence rather than doubt.
POOL_SIGNALS = ("detection", "box", "classifier", "margin", "subtype", "flip", "uncertainty", "opacity")


def get_strategy(name: str, params: dict | None = None) -> Strategy:
    """The strategy called `name`, built with `params` (its keyword settings, e.g. {"candidates_factor": 4})."""
    if name not in STRATEGIES:
        raise SelectionError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    try:
        return STRATEGIES[name](**(params or {}))
    except SelectionError:
        raise
    except (TypeError, ValueError) as exc:  # an unknown keyword, or a value of the wrong kind ("abc" for a number)
        raise SelectionError(f"strategy {name!r}: bad settings {params}: {exc}") from exc


def pool_from_predictions(image_ids: Sequence[str], predictions: Sequence, embeddings: np.ndarray | None = None,
                          labeled_embeddings: np.ndarray | None = None,
                          labeled_counts: dict[str, float] | None = None) -> Pool:
    """A Pool from predictor output (`Prediction`s, in the order of `image_ids`).

    Failed predictions (`error` set) are left out of the pool and listed in `pool.excluded`
    (image id -> error), with a warning; `embeddings` rows (aligned with image_ids) follow.
    Signals that do not apply to an image (None) become NaN; probs are the whole-image
    classifier's, columns in the first prediction's class order (`pool.classes`).
    labeled_counts: the labeled set's classes (`labeled_class_counts`), for class-aware strategies."""
    if len(image_ids) != len(predictions):
        raise SelectionError(f"{len(image_ids)} image ids but {len(predictions)} predictions")
    if embeddings is not None and len(embeddings) != len(image_ids):
        raise SelectionError(f"{len(image_ids)} image ids but {len(embeddings)} embeddings")
    keep, excluded = [], {}
    for i, (image_id, p) in enumerate(zip(image_ids, predictions)):
        if p.error is not None:
            excluded[str(image_id)] = str(p.error)
        else:
            keep.append(i)
    if excluded:
        log.warning("%d of %d images left out of the pool (prediction failed), e.g. %s: %s", len(excluded),
                    len(image_ids), *next(iter(excluded.items())))
    kept = [predictions[i] for i in keep]
    signals = {name: np.array([_nan(_signal(p, name)) for p in kept], dtype=np.float64) for name in POOL_SIGNALS}
    probs = classes = None
    if kept and all(p.image_probs for p in kept):
        classes = list(kept[0].image_probs)
        probs = np.array([[p.image_probs.get(c, 0.0) for c in classes] for p in kept], dtype=np.float64)
    return Pool(
        image_ids=[str(image_ids[i]) for i in keep],
        signals=signals,
        probs=probs,
        embeddings=None if embeddings is None else np.asarray(embeddings)[keep],
        labeled_embeddings=labeled_embeddings,
        excluded=excluded,
        classes=classes,
        labeled_counts=labeled_counts,
    )


def _signal(prediction, name: str):
    if name == "uncertainty":
        return prediction.uncertainty
    if name == "opacity":
        return prediction.top_opacity
    return prediction.signals.get(name)


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


__all__ = ["STRATEGIES", "NEEDS_EMBEDDINGS", "MODEL_FREE", "Pool", "SelectionError", "Strategy", "get_strategy",
           "labeled_class_counts", "pool_from_predictions"]
