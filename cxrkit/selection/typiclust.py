"""TypiClust: the most typical image of each uncovered cluster, for a cold start (tiny labeled set).

Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High and Low
Budgets" (ICML 2022): with few labels, the images worth labeling are the *typical* ones, in
dense regions that stand for many others, not the uncertain outliers that uncertainty and
core-set go for (and with no model yet there is no uncertainty at all). So, in an embedding:
1. k-means splits the labeled images plus the pool into (number labeled + k) clusters, at most
   `max_clusters`, so that there are k clusters with nothing labeled in them;
2. k times: the largest cluster with no labeled image and no pick yet gives its most typical
   image, typicality = 1 / mean Euclidean distance to its `neighbors` nearest neighbours in the
   cluster (a density estimate; at most cluster size - 1 of them).
When every cluster is covered (the cap, duplicate embeddings, a pool smaller than k), the
next pick comes from the cluster with the fewest labeled and picked images, largest first (the
authors' code orders its clusters the same way). Ties in typicality (duplicates) go to `rng`.

The full ranking (`scores`, what the select flow writes to Label Studio) is successive batches
of `batch_size`, each clustered anew with the earlier picks counted as labeled, so labeling the
queue top-down in batches of that size follows the strategy. Once the cluster count is capped
the clustering stops changing from batch to batch, and the rest is ranked in one pass.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from cxrkit.selection.base import (
    Pool,
    SelectionError,
    Strategy,
    check_k,
    rank_scores,
)


class TypiClust(Strategy):
    name = "typiclust"
    needs_embeddings = True
    model_free = True  # any embeddings will do, thumbnails' included

    def __init__(self, neighbors: int = 20, max_clusters: int = 500, batch_size: int = 20):
        for setting, value in (("neighbors", neighbors), ("max_clusters", max_clusters), ("batch_size", batch_size)):
            if int(value) < 1:
                raise SelectionError(f"typiclust {setting} must be >= 1, got {value}")
        self.neighbors = int(neighbors)
        self.max_clusters = int(max_clusters)
        self.batch_size = int(batch_size)

    def select(self, pool: Pool, k: int, rng: np.random.Generator) -> list[int]:
        k = check_k(pool, k)
        points, known = _points(pool, self.name)
        seed = int(rng.integers(2**31 - 1))
        return [i - known for i in self._picks(points, np.arange(len(points)) < known, k, seed, rng)]

    def scores(self, pool: Pool) -> np.ndarray:
        # The rng as select(pool, batch_size, default_rng(0)) uses it: the first batch is that selection.
        rng = np.random.default_rng(0)
        points, known = _points(pool, self.name)
        seed = int(rng.integers(2**31 - 1))
        fixed = np.arange(len(points)) < known
        cap = self._cluster_cap(points)
        order: list[int] = []
        while len(order) < len(pool):
            left = len(pool) - len(order)
            k = left if int(fixed.sum()) + self.batch_size >= cap else self.batch_size
            batch = self._picks(points, fixed, k, seed, rng)
            fixed[batch] = True
            order.extend(i - known for i in batch)
        return rank_scores(order, len(pool))

    def _cluster_cap(self, points: np.ndarray) -> int:
        # k-means cannot make more clusters than there are distinct points.
        return min(self.max_clusters, len(np.unique(points, axis=0)))

    def _picks(self, points: np.ndarray, fixed: np.ndarray, k: int, seed: int, rng: np.random.Generator) -> list[int]:
        """k rows of `points` not in `fixed` (labeled, or picked in an earlier batch), in pick order."""
        k = min(k, int((~fixed).sum()))
        if k == 0:
            return []
        from sklearn.cluster import (
            KMeans,  # here: importing the selection package stays light
        )

        clusters = min(int(fixed.sum()) + k, self._cluster_cap(points))
        # n_init=1: k-means++ seeding, scikit-learn's default; random_state makes it repeatable.
        labels = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit_predict(points)
        size = np.bincount(labels, minlength=clusters)
        covered = np.bincount(labels[fixed], minlength=clusters)  # labeled, then also picked, per cluster
        left = np.bincount(labels[~fixed], minlength=clusters)  # pool rows not picked yet, per cluster
        queues: dict[int, deque[int]] = {}  # cluster -> its pool rows, most typical first (when first needed)
        picks: list[int] = []
        for _ in range(k):
            open_ = np.flatnonzero(left)
            # Fewest labeled + picked first (0: uncovered), then the largest; then the lowest cluster id.
            best = int(open_[np.lexsort((-size[open_], covered[open_]))[0]])
            if best not in queues:
                queues[best] = deque(self._by_typicality(points, labels, fixed, best, rng))
            picks.append(queues[best].popleft())
            covered[best] += 1
            left[best] -= 1
        return picks

    def _by_typicality(self, points: np.ndarray, labels: np.ndarray, fixed: np.ndarray, cluster: int,
                       rng: np.random.Generator) -> list[int]:
        """The cluster's pool rows, most typical first; typicality over all its members, labeled ones too."""
        members = np.flatnonzero(labels == cluster)
        spread = mean_neighbor_distance(points[members], min(self.neighbors, len(members) - 1))
        order = np.lexsort((rng.random(len(members)), spread))
        return [int(members[i]) for i in order if not fixed[members[i]]]


def mean_neighbor_distance(points: np.ndarray, neighbors: int, chunk: int = 1024) -> np.ndarray:
    """Mean Euclidean distance of each point to its `neighbors` nearest others (0 when neighbors is 0).

    Plain numpy, a block of rows at a time (memory chunk x len(points)): the clusters are many
    and mostly small, where a neighbour index costs more to build than it saves."""
    out = np.zeros(len(points))
    if neighbors < 1:
        return out
    sq = (points**2).sum(axis=1)
    for start in range(0, len(points), chunk):
        block = slice(start, start + chunk)
        d2 = np.clip(sq[block, None] + sq[None, :] - 2.0 * points[block] @ points.T, 0.0, None)
        # Each point is its own nearest neighbour (distance 0): take neighbors + 1 and drop one
        # zero, right even among duplicates, which only trade places with it at the same distance.
        nearest = np.partition(d2, neighbors, axis=1)[:, : neighbors + 1]
        out[block] = (np.sqrt(nearest).sum(axis=1) - np.sqrt(nearest.min(axis=1))) / neighbors
    return out


def _points(pool: Pool, strategy: str) -> tuple[np.ndarray, int]:
    """The labeled embeddings, then the pool's, as one matrix; and how many labeled rows lead it."""
    emb, labeled = pool.need_embeddings(strategy)
    if labeled is None:
        return emb, 0
    return np.vstack([labeled, emb]), len(labeled)
