"""The pneumonia subtype classifier: a torchvision CNN on whole images and on box crops.

    build_classifier(arch, num_classes, weights_path=None)        -> nn.Module (untrained, or a user's weights)
    classifier_classes(schema=None)                                -> class names, in output order
    record_class(record, schema=None)                              -> a labeled record's whole-image class, or None
    make_samples(records, params, schema=None)                     -> whole-image + box-crop samples
    crop_region(box, width, height, margin)                        -> the crop window of a box, clipped
    train_classifier(records, data_dir, out_dir, params, val_records) -> best checkpoint (.pt)
    load_classifier(checkpoint)                                    -> model, ready for predict_proba
    predict_proba(model, images)                                   -> calibrated probabilities (n, classes)
    evaluate_classifier(model, records, data_dir, params)          -> macro/per-class AUROC, accuracy, confusion, ECE
    fit_temperature(logits, labels) / expected_calibration_error(probs, labels)

`params` is the `classifier:` section of params.yaml (`load_params()["classifier"]`).

Classes: the label config's subtypes (Bacterial, Viral, COVID-19, Fungal, Other/Unknown)
**plus Normal**, last, named as the config's normal impression (`schema.normal`). Why
Normal is a class: the classifier runs on every image of the unlabeled pool, most of
which have no pneumonia, and on every box the detector proposes, some of which are
false positives. Without Normal a softmax over subtypes must put all
its mass on some subtype even for a normal film, so its probabilities (and the uncertainty
the acquisition strategies read from them) mean nothing there. The image-level datasets
we import are three-way with Normal (Kermany: Normal/Bacterial/Viral; COVID-19
Radiography: Normal/COVID-19/viral), so the Normal examples come for free. The subtype
distribution given pneumonia is every column but the last, renormalised
(`subtype_given_pneumonia`). Normal box-crop examples are crops of normal films at
box-like sizes (`normal_crops_per_image`), so a crop of a detector false positive has a
class to go to.

Samples (`make_samples`), from `labeled` records only (an unlabeled record's missing label
means "unknown", not "none"):

- whole image: a record with an image-level subtype -> that subtype; a record whose
  impression is Normal -> Normal. Pneumonia without a subtype (RSNA) and "Other
  abnormality" are left out: their subtype is unknown / not in the vocabulary.
- box crop: every box with a subtype (RSNA boxes have none) -> the box grown by `margin`
  times its width/height on each side (context: the pleura, the fissure, the other lobe),
  clipped at the image edges, then resized to `input_size` (aspect not kept: boxes are
  mostly a little taller than wide and the resize is the same in training and inference).

Imbalance: class-weighted cross-entropy, weight_k = (n / (K * n_k)) ** class_weight_power
(1 = "balanced", 0 = off). Chosen over a WeightedRandomSampler because on the small early
labeled sets a sampler draws the same few rare images many times per epoch and leaves
others out (noisier epochs, more overfitting); the weighted loss sees every sample once per
epoch. Both tilt the probabilities towards rare classes alike; temperature scaling (one
scalar, fitted with the unweighted NLL on validation) fixes over/under-confidence, not that
prior shift.

Input: 8-bit grey PNGs, scaled to [0, 1], grey repeated to three channels and normalised
with the ImageNet mean/std (so user-supplied ImageNet weights fit without touching the first
convolution). Augmentation (training only): mild rotation, translation, scale, brightness
and contrast; never a vertical flip, and no horizontal flip by default (`hflip`).

Offline: every torchvision model is built with `weights=None`; `weights_path` loads a local
state dict (a missing file or a URL is an error, never a download). Checkpoints are written
atomically (temp file, then rename). CUDA is used when available, with autocast (bf16 where
supported, else fp16 with a GradScaler); on the CPU everything is fp32.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import logging
import math
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrkit.core.atomic import write_atomic
from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Box, Record
from cxrkit.evaluation.metrics import confusion_matrix, one_vs_rest_auroc

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "densenet121", "efficientnet_b0")
CHECKPOINT_FORMAT = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The final layer of each architecture: the one part a user's weights may lack (other num_classes).
_HEAD = {"resnet18": "fc.", "densenet121": "classifier.", "efficientnet_b0": "classifier.1."}


class ClassifierError(ValueError):
    """A classifier input (params, weights, records) that cannot work; the message says why."""


# --- model ------------------------------------------------------------------


def build_classifier(arch: str, num_classes: int, weights_path: str | os.PathLike | None = None) -> nn.Module:
    """A torchvision `arch` with `num_classes` outputs, randomly initialised (`weights=None`).

    weights_path: a local state dict (a plain `state_dict()` file, or a checkpoint of
    `train_classifier` holding one under "state_dict"). Every tensor must match by name and
    shape, except the final layer, which is left at its initialisation when the file has a
    different number of classes (ImageNet weights: 1000) and the only mismatch is there.
    Never downloads: a missing file, a URL or a tensor of the wrong shape is a ClassifierError.
    """
    import torchvision

    if arch not in ARCHS:
        raise ClassifierError(f"unknown classifier arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 2:
        raise ClassifierError(f"num_classes must be at least 2, got {num_classes}")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if weights_path is not None:
        _load_weights(model, arch, weights_path)
    return model


def _load_weights(model: nn.Module, arch: str, weights_path: str | os.PathLike) -> None:
    text = str(weights_path)
    if "://" in text:
        raise ClassifierError(f"classifier weights must be a local file, not a URL: {text} (nothing is downloaded)")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise ClassifierError(f"classifier weights file {path} not found (nothing is downloaded; give a local state dict)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ClassifierError(f"classifier weights {path} are not a readable torch state dict: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ClassifierError(f"classifier weights {path}: expected a state dict (name -> tensor)")
    own = model.state_dict()
    missing = sorted(set(own) - set(loaded))
    unexpected = sorted(set(loaded) - set(own))
    wrong = sorted(k for k in set(own) & set(loaded) if own[k].shape != loaded[k].shape)
    head = _HEAD[arch]
    if missing or unexpected or any(not k.startswith(head) for k in wrong):
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected),
                               ("wrong shape", [f"{k} {tuple(loaded[k].shape)} != {tuple(own[k].shape)}" for k in wrong]))
            if keys
        )
        raise ClassifierError(f"classifier weights {path} do not fit a {arch}: {detail}")
    if wrong:
        log.info("weights %s: final layer has another number of classes; it stays freshly initialised", path)
        loaded = {k: v for k, v in loaded.items() if k not in wrong}
    model.load_state_dict(loaded, strict=False)


# --- samples ----------------------------------------------------------------


def classifier_classes(schema: LabelSchema | None = None) -> list[str]:
    """The output classes, in order: the label config's subtypes, then its normal impression (module docstring)."""
    schema = schema or load_schema()
    return [*schema.subtypes, schema.normal]


