"""Self-supervised pretraining of the detector on films nobody has labeled yet.

    pretrain_detector(image_paths, out_path, params) -> weights (.pt) to set as detector.weights

The detector trains from scratch (no pretrained weights are available offline), and its first
rounds see 20 to 100 labeled films. The unlabeled pool is a thousand films or more; this stage
teaches the detector's backbone and neck what chest films look like from those, before any label:
masked image modelling (SimMIM, Xie et al., CVPR 2022, with a convolutional encoder as SparK,
Tian et al., ICLR 2023): square patches of each film are blanked out, and the network learns to
paint them back from the rest. A one-layer decoder per feature level the detection head reads
(strides 8, 16, 32) turns each level into pixels (a 1x1 convolution and a pixel shuffle), so every
layer the head reads is trained; the loss is the L1 error on the blanked pixels only. The decoders
are thrown away; the detection head stays as built (seeded), and train_detector starts from the
saved weights like from any local .pt (`detector.weights`).

No label is read: the films can be the whole unlabeled pool (radiologists' boxes are not used, so
the stage can run before the first batch is labeled).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrkit.core.labels import LabelSchema

log = logging.getLogger(__name__)

# The stage's knobs (params.yaml `detector_pretrain:` overrides them; imgsz defaults to the detector's).
DEFAULTS: dict = {
    "epochs": 20,
    "batch": 32,
    "lr": 0.002,            # AdamW, cosine to 0 after a one-epoch warm-up
    "weight_decay": 0.05,
    "patch": 16,            # side of a blanked square, in pixels of the training size
    "mask_ratio": 0.5,      # share of the squares blanked in each film
    "crop_scale": 0.7,      # random square crops of at least this share of the side, resized back
    "brightness": 0.2,      # exposure jitter, as the detector's hsv_v
    "seed": 0,
}


class PretrainError(ValueError):
    """Films or settings the pretraining cannot run on; the message says why."""


def pretrain_settings(params: dict) -> dict:
    """DEFAULTS with params' `detector_pretrain` section over them, checked; imgsz from `detector`."""
    section = dict(params.get("detector_pretrain") or {})
    unknown = set(section) - set(DEFAULTS) - {"imgsz"}
    if unknown:
        raise PretrainError(f"detector_pretrain has unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS)}, imgsz")
    s = {**DEFAULTS, "imgsz": int((params.get("detector") or {}).get("imgsz", 256)), **section}
    if int(s["imgsz"]) % 32:
        raise PretrainError(f"detector_pretrain imgsz {s['imgsz']} is not a multiple of 32 (the detector's largest stride)")
    if int(s["imgsz"]) % int(s["patch"]):
        raise PretrainError(f"detector_pretrain patch {s['patch']} does not divide imgsz {s['imgsz']}")
    if not 0 < float(s["mask_ratio"]) < 1:
        raise PretrainError(f"detector_pretrain mask_ratio {s['mask_ratio']} must be between 0 and 1")
    if not 0 < float(s["crop_scale"]) <= 1:
        raise PretrainError(f"detector_pretrain crop_scale {s['crop_scale']} must be in (0, 1]")
    if int(s["epochs"]) < 1 or int(s["batch"]) < 2:
        raise PretrainError("detector_pretrain needs epochs >= 1 and batch >= 2")
    return s


def load_films(image_paths: Sequence[Path], imgsz: int) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Grey films resized to imgsz x imgsz (uint8, N x imgsz x imgsz); unreadable ones are skipped
    and returned as (path, reason) so the caller can report them by name."""
    from PIL import Image, UnidentifiedImageError

    films, failed = [], []
    for path in image_paths:
        try:
            with Image.open(path) as im:
                films.append(np.asarray(im.convert("L").resize((imgsz, imgsz), Image.BILINEAR), dtype=np.uint8))
        # Not only PIL's own errors: once ultralytics is imported, its patch of Image.open answers an
        # unreadable file with ModuleNotFoundError (it retries through pi_heif, absent here).
        except (OSError, UnidentifiedImageError, ValueError, ImportError) as exc:
            reason = "not an image PIL can read" if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
            failed.append((Path(path), reason))
    if not films:
        raise PretrainError(f"none of the {len(image_paths)} films could be read: nothing to pretrain on"
                            + (f" (e.g. {failed[0][0]}: {failed[0][1]})" if failed else ""))
    return np.stack(films), failed


def head_inputs(net, x):
    """The feature maps a DetectionModel's head reads (P3, P4, P5), computed as its own forward does."""
    outputs = []
    for layer in net.model[:-1]:
        if layer.f != -1:
            x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
        x = layer(x)
        outputs.append(x)
    return [outputs[j] for j in net.model[-1].f]


