"""Correction effort in Label Studio: what radiologists changed in the pre-annotations they saw.

    effort_rows(export, schema, predictions) -> one row per submitted annotation of an export
    summarise_effort(rows)           -> per model version shown (and "none": no pre-annotation)
    effort_metrics(export, schema)   -> the retrain's metrics/effort.json
    reader_agreement(labels, impressions) -> its "readers" part: agreement where several read an image

Label Studio keeps, with every annotation submitted through its API or editor, a copy of the
prediction of the project's `model_version` at that moment (`annotation.prediction`, with its
own `model_version` and `result`: the select flow's last publication of the queue, so what the
task showed; tasks.model_version_of reads the model version from its label, and a cold-start
publication showed nothing), and the seconds the radiologist spent (`lead_time`, written by the editor). An
annotation the editor started from a prediction also names it in `parent_prediction`: that id
is the fallback when there is no copy (the project's version had changed), looked up in the
project's predictions, since an export lists a task's predictions by id only. Each annotation's edits against that prediction are
counted by cxrkit.evaluation.effort (boxes kept, adjusted, deleted, added; subtypes and
impression changed). Skipped annotations (`was_cancelled`) are not labels and are left out,
as in ground_truth.py.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict

from cxrkit.core.labels import LabelSchema
from cxrkit.core.manifest import Box
from cxrkit.evaluation.agreement import fleiss_kappa, image_agreement
from cxrkit.evaluation.effort import (
    EDIT_KINDS,
    KEPT_IOU,
    MATCH_IOU,
    Labeling,
    annotation_edits,
)
from cxrkit.labelstudio.ground_truth import is_cancelled
from cxrkit.labelstudio.results import results_to_labels
from cxrkit.labelstudio.tasks import COLD_START, model_version_of

NO_PREANNOTATION = "none"  # the model version of annotations made with nothing shown


def needs_predictions(export: list[dict]) -> bool:
    """Whether an annotation of the export names its prediction only by id (`parent_prediction`
    without Label Studio's copy): the export lists task predictions as ids, so effort_rows then
    needs the project's predictions (LabelStudio.predictions)."""
    return any(_copy_of_shown(a) is None and a.get("parent_prediction") is not None
               and not is_cancelled(a)
               for task in export for a in task.get("annotations") or [])


def _copy_of_shown(annotation: dict) -> dict | None:
    shown = annotation.get("prediction")
    return shown if isinstance(shown, dict) and shown.get("result") is not None else None


def _is_cold_start(prediction: dict | None) -> bool:
    """A cold-start publication's prediction only placed the task in the queue: nothing was shown."""
    return prediction is not None and model_version_of(prediction.get("model_version")) == COLD_START


def shown_prediction(annotation: dict, predictions: dict | None = None) -> dict | None:
    """The prediction the task showed when the annotation was made: Label Studio's copy in the
    annotation (the prediction of the project's model version at that moment), else the one
    `parent_prediction` names, from `predictions` (id -> prediction); None when nothing was
    shown, or it is no longer known."""
    shown = _copy_of_shown(annotation)
    if shown is not None:
        return shown
    parent = annotation.get("parent_prediction")
    return (predictions or {}).get(parent) if parent is not None else None


def effort_rows(export: list[dict], schema: LabelSchema,
                predictions: dict | None = None) -> tuple[list[dict], list[str]]:
    """One row per submitted annotation: task, annotation, image_id, model_version shown
    (NO_PREANNOTATION when none), lead_time (seconds; None when the editor did not record it),
    updated_at and the Edits counts plus their total. `predictions`: id -> prediction, for
    annotations that name theirs only by id (needs_predictions). Also the problems: an
    annotation that cannot be read (results that do not parse against the label config, a
    malformed value) is reported by task and reason and left out, the rest goes on."""
    rows, problems = [], []
    for task in export:
        data = task.get("data") or {}
        for annotation in task.get("annotations") or []:
            if is_cancelled(annotation):
                continue
            where = f"task {task.get('id')} (image {data.get('image_id')}), annotation {annotation.get('id')}"
            prediction = shown_prediction(annotation, predictions)
            if _is_cold_start(prediction):
                prediction = None
            elif prediction is None and annotation.get("parent_prediction") is not None:
                # Made over a prediction no longer known (deleted when its version was re-pushed):
                # what was shown cannot be said, so neither can the edits; not counted as unassisted.
                problems.append(f"{where}: the prediction it was made over ({annotation['parent_prediction']}) "
                                "is not among the project's predictions")
                continue
            try:
                rows.append(_row(task, data, annotation, prediction, schema))
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{where}: {type(exc).__name__}: {exc}")
    return rows, problems


def _row(task: dict, data: dict, annotation: dict, prediction: dict | None, schema: LabelSchema) -> dict:
    final = results_to_labels(annotation.get("result") or [], schema, data.get("width"), data.get("height"))
    shown = (None if prediction is None else
             results_to_labels(prediction.get("result") or [], schema, data.get("width"), data.get("height")))
    edits = annotation_edits(final, shown)
    lead = annotation.get("lead_time")
    return {"task": task.get("id"), "annotation": annotation.get("id"), "image_id": data.get("image_id"),
            "model_version": (model_version_of(prediction.get("model_version")) or "unknown") if prediction
            else NO_PREANNOTATION,
            "lead_time": None if lead is None else float(lead),
            "updated_at": annotation.get("updated_at") or annotation.get("created_at"),
            **asdict(edits), "edits": edits.total}


def summarise_effort(rows: Sequence[dict]) -> dict[str, dict]:
    """model_version -> images, edits_per_image, unchanged (share of images with no edit), the
    total of each kind of edit, boxes kept, and seconds per image (median and mean lead_time over
    the annotations that have one; `timed` says how many)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["model_version"], []).append(r)
    out = {}
    for version, rs in sorted(groups.items()):
        times = [r["lead_time"] for r in rs if r["lead_time"] is not None]
        out[version] = {
            "images": len(rs),
            "edits_per_image": sum(r["edits"] for r in rs) / len(rs),
            "unchanged": sum(r["edits"] == 0 for r in rs) / len(rs),
            **{k: sum(r[k] for r in rs) for k in ("kept", *EDIT_KINDS)},
            "timed": len(times),
            "seconds_median": statistics.median(times) if times else None,
            "seconds_mean": statistics.fmean(times) if times else None,
        }
    return out


def effort_metrics(export: list[dict], schema: LabelSchema, predictions: dict | None = None) -> tuple[dict, list[str]]:
    """The retrain's metrics/effort.json from an export: the summary per model version shown,
    the counts, the matching thresholds; and the problems of `effort_rows`."""
    rows, problems = effort_rows(export, schema, predictions)
    return {"annotations": len(rows), "left_out": len(problems), "kept_iou": KEPT_IOU, "match_iou": MATCH_IOU,
            "by_model_version": summarise_effort(rows)}, problems


def _agreement_of(readers: list[dict]) -> dict:
    return image_agreement([Labeling([Box.from_dict(b) for b in r["boxes"]], r["impression"]) for r in readers])


def reader_agreement(labels: Sequence, impressions: Sequence[str]) -> dict:
    """How much the readers agree, over the images several of them labeled (ground_truth.ground_truth's
    LabeledImages with `readers`): how many, the share with a unanimous impression, the mean
    matched-box agreement, and Fleiss' kappa of the impression over the images read by the most
    common number of readers (kappa needs the same count on every image; None below two images)."""
    several = [item for item in labels if len(item.readers) > 1]
    out = {"images": len(several), "impression_unanimous": None, "box_agreement": None, "impression_kappa": None}
    if not several:
        return out
    agreements = [item.agreement or _agreement_of(item.readers) for item in several]  # a labels file keeps no agreement
    out["impression_unanimous"] = sum(a["impression_unanimous"] for a in agreements) / len(several)
    out["box_agreement"] = statistics.fmean(a["box_agreement"] for a in agreements)
    common = Counter(len(item.readers) for item in several).most_common(1)[0][0]
    table = [[sum(r["impression"] == name for r in item.readers) for name in impressions]
             for item in several if len(item.readers) == common and all(r["impression"] for r in item.readers)]
    kappa = fleiss_kappa(table) if len(table) >= 2 else float("nan")
    out["impression_kappa"] = None if math.isnan(kappa) else kappa
    return out
