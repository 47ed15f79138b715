"""Pseudo-labels between the detector and the subtype classifier, for heterogeneous data.

    pseudo_label_subtypes(records, classifier, data_dir, threshold, crop_margin) -> (new records, report)
    pseudo_label_boxes(records, detector, data_dir, threshold, imgsz, ...)      -> (new records, report)
    apply_pseudo_labels(records, data_dir, params, classifier=, detector=)      -> both, as params.yaml says

The sets we import label different things. Detection-only sets (RSNA) have opacity boxes
without a subtype (`Box.subtype` None), classification-only sets (Kermany, COVID-19
Radiography) have an image-level subtype without boxes (`metadata["has_boxes"]` False).
Two ways to let each model learn from the other kind:

(a) Box subtypes. A detection-only opacity box gets the classifier's subtype of its crop
    (the crop with context margin the classifier is trained on) when the classifier is
    sure enough: max P(subtype | pneumonia) >= `subtype_threshold`. The box is a ground-
    truth opacity, so the Normal column is left out and the subtype columns renormalised.
    The classifier then trains on those crops too.
(b) Opacity boxes. A classification-only pneumonia image gets the detector's opacity
    boxes with score >= `box_threshold`, each with the image's subtype; the image then
    counts as having complete boxes, so the detector (self-training) and the classifier's
    crop branch learn from it. A pneumonia image where the detector finds nothing that
    sure stays out of detector training: its boxes are unknown, not absent. Whether (b)
    helps is measured in BENCHMARKS.md ("Pseudo-labels"); params.yaml keeps the measured
    choice. Classification-only Normal films need no model: with `normal_negatives` they
    count as images with no boxes (true negatives for the detector).

Nothing is modified in place: every function returns new Record objects (the manifest and
Label Studio's annotations stay the truth). What is pseudo is marked, so it can be
filtered, weighted or audited: a pseudo box has `rad_id = "pseudo"` and its detector
score; a record touched here has `metadata["pseudo"]` = {"box_subtypes": [box indices
whose subtype is pseudo], "subtype_confidence": [their P(subtype | pneumonia)],
"boxes": number of pseudo boxes, "threshold": ...}. Unlabeled records are never touched
(their missing labels mean "unknown"). An unreadable image is reported (image id and
reason) in the report's "errors" and its record passes through unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Record

log = logging.getLogger(__name__)

PSEUDO = "pseudo"  # Box.rad_id of a box drawn by the detector, not a reader


class PseudoLabelError(ValueError):
    """Settings that cannot work (a threshold outside [0, 1], a missing model); the message says why."""


def _check_threshold(name: str, value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise PseudoLabelError(f"pseudo_labels.{name} must be in [0, 1] or null (off), got {value}")
    return value


def _marked(record: Record, **marks) -> Record:
    """A copy of `record` with its metadata's "pseudo" entry extended by `marks`."""
    metadata = dict(record.metadata)
    metadata["pseudo"] = dict(metadata.get("pseudo", {})) | marks
    return dataclasses.replace(record, metadata=metadata)


def _copy(record: Record) -> Record:
    """A new Record with its own box lists and metadata (the input is never shared or changed)."""
    return dataclasses.replace(
        record,
        boxes=[dataclasses.replace(b) for b in record.boxes],
        raw_boxes=[dataclasses.replace(b) for b in record.raw_boxes],
        metadata=dict(record.metadata),
        findings=list(record.findings),
    )


# --- (a) box subtypes from the classifier ----------------------------------------


def needs_subtype(record: Record, schema: LabelSchema) -> list[int]:
    """Indices of the record's ground-truth opacity boxes without a subtype (detection-only sets)."""
    if not record.labeled:
        return []
    return [i for i, b in enumerate(record.boxes)
            if b.finding == schema.opacity and b.subtype is None and b.rad_id != PSEUDO]


def pseudo_label_subtypes(
    records: Sequence[Record],
    classifier,
    data_dir: str | Path,
    threshold: float | None,
    crop_margin: float,
    schema: LabelSchema | None = None,
) -> tuple[list[Record], dict]:
    """(a): subtype boxes of detection-only records where the classifier is sure (module docstring).

    classifier: a model from `load_classifier` (its classes: the subtypes, then Normal).
    threshold: min of max P(subtype | pneumonia) of the box crop; None = off (records copied as they are).
    Returns new records (same order) and a report: boxes considered, labeled, errors [(image_id, reason)],
    and per labeled box (image_id, box index, subtype, confidence) for measurements.
    """
    from cxrkit.models.classifier import (
        classifier_classes,
        crop_region,
        predict_proba,
        read_grey,
        subtype_given_pneumonia,
    )

    schema = schema or load_schema()
    threshold = _check_threshold("subtype_threshold", threshold)
    out = [_copy(r) for r in records]
    report = {"considered": 0, "labeled": 0, "errors": [], "boxes": []}
    if threshold is None:
        return out, report
    if list(classifier.classes) != classifier_classes(schema):
        raise PseudoLabelError(f"classifier classes {classifier.classes} are not the label config's "
                               f"{classifier_classes(schema)}")
    subtypes = schema.subtypes
    for k, record in enumerate(out):
        todo = needs_subtype(record, schema)
        if not todo:
            continue
        report["considered"] += len(todo)
        try:
            grey = read_grey(Path(data_dir) / record.path)
            height, width = grey.shape
            crops = []
            for i in todo:
                x0, y0, x1, y1 = crop_region(record.boxes[i], width, height, crop_margin)
                crops.append(grey[y0:y1, x0:x1])
        except ValueError as exc:  # ClassifierError: unreadable image, box outside it
            report["errors"].append((record.image_id, str(exc)))
            log.warning("pseudo-labels: image %s skipped: %s", record.image_id, exc)
            continue
        given = subtype_given_pneumonia(predict_proba(classifier, crops))
        labeled, confidence = [], []
        for i, p in zip(todo, given):
            best = int(np.argmax(p))
            if p[best] >= threshold:
                record.boxes[i] = dataclasses.replace(record.boxes[i], subtype=subtypes[best])
                labeled.append(i)
                confidence.append(float(p[best]))
                report["boxes"].append((record.image_id, i, subtypes[best], float(p[best])))
        if labeled:
            report["labeled"] += len(labeled)
            out[k] = _marked(record, box_subtypes=labeled, subtype_confidence=confidence, subtype_threshold=threshold)
    log.info("pseudo-labels: %d of %d subtype-less opacity boxes got a subtype (threshold %.2f)",
             report["labeled"], report["considered"], threshold)
    return out, report


