"""Image embeddings for the diversity strategies: the subtype classifier's penultimate features.

    image_embeddings(classifier_model, images_or_paths, batch=32) -> (n, d) float32, rows of length 1

The classifier already looks at chest films (what the workbench trained it on), so two films
it "sees" alike are close here. The features are the input of the final layer (a forward hook
on it while `predict_logits` runs, so the preprocessing is exactly the classifier's), e.g. the
512 pooled features of a ResNet-18, L2-normalised so that k-center distances compare
directions, not the activations' scale.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from torch import nn

from cxrkit.selection.base import SelectionError


def final_layer(model: nn.Module) -> nn.Module:
    """The layer whose input is the penultimate features (torchvision resnet / densenet / efficientnet)."""
    for name in ("fc", "classifier", "head"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Module):
            return layer
    raise SelectionError(f"cannot find the final layer of a {type(model).__name__} (expected .fc or .classifier)")


def image_embeddings(classifier_model: nn.Module, images: Sequence[np.ndarray | str | os.PathLike],
                     batch: int = 32) -> np.ndarray:
    """L2-normalised penultimate features of grey images (2-D arrays) or image files, in order."""
    from cxrkit.models.classifier import predict_logits, read_grey

    pixels = [read_grey(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x) for x in images]
    captured: list[np.ndarray] = []

    def keep_input(_module, inputs, _output):
        captured.append(inputs[0].detach().float().flatten(1).cpu().numpy())

    hook = final_layer(classifier_model).register_forward_hook(keep_input)
    try:
        predict_logits(classifier_model, pixels, batch_size=max(1, int(batch)))
    finally:
        hook.remove()
    if not captured:
        return np.zeros((0, 0), dtype=np.float32)
    feats = np.concatenate(captured).astype(np.float32)
    return feats / np.clip(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12, None)
