"""Detector + subtype classifier as one predictor: boxes, subtypes, impression, uncertainty.

    p = Predictor(detector_weights, classifier_checkpoint, params, schema=None, model_version=None)
    p.predict(image)                      -> Prediction   (image: 2-D uint8 grey, stored-image pixels)
    p.predict_paths(paths, batch, cache_dir) -> [Prediction] (per-image errors, on-disk result cache)
    p.explain(image) / p.explain_paths(paths, cache_dir) -> Explanation: where the classifier looked
                                          (HiResCAM, cxrkit.models.explain; cached like predictions)
    to_labelstudio(prediction, width, height) -> Label Studio results (boxes with score + subtype, impression)
    Predictor.from_models(detector, classifier, params, ...) -> the same around models already in memory

`params` is the whole params file (`load_params()`): the detector's `imgsz`, `iou`, `max_det`
and `conf` (the floor of every box the detector reports), the classifier's `crop_margin`, and
the `predictor:` section (defaults below, `DEFAULTS`). The predictor keeps it as `p.params`, so
what serves a version reads that version's other sections too (the backend's overlay size,
`explain.max_side`).

What one image gets
-------------------
- **boxes**: the detector's boxes with score >= predictor.conf, those of one finding that
  overlap at IoU above `merge_iou` fused into one (cxrkit.models.preannotation.merge_boxes; null:
  off), at most `max_boxes`, in pixels of the image as given, highest score first, `score` =
  detector confidence. Lower-scored boxes (down to detector.conf) are not shown but feed the
  uncertainty. predictor.conf is a score, or a threshold the model version measured on the
  fixed validation set (evaluate_detector; the registry passes them): `effort`, the one with
  the fewest expected edits per image (`effort_conf`, cxrkit.models.preannotation), or
  `auto`, the one with the best RSNA score (`operating_conf`); effort falls back to auto, and
  auto to AUTO_CONF_FALLBACK, for a version that has none. A young model's scores are low, so
  a fixed 0.25 would show a radiologist nothing to correct after the first small retrain.
- **subtype per box**: each box of the opacity finding (`schema.opacity`; pneumonia subtypes
  mean nothing for a nodule) is cropped with the classifier's context margin (`crop_region`,
  classifier.crop_margin), classified (`predict_proba`), and its distribution over the
  label config's subtypes given pneumonia (`subtype_given_pneumonia`) is kept in
  `box_subtypes[i]`; `Box.subtype` is its argmax. Other findings get `{}` and no subtype.
- **image_probs**: the classifier on the whole image (subtypes + Normal).
- **embedding** (where uncertainty is asked for: the select flow's scoring): the same pass's
  penultimate features of the whole image, L2-normalised, stored as text
  (`classifier.encode_embedding`; `embedding_vector()` reads it). The diversity strategies
  compare images by it, so scoring is the only pass over the pool, and the cache keeps it.
- **impression**: with `impression: shown` (the default), the one the shown boxes imply:
  Pneumonia with an opacity box, else Other abnormality with another finding's box, else
  Normal (cxrkit.models.preannotation.shown_impression), so a radiologist never sees boxes
  and an impression that contradict each other. With `impression: rule`, two estimates of
  "this film shows pneumonia", the detector's top opacity score s_op and the classifier's
  1 - P(Normal), are averaged:
      p_pneumonia = (s_op + (1 - P(Normal))) / 2
  Pneumonia when p_pneumonia >= impression_threshold (0.5); else other abnormality when
  a box of another finding scores >= other_conf; else Normal (the label config's
  impressions of those roles: `schema.pneumonia`, `.other_abnormality`, `.normal`).
  Averaging means one model alone must be very sure (a box at 0.9 with the classifier at
  P(Normal) = 0.9 is 0.5: a tie goes to Pneumonia) and two lukewarm models agreeing tip it.
  p_pneumonia is reported under either setting.
- **signals** (all in [0, 1]; None where they do not apply):
    detection  binary entropy (bits) of the top detector score over all boxes (0 when the
               detector found nothing even at detector.conf): "is anything there?"
    box        mean binary entropy of the shown boxes' scores (None without boxes)
    classifier whole-image classifier entropy / log(K), K = number of classes
    margin     1 - (top1 - top2) of the whole-image classifier (reported as 1 - margin so
               that, like every other signal, higher = less sure); `cls_margin` is the margin
    subtype    mean normalised entropy of the shown opacity boxes' subtype distributions
               (None without such boxes)
    flip       left-right flip disagreement (None unless predictor.flip): the detector also
               runs on the mirrored image; boxes with score >= flip_conf from both runs are
               matched greedily by IoU (same finding, highest IoU first) and
                   flip = 1 - 2 * sum(IoU of matched pairs) / (n_original + n_flipped)
               (0 when both runs find nothing; 1 when only one finds something).
- **uncertainty** (the one scalar the select flow sorts by): the weighted mean of the
  available signals, weights `predictor.weights` (default detection 1, classifier 1,
  subtype 0.5, flip 1, box 0, margin 0):
      uncertainty = sum_k w_k s_k / sum_k w_k  over signals k that are not None
  so it is in [0, 1], non-decreasing in every signal, and a signal that does not apply
  (no boxes, flip off) drops out instead of counting as certainty.

Flip and TTA: the detector was trained without left-right flips (heart side), so a
mirrored film is a mildly shifted input: a detector whose box moves or vanishes under
it is unstable there. `flip: true` doubles the detector's cost where uncertainty is asked
for (the select flow's scoring; not the ML backend, `predict_arrays(uncertainty=False)`). `tta: true` (needs the
flip run, which it switches on) replaces the shown boxes with the weighted-boxes-fusion
(`ensemble_boxes.weighted_boxes_fusion`, iou `wbf_iou`) of the original and the
flipped-back boxes; a box only one run found keeps half its score.

Cache (`predict_paths`): one JSON file per image under
`cache_dir/<key>/<sha256 of the image file>.json`, where <key> hashes the model_version
and the settings that change a prediction (the detector's imgsz/conf/iou/max_det, the crop
margin, the predictor section); written atomically (temp file + rename). The same file
bytes and version are a hit (`stats["cache_hits"]`); another version, or another setting,
is a miss. An unreadable cache file is a miss and is rewritten.

`model_version` defaults to "det-<8 hex>-clf-<8 hex>": sha256 prefixes of the two files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cxrkit.core.atomic import write_atomic
from cxrkit.core.hashing import file_sha256
from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Box
from cxrkit.models.detector import result_boxes, torch_threads_kept
from cxrkit.models.preannotation import (
    SHOWN_DEFAULTS,
    fuse_boxes,
    shown_at,
    shown_impression,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 2: Prediction.top_opacity / top_other; 3: Prediction.embedding
AUTO_CONF_FALLBACK = 0.25  # predictor.conf auto or effort without a measured threshold
DEFAULTS: dict = {
    "conf": "effort",  # boxes shown (and pushed to Label Studio): a score, effort or auto (measured thresholds)
    "merge_iou": SHOWN_DEFAULTS["merge_iou"],  # fuse shown boxes of one finding overlapping above this IoU (None: off)
    "impression": "shown",  # shown: implied by the shown boxes; rule: impression_rule
    "max_boxes": SHOWN_DEFAULTS["max_boxes"],
    "flip": True,  # run the detector on the mirrored image too (the flip signal; 2x detector cost)
    "flip_conf": 0.1,  # boxes counted by the flip disagreement
    "tta": False,  # WBF-fuse original + flipped boxes into the shown boxes
    "wbf_iou": 0.55,
    "impression_threshold": 0.5,
    "other_conf": 0.5,
    "batch": 8,
    "weights": {"detection": 1.0, "classifier": 1.0, "subtype": 0.5, "flip": 1.0, "box": 0.0, "margin": 0.0},
}
SIGNALS = ("detection", "box", "classifier", "margin", "subtype", "flip")


class PredictorError(ValueError):
    """A predictor input (models, params) that cannot work; the message says why."""


@dataclass
class Prediction:
    """What the predictor says about one image (or why it could not: `error`)."""

    width: int = 0
    height: int = 0
    boxes: list[Box] = field(default_factory=list)
    box_subtypes: list[dict[str, float]] = field(default_factory=list)  # per box: P(subtype | pneumonia)
    impression: str | None = None
    p_pneumonia: float | None = None
    top_opacity: float | None = None  # best opacity box score among all detector boxes (shown or not)
    top_other: float | None = None  # best score of a box of any other finding
    image_probs: dict[str, float] = field(default_factory=dict)  # whole-image classifier (subtypes + Normal)
    signals: dict[str, float | None] = field(default_factory=dict)  # see the module docstring, all in [0, 1]
    cls_margin: float | None = None  # top1 - top2 of the whole-image classifier
    uncertainty: float | None = None
    embedding: str | None = None  # whole-image penultimate features, classifier.encode_embedding
    model_version: str = ""
    path: str | None = None
    image_sha256: str | None = None
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)

    def embedding_vector(self) -> np.ndarray | None:
        """The embedding as a float32 vector of length about 1, or None (not computed, or failed)."""
        if self.embedding is None:
            return None
        from cxrkit.models.classifier import decode_embedding

        return decode_embedding(self.embedding)

    @classmethod
    def from_dict(cls, d: dict) -> "Prediction":
        d = dict(d)
        d["boxes"] = [Box.from_dict(b) for b in d.get("boxes", [])]
        return cls(**d)


# --- small pure functions (tested on synthetic numbers) -----------------------


def binary_entropy(p: float) -> float:
    """H(p) in bits, in [0, 1]; 0 at p = 0 or 1, 1 at p = 0.5."""
    p = float(min(max(p, 0.0), 1.0))
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return float(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))


def normalised_entropy(probs: Sequence[float]) -> float:
    """Shannon entropy / log(K), in [0, 1] (K = len(probs) >= 2)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0, None)
    if p.size < 2 or p.sum() <= 0:
        return 0.0
    p = p / p.sum()
    nz = p[p > 0]
    return float(np.clip(-(nz * np.log(nz)).sum() / math.log(p.size), 0.0, 1.0))