# --- (b) opacity boxes from the detector -------------------------------------------


def is_classification_only(record: Record) -> bool:
    """A labeled record whose source has no boxes (metadata has_boxes False) and that has none."""
    return record.labeled and record.metadata.get("has_boxes") is False and not record.boxes


def pseudo_label_boxes(
    records: Sequence[Record],
    detector,
    data_dir: str | Path,
    threshold: float | None,
    imgsz: int,
    normal_negatives: bool = True,
    iou: float = 0.5,
    max_boxes: int = 10,
    batch: int = 8,
    schema: LabelSchema | None = None,
) -> tuple[list[Record], dict]:
    """(b): detector opacity boxes for classification-only pneumonia records (module docstring).

    detector: a model from `load_detector`. threshold: min box score; None = no pseudo boxes.
    normal_negatives: classification-only Normal records become complete with no boxes
    (metadata has_boxes True, marked pseudo {"normal_negative": True}).
    Returns new records and a report: images considered, images given boxes, boxes,
    normal negatives, errors [(image_id, reason)].
    """
    from cxrkit.models.detector import predict_boxes

    schema = schema or load_schema()
    threshold = _check_threshold("box_threshold", threshold)
    out = [_copy(r) for r in records]
    report = {"considered": 0, "images": 0, "boxes": 0, "normal_negatives": 0, "errors": []}
    todo = []
    for k, record in enumerate(out):
        if not is_classification_only(record):
            continue
        if record.impression == schema.normal and record.subtype is None:
            if normal_negatives:
                record.metadata["has_boxes"] = True
                out[k] = _marked(record, normal_negative=True)
                report["normal_negatives"] += 1
        elif threshold is not None and (record.subtype is not None or record.impression == schema.pneumonia):
            path = Path(data_dir) / record.path
            if path.is_file():
                todo.append((k, path))
            else:
                report["errors"].append((record.image_id, f"image {path} not found"))
                log.warning("pseudo-labels: image %s skipped: %s not found", record.image_id, path)
    report["considered"] = len(todo)
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        predicted = predict_boxes(detector, [p for _, p in chunk], imgsz, conf=threshold, batch=batch, iou=iou,
                                  max_det=max_boxes, schema=schema)
        for (k, _), boxes in zip(chunk, predicted):
            record = out[k]
            mine = [dataclasses.replace(b, subtype=record.subtype, rad_id=PSEUDO)
                    for b in boxes if b.finding == schema.opacity and b.score >= threshold][:max_boxes]
            if not mine:
                continue  # boxes unknown, not absent: stays out of detector training
            record.boxes = mine
            record.metadata["has_boxes"] = True
            out[k] = _marked(record, boxes=len(mine), box_threshold=threshold)
            report["images"] += 1
            report["boxes"] += len(mine)
    log.info("pseudo-labels: %d of %d classification-only pneumonia images got %d detector boxes (threshold %s); "
             "%d normal negatives", report["images"], report["considered"], report["boxes"], threshold,
             report["normal_negatives"])
    return out, report


# --- both, from params.yaml ------------------------------------------------------------


def apply_pseudo_labels(
    records: Sequence[Record],
    data_dir: str | Path,
    params: dict,
    classifier=None,
    detector=None,
    schema: LabelSchema | None = None,
) -> tuple[list[Record], dict]:
    """(a) then (b) with the knobs of params.yaml (`params` = the whole file: the
    pseudo_labels, classifier and detector sections are read). A step whose threshold is
    set needs its model. Returns new records and {"subtypes": report a, "boxes": report b}."""
    settings = params["pseudo_labels"]
    sub_t = _check_threshold("subtype_threshold", settings.get("subtype_threshold"))
    box_t = _check_threshold("box_threshold", settings.get("box_threshold"))
    if sub_t is not None and classifier is None:
        raise PseudoLabelError("pseudo_labels.subtype_threshold is set but no classifier was given")
    if box_t is not None and detector is None:
        raise PseudoLabelError("pseudo_labels.box_threshold is set but no detector was given")
    out, report_a = list(records), {}
    if sub_t is not None:
        out, report_a = pseudo_label_subtypes(out, classifier, data_dir, sub_t,
                                              float(params["classifier"]["crop_margin"]), schema)
    out, report_b = pseudo_label_boxes(out, detector, data_dir, box_t, int(params["detector"]["imgsz"]),
                                       normal_negatives=bool(settings.get("normal_negatives", True)),
                                       iou=float(params["detector"]["iou"]), schema=schema)
    return out, {"subtypes": report_a, "boxes": report_b}
