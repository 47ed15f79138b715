"""The predictor's combined uncertainty (weighted mean of its signals, predictor.weights)."""
from __future__ import annotations

import numpy as np

from cxrkit.selection.base import Pool, Strategy


class Uncertainty(Strategy):
    name = "uncertainty"

    def __init__(self, signal: str = "uncertainty"):
        self.signal = signal  # any one signal of the pool can be ranked by directly

    def scores(self, pool: Pool) -> np.ndarray:
        return pool.signal(self.signal)
