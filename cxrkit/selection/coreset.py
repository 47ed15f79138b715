"""Core-set (greedy k-center) on image embeddings: pick images far from everything chosen so far.

Sener & Savarese (2018): the batch that best covers the pool is approximated by repeatedly
taking the image farthest from its nearest "center", where the centers are the images
already labeled (`pool.labeled_embeddings`) plus the ones picked in this batch. So the batch
is spread out and keeps away from what the model has already been taught. Distances are
Euclidean between embeddings (L2-normalised by `image_embeddings`, so this is a monotone
function of cosine similarity). Ties, e.g. the first pick when nothing is labeled yet (every
distance is infinite), go to `rng`.
"""
from __future__ import annotations

import numpy as np

from cxrkit.selection.base import Pool, SelectionError, Strategy, check_k, rank_scores


def nearest_distance(points: np.ndarray, centers: np.ndarray | None, chunk: int = 1024) -> np.ndarray:
    """Distance of each point to its nearest center (inf for every point when there is none)."""
    out = np.full(len(points), np.inf)
    if centers is None or len(centers) == 0:
        return out
    c2 = (centers**2).sum(axis=1)
    for start in range(0, len(points), chunk):
        p = points[start : start + chunk]
        d2 = (p**2).sum(axis=1)[:, None] + c2[None, :] - 2.0 * p @ centers.T
        out[start : start + chunk] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


def k_center_greedy(points: np.ndarray, centers: np.ndarray | None, k: int, rng: np.random.Generator) -> list[int]:
    """k indices of `points`, each the one farthest from `centers` and the earlier picks."""
    dist = nearest_distance(points, centers)
    order: list[int] = []
    for _ in range(min(k, len(points))):
        best = np.flatnonzero(dist == dist.max())
        i = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
        order.append(i)
        dist = np.minimum(dist, np.sqrt(np.clip(((points - points[i]) ** 2).sum(axis=1), 0.0, None)))
        dist[i] = -np.inf  # never picked twice, even among duplicates
    return order


class CoreSet(Strategy):
    name = "coreset"
    needs_embeddings = True
    model_free = True  # any embeddings will do, thumbnails' included

    def __init__(self, depth: int = 2000):
        if int(depth) < 1:
            raise SelectionError(f"coreset depth must be >= 1, got {depth}")
        self.depth = int(depth)

    def scores(self, pool: Pool) -> np.ndarray:
        """The select flow's queue: the first `depth` places in k-center order (fixed rng), the
        rest by their distance to the nearest labeled or queued image, farthest first. k-center
        over the whole pool costs O(n^2 d), hours at 100,000 images; this, O(depth x n x d)."""
        emb, labeled = pool.need_embeddings(self.name)
        top = k_center_greedy(emb, labeled, min(self.depth, len(pool)), np.random.default_rng(0))
        rest = np.setdiff1d(np.arange(len(pool)), top)
        if len(rest):
            centers = [x for x in (labeled, emb[top]) if x is not None and len(x)]
            far = nearest_distance(emb[rest], np.vstack(centers))
            rest = rest[np.argsort(-far, kind="stable")]
        return rank_scores([*top, *rest.tolist()], len(pool))

    def select(self, pool: Pool, k: int, rng: np.random.Generator) -> list[int]:
        k = check_k(pool, k)
        emb, labeled = pool.need_embeddings(self.name)
        return k_center_greedy(emb, labeled, k, rng)