def top2_margin(probs: Sequence[float]) -> float:
    """Top-1 minus top-2 probability, in [0, 1]."""
    p = np.sort(np.asarray(probs, dtype=np.float64))[::-1]
    return float(np.clip(p[0] - (p[1] if p.size > 1 else 0.0), 0.0, 1.0))


def flip_disagreement(original: Sequence[Box], flipped_back: Sequence[Box]) -> float:
    """1 - 2 * sum(matched IoU) / (n_a + n_b), greedy same-finding matching by IoU (module docstring)."""
    from cxrkit.evaluation.metrics import iou_matrix

    a, b = list(original), list(flipped_back)
    if not a and not b:
        return 0.0
    if not a or not b:
        return 1.0
    iou = iou_matrix(np.array([[x.x, x.y, x.w, x.h] for x in a]), np.array([[x.x, x.y, x.w, x.h] for x in b]))
    same = np.array([[x.finding == y.finding for y in b] for x in a])
    iou = np.where(same, iou, 0.0)
    total, used_a, used_b = 0.0, set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(b))
        if iou[i, j] <= 0:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        total += float(iou[i, j])
    return float(np.clip(1.0 - 2.0 * total / (len(a) + len(b)), 0.0, 1.0))


def combine_uncertainty(signals: dict[str, float | None], weights: dict[str, float]) -> float:
    """sum w_k s_k / sum w_k over the signals that are not None (and have weight > 0); 0 if none."""
    num = den = 0.0
    for name, value in signals.items():
        w = float(weights.get(name, 0.0))
        if value is None or w <= 0:
            continue
        num += w * float(value)
        den += w
    return float(num / den) if den > 0 else 0.0


