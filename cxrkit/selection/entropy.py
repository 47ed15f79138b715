"""Entropy: Shannon entropy of the whole-image classifier's distribution, divided by log K."""
from __future__ import annotations

import numpy as np

from cxrkit.selection.base import Pool, Strategy


class Entropy(Strategy):
    name = "entropy"

    def scores(self, pool: Pool) -> np.ndarray:
        p = np.clip(pool.need_probs(self.name), 0.0, None)
        p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return h / np.log(p.shape[1])
