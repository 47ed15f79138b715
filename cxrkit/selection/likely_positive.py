"""The films most likely to show an opacity first, spread out: label what the detector learns from.

A detector learns its boxes from the films that have them, and on the published population
only 22.5 % do (RSNA; BENCHMARKS.md "The synthetic population"): random order gives it one
boxed film in four or five labels. Uncertainty sampling does not correct that here: its
combined signal reads the whole-image classifier's entropy as much as the detector's, and at
the active-learning benchmark's sizes the classifier separates nothing (median P(Normal) 0.37
on normal and pneumonia films alike), while the detector's best opacity score does
(BENCHMARKS.md "Self-training's rules"). So, the issue's class-aware selection for the rarest
class of all, the positive film:
1. candidates: the M = candidates_factor x k films with the highest best opacity score (the
   pool's `opacity` signal, `Prediction.top_opacity`: over every box the detector returned,
   shown or not, so a young detector's low scores still rank);
2. greedy k-center among them, far from each other and from the labeled films, as hybrid
   (cxrkit.selection.hybrid) picks among its uncertain candidates, so a batch is not twenty
   views of one kind of opacity.
This is hybrid with the detector's evidence in place of doubt; the full ranking (`scores`, the
select flow's queue) follows hybrid's batches the same way.
"""
from __future__ import annotations

from cxrkit.selection.hybrid import Hybrid


class LikelyPositive(Hybrid):
    name = "likely_positive"

    def __init__(self, candidates_factor: float = 4.0, signal: str = "opacity", batch_size: int = 20,
                 depth: int = 2000):
        super().__init__(candidates_factor=candidates_factor, signal=signal, batch_size=batch_size, depth=depth)