def impression_rule(top_opacity: float, p_normal: float, top_other: float, schema: LabelSchema,
                    threshold: float = 0.5, other_conf: float = 0.5) -> tuple[str, float]:
    """(impression, p_pneumonia) by the rule of the module docstring."""
    p = 0.5 * (float(top_opacity) + (1.0 - float(p_normal)))
    if p >= threshold:
        return schema.pneumonia, p
    if top_other >= other_conf:
        return schema.other_abnormality, p
    return schema.normal, p


# --- the predictor --------------------------------------------------------------


class Predictor:
    """The detector and the classifier of one model version, with the rules above."""

    def __init__(self, detector_weights: str | os.PathLike, classifier_checkpoint: str | os.PathLike, params: dict,
                 schema: LabelSchema | None = None, model_version: str | None = None,
                 cache_dir: str | os.PathLike | None = None, operating_conf: float | None = None,
                 effort_conf: float | None = None):
        from cxrkit.models.classifier import load_classifier
        from cxrkit.models.detector import load_detector

        schema = schema or load_schema()
        if model_version is None:
            model_version = f"det-{file_sha256(detector_weights)[:8]}-clf-{file_sha256(classifier_checkpoint)[:8]}"
        detector = load_detector(Path(detector_weights), schema, params["detector"].get("inference_format", "pt"),
                                 int(params["detector"]["imgsz"]))
        self._setup(detector, load_classifier(classifier_checkpoint),
                    params, schema, model_version, cache_dir, operating_conf, effort_conf)

    @classmethod
    def from_models(cls, detector, classifier, params: dict, schema: LabelSchema | None = None,
                    model_version: str = "in-memory", cache_dir: str | os.PathLike | None = None,
                    operating_conf: float | None = None, effort_conf: float | None = None) -> "Predictor":
        """A predictor around models already loaded (an ultralytics YOLO and a classifier with
        `attach_info` set), e.g. untrained baselines for a benchmark."""
        self = cls.__new__(cls)
        self._setup(detector, classifier, params, schema or load_schema(), model_version, cache_dir, operating_conf,
                    effort_conf)
        return self

    def _setup(self, detector, classifier, params, schema, model_version, cache_dir, operating_conf,
               effort_conf=None) -> None:
        from cxrkit.models.classifier import classifier_classes

        if not isinstance(params, dict) or "detector" not in params or "classifier" not in params:
            raise PredictorError("params must be the whole params file (load_params()): sections detector and classifier")
        classes = list(getattr(classifier, "classes", []))
        if classes != classifier_classes(schema):
            raise PredictorError(f"classifier predicts {classes}, not the label config's {classifier_classes(schema)}")
        det, clf = params["detector"], params["classifier"]
        pred = dict(DEFAULTS)
        pred.update(params.get("predictor") or {})
        pred["weights"] = {**DEFAULTS["weights"], **(pred.get("weights") or {})}
        unknown = set(pred["weights"]) - set(SIGNALS)
        if unknown:
            raise PredictorError(f"predictor.weights has unknown signals {sorted(unknown)}; known: {', '.join(SIGNALS)}")
        if pred["tta"]:
            pred["flip"] = True
        if pred["conf"] == "effort" and effort_conf is not None:
            pred["conf"] = float(effort_conf)
        elif pred["conf"] in ("effort", "auto"):
            pred["conf"] = float(operating_conf) if operating_conf is not None else AUTO_CONF_FALLBACK
        elif isinstance(pred["conf"], bool) or not isinstance(pred["conf"], (int, float)):
            raise PredictorError(f"predictor.conf is {pred['conf']!r}: a box score in [0, 1], effort or auto")
        if pred["impression"] not in ("shown", "rule"):
            raise PredictorError(f"predictor.impression is {pred['impression']!r}: shown or rule")
        if pred["merge_iou"] is not None and not 0.0 < float(pred["merge_iou"]) <= 1.0:
            raise PredictorError(f"predictor.merge_iou is {pred['merge_iou']!r}: an IoU in (0, 1], or null (off)")
        self.detector, self.classifier, self.schema = detector, classifier, schema
        self.params = params
        self.model_version = str(model_version)
        self.classes = classes
        self.imgsz = int(det["imgsz"])
        self.det_conf = float(det.get("conf", 0.01))
        self.iou = float(det.get("iou", 0.5))
        self.max_det = int(det.get("max_det", 100))
        self.crop_margin = float(clf["crop_margin"])
        self.settings = pred
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.stats = {"cache_hits": 0, "cache_misses": 0, "predicted": 0, "errors": 0}
        fingerprint = {"imgsz": self.imgsz, "conf": self.det_conf, "iou": self.iou, "max_det": self.max_det,
                       "crop_margin": self.crop_margin, "predictor": pred, "format": CACHE_FORMAT}
        self.settings_key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
        import torch

        self._device = 0 if torch.cuda.is_available() else "cpu"

    # --- one image / a batch of arrays ---------------------------------------

    def predict(self, image: np.ndarray) -> Prediction:
        """The prediction for one grey image (2-D uint8, the stored image's pixels)."""
        return self.predict_arrays([image])[0]

    def predict_arrays(self, images: Sequence[np.ndarray], uncertainty: bool = True) -> list[Prediction]:
        """Predictions for several grey images at once (one detector and one classifier pass).

        uncertainty=False: only what a radiologist is shown (the boxes, their subtypes, the
        impression), for the ML backend, whose answer carries no uncertainty (the select flow
        ranks by its own). The mirrored detector pass then runs only for `tta`, and the
        whole-image classification only for `impression: rule`; `signals`, `image_probs`,
        `cls_margin` and `uncertainty` are left empty (and `p_pneumonia` without the rule).
        What is shown is the same either way."""
        images = [_check_image(img) for img in images]
        if not images:
            return []
        s = self.settings
        flip = bool(s["flip"]) and (uncertainty or bool(s["tta"]))
        whole_image = uncertainty or s["impression"] == "rule"
        inputs = list(images) + ([np.ascontiguousarray(img[:, ::-1]) for img in images] if flip else [])
        detected = self._detect(inputs)
        original, flipped = detected[: len(images)], detected[len(images):]
        if flip:
            flipped = [[_unflip(b, img.shape[1]) for b in boxes] for boxes, img in zip(flipped, images)]

        shown_per_image, flip_scores = [], []
        for k, img in enumerate(images):
            boxes = original[k]
            if s["tta"]:
                boxes = self._fuse(boxes, flipped[k], img.shape[1], img.shape[0])
            shown_per_image.append(shown_at(boxes, float(s["conf"]), s["merge_iou"], img.shape[1], img.shape[0],
                                            self.schema, int(s["max_boxes"])))
            if flip:
                fc = float(s["flip_conf"])
                flip_scores.append(flip_disagreement([b for b in original[k] if b.score >= fc],
                                                     [b for b in flipped[k] if b.score >= fc]))
            else:
                flip_scores.append(None)

        # One classifier pass: every whole image, then every opacity box's crop.
        from cxrkit.models.classifier import (
            crop_region,
            encode_embedding,
            final_layer,
            penultimate_features,
            predict_proba,
            subtype_given_pneumonia,
            unit_rows,
        )

        pixels, owners = list(images) if whole_image else [], []
        for k, (img, shown) in enumerate(zip(images, shown_per_image)):
            h, w = img.shape
            for i, b in enumerate(shown):
                if b.finding == self.schema.opacity:
                    x0, y0, x1, y1 = crop_region(b, w, h, self.crop_margin)
                    pixels.append(img[y0:y1, x0:x1])
                    owners.append((k, i))
        n_whole = len(images) if whole_image else 0
        embeddings: list[str | None] = [None] * len(images)
        # The embedding needs the final layer's input; a model without one (a stand-in) gets none.
        embed = uncertainty and final_layer(self.classifier, required=False) is not None
        with penultimate_features(self.classifier) if embed else contextlib.nullcontext([]) as features:
            probs = predict_proba(self.classifier, pixels) if pixels else np.zeros((0, len(self.classes)))
        if features:  # the whole images come first: their rows are the first n_whole
            embeddings = [encode_embedding(row) for row in unit_rows(np.concatenate(features)[:n_whole])]
        whole, crops = probs[:n_whole], probs[n_whole:]
        subtypes = subtype_given_pneumonia(crops) if len(crops) else np.zeros((0, len(self.classes) - 1))
        sub_names = [c for c in self.classes if c in self.schema.subtypes]
        box_sub: list[list[dict]] = [[{} for _ in shown] for shown in shown_per_image]
        for (k, i), row in zip(owners, subtypes):
            dist = {name: float(p) for name, p in zip(sub_names, row)}
            box_sub[k][i] = dist
            shown_per_image[k][i].subtype = max(dist, key=dist.get)

        normal_index = len(self.classes) - 1  # classifier_classes: Normal last
        out = []
        for k, img in enumerate(images):
            h, w = img.shape
            all_boxes, shown = original[k], shown_per_image[k]
            top_any = max((b.score for b in all_boxes), default=0.0)
            top_op = max((b.score for b in all_boxes if b.finding == self.schema.opacity), default=0.0)
            top_other = max((b.score for b in all_boxes if b.finding != self.schema.opacity), default=0.0)
            pred = Prediction(width=int(w), height=int(h), boxes=shown, box_subtypes=box_sub[k],
                              impression=shown_impression(shown, self.schema), top_opacity=float(top_op),
                              top_other=float(top_other), embedding=embeddings[k], model_version=self.model_version)
            if whole_image:
                p_img = whole[k]
                impression, p_pneu = impression_rule(top_op, float(p_img[normal_index]), top_other, self.schema,
                                                     float(s["impression_threshold"]), float(s["other_conf"]))
                pred.p_pneumonia = float(p_pneu)
                pred.image_probs = {c: float(p) for c, p in zip(self.classes, p_img)}
                if s["impression"] == "rule":
                    pred.impression = impression
            if uncertainty:
                sub_entropies = [normalised_entropy(list(d.values())) for d in box_sub[k] if d]
                margin = top2_margin(p_img)
                pred.signals = {
                    "detection": binary_entropy(top_any),
                    "box": float(np.mean([binary_entropy(b.score) for b in shown])) if shown else None,
                    "classifier": normalised_entropy(p_img),
                    "margin": 1.0 - margin,
                    "subtype": float(np.mean(sub_entropies)) if sub_entropies else None,
                    "flip": flip_scores[k],
                }
                pred.cls_margin = margin
                pred.uncertainty = combine_uncertainty(pred.signals, s["weights"])
            out.append(pred)
        return out

    def _detect(self, images: list[np.ndarray]) -> list[list[Box]]:
        """Detector boxes (score >= detector.conf) per grey image, in its pixels, best first."""
        batch = max(1, int(self.settings["batch"]))
        out: list[list[Box]] = []
        with torch_threads_kept():
            for start in range(0, len(images), batch):
                chunk = [cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) for img in images[start: start + batch]]
                results = self.detector.predict(chunk, imgsz=self.imgsz, conf=self.det_conf, iou=self.iou,
                                                max_det=self.max_det, batch=batch, device=self._device,
                                                verbose=False, save=False)
                out.extend(result_boxes(result, self.schema) for result in results)
        return out

    def _fuse(self, a: list[Box], b: list[Box], width: int, height: int) -> list[Box]:
        """Weighted boxes fusion of the original and the flipped-back boxes."""
        return fuse_boxes([a, b], float(self.settings["wbf_iou"]), width, height, self.schema.findings)

    # --- files, batches, cache -----------------------------------------------

    def cache_path(self, image_sha256: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
        root = Path(cache_dir) if cache_dir is not None else self.cache_dir
        if root is None:
            return None
        key = hashlib.sha256(f"{self.model_version}\0{self.settings_key}".encode()).hexdigest()[:16]
        return root / key / f"{image_sha256}.json"

    def predict_paths(self, paths: Sequence[str | os.PathLike], batch: int | None = None,
                      cache_dir: str | os.PathLike | None = None) -> list[Prediction]:
        """One Prediction per path, in order. A missing, unreadable or undecodable file gives a
        Prediction with `error` set (the others are predicted). Cached results (same file
        bytes, same model_version and settings) are returned with `cached=True`."""
        batch = max(1, int(batch or self.settings["batch"]))
        results: list[Prediction | None] = [None] * len(paths)
        todo: list[tuple[int, np.ndarray, str]] = []

        def flush():
            if not todo:
                return
            preds = self._predict_isolated([img for _, img, _ in todo])
            for (i, _, sha), p in zip(todo, preds):
                p.path, p.image_sha256 = str(paths[i]), sha
                if p.ok:
                    self.stats["predicted"] += 1
                    self._cache_write(p, cache_dir)
                else:
                    self.stats["errors"] += 1
                results[i] = p
            todo.clear()

        for i, path in enumerate(paths):
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                results[i] = self._error(path, f"{path}: image file not found")
                continue
            except OSError as exc:
                results[i] = self._error(path, f"{path}: cannot read image file: {exc}")
                continue
            sha = hashlib.sha256(data).hexdigest()
            hit = self._cache_read(sha, cache_dir)
            if hit is not None:
                hit.path, hit.cached = str(path), True
                results[i] = hit
                continue
            if self.cache_path(sha, cache_dir) is not None:
                self.stats["cache_misses"] += 1
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
            if img is None or img.size == 0:
                results[i] = self._error(path, f"{path}: cannot decode image ({len(data)} bytes; corrupt or not an image)", sha)
                continue
            todo.append((i, img, sha))
            if len(todo) >= batch:
                flush()
        flush()
        return results  # type: ignore[return-value]

    # --- explanations (cxrkit.models.explain) ---------------------------------

    def explain(self, image: np.ndarray, prediction: Prediction | None = None):
        """The class-activation heatmaps (HiResCAM) of one grey image: the whole film and each shown opacity box's
        crop (`explain_image`). `prediction`: this predictor's prediction of the image, if made
        already (else the shown boxes are predicted first)."""
        from cxrkit.models.explain import explain_image

        image = _check_image(image)
        prediction = prediction or self.predict_arrays([image], uncertainty=False)[0]
        boxes = [b for b in prediction.boxes if b.finding == self.schema.opacity]
        with torch_threads_kept():
            return explain_image(self.classifier, image, boxes, self.crop_margin, self.model_version)

    def explain_paths(self, paths: Sequence[str | os.PathLike], cache_dir: str | os.PathLike | None = None) -> list:
        """One Explanation per path, in order, cached beside the predictions (same folder per
        model version and settings, `<image sha256>.explain.json`). The shown boxes come from
        `predict_paths` (so from its cache too). A film that cannot be read or explained gives an
        Explanation with `error` set; the others go on."""
        from cxrkit.models.explain import Explanation

        out = []
        for path, pred in zip(paths, self.predict_paths(paths, cache_dir=cache_dir)):
            if not pred.ok:
                out.append(Explanation(error=pred.error, path=str(path), model_version=self.model_version))
                continue
            cache = self.cache_path(pred.image_sha256, cache_dir)
            cache = cache.with_name(f"{pred.image_sha256}.explain.json") if cache is not None else None
            hit = _read_explanation(cache, self.model_version, self.settings_key)
            if hit is not None:
                hit.path, hit.cached = str(path), True
                out.append(hit)
                continue
            try:
                image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    raise PredictorError(f"{path}: cannot decode image")
                found = self.explain(image, pred)
            except Exception as exc:  # noqa: BLE001 - reported with the film's name; the others go on
                log.warning("%s: no heatmap: %s: %s", path, type(exc).__name__, exc)
                out.append(Explanation(error=f"{path}: no heatmap: {type(exc).__name__}: {exc}", path=str(path),
                                       model_version=self.model_version))
                continue
            found.image_sha256 = pred.image_sha256
            if cache is not None:
                payload = {"format": CACHE_FORMAT, "model_version": self.model_version,
                           "settings_key": self.settings_key, "explanation": {**found.to_dict(), "path": None}}
                write_atomic(cache, json.dumps(payload))
            found.path = str(path)
            out.append(found)
        return out

    def _predict_isolated(self, images: list[np.ndarray]) -> list[Prediction]:
        """A batch at once; if it fails, image by image, so one bad image fails alone."""
        try:
            return self.predict_arrays(images)
        except Exception as exc:  # noqa: BLE001 - retried one by one below, where the error is attributed
            if len(images) == 1:
                return [self._failed(exc)]
        out = []
        for img in images:
            try:
                out.extend(self.predict_arrays([img]))
            except Exception as exc:  # noqa: BLE001
                out.append(self._failed(exc))
        return out

    def _failed(self, exc: Exception) -> Prediction:
        log.warning("prediction failed: %s: %s", type(exc).__name__, exc)
        return Prediction(error=f"prediction failed: {type(exc).__name__}: {exc}", model_version=self.model_version)

    def _error(self, path, message: str, sha: str | None = None) -> Prediction:
        self.stats["errors"] += 1
        log.warning("%s", message)
        return Prediction(error=message, path=str(path), image_sha256=sha, model_version=self.model_version)

    def _cache_read(self, sha: str, cache_dir) -> Prediction | None:
        path = self.cache_path(sha, cache_dir)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("model_version") != self.model_version or data.get("settings_key") != self.settings_key:
                return None
            pred = Prediction.from_dict(data["prediction"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable cache file %s (%s): predicting again", path, exc)
            return None
        self.stats["cache_hits"] += 1
        return pred

    def _cache_write(self, pred: Prediction, cache_dir) -> None:
        path = self.cache_path(pred.image_sha256, cache_dir)
        if path is None:
            return
        payload = {"format": CACHE_FORMAT, "model_version": self.model_version, "settings_key": self.settings_key,
                   "prediction": {**pred.to_dict(), "path": None, "cached": False}}
        write_atomic(path, json.dumps(payload, sort_keys=True))


def prune_prediction_cache(root: str | os.PathLike, keep_versions: set[str]) -> list[str]:
    """Delete the cached predictions of model versions not in `keep_versions` (the cache holds a
    folder per version and predictor settings, each file naming its version); returns the
    versions deleted. A folder whose version cannot be read is left as it is."""
    root, dropped = Path(root), []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        sample = next(folder.glob("*.json"), None)
        try:
            version = json.loads(sample.read_text())["model_version"] if sample else None
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if version is not None and version not in keep_versions:
            shutil.rmtree(folder, ignore_errors=True)
            dropped.append(version)
    return dropped


def _read_explanation(path: Path | None, model_version: str, settings_key: str):
    """A cached Explanation of this version and settings, or None (absent, another version, unreadable)."""
    from cxrkit.models.explain import Explanation

    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("model_version") != model_version or data.get("settings_key") != settings_key:
            return None
        return Explanation.from_dict(data["explanation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable heatmap cache file %s (%s): explaining again", path, exc)
        return None


def _check_image(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY if a.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 2:
        raise PredictorError(f"expected a 2-D grey image, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise PredictorError(f"expected uint8 pixels, got {a.dtype}")
    return np.ascontiguousarray(a)


def _unflip(box: Box, width: int) -> Box:
    return Box(x=round(max(0.0, width - box.x - box.w), 2), y=box.y, w=box.w, h=box.h, finding=box.finding, score=box.score)


def to_labelstudio(prediction: Prediction, width: int | None = None, height: int | None = None,
                   schema: LabelSchema | None = None, impression: bool = True) -> list[dict]:
    """Label Studio results of a prediction (`boxes_to_results`): one rectangle per box with its
    detector score, its subtype as a per-region choice, and (unless impression=False) the
    impression. width/height: the image the task shows (default: the predicted image's)."""
    from cxrkit.labelstudio.results import boxes_to_results

    if not prediction.ok:
        raise PredictorError(f"no results for a failed prediction: {prediction.error}")
    schema = schema or load_schema()
    w = int(width or prediction.width)
    h = int(height or prediction.height)
    boxes = prediction.boxes
    if (w, h) != (prediction.width, prediction.height) and prediction.width and prediction.height:
        sx, sy = w / prediction.width, h / prediction.height
        boxes = [Box(x=b.x * sx, y=b.y * sy, w=b.w * sx, h=b.h * sy, finding=b.finding, subtype=b.subtype, score=b.score)
                 for b in boxes]
    return boxes_to_results(list(boxes), w, h, schema, impression=prediction.impression if impression else None)