def record_class(record: Record, schema: LabelSchema | None = None) -> str | None:
    """The whole-image class a labeled record teaches the classifier: its subtype, else Normal when
    its impression is normal; None when unlabeled or unknown (pneumonia without a subtype, "Other
    abnormality"). The rule of `make_samples`; class-aware selection counts labels with it."""
    if not record.labeled:
        return None
    schema = schema or load_schema()
    if record.subtype is not None:
        return record.subtype
    return schema.normal if record.impression == schema.normal else None


@dataclass(frozen=True)
class Sample:
    """One training/evaluation example: a whole image (region None) or a crop window of it."""

    image_id: str
    path: str  # relative to the data folder
    label: str
    region: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in stored-image pixels (crop)

    @property
    def kind(self) -> str:
        return "image" if self.region is None else "crop"


def crop_region(box: Box, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """The crop window of `box`: grown by `margin` x its width (height) on the left and right
    (top and bottom), rounded outwards to whole pixels, clipped at the image edges. x0, y0, x1, y1."""
    if margin < 0:
        raise ClassifierError(f"crop margin must be >= 0, got {margin}")
    mx, my = margin * box.w, margin * box.h
    x0 = max(0, math.floor(box.x - mx))
    y0 = max(0, math.floor(box.y - my))
    x1 = min(int(width), math.ceil(box.x + box.w + mx))
    y1 = min(int(height), math.ceil(box.y + box.h + my))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ClassifierError(f"box {box} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def _normal_regions(record: Record, count: int, seed: int) -> list[tuple[int, int, int, int]]:
    """Box-like windows on a normal film (inside the central lung area), fixed by the image id and seed."""
    rng = np.random.default_rng([seed, zlib.crc32(record.image_id.encode())])
    w_img, h_img = record.width, record.height
    out = []
    for _ in range(count):
        w = rng.uniform(0.12, 0.35) * w_img
        h = rng.uniform(0.15, 0.5) * h_img
        x = rng.uniform(0.08 * w_img, max(0.08 * w_img, 0.92 * w_img - w))
        y = rng.uniform(0.12 * h_img, max(0.12 * h_img, 0.88 * h_img - h))
        out.append((int(x), int(y), int(min(w_img, x + w)), int(min(h_img, y + h))))
    return out


def make_samples(records: Sequence[Record], params: dict, schema: LabelSchema | None = None,
                 kinds: Sequence[str] = ("image", "crop")) -> list[Sample]:
    """Whole-image and box-crop samples of the labeled records (rules in the module docstring)."""
    schema = schema or load_schema()
    classes = set(classifier_classes(schema))
    margin = float(_need(params, "crop_margin"))
    normal_crops = int(_need(params, "normal_crops_per_image"))
    seed = int(_need(params, "seed"))
    out: list[Sample] = []
    for rec in records:
        if not rec.labeled:
            continue
        normal = rec.subtype is None and rec.impression == schema.normal
        label = record_class(rec, schema)
        if label is not None and label not in classes:
            raise ClassifierError(f"record {rec.image_id}: subtype {label!r} is not in the label config {sorted(classes)}")
        if "image" in kinds and label is not None:
            out.append(Sample(rec.image_id, rec.path, label))
        if "crop" not in kinds:
            continue
        for box in rec.boxes:
            if box.subtype is None:
                continue
            if box.subtype not in classes:
                raise ClassifierError(f"record {rec.image_id}: box subtype {box.subtype!r} is not in the label config")
            out.append(Sample(rec.image_id, rec.path, box.subtype, crop_region(box, rec.width, rec.height, margin)))
        if normal and not rec.boxes and rec.width and rec.height:
            out.extend(Sample(rec.image_id, rec.path, schema.normal, r) for r in _normal_regions(rec, normal_crops, seed))
    return out


# --- pixels -----------------------------------------------------------------


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """A stored PNG as a 2-D uint8 array (a colour file is converted to grey)."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ClassifierError(f"cannot read image {path}")
    return img


def to_input(grey: np.ndarray, size: int) -> np.ndarray:
    """A grey image or crop (2-D, uint8 or float in [0, 1]) -> (size, size) uint8, area-resampled."""
    a = np.asarray(grey)
    if a.ndim == 3:  # already-coloured input: average the channels
        a = a.mean(axis=2)
    if a.dtype != np.uint8:
        a = np.clip(np.asarray(a, dtype=np.float32) * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    interp = cv2.INTER_AREA if a.shape[0] > size or a.shape[1] > size else cv2.INTER_LINEAR
    return cv2.resize(a, (size, size), interpolation=interp)


def _normalise(batch: torch.Tensor) -> torch.Tensor:
    """(n, 1, s, s) uint8 or [0, 1] float -> (n, 3, s, s) ImageNet-normalised float."""
    x = batch.float()
    if batch.dtype == torch.uint8:
        x = x / 255.0
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ClassifierDataset(Dataset):
    """Samples read from the workspace PNGs: (1, s, s) float tensor in [0, 1], class index.

    cache: keep each resized sample in memory after its first read (samples are small:
    a 224 px sample is 50 kB). augment: the training augmentation of the module docstring.
    """

    def __init__(self, samples: Sequence[Sample], data_dir: str | os.PathLike, classes: Sequence[str],
                 input_size: int, augment: dict | None = None, cache: bool = True):
        self.samples = list(samples)
        self.data_dir = Path(data_dir)
        self.index = {c: k for k, c in enumerate(classes)}
        self.size = int(input_size)
        self.cache: dict[int, np.ndarray] | None = {} if cache else None
        self.transform = _augmentation(augment) if augment else None

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        s = self.samples[i]
        img = read_grey(self.data_dir / s.path)
        if s.region is not None:
            x0, y0, x1, y1 = s.region
            img = img[y0:y1, x0:x1]
        out = to_input(img, self.size)
        if self.cache is not None:
            self.cache[i] = out
        return out

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.pixels(i)).unsqueeze(0).float() / 255.0
        if self.transform is not None:
            x = self.transform(x).clamp(0, 1)
        return x, self.index[self.samples[i].label]


def _augmentation(aug: dict):
    from torchvision.transforms import v2

    steps = [
        v2.RandomAffine(degrees=float(aug.get("degrees", 0)), translate=(float(aug.get("translate", 0)),) * 2,
                        scale=(1 - float(aug.get("scale", 0)), 1 + float(aug.get("scale", 0)))),
        v2.ColorJitter(brightness=float(aug.get("brightness", 0)), contrast=float(aug.get("contrast", 0))),
    ]
    if float(aug.get("hflip", 0)) > 0:
        steps.append(v2.RandomHorizontalFlip(float(aug["hflip"])))
    return v2.Compose(steps)


# --- training ---------------------------------------------------------------


def _need(params: dict, key: str):
    if key not in params:
        raise ClassifierError(f"classifier params lack {key!r} (params.yaml, section classifier:)")
    return params[key]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    """Mixed precision on CUDA only: bf16 where supported, else fp16 (with a GradScaler)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _workers(setting, device: torch.device) -> int:
    if setting in (None, "auto"):
        return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)
    return int(setting)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def class_weights(labels: Sequence[str], classes: Sequence[str], power: float) -> torch.Tensor:
    """(n / (K * n_k)) ** power per class, over the classes present; absent classes get 0."""
    counts = Counter(labels)
    present = [c for c in classes if counts[c]]
    n, k = len(labels), len(present)
    return torch.tensor([(n / (k * counts[c])) ** power if counts[c] else 0.0 for c in classes], dtype=torch.float32)


def _logits(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-tempered logits (fp32, CPU) and label indices of everything in `loader`."""
    model.eval()
    dtype = _autocast(device)
    out, ys = [], []
    with torch.inference_mode():
        for x, y in loader:
            x = _normalise(x.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out.append(model(x).float().cpu())
            ys.append(torch.as_tensor(y))
    return torch.cat(out), torch.cat(ys)


def _macro_auroc(logits: torch.Tensor, y: torch.Tensor, classes: Sequence[str]) -> float:
    probs = torch.softmax(logits, 1).numpy()
    macro, _ = one_vs_rest_auroc([classes[i] for i in y.tolist()], probs, classes)
    return macro


def train_classifier(records: Sequence[Record], data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     params: dict, val_records: Sequence[Record], schema: LabelSchema | None = None) -> Path:
    """Train on `records`, pick the epoch with the best validation macro AUROC (ties: lower
    validation loss), fit the temperature on the validation set, and write
    `out_dir/classifier.pt` (atomically) and `out_dir/classifier_report.json`. Returns the
    checkpoint path.

    The checkpoint is a dict: state_dict, arch, classes, input_size, temperature,
    calibration (val NLL and ECE before/after), history (per epoch), params.
    """
    classes = classifier_classes(schema)
    arch = str(_need(params, "arch"))
    size = int(_need(params, "input_size"))
    seed = int(_need(params, "seed"))
    epochs = int(_need(params, "epochs"))
    patience = int(params.get("patience") or 0)
    seed_everything(seed)
    kinds = tuple(_need(params, "samples"))
    train_samples = make_samples(records, params, schema, kinds)
    val_samples = make_samples(val_records, params, schema, kinds)
    if not train_samples:
        raise ClassifierError("no training samples: no labeled record has a subtype, a subtype box or a Normal impression")
    if not val_samples:
        raise ClassifierError("no validation samples: the classifier needs labeled val records (best epoch, temperature)")
    counts = Counter(s.label for s in train_samples)
    log.info("classifier samples: train %d (%s), val %d", len(train_samples),
             ", ".join(f"{c} {counts[c]}" for c in classes), len(val_samples))

    device = _device()
    dtype = _autocast(device)
    workers = _workers(params.get("workers", "auto"), device)
    cache = bool(params.get("cache", True))
    train_ds = ClassifierDataset(train_samples, data_dir, classes, size, augment=_need(params, "augment"), cache=cache)
    val_ds = ClassifierDataset(val_samples, data_dir, classes, size, cache=cache)
    gen = torch.Generator().manual_seed(seed)
    batch = int(_need(params, "batch"))
    train_dl = DataLoader(train_ds, batch_size=batch, shuffle=True, generator=gen, num_workers=workers,
                          drop_last=len(train_ds) > batch, pin_memory=device.type == "cuda",
                          persistent_workers=workers > 0)
    val_dl = DataLoader(val_ds, batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda")

    model = build_classifier(arch, len(classes), params.get("weights")).to(device)
    weights = class_weights([s.label for s in train_samples], classes, float(_need(params, "class_weight_power")))
    criterion = nn.CrossEntropyLoss(weight=weights.to(device), label_smoothing=float(params.get("label_smoothing", 0.0)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(_need(params, "lr")),
                                  weight_decay=float(_need(params, "weight_decay")))
    steps = max(1, epochs * len(train_dl))
    warmup = min(len(train_dl), steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    best: dict | None = None
    history = []
    since_best = 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        for x, y in train_dl:
            x, y = _normalise(x.to(device, non_blocking=True)), y.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        val_logits, val_y = _logits(model, val_dl, device)
        val_loss = float(F.cross_entropy(val_logits, val_y))
        val_auroc = _macro_auroc(val_logits, val_y, classes)
        row = {"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_loss": val_loss, "val_macro_auroc": val_auroc,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        log.info("classifier epoch %d/%d: train loss %.4f, val loss %.4f, val macro AUROC %.4f (%.1f s)",
                 epoch + 1, epochs, row["train_loss"], val_loss, val_auroc, row["seconds"])
        key = (-1.0 if math.isnan(val_auroc) else val_auroc, -val_loss)
        if best is None or key > best["key"]:
            best = {"key": key, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
            since_best = 0
        else:
            since_best += 1
            if patience and since_best >= patience:
                log.info("classifier: no better validation for %d epochs, stopping", patience)
                break

    model.load_state_dict(best["state"])
    val_logits, val_y = _logits(model, val_dl, device)
    temperature = fit_temperature(val_logits, val_y)
    calibration = calibration_report(val_logits, val_y, temperature)
    log.info("classifier temperature %.3f: val NLL %.4f -> %.4f, ECE %.4f -> %.4f", temperature,
             calibration["nll_before"], calibration["nll_after"], calibration["ece_before"], calibration["ece_after"])
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in best["state"].items()},
        "arch": arch,
        "classes": classes,
        "input_size": size,
        "temperature": temperature,
        "best_epoch": best["epoch"],
        "calibration": calibration,
        "history": history,
        "params": _plain(params),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "classifier.pt"
    _save_atomic(checkpoint, path)
    report = {k: checkpoint[k] for k in ("arch", "classes", "input_size", "temperature", "best_epoch", "calibration", "history")}
    report["train_samples"] = dict(counts)
    write_atomic(out / "classifier_report.json", json.dumps(report, indent=2, sort_keys=True))
    return path


def _plain(obj):
    """params as plain JSON-able values (a checkpoint must load with weights_only=True)."""
    return json.loads(json.dumps(obj, default=str))


def _save_atomic(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def load_classifier(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """The model of a `train_classifier` checkpoint, in eval mode, with `.arch`, `.classes`,
    `.input_size` and `.temperature` set (what `predict_proba` reads)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ClassifierError(f"classifier checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "classes" not in ckpt:
        raise ClassifierError(f"{path} is not a classifier checkpoint (train_classifier writes one)")
    model = build_classifier(ckpt["arch"], len(ckpt["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    attach_info(model, ckpt["arch"], ckpt["classes"], ckpt["input_size"], ckpt.get("temperature", 1.0))
    return model.to(device or _device()).eval()


def attach_info(model: nn.Module, arch: str, classes: Sequence[str], input_size: int, temperature: float = 1.0) -> nn.Module:
    """Set what predict_proba reads on a model (e.g. an untrained baseline from build_classifier)."""
    model.arch, model.classes, model.input_size, model.temperature = arch, list(classes), int(input_size), float(temperature)
    return model


# --- calibration ------------------------------------------------------------


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The scalar T > 0 minimising the NLL of softmax(logits / T) (LBFGS on log T).

    Never worse than T = 1 on the data it is fitted to: if the optimiser ends above the
    NLL at T = 1 (or fails), T = 1 is returned."""
    logits = logits.detach().float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp().clamp(0.05, 20.0))
    with torch.no_grad():
        fitted, plain = F.cross_entropy(logits / t, labels), F.cross_entropy(logits, labels)
    if not math.isfinite(t) or not torch.isfinite(fitted) or fitted > plain:
        return 1.0
    return t


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], bins: int = 10) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - confidence| x share."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    y = torch.as_tensor(labels).long()
    before, after = torch.softmax(logits, 1).numpy(), torch.softmax(logits / temperature, 1).numpy()
    return {
        "temperature": float(temperature),
        "nll_before": float(F.cross_entropy(logits, y)),
        "nll_after": float(F.cross_entropy(logits / temperature, y)),
        "ece_before": expected_calibration_error(before, y.numpy()),
        "ece_after": expected_calibration_error(after, y.numpy()),
        "n": int(len(y)),
    }


# --- inference and evaluation -------------------------------------------------


def predict_logits(model: nn.Module, images: Sequence[np.ndarray], input_size: int | None = None,
                   batch_size: int = 32) -> torch.Tensor:
    """Un-tempered logits (n, classes) of grey images or crops (2-D arrays, any size)."""
    size = int(input_size or model.input_size)
    device = next(model.parameters()).device
    dtype = _autocast(device)
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = np.stack([to_input(img, size) for img in images[i : i + batch_size]])
            x = _normalise(torch.from_numpy(batch).unsqueeze(1).to(device))
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out.append(model(x).float().cpu())
    if not out:
        return torch.zeros((0, len(getattr(model, "classes", ())) or 0))
    return torch.cat(out)


def final_layer(model: nn.Module, required: bool = True) -> nn.Module | None:
    """The layer whose input is the penultimate features (torchvision resnet / densenet /
    efficientnet); None for another model when not `required`."""
    for name in ("fc", "classifier", "head"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Module):
            return layer
    if not required:
        return None
    raise ClassifierError(f"cannot find the final layer of a {type(model).__name__} (expected .fc or .classifier)")


@contextlib.contextmanager
def penultimate_features(model: nn.Module):
    """Yields a list that gathers, for every forward pass of `model` inside the block, the
    penultimate features of its batch: the final layer's input, flattened, (n, d) float32 (a
    forward hook, so the preprocessing is exactly the one predict_logits gives)."""
    captured: list[np.ndarray] = []

    def keep_input(_module, inputs, _output):
        captured.append(inputs[0].detach().float().flatten(1).cpu().numpy())

    hook = final_layer(model).register_forward_hook(keep_input)
    try:
        yield captured
    finally:
        hook.remove()


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (k-center distances then compare directions, not activations' scale)."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.clip(np.linalg.norm(features, axis=1, keepdims=True), 1e-12, None)


def encode_embedding(row: np.ndarray) -> str:
    """One embedding as text for a JSON cache: float16 bytes in base64 (1,368 characters for 512
    features; a unit vector's entries keep about 3 significant digits)."""
    return base64.b64encode(np.asarray(row, dtype="<f2").tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray:
    """encode_embedding's inverse, as float32."""
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


def predict_proba(model: nn.Module, images: Sequence[np.ndarray], input_size: int | None = None,
                  temperature: float | None = None, batch_size: int = 32) -> np.ndarray:
    """Calibrated class probabilities (n, len(model.classes)), rows summing to 1.

    images: grey whole images or crops (2-D uint8, or float in [0, 1]), any size; each is
    resized to the model's input size. The temperature is the model's (`load_classifier`)
    unless given."""
    t = float(temperature if temperature is not None else getattr(model, "temperature", 1.0))
    logits = predict_logits(model, images, input_size, batch_size)
    return torch.softmax(logits.double() / t, 1).numpy()


def subtype_given_pneumonia(probs: np.ndarray) -> np.ndarray:
    """The subtype columns renormalised: P(subtype | pneumonia), (n, classes - 1).

    The subtypes are every column but the last, Normal (`classifier_classes`)."""
    sub = np.asarray(probs)[:, :-1]
    return sub / np.clip(sub.sum(1, keepdims=True), 1e-12, None)


def sample_pixels(samples: Sequence[Sample], data_dir: str | os.PathLike) -> list[np.ndarray]:
    """The grey pixels of each sample (the whole image, or its crop window)."""
    out, cache = [], {}
    for s in samples:
        if s.path not in cache:
            cache = {s.path: read_grey(Path(data_dir) / s.path)}  # samples of one image are adjacent
        img = cache[s.path]
        if s.region is not None:
            x0, y0, x1, y1 = s.region
            img = img[y0:y1, x0:x1]
        out.append(img)
    return out


def classifier_probabilities(model: nn.Module, records: Sequence[Record], data_dir: str | os.PathLike, params: dict,
                             kinds: Sequence[str] = ("image", "crop"),
                             schema: LabelSchema | None = None) -> tuple[list[Sample], np.ndarray]:
    """The evaluation samples of `records` and the model's calibrated class probabilities for
    each ((n, len(model.classes)), columns in model.classes order)."""
    samples = make_samples(records, params, schema, kinds)
    if not samples:
        return [], np.zeros((0, len(model.classes)))
    logits = predict_logits(model, sample_pixels(samples, data_dir))
    t = float(getattr(model, "temperature", 1.0))
    return samples, torch.softmax(logits.double() / t, 1).numpy()


def evaluate_classifier(model: nn.Module, records: Sequence[Record], data_dir: str | os.PathLike, params: dict,
                        kinds: Sequence[str] = ("image", "crop"), schema: LabelSchema | None = None) -> dict:
    """Metrics of `model` on the samples of `records`, per sample kind and over all of them.

    Returns {"image": m, "crop": m, "all": m} (kinds with no sample left out), each m:
    n, macro_auroc (cxrkit.evaluation.metrics.one_vs_rest_auroc: classes present as positives and
    negatives), auroc per class, accuracy, confusion (rows true, columns predicted, in
    `classes` order), ece, nll; plus "classes"."""
    classes = list(model.classes)
    samples, probs = classifier_probabilities(model, records, data_dir, params, kinds, schema)
    out: dict = {"classes": classes}
    if not samples:
        return out
    index = {c: k for k, c in enumerate(classes)}
    groups = {k: [i for i, s in enumerate(samples) if s.kind == k] for k in kinds}
    groups["all"] = list(range(len(samples)))
    for name, idx in groups.items():
        if not idx:
            continue
        p = probs[idx]
        truth = [samples[i].label for i in idx]
        pred = [classes[k] for k in p.argmax(1)]
        macro, per_class = one_vs_rest_auroc(truth, p, classes)
        y = np.array([index[c] for c in truth])
        out[name] = {
            "n": len(idx),
            "macro_auroc": macro,
            "auroc": per_class,
            "accuracy": float(np.mean([a == b for a, b in zip(truth, pred)])),
            "confusion": confusion_matrix(truth, pred, classes).tolist(),
            "ece": expected_calibration_error(p, y),
            "nll": float(F.nll_loss(torch.log(torch.from_numpy(p).clamp_min(1e-12)), torch.from_numpy(y))),
        }
    return out
