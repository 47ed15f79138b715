"""Least confidence: 1 - the whole-image classifier's top class probability."""
from __future__ import annotations

import numpy as np

from cxrkit.selection.base import Pool, Strategy


class LeastConfidence(Strategy):
    name = "least_confidence"

    def scores(self, pool: Pool) -> np.ndarray:
        return 1.0 - pool.need_probs(self.name).max(axis=1)
