"""Margin: 1 - (top-1 minus top-2 probability) of the whole-image classifier (small margin first)."""
from __future__ import annotations

import numpy as np

from cxrkit.selection.base import Pool, Strategy


class Margin(Strategy):
    name = "margin"

    def scores(self, pool: Pool) -> np.ndarray:
        p = np.sort(pool.need_probs(self.name), axis=1)
        return 1.0 - (p[:, -1] - p[:, -2])
