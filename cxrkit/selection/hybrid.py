"""Uncertainty plus diversity for batch selection.

Taking the k most uncertain images tends to take k near-copies of the same hard case;
taking the k most spread-out ones (core-set) ignores what the model already knows. So:
1. the M = candidates_factor x k most uncertain images (`signal`, default the predictor's
   combined uncertainty) are the candidates;
2. greedy k-center (cxrkit.selection.coreset) among the candidates picks k of them that are
   far from each other and from the already-labeled images.

The full ranking (`scores`, the select flow's queue) is successive batches of `batch_size`: the
first batch as above, then the same on the images left, and so on, so labeling the queue
top-down in batches of that size follows the strategy. Only the first `depth` places are ranked
that way; the rest follow in the signal's order. Diversity matters where radiologists will label
before the next model re-ranks the pool, and ranking all of it costs O(n^2 d): hours at 100,000
images. The top costs O(depth x (depth + M) x d) plus one pass of the candidates over the
labeled images' embeddings.
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
from cxrkit.selection.coreset import k_center_greedy, nearest_distance


class Hybrid(Strategy):
    name = "hybrid"
    needs_embeddings = True

    def __init__(self, candidates_factor: float = 4.0, signal: str = "uncertainty", batch_size: int = 20,
                 depth: int = 2000):
        if float(candidates_factor) < 1:
            raise SelectionError(f"{self.name} candidates_factor must be >= 1, got {candidates_factor}")
        if int(batch_size) < 1 or int(depth) < 1:
            raise SelectionError(f"{self.name} batch_size and depth must be >= 1, got {batch_size} and {depth}")
        self.candidates_factor = float(candidates_factor)
        self.signal = signal
        self.batch_size = int(batch_size)
        self.depth = int(depth)

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
        by_signal = ranked(pool.signal(self.signal), rng)
        m = max(self.batch_size, int(np.ceil(self.candidates_factor * self.batch_size)))
        # Distance to the nearest labeled or already queued image, kept up to date for the images
        # that have been candidates (`seen`); NaN for the others, which no batch has looked at.
        dist = np.full(len(pool), np.nan)
        taken = np.zeros(len(pool), dtype=bool)
        seen: list[int] = []
        order: list[int] = []
        head = 0  # every image before by_signal[head] is queued
        while len(order) < min(self.depth, len(pool)):
            while taken[by_signal[head]]:
                head += 1
            candidates, j = [], head
            while j < len(by_signal) and len(candidates) < m:
                if not taken[by_signal[j]]:
                    candidates.append(by_signal[j])
                j += 1
            new = [i for i in candidates if np.isnan(dist[i])]
            if new:
                centers = [x for x in (labeled, emb[order] if order else None) if x is not None]
                dist[new] = nearest_distance(emb[new], np.vstack(centers) if centers else None)
                seen.extend(new)
            batch_left = min(self.batch_size, self.depth - len(order))
            while batch_left and candidates:
                d = dist[candidates]
                best = np.flatnonzero(d == d.max())
                pick = candidates.pop(int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0]))
                order.append(pick)
                taken[pick] = True
                batch_left -= 1
                seen = [i for i in seen if not taken[i]]
                dist[seen] = np.minimum(dist[seen], np.linalg.norm(emb[seen] - emb[pick], axis=1))
        rest = [i for i in by_signal if not taken[i]]
        return rank_scores(order + rest, len(pool))
