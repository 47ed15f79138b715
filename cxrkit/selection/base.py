"""The interface every acquisition strategy implements (one strategy per module in this package).

A strategy ranks a pool of unlabeled images from what the current model said about them.
The select flow (flows/select.py) and the active-learning benchmark both call it the same
way, `strategy.select(pool, k, rng)`, so adding a strategy is adding a file here and
registering its name in STRATEGIES (`cxrkit/selection/__init__.py`); its class says whether
it reads image embeddings (`needs_embeddings`) and whether it ranks with no model
(`model_free`), and the callers read that from there.

Ties: images with the same score are ordered by `rng` (not by pool order), so a strategy
whose signal is flat somewhere (e.g. a detector that finds nothing on most films) does not
quietly fall back to "the first images of the manifest". Images whose score is NaN (the
signal does not apply to them) come after every image that has one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class SelectionError(ValueError):
    """A pool or strategy setting a strategy cannot work with; the message says why."""


@dataclass
class Pool:
    """The unlabeled images, in a fixed order; strategies return indices into it.

    image_ids: the manifest's image ids.
    signals: per-image signals, name -> array of len(image_ids), each in [0, 1]: uncertainty ones,
        higher = less sure (cxrkit.models.predictor.SIGNALS plus "uncertainty", the combined one),
        and "opacity", the detector's best opacity score (higher = more likely pneumonia);
        NaN where a signal does not apply to an image.
    probs: the whole-image classifier's class probabilities, shape (n, K), or None.
    embeddings: image embeddings for diversity (n, d), or None.
    labeled_embeddings: embeddings of the images already labeled (m, d), or None; core-set
        strategies keep away from these too.
    excluded: image id -> why it is not in the pool (e.g. its prediction failed).
    classes: the class names of the columns of probs, or None.
    labeled_counts: class name -> number of labeled images of that class (the classifier's
        whole-image classes, `labeled_class_counts`), or None when not known; class-aware
        strategies correct for what the labeled set already has plenty of.
    """

    image_ids: list[str]
    signals: dict[str, np.ndarray]
    probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    labeled_embeddings: np.ndarray | None = None
    excluded: dict[str, str] = field(default_factory=dict)
    classes: list[str] | None = None
    labeled_counts: dict[str, float] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def signal(self, name: str) -> np.ndarray:
        """One signal as a float array; a clear error when the pool lacks it."""
        if name not in self.signals:
            raise SelectionError(f"the pool has no {name!r} signal (it has: {', '.join(sorted(self.signals)) or 'none'})")
        values = np.asarray(self.signals[name], dtype=np.float64)
        if values.shape != (len(self),):
            raise SelectionError(f"signal {name!r} has shape {values.shape}, expected ({len(self)},)")
        return values

    def need_probs(self, strategy: str) -> np.ndarray:
        if self.probs is None:
            raise SelectionError(f"strategy {strategy!r} needs the classifier's probabilities (pool.probs)")
        probs = np.asarray(self.probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != len(self) or probs.shape[1] < 2:
            raise SelectionError(f"pool.probs has shape {probs.shape}, expected ({len(self)}, K >= 2)")
        return probs

    def need_embeddings(self, strategy: str) -> tuple[np.ndarray, np.ndarray | None]:
        if self.embeddings is None:
            raise SelectionError(f"strategy {strategy!r} needs image embeddings (pool.embeddings)")
        emb = np.asarray(self.embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(self):
            raise SelectionError(f"pool.embeddings has shape {emb.shape}, expected ({len(self)}, d)")
        labeled = self.labeled_embeddings
        if labeled is not None:
            labeled = np.asarray(labeled, dtype=np.float64).reshape(-1, emb.shape[1]) if np.size(labeled) else None
        return emb, labeled


class Strategy:
    """Base class: `name` is what params.yaml and the CLI call it.

    Score-based strategies implement `scores`; batch-aware ones (diversity, hybrid) override
    `select` and derive `scores` from their ranking (`rank_scores`)."""

    name: str = ""
    # What a caller must supply: the pool's image embeddings (computed only for strategies that read
    # them), and whether the strategy ranks with no model at all (the select flow's cold start).
    needs_embeddings: bool = False
    model_free: bool = False

    def scores(self, pool: Pool) -> np.ndarray:
        """One acquisition score per image (higher = label sooner). Batch-aware strategies
        (diversity, hybrid) that cannot score images independently return their rank order
        turned into a score instead (first = highest)."""
        raise NotImplementedError

    def select(self, pool: Pool, k: int, rng: np.random.Generator) -> list[int]:
        """The k images to label next, most informative first (indices into pool)."""
        k = check_k(pool, k)
        return ranked(self.scores(pool), rng)[:k]


def check_k(pool: Pool, k: int) -> int:
    if int(k) < 0:
        raise SelectionError(f"cannot select {k} images")
    return min(int(k), len(pool))


def ranked(scores: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Indices by score, highest first; ties in random order (rng); NaN last."""
    s = np.asarray(scores, dtype=np.float64)
    key = np.where(np.isnan(s), -np.inf, s)
    tie = rng.random(len(s))
    return [int(i) for i in np.lexsort((tie, -key))]


def rank_scores(order: list[int], n: int) -> np.ndarray:
    """A ranking as scores in (0, 1]: the first of n gets 1, the last 1/n."""
    scores = np.zeros(n)
    scores[np.asarray(order, dtype=int)] = (n - np.arange(len(order))) / max(n, 1)
    return scores
