"""Part of each batch hybrid's, the rest drawn at random from the pool.

Measured on the pretrained run's picks (BENCHMARKS.md "What the detector learns from the chosen
films"): at equal numbers of boxed films and beside the same negatives, hybrid's boxed films
teach the detector less than random's (mAP@0.5 0.646 against 0.714, lower in every repeat), and
they are the plainer ones (generator difficulty 0.475 against the pool's 0.517). A probe of what
each pool signal puts among hybrid's candidates (BENCHMARKS.md, the same section) finds every
model-driven signal's boxed films plainer than the pool's, with or without the subtype term: the
faint opacities score as low as the films without one, so no signal of the model can find them,
and a random draw finds them in the pool's proportion, along with the negatives that teach the
detector what is not an opacity. So each batch of k:
1. k - round(random_share x k) films as hybrid picks them (cxrkit.selection.hybrid: the most
   uncertain candidates, spread out by greedy k-center);
2. the rest uniformly at random among the films left.

The full ranking (`scores`, the select flow's queue) is successive batches of `batch_size`, each
hybrid's next films (hybrid's own queue in batches of its share) followed by the next films of a
fixed random order of the pool (the one random's `scores` uses), so labeling the queue top-down in
batches of that size follows the strategy.

Measured over 300 labels with the detector pretrained (BENCHMARKS.md "Half of each batch at
random"): it ends below hybrid in every repeat (mAP@0.5 0.757 against 0.819) and above random
(0.722), level with hybrid at equal numbers of boxed films. Its hybrid half, with candidates_factor x
its own share as candidates (80 for 20 films, where hybrid's batch of 40 has 160), took plainer
films than hybrid does, so its boxed films as a whole were as plain as hybrid's. With 8 x its share
(hybrid's 160; BENCHMARKS.md "From hybrid's candidates", 4 repeats) the half was as plain, and the
mix ended below hybrid on mAP@0.5 (0.765 against 0.790) and level on RSNA. hybrid stays the default,
this a setting.
"""
from __future__ import annotations

import numpy as np

from cxrkit.selection.base import Pool, SelectionError, check_k, rank_scores
from cxrkit.selection.hybrid import Hybrid
from cxrkit.selection.random import RandomStrategy


class HybridRandom(Hybrid):
    name = "hybrid_random"

    def __init__(self, random_share: float = 0.5, candidates_factor: float = 4.0, signal: str = "uncertainty",
                 batch_size: int = 20, depth: int = 2000):
        super().__init__(candidates_factor=candidates_factor, signal=signal, batch_size=batch_size, depth=depth)
        if not 0.0 <= float(random_share) <= 1.0:
            raise SelectionError(f"{self.name} random_share must be in [0, 1], got {random_share}")
        self.random_share = float(random_share)

    def hybrid_part(self, k: int) -> int:
        """How many films of a batch of k hybrid picks (the first ones `select` returns)."""
        return k - int(round(self.random_share * k))

    def select(self, pool: Pool, k: int, rng: np.random.Generator) -> list[int]:
        k = check_k(pool, k)
        n_hybrid = self.hybrid_part(k)
        picks = super().select(pool, n_hybrid, rng) if n_hybrid else []
        taken = set(picks)
        rest = [int(i) for i in rng.permutation(len(pool)) if int(i) not in taken]
        return picks + rest[: k - n_hybrid]

    def scores(self, pool: Pool) -> np.ndarray:
        n_hybrid = self.hybrid_part(self.batch_size)
        by_random = list(np.argsort(-RandomStrategy().scores(pool), kind="stable"))
        if n_hybrid == 0:
            return rank_scores([int(i) for i in by_random], len(pool))
        hybrid = Hybrid(self.candidates_factor, self.signal, n_hybrid, self.depth)
        by_hybrid = list(np.argsort(-hybrid.scores(pool), kind="stable"))
        taken = np.zeros(len(pool), dtype=bool)
        order: list[int] = []
        queues = [(by_hybrid, n_hybrid), (by_random, self.batch_size - n_hybrid)]
        heads = [0, 0]
        while len(order) < len(pool):
            for q, (queue, share) in enumerate(queues):
                added = 0
                while added < share and heads[q] < len(queue):
                    i = int(queue[heads[q]])
                    heads[q] += 1
                    if not taken[i]:
                        taken[i] = True
                        order.append(i)
                        added += 1
        return rank_scores(order, len(pool))
