"""The films the detector is unsure of, spread out: hybrid on the detector's doubt alone.

hybrid (cxrkit.selection.hybrid) takes its candidates by the predictor's combined uncertainty,
the weighted mean of the detector's signals and the whole-image classifier's (params.yaml
`predictor.weights`: detection 1, classifier 1, subtype 0.5, flip 1). The detector is what the
target metrics (mAP@0.5, the RSNA metric) measure, and at the active-learning benchmark's sizes
the classifier's doubt says nothing about a film (BENCHMARKS.md "Self-training's rules": its
P(Normal) does not separate normal from pneumonia films). A probe of one repeat's pool (1,521
films, BENCHMARKS.md "The detector's doubt alone") shows what that costs once the detector has
learnt something: with a detector of 300 random labels, the 160 films of highest combined
uncertainty hold 86 boxed films, 47 "not normal" and 27 normal ones; the 160 of highest
`detection` signal (binary entropy of the film's best box score: highest where that score is
near 0.5) hold 153 boxed films and 7 "not normal" ones. So:
1. candidates: the M = candidates_factor x k films with the highest `detection` signal;
2. greedy k-center among them, far from each other and from the labeled films, as hybrid does.
Unlike likely_positive (the films with the *highest* opacity score, which a detector already
finds), these are the films whose best box the detector can neither keep nor drop: missed-looking
positives and the distractors it half believes. The full ranking (`scores`, the select flow's
queue) follows hybrid's batches the same way.

Measured over 300 labels (the same section): it labels 1.6 times hybrid's boxed films and saves
as many labels as hybrid on mAP@0.5 (67 % of random's), while its RSNA metric stalls for want of
normal films; hybrid stays the default, this a setting.
"""
from __future__ import annotations

from cxrkit.selection.hybrid import Hybrid


class DetectorUncertainty(Hybrid):
    name = "detector_uncertainty"

    def __init__(self, candidates_factor: float = 4.0, signal: str = "detection", batch_size: int = 20,
                 depth: int = 2000):
        super().__init__(candidates_factor=candidates_factor, signal=signal, batch_size=batch_size, depth=depth)
