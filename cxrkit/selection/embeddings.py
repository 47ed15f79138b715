"""Image embeddings for the diversity and cold-start strategies.

    image_embeddings(classifier_model, images_or_paths, batch=32) -> (n, d) float32, rows of length 1
    thumbnail_embeddings(paths, size=32, components=32)           -> (n, components), unreadable rows

`image_embeddings`: the subtype classifier's penultimate features. The classifier already looks
at chest films (what the workbench trained it on), so two films it "sees" alike are close here.
The features are the input of the final layer (a forward hook on it while `predict_logits`
runs, so the preprocessing is exactly the classifier's), e.g. the 512 pooled features of a
ResNet-18, L2-normalised so that k-center distances compare directions, not the activations'
scale. The select flow does not call it: its scoring pass keeps the same features with each
prediction (`Prediction.embedding`, cxrkit.models.predictor), cached per model version.

`thumbnail_embeddings`: what there is before any model (the select flow's cold start). Each
film shrunk to a size x size grey thumbnail and standardised (so exposure and contrast do not
set the distance), then PCA over the films given: the directions along which these films
vary most, not pixel noise. Crude next to learned features, but it needs nothing trained, and
TypiClust only needs "alike" to mean roughly alike.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
from torch import nn

from cxrkit.selection.base import SelectionError


def image_embeddings(classifier_model: nn.Module, images: Sequence[np.ndarray | str | os.PathLike],
                     batch: int = 32) -> np.ndarray:
    """L2-normalised penultimate features of grey images (2-D arrays) or image files, in order.
    Files are read `batch` at a time: memory holds one batch of films, not the pool."""
    from cxrkit.models.classifier import (
        penultimate_features,
        predict_logits,
        read_grey,
        unit_rows,
    )

    batch = max(1, int(batch))
    with penultimate_features(classifier_model) as captured:
        for start in range(0, len(images), batch):
            pixels = [read_grey(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x)
                      for x in images[start: start + batch]]
            predict_logits(classifier_model, pixels, batch_size=batch)
    if not captured:
        return np.zeros((0, 0), dtype=np.float32)
    return unit_rows(np.concatenate(captured))


def thumbnail_embeddings(paths: Sequence[str | os.PathLike], size: int = 32,
                         components: int = 32) -> tuple[np.ndarray, dict[int, str]]:
    """L2-normalised PCA features of the files' standardised size x size grey thumbnails, in order.

    Returns the (n, components) float64 embeddings and the rows that could not be read
    (row -> why, naming the file); those rows are NaN and take no part in the PCA, so one
    broken file does not stop the others. The PCA is fitted on the readable files given, so
    embed every image that is compared (pool and labeled) in one call. A component's sign is
    fixed (its largest loading positive), so the same files give the same embeddings. With
    fewer files than components, the missing dimensions are 0."""
    if int(size) < 1 or int(components) < 1:
        raise SelectionError(f"thumbnail size and components must be >= 1, got {size} and {components}")
    size, components = int(size), int(components)
    rows, failed = [], {}
    for i, path in enumerate(paths):
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            failed[i] = f"cannot read image {path} (missing, or not an image file)"
            continue
        # Resized in float: a uint8 resize rounds, and the same film brighter would embed elsewhere.
        thumb = cv2.resize(grey.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA).ravel()
        thumb = thumb.astype(np.float64)
        rows.append((thumb - thumb.mean()) / max(float(thumb.std()), 1e-6))
    out = np.full((len(rows) + len(failed), components), np.nan)
    ok = [i for i in range(len(out)) if i not in failed]
    if rows:
        out[ok] = _pca(np.array(rows), components)
    return out, failed


def _pca(x: np.ndarray, components: int) -> np.ndarray:
    """Rows of x projected on its first `components` principal axes, then L2-normalised."""
    centred = x - x.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:components]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    proj = np.zeros((len(x), components))
    proj[:, : len(axes)] = centred @ axes.T
    # A film equal to the mean of all of them (e.g. the only one) stays a zero row.
    return proj / np.clip(np.linalg.norm(proj, axis=1, keepdims=True), 1e-12, None)
