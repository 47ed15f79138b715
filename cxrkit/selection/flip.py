"""Flip-TTA disagreement: how much the detector's boxes move or vanish on the mirrored film.

Reads the predictor's `flip` signal (predictor.flip must be on when the pool is scored)."""
from __future__ import annotations

import numpy as np

from cxrkit.selection.base import Pool, SelectionError, Strategy


class FlipDisagreement(Strategy):
    name = "flip"

    def scores(self, pool: Pool) -> np.ndarray:
        values = pool.signal("flip")
        if len(values) and np.isnan(values).all():
            raise SelectionError("strategy 'flip' needs the flip signal: set predictor.flip: true in params.yaml")
        return values
