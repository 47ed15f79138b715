"""Pseudo-labels between the detector and the subtype classifier, for heterogeneous data.

    pseudo_label_subtypes(records, classifier, data_dir, threshold, crop_margin) -> (new records, report)
    pseudo_label_boxes(records, detector, data_dir, threshold, imgsz, ...)      -> (new records, report)
    box_subtype_probs(records, classifier, data_dir, crop_margin)               -> (a)'s model output, stored
    apply_box_subtypes(records, probs, threshold)                               -> (a) from stored output
    self_training_records(records, predictions, settings)                        -> (c)

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
    helps is measured in BENCHMARKS.md ("Pseudo-labels", benchmarks/bench_pseudo_labels.py):
    its effect did not repeat across seeds, so no pipeline stage applies it. Classification-only
    Normal films need no model: with `normal_negatives` they count as images with no boxes
    (true negatives for the detector).

(c) Self-training on the unlabeled pool (Elezi et al., "Not All Labels Are Equal", CVPR 2022:
    very confident predictions become auto-labels while uncertain images go to the readers;
    Lee 2013's pseudo-label, and the teacher side of Active Teacher, CVPR 2022). An unlabeled
    image becomes a training record when the serving model (the teacher) is sure of it, "sure"
    being measured on the readers' validation films, which the teacher never trained on
    (`self_training_cutoffs`, per teacher):
    - Normal when no detector box of any finding, shown or not, scores above the normal
      cutoff: the largest score c such that, of the validation films whose top box scores
      <= c, the share without pneumonia has a 95 % Wilson lower bound >= `precision`;
    - Pneumonia when at least one shown opacity box scores >= the pneumonia cutoff: the
      smallest score b such that, of the validation films whose top opacity box scores >= b,
      the share with pneumonia has that lower bound >= `precision`. Those boxes (the ones the
      teacher shows: at its shown threshold, overlapping ones merged, cxrkit.models.preannotation;
      a film whose top box passes the cutoff but shows none is not labeled) become
      pseudo boxes (rad_id "pseudo"), each with its subtype when the teacher's
      P(subtype | pneumonia) of its crop is >= `subtype_threshold` (else none);
    - anything else stays unlabeled (the readers' queue); a side whose cutoff no score
      reaches (a young teacher, or too few validation films to be sure) labels nothing.
    Why cutoffs measured per teacher and why the detector's scores (BENCHMARKS.md
    "Self-training's rules"): a young detector's scores are low and shift from one version to
    the next, so a fixed threshold is either never reached or unsafe; and the whole-image
    classifier's P(Normal) did not separate normal from pneumonia films at the benchmark's
    sizes (median 0.37 on both, teachers of 20 to 120 labels), so it is not part of the rule. The lower
    bound makes a small validation set ask for more evidence, never less.
    At most `max_ratio` pseudo-labeled images per reader-labeled training image: Pneumonia
    first (rarer and worth more), then Normal, each surest first, so the readers' labels are
    not drowned and training time stays bounded by the labeled set, not by the pool. The
    Normal side alone may be capped lower, at `normal_ratio` per reader-labeled image (0:
    Pneumonia pseudo-labels only): Normal films are most of what a teacher is sure of, and
    they move the detector's operating point (BENCHMARKS.md "Self-training, one side at a time").
    Input: the teacher's stored predictions of every image (the retrain flow writes them,
    pseudo/; the select flow's prediction cache makes the pool's nearly free), so the
    `prepare` stage needs no model.

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
import math
from collections.abc import Sequence
from pathlib import Path

from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Box, Record

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


def box_subtype_probs(records: Sequence[Record], classifier, data_dir: str | Path, crop_margin: float,
                      schema: LabelSchema | None = None) -> tuple[dict[str, dict[int, dict[str, float]]], list]:
    """(a)'s model output: for each record with subtype-less opacity boxes, box index ->
    P(subtype | pneumonia) of its crop. Returns ({image_id: {box index: {subtype: p}}}, errors
    [(image_id, reason)]); an unreadable image is an error, the others go on."""
    from cxrkit.models.classifier import (
        classifier_classes,
        crop_region,
        predict_proba,
        read_grey,
        subtype_given_pneumonia,
    )

    schema = schema or load_schema()
    if list(classifier.classes) != classifier_classes(schema):
        raise PseudoLabelError(f"classifier classes {classifier.classes} are not the label config's "
                               f"{classifier_classes(schema)}")
    out: dict[str, dict[int, dict[str, float]]] = {}
    errors = []
    for record in records:
        todo = needs_subtype(record, schema)
        if not todo:
            continue
        try:
            grey = read_grey(Path(data_dir) / record.path)
            height, width = grey.shape
            crops = []
            for i in todo:
                x0, y0, x1, y1 = crop_region(record.boxes[i], width, height, crop_margin)
                crops.append(grey[y0:y1, x0:x1])
        except ValueError as exc:  # ClassifierError: unreadable image, box outside it
            errors.append((record.image_id, str(exc)))
            log.warning("pseudo-labels: image %s skipped: %s", record.image_id, exc)
            continue
        given = subtype_given_pneumonia(predict_proba(classifier, crops))
        out[record.image_id] = {i: {s: float(v) for s, v in zip(schema.subtypes, p)} for i, p in zip(todo, given)}
    return out, errors


def apply_box_subtypes(records: Sequence[Record], probs: dict[str, dict[int, dict[str, float]]],
                       threshold: float | None, schema: LabelSchema | None = None) -> tuple[list[Record], dict]:
    """(a) from `box_subtype_probs`' output: each subtype-less opacity box whose best subtype has
    P >= threshold gets it. Returns new records and a report (considered, labeled, boxes)."""
    schema = schema or load_schema()
    threshold = _check_threshold("subtype_threshold", threshold)
    out = [_copy(r) for r in records]
    report = {"considered": 0, "labeled": 0, "errors": [], "boxes": []}
    if threshold is None:
        return out, report
    for k, record in enumerate(out):
        todo = needs_subtype(record, schema)
        mine = probs.get(record.image_id) or {}
        report["considered"] += len(todo)
        labeled, confidence = [], []
        for i in todo:
            p = mine.get(i) or mine.get(str(i))  # JSON keys are strings
            if not p:
                continue
            best = max(p, key=p.get)
            if p[best] >= threshold and best in schema.subtypes:
                record.boxes[i] = dataclasses.replace(record.boxes[i], subtype=best)
                labeled.append(i)
                confidence.append(float(p[best]))
                report["boxes"].append((record.image_id, i, best, float(p[best])))
        if labeled:
            report["labeled"] += len(labeled)
            out[k] = _marked(record, box_subtypes=labeled, subtype_confidence=confidence, subtype_threshold=threshold)
    log.info("pseudo-labels: %d of %d subtype-less opacity boxes got a subtype (threshold %.2f)",
             report["labeled"], report["considered"], threshold)
    return out, report


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
    schema = schema or load_schema()
    threshold = _check_threshold("subtype_threshold", threshold)
    if threshold is None:
        return [_copy(r) for r in records], {"considered": 0, "labeled": 0, "errors": [], "boxes": []}
    probs, errors = box_subtype_probs(records, classifier, data_dir, crop_margin, schema)
    out, report = apply_box_subtypes(records, probs, threshold, schema)
    report["errors"] = errors
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


# --- (c) self-training on the unlabeled pool ---------------------------------------

SELF_TRAINING_KEYS = ("precision", "subtype_threshold", "max_ratio", "normal_ratio")


def teacher_entry(prediction) -> dict:
    """What the `prepare` stage needs of one teacher prediction (cxrkit.models.predictor.Prediction),
    as plain JSON: the top box scores (every detector box, shown or not), p_pneumonia and the shown
    boxes with their score and subtype confidence."""
    boxes = []
    for box, dist in zip(prediction.boxes, prediction.box_subtypes or [{}] * len(prediction.boxes)):
        best = max(dist, key=dist.get) if dist else None
        boxes.append({"x": box.x, "y": box.y, "w": box.w, "h": box.h, "finding": box.finding,
                      "score": round(float(box.score or 0.0), 6), "subtype": best,
                      "subtype_p": round(float(dist[best]), 6) if best else None})

    def rounded(value):
        return None if value is None else round(float(value), 6)

    return {"top_opacity": rounded(prediction.top_opacity), "top_other": rounded(prediction.top_other),
            "p_pneumonia": rounded(prediction.p_pneumonia), "boxes": boxes, "error": prediction.error}


def teacher_entries(records: Sequence[Record], predictions: Sequence) -> dict[str, dict]:
    """image_id -> `teacher_entry` for each record whose prediction succeeded (a failed one has no entry)."""
    return {r.image_id: teacher_entry(p) for r, p in zip(records, predictions) if p.ok}


def self_training_settings(section: dict | None) -> dict | None:
    """The `pseudo_labels.self_training` section checked; None when off (absent, null, or
    precision null)."""
    if not section:
        return None
    unknown = set(section) - set(SELF_TRAINING_KEYS)
    if unknown:
        raise PseudoLabelError(f"pseudo_labels.self_training has unknown keys {sorted(unknown)}; "
                               f"known: {', '.join(SELF_TRAINING_KEYS)}")
    out = {k: _check_threshold(f"self_training.{k}", section.get(k)) for k in ("precision", "subtype_threshold")}
    for key in ("max_ratio", "normal_ratio"):
        ratio = section.get(key)
        if ratio is not None and float(ratio) < 0:
            raise PseudoLabelError(f"pseudo_labels.self_training.{key} must be >= 0 or null (no cap), got {ratio}")
        out[key] = None if ratio is None else float(ratio)
    return None if out["precision"] is None else out


def wilson_lower(successes: int, n: int, z: float = 1.96) -> float:
    """The lower end of the Wilson score interval of a proportion (95 % at z = 1.96); 0 for n = 0."""
    if n <= 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def _top_box(entry: dict) -> float:
    return max(float(entry["top_opacity"]), float(entry.get("top_other") or 0.0))


def self_training_cutoffs(entries: Sequence[dict], pneumonia: Sequence[bool], precision: float | None) -> dict:
    """The teacher's Normal and Pneumonia cutoffs (module docstring) from its `teacher_entry`s of
    validation films and whether each truly shows pneumonia; a side is None when no cutoff
    reaches `precision` (or precision is None). Also the number of validation films used."""
    usable = [(e, bool(y)) for e, y in zip(entries, pneumonia)
              if e and not e.get("error") and e.get("top_opacity") is not None]
    out = {"normal": None, "pneumonia": None, "validation": len(usable), "precision": precision}
    if precision is None or not usable:
        return out
    # Normal: films in order of their top box score, lowest first; a cutoff takes every tie.
    ranked = sorted(usable, key=lambda u: _top_box(u[0]))
    right = 0
    for k, (entry, sick) in enumerate(ranked, 1):
        right += not sick
        if k < len(ranked) and _top_box(ranked[k][0]) == _top_box(entry):
            continue
        if wilson_lower(right, k) >= precision:
            out["normal"] = _top_box(entry)
    # Pneumonia: films in order of their top opacity score, highest first; the smallest score that qualifies.
    ranked = sorted(usable, key=lambda u: -float(u[0]["top_opacity"]))
    right = 0
    for k, (entry, sick) in enumerate(ranked, 1):
        right += sick
        score = float(entry["top_opacity"])
        if k < len(ranked) and float(ranked[k][0]["top_opacity"]) == score:
            continue
        if score > 0 and wilson_lower(right, k) >= precision:
            out["pneumonia"] = score
    return out


def self_training_records(records: Sequence[Record], teacher: dict[str, dict], settings: dict | None,
                          cutoffs: dict | None, teacher_version: str | None = None, labeled_count: int = 0,
                          schema: LabelSchema | None = None) -> tuple[list[Record], dict]:
    """(c): pseudo-labeled copies of the unlabeled records the teacher is sure of (module docstring).

    teacher: image_id -> `teacher_entry` of the serving model's prediction. settings: from
    `self_training_settings` (None: off). cutoffs: `self_training_cutoffs` of this teacher.
    labeled_count: the reader-labeled training images (max_ratio caps the pseudo-labeled ones at
    max_ratio x this, normal_ratio the Normal ones at normal_ratio x this). Returns (the new
    training records only, Pneumonia then Normal, surest first; report). Labeled records are
    never touched: a reader's label always wins over the teacher's."""
    schema = schema or load_schema()
    report = {"considered": 0, "unreadable": 0, "normal": 0, "pneumonia": 0, "boxes": 0, "capped": 0,
              "teacher": teacher_version}
    if settings is None or not teacher or not cutoffs:
        return [], report
    normal_c, pneumonia_c, sub_t = cutoffs.get("normal"), cutoffs.get("pneumonia"), settings["subtype_threshold"]
    normals, sick = [], []
    for record in records:
        entry = teacher.get(record.image_id)
        if record.labeled or not entry or entry.get("error"):
            continue
        if entry.get("top_opacity") is None:
            report["unreadable"] += 1  # a teacher file from before the top scores were kept: nothing to go on
            continue
        report["considered"] += 1
        top = _top_box(entry)
        marks = {"teacher": teacher_version, "top_box": top}
        if normal_c is not None and top <= normal_c:
            new = dataclasses.replace(_copy(record), labeled=True, boxes=[], impression=schema.normal, subtype=None)
            new.metadata["has_boxes"] = True
            normals.append(_marked(new, self_training="normal", cutoff=normal_c, **marks))
            continue
        if pneumonia_c is None:
            continue
        boxes = [Box(b["x"], b["y"], b["w"], b["h"], finding=schema.opacity, score=float(b["score"]), rad_id=PSEUDO,
                     subtype=b["subtype"] if sub_t is not None and b.get("subtype_p") is not None
                     and b["subtype_p"] >= sub_t and b["subtype"] in schema.subtypes else None)
                 for b in entry.get("boxes") or [] if b["finding"] == schema.opacity and float(b["score"]) >= pneumonia_c]
        if not boxes:
            continue
        subtypes = [b.subtype for b in boxes if b.subtype]
        new = dataclasses.replace(_copy(record), labeled=True, boxes=boxes, impression=schema.pneumonia,
                                  subtype=max(set(subtypes), key=subtypes.count) if subtypes else None)
        new.metadata["has_boxes"] = True
        sick.append(_marked(new, self_training="pneumonia", boxes=len(boxes), cutoff=pneumonia_c, **marks))
    # Surest first within each side (stable: ties keep the records' order); Pneumonia before Normal.
    sick.sort(key=lambda r: -r.metadata["pseudo"]["top_box"])
    normals.sort(key=lambda r: r.metadata["pseudo"]["top_box"])
    if settings.get("normal_ratio") is not None:
        keep = int(settings["normal_ratio"] * labeled_count)
        report["capped"] += max(0, len(normals) - keep)
        normals = normals[:keep]
    out = sick + normals
    if settings.get("max_ratio") is not None:
        keep = int(settings["max_ratio"] * labeled_count)
        report["capped"] += max(0, len(out) - keep)
        out = out[:keep]
    report["normal"] = sum(r.impression == schema.normal for r in out)
    report["pneumonia"] = len(out) - report["normal"]
    report["boxes"] = sum(len(r.boxes) for r in out)
    log.info("self-training: %d of %d unlabeled images pseudo-labeled by %s (%d normal, %d pneumonia with %d boxes)",
             report["normal"] + report["pneumonia"], report["considered"], teacher_version, report["normal"],
             report["pneumonia"], report["boxes"])
    return out, report


def self_train(candidates: Sequence[Record], teacher: dict[str, dict], validation: Sequence[Record],
               settings: dict | None, teacher_version: str | None = None, labeled_count: int = 0,
               schema: LabelSchema | None = None) -> tuple[list[Record], dict]:
    """(c) end to end, as the `prepare` stage and the benchmarks run it: the teacher's cutoffs set on
    the readers' `validation` records (their impressions against the teacher's entries for them),
    then `self_training_records` of the candidates. Returns (new records, report with the cutoffs)."""
    schema = schema or load_schema()
    cutoffs = self_training_cutoffs([teacher.get(r.image_id) for r in validation],
                                    [r.impression == schema.pneumonia for r in validation],
                                    settings["precision"] if settings else None)
    added, report = self_training_records(candidates, teacher, settings, cutoffs, teacher_version, labeled_count,
                                          schema)
    return added, {**report, "cutoffs": cutoffs}
