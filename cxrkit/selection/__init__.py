"""Acquisition strategies: which unlabeled images to label next.

    STRATEGIES                                  name -> Strategy class
    get_strategy(name, params=None)             -> a Strategy (params: its keyword settings)
    pool_from_predictions(image_ids, predictions, embeddings=None, labeled_embeddings=None) -> Pool
    image_embeddings(classifier_model, images_or_paths, batch)  (cxrkit.selection.embeddings)

Every strategy is called as `strategy.select(pool, k, rng)` (cxrkit.selection.base). The
settings of each live in params.yaml under `select: strategies: <name>:`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from cxrkit.selection.base import Pool, SelectionError, Strategy
from cxrkit.selection.coreset import CoreSet
from cxrkit.selection.entropy import Entropy
from cxrkit.selection.flip import FlipDisagreement
from cxrkit.selection.hybrid import Hybrid
from cxrkit.selection.least_confidence import LeastConfidence
from cxrkit.selection.margin import Margin
from cxrkit.selection.random import RandomStrategy
from cxrkit.selection.uncertainty import Uncertainty

log = logging.getLogger(__name__)

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (RandomStrategy, LeastConfidence, Entropy, Margin, FlipDisagreement, Uncertainty, CoreSet, Hybrid)
}
# Strategies that read image embeddings (the caller computes them only for these).
NEEDS_EMBEDDINGS = frozenset({"coreset", "hybrid"})
# The predictor's signals a pool carries (cxrkit.models.predictor.SIGNALS) plus the combined one.
POOL_SIGNALS = ("detection", "box", "classifier", "margin", "subtype", "flip", "uncertainty")


def get_strategy(name: str, params: dict | None = None) -> Strategy:
    """The strategy called `name`, built with `params` (its keyword settings, e.g. {"candidates_factor": 4})."""
    if name not in STRATEGIES:
        raise SelectionError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    try:
        return STRATEGIES[name](**(params or {}))
    except TypeError as exc:
        raise SelectionError(f"strategy {name!r}: bad settings {params}: {exc}") from exc


def pool_from_predictions(image_ids: Sequence[str], predictions: Sequence, embeddings: np.ndarray | None = None,
                          labeled_embeddings: np.ndarray | None = None) -> Pool:
    """A Pool from predictor output (`Prediction`s, in the order of `image_ids`).

    Failed predictions (`error` set) are left out of the pool and listed in `pool.excluded`
    (image id -> error), with a warning; `embeddings` rows (aligned with image_ids) follow.
    Signals that do not apply to an image (None) become NaN; probs are the whole-image
    classifier's, columns in the first prediction's class order."""
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
    signals = {name: np.array([_nan(p.uncertainty if name == "uncertainty" else p.signals.get(name)) for p in kept],
                              dtype=np.float64) for name in POOL_SIGNALS}
    probs = None
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
    )


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


__all__ = ["STRATEGIES", "NEEDS_EMBEDDINGS", "Pool", "SelectionError", "Strategy", "get_strategy",
           "pool_from_predictions"]
