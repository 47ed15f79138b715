"""Uncertainty corrected by class rarity: label what the model is unsure of, rare classes first.

Plain uncertainty sampling is biased towards the classes the model already does well on, so
the labeled set drifts away from the rare ones (Elezi et al., "Not All Labels Are Equal:
Rationalizing the Labeling Costs for Training Object Detection", CVPR 2022, who add a
robustness term for it). PPAL's difficulty-calibrated uncertainty (Yang et al., "Plug and Play
Active Learning for Object Detection", CVPR 2024) re-weights uncertainty by a per-class
coefficient. Here the coefficient is how rare the class is in the labeled set (what the
workbench knows without extra passes; a viral or fungal pneumonia is rare next to Normal and
bacterial), and the class of an unlabeled image is the whole-image classifier's guess, so it
is an expectation:

    score = signal x (1 + rarity_weight x sum_c P(c | image) r_c) / (1 + rarity_weight)
    r_c   = (n + K) / (K (n_c + 1)), divided by its largest value (so r_c is in (0, 1])

with n_c the labeled images of class c (`pool.labeled_counts`, `labeled_class_counts`), n
their sum and K the classifier's classes (the +1 keeps an unseen class finite and the rarest).
Two images equally uncertain: the one likely of a rare class goes first. The division keeps
the score in [0, 1] like the signal. Without counts (or with equal ones) every r_c is 1 and
the score *is* the signal, so the ranking is plain `signal` sampling.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.selection.base import Pool, SelectionError, Strategy

log = logging.getLogger(__name__)


def labeled_class_counts(records: Iterable, schema: LabelSchema | None = None) -> dict[str, float]:
    """Class name -> number of labeled records of that whole-image classifier class
    (`cxrkit.models.classifier.record_class`: the subtype, else Normal); records without one
    (unlabeled, pneumonia without a subtype, other abnormality) are not counted."""
    # Imported here: the classifier module imports torch, which ranking a pool never needs.
    from cxrkit.models.classifier import record_class

    schema = schema or load_schema()
    counts = Counter(record_class(r, schema) for r in records)
    counts.pop(None, None)
    return {name: float(n) for name, n in sorted(counts.items())}


def class_rarity(classes: Sequence[str], counts: Mapping[str, float] | None) -> np.ndarray:
    """r_c of each class (module docstring): 1 for every class without counts."""
    if not counts:
        return np.ones(len(classes))
    unknown = sorted(set(counts) - set(classes))
    if unknown:
        log.warning("labeled classes %s are not among the classifier's %s: not counted", unknown, list(classes))
    n_c = np.array([float(counts.get(c, 0.0)) for c in classes])
    k = len(classes)
    inverse = (n_c.sum() + k) / (k * (n_c + 1.0))
    return inverse / inverse.max()


class ClassBalanced(Strategy):
    name = "class_balanced"

    def __init__(self, signal: str = "uncertainty", rarity_weight: float = 1.0):
        if float(rarity_weight) < 0:
            raise SelectionError(f"class_balanced rarity_weight must be >= 0 (0 = plain {signal}), got {rarity_weight}")
        self.signal = signal
        self.rarity_weight = float(rarity_weight)

    def scores(self, pool: Pool) -> np.ndarray:
        signal = pool.signal(self.signal)
        probs = pool.need_probs(self.name)
        if pool.labeled_counts and pool.classes is None:
            raise SelectionError("class_balanced: pool.labeled_counts needs pool.classes (the names of the probs "
                                 "columns); build the pool with pool_from_predictions")
        classes = pool.classes if pool.classes is not None else [str(i) for i in range(probs.shape[1])]
        if len(classes) != probs.shape[1]:
            raise SelectionError(f"pool.classes names {len(classes)} classes but pool.probs has {probs.shape[1]} columns")
        expected = probs @ class_rarity(classes, pool.labeled_counts)
        w = self.rarity_weight
        return signal * (1.0 + w * expected) / (1.0 + w)
