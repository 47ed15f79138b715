"""Uncertainty plus diversity for batch selection.

Taking the k most uncertain images tends to take k near-copies of the same hard case;
taking the k most spread-out ones (core-set) ignores what the model already knows. So:
1. the M = candidates_factor x k most uncertain images (`signal`, default the predictor's
   combined uncertainty) are the candidates;
2. greedy k-center (cxrkit.selection.coreset) among the candidates picks k of them that are
   far from each other and from the already-labeled images.

The full ranking (`scores`, what the select flow writes to Label Studio) is successive batches
of `batch_size`: the first batch as above, then the same on the images left, and so on, so
labeling the queue top-down in batches of that size follows the strategy.
"""
from __future__ import annotations

import numpy as np

from cxrkit.selection.base import (
    Pool,
    SelectionError,
    Strategy,
    check_k,
    rank_scores,
    ranked,
)
from cxrkit.selection.coreset import k_center_greedy


class Hybrid(Strategy):
    name = "hybrid"

    def __init__(self, candidates_factor: float = 4.0, signal: str = "uncertainty", batch_size: int = 20):
        if float(candidates_factor) < 1:
            raise SelectionError(f"hybrid candidates_factor must be >= 1, got {candidates_factor}")
        if int(batch_size) < 1:
            raise SelectionError(f"hybrid batch_size must be >= 1, got {batch_size}")
        self.candidates_factor = float(candidates_factor)
        self.signal = signal
        self.batch_size = int(batch_size)

    def select(self, pool: Pool, k: int, rng: np.random.Generator) -> list[int]:
        k = check_k(pool, k)
        emb, labeled = pool.need_embeddings(self.name)
        by_uncertainty = ranked(pool.signal(self.signal), rng)
        candidates = np.asarray(by_uncertainty[: max(k, int(np.ceil(self.candidates_factor * k)))], dtype=int)
        picked = k_center_greedy(emb[candidates], labeled, k, rng)
        return [int(candidates[i]) for i in picked]

    def scores(self, pool: Pool) -> np.ndarray:
        rng = np.random.default_rng(0)
        emb, labeled = pool.need_embeddings(self.name)
        left = np.arange(len(pool))
        order: list[int] = []
        while len(left):
            centers = [x for x in (labeled, emb[order] if order else None) if x is not None]
            sub = Pool([pool.image_ids[i] for i in left], {self.signal: pool.signal(self.signal)[left]},
                       embeddings=emb[left], labeled_embeddings=np.vstack(centers) if centers else None)
            batch = [int(left[i]) for i in self.select(sub, self.batch_size, rng)]
            order.extend(batch)
            left = np.setdiff1d(left, batch, assume_unique=True)
        return rank_scores(order, len(pool))
