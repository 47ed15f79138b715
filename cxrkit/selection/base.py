"""The interface every acquisition strategy implements (one strategy per module in this package).

A strategy ranks a pool of unlabeled images from what the current model said about them.
The select flow (flows/select.py) and the active-learning benchmark both call it the same
way, so adding a strategy is adding a file here and registering its name in STRATEGIES.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pool:
    """The unlabeled images, in a fixed order; strategies return indices into it.

    image_ids: the manifest's image ids.
    signals: per-image uncertainty signals, name -> array of len(image_ids), each in [0, 1],
        higher = less sure (cxrkit.models.predictor.SIGNALS plus "uncertainty", the combined one);
        NaN where a signal does not apply to an image.
    probs: the whole-image classifier's class probabilities, shape (n, K), or None.
    embeddings: image embeddings for diversity (n, d), or None.
    labeled_embeddings: embeddings of the images already labeled (m, d), or None; core-set
        strategies keep away from these too.
    """

    image_ids: list[str]
    signals: dict[str, np.ndarray]
    probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    labeled_embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_ids)


class Strategy:
    """Base class: `name` is what params.yaml and the CLI call it."""

    name: str = ""

    def scores(self, pool: Pool) -> np.ndarray:
        """One acquisition score per image (higher = label sooner). Batch-aware strategies
        (diversity, hybrid) that cannot score images independently return their rank order
        turned into a score instead (first = highest)."""
        raise NotImplementedError

    def select(self, pool: Pool, k: int, rng: np.random.Generator) -> list[int]:
        """The k images to label next, most informative first (indices into pool)."""
        order = np.argsort(-self.scores(pool), kind="stable")
        return [int(i) for i in order[:k]]
