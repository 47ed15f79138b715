"""Random sampling: the baseline every other strategy is measured against."""
from __future__ import annotations

import zlib

import numpy as np

from cxrkit.selection.base import Pool, Strategy, check_k


class RandomStrategy(Strategy):
    name = "random"
    model_free = True

    def scores(self, pool: Pool) -> np.ndarray:
        # Without an rng (the select flow writing scores), a fixed draw per pool: the same
        # unlabeled images get the same order on every run.
        seed = zlib.crc32("\0".join(pool.image_ids).encode())
        return np.random.default_rng(seed).random(len(pool))

    def select(self, pool: Pool, k: int, rng: np.random.Generator) -> list[int]:
        k = check_k(pool, k)
        return [int(i) for i in rng.permutation(len(pool))[:k]]