def _batch_views(films: np.ndarray, idx: np.ndarray, s: dict, rng: np.random.Generator):
    """(masked input N x 3 x S x S, target N x 1 x S x S, mask N x 1 x S x S) for the films `idx`."""
    import torch
    import torch.nn.functional as F

    size, patch = int(s["imgsz"]), int(s["patch"])
    x = torch.from_numpy(films[idx]).float().div_(255).unsqueeze(1)
    crops = []
    for img in x:  # a random square crop, resized back: the film's position and scale vary
        side = int(round(size * rng.uniform(float(s["crop_scale"]), 1.0)))
        top, left = rng.integers(0, size - side + 1, 2)
        crop = img[:, top:top + side, left:left + side].unsqueeze(0)
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    x = torch.cat(crops)
    gain = torch.from_numpy(rng.uniform(1 - float(s["brightness"]), 1 + float(s["brightness"]), (len(idx), 1, 1, 1)))
    x = (x * gain.float()).clamp_(0, 1)
    grid = size // patch
    blanked = torch.from_numpy(rng.random((len(idx), 1, grid, grid)) < float(s["mask_ratio"])).float()
    mask = F.interpolate(blanked, scale_factor=patch, mode="nearest")
    masked = x * (1 - mask) + x.mean(dim=(2, 3), keepdim=True) * mask  # blanked to the film's mean grey
    return masked.expand(-1, 3, -1, -1).contiguous(), x, mask


def pretrain_detector(image_paths: Sequence[Path], out_path: Path, params: dict,
                      schema: LabelSchema | None = None) -> Path:
    """Pretrain params' detector architecture on the films at `image_paths` (no labels) and save it
    as ultralytics weights at `out_path` (module docstring). params: the whole params file
    (`detector` for the architecture and imgsz, `detector_pretrain` for the knobs)."""
    import torch
    from torch import nn

    from cxrkit.models.detector import build_detector, torch_threads_kept

    s = pretrain_settings(params)
    films, failed = load_films([Path(p) for p in image_paths], int(s["imgsz"]))
    for path, reason in failed:
        log.warning("detector pretraining: %s skipped: %s", path, reason)
    if len(films) < int(s["batch"]):
        raise PretrainError(f"{len(films)} readable films, fewer than one batch of {s['batch']}: too few to pretrain on")

    detector = {**params["detector"], "weights": None, "seed": int(s["seed"])}
    model = build_detector(detector, schema)
    net = model.model
    torch.manual_seed(int(s["seed"]))
    rng = np.random.default_rng(int(s["seed"]))
    with torch.no_grad():
        levels = head_inputs(net.eval(), torch.zeros(1, 3, int(s["imgsz"]), int(s["imgsz"])))
    strides = [int(s["imgsz"]) // f.shape[-1] for f in levels]
    decoders = nn.ModuleList(
        nn.Sequential(nn.Conv2d(f.shape[1], stride * stride, 1), nn.PixelShuffle(stride))
        for f, stride in zip(levels, strides))
    # Everything the head reads from trains; the head itself (the last layer) is left as built.
    trainable = [p for name, p in net.named_parameters() if not name.startswith(f"model.{len(net.model) - 1}.")]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([*trainable, *decoders.parameters()], lr=float(s["lr"]),
                                  weight_decay=float(s["weight_decay"]))
    steps_per_epoch = len(films) // int(s["batch"])
    total, warmup = steps_per_epoch * int(s["epochs"]), steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: (i + 1) / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, total - warmup))))
    log.info("detector pretraining: %d films at %d px, %d epochs of %d steps (%d skipped)", len(films),
             s["imgsz"], s["epochs"], steps_per_epoch, len(failed))
    net.train()
    decoders.train()
    t0 = time.perf_counter()
    with torch_threads_kept():
        for epoch in range(int(s["epochs"])):
            order = rng.permutation(len(films))
            running = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * int(s["batch"]):(step + 1) * int(s["batch"])]
                masked, target, mask = _batch_views(films, idx, s, rng)
                loss = 0.0
                for feature, decoder in zip(head_inputs(net, masked), decoders):
                    painted = decoder(feature)
                    loss = loss + ((painted - target).abs() * mask).sum() / mask.sum().clamp(min=1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                running += loss.item()
            log.info("detector pretraining: epoch %d/%d, masked L1 %.4f (%.0f s)", epoch + 1, s["epochs"],
                     running / steps_per_epoch / len(decoders), time.perf_counter() - t0)
    net.eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp.pt")
    model.save(str(tmp))
    tmp.replace(out_path)  # a kill leaves the old file or none, never half of one
    return out_path
