"""Ground truth from a Label Studio JSON export: which annotations count, and how several readers' become one.

    pick_annotations(export)                         -> image_id -> Readings, and counts of what was left out
    ground_truth(export, schema, readers_per_image)  -> one LabeledImage per annotated image

Only submitted annotations are ground truth:
- an annotation with `was_cancelled: true` (the radiologist pressed Skip) is not;
- drafts are half-finished work, and predictions are the model's own guesses;
- a submitted annotation with no regions is a real label: "nothing to box here".

Readers are Label Studio's users (`completed_by`), kept only as a pseudonymous `reader-<id>`
(never a name or an email). A reader's latest annotation of an image replaces their earlier
ones (`updated_at`, then the higher annotation id): a correction is always saved after what it
corrects. Reviewers (params.yaml `review.reviewers`, reader ids) are not readers: the latest
annotation of a reviewer is the image's ground truth, whatever the readers said. Otherwise, by
the project's `readers_per_image` (params.yaml `retrain.readers_per_image`):
- 1 (one reader per image, the default): the image's most recent annotation wins, whoever made
  it: a second person's annotation is a re-review, or the same image in two tasks;
- k > 1 (each image is given to k readers): the image trains on the readers' consensus
  (cxrkit.evaluation.agreement: boxes drawn by at least half of them, fused; the majority's
  impression), with their agreement kept beside it (`agreement`). An annotation marked as
  ground truth in Label Studio (the star) is final too, as long as it is still its reader's
  latest. Readers are taken in the order of their ids, so the same annotations always give the
  same consensus.
Every image keeps its readers' own labels (`readers`: what the per-reader report and the
"Needs review" queue read, cxrkit.labelstudio.review): with one reader per image, only the
latest reader's, unless a reviewer decided; the labels file versions them only where there are
several.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime

from cxrkit.core.labels import LabelSchema
from cxrkit.evaluation.agreement import consensus, image_agreement
from cxrkit.evaluation.effort import Labeling
from cxrkit.labelstudio.export import LabeledImage
from cxrkit.labelstudio.results import results_to_labels

log = logging.getLogger(__name__)


def is_cancelled(annotation: dict) -> bool:
    # `was_cancelled` is today's name for a skipped task; old exports said `skipped`.
    return bool(annotation.get("was_cancelled") or annotation.get("skipped"))


def _recency(annotation: dict) -> tuple[datetime, int]:
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    if not stamp:
        raise ValueError(f"annotation {annotation.get('id')!r} has neither updated_at nor created_at")
    # Ids are integers, though some exports write them as strings ("1001"): compare as numbers.
    return datetime.fromisoformat(stamp), int(annotation.get("id") or 0)


def reader_of(annotation: dict) -> str:
    """A pseudonymous reader id: Label Studio's user id (`completed_by`), never a name or email."""
    who = annotation.get("completed_by")
    who = who.get("id") if isinstance(who, dict) else who
    return f"reader-{who}" if who is not None else "reader-unknown"


def _reader_order(reader: str) -> tuple:
    number = reader.removeprefix("reader-")
    return (0, int(number), "") if number.isdigit() else (1, 0, number)


@dataclass
class Readings:
    """The submitted annotations of one image: each reader's (or reviewer's) latest, in id order."""

    task: dict
    by_reader: dict[str, dict]

    def readers(self, reviewers: frozenset[str] = frozenset()) -> dict[str, dict]:
        return {reader: a for reader, a in self.by_reader.items() if reader not in reviewers}

    def latest(self, reviewers: frozenset[str] = frozenset()) -> dict:
        return max(self.readers(reviewers).values(), key=_recency)

    def review(self, reviewers: frozenset[str] = frozenset(), stars: bool = True) -> dict | None:
        """The latest annotation of a reviewer; else, with `stars`, the latest one marked as ground
        truth that is still its reader's latest; None when neither."""
        reviewed = [a for reader, a in self.by_reader.items() if reader in reviewers]
        if not reviewed and stars:
            reviewed = [a for a in self.by_reader.values() if a.get("ground_truth")]
        return max(reviewed, key=_recency) if reviewed else None


def pick_annotations(export: list[dict]) -> tuple[dict[str, Readings], Counter]:
    """Each annotated image's readings (image_id -> Readings), plus counts of everything left out
    and why (see the module docstring for the rules)."""
    counts: Counter = Counter()
    chosen: dict[str, Readings] = {}
    for task in export:
        counts["tasks"] += 1
        counts["drafts_ignored"] += len(task.get("drafts") or [])
        counts["predictions_ignored"] += len(task.get("predictions") or [])
        annotations = task.get("annotations") or []
        cancelled = [a for a in annotations if is_cancelled(a)]
        submitted = [a for a in annotations if not is_cancelled(a)]
        counts["cancelled_annotations"] += len(cancelled)
        image_id = (task.get("data") or {}).get("image_id")
        if not image_id:
            # Not a task we created (ours always carry image_id): its labels cannot reach an image.
            counts["tasks_without_image_id"] += 1
            log.warning("task %s has no data.image_id; its %d annotation(s) are left out", task.get("id"), len(submitted))
            continue
        if not submitted:
            if task.get("drafts"):
                counts["tasks_draft_only"] += 1
            elif cancelled:
                counts["tasks_cancelled_only"] += 1
            else:
                counts["tasks_untouched"] += 1
            continue
        readings = chosen.setdefault(image_id, Readings(task, {}))
        for annotation in submitted:
            reader = reader_of(annotation)
            previous = readings.by_reader.get(reader)
            if previous is None:
                readings.by_reader[reader] = annotation
                continue
            counts["superseded_annotations"] += 1  # the same reader again: a correction of their own label
            if _recency(annotation) > _recency(previous):
                readings.by_reader[reader] = annotation
    for readings in chosen.values():
        readings.by_reader = dict(sorted(readings.by_reader.items(), key=lambda item: _reader_order(item[0])))
    counts["labeled_images"] = len(chosen)
    counts["images_with_several_readers"] = sum(len(r.by_reader) > 1 for r in chosen.values())
    return chosen, counts


def readers_per_image(params: dict) -> int:
    """params.yaml `retrain.readers_per_image` (default 1), as the retrain and the project setup read it."""
    return int((params.get("retrain") or {}).get("readers_per_image", 1))


def ground_truth(export: list[dict], schema: LabelSchema, readers_per_image: int = 1,
                 reviewers: Iterable[str] = ()) -> list[LabeledImage]:
    """One LabeledImage per image with a submitted annotation, sorted by image_id (module
    docstring). What was left out is logged (INFO); `pick_annotations` returns the same counts."""
    if int(readers_per_image) < 1:
        raise ValueError(f"readers_per_image must be >= 1, got {readers_per_image}")
    chosen, counts = pick_annotations(export)
    log.info("ground truth from export: %s", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    reviewers = frozenset(reviewers)
    return [_labeled_image(image_id, chosen[image_id], schema, int(readers_per_image), reviewers)
            for image_id in sorted(chosen)]


def _labeled_image(image_id: str, readings: Readings, schema: LabelSchema, readers_per_image: int,
                   reviewers: frozenset[str]) -> LabeledImage:
    task = readings.task
    data = task.get("data") or {}

    def parse(annotation: dict):
        try:
            # data.width/height are the fallback for results written without original_width/height.
            return results_to_labels(annotation.get("result") or [], schema, data.get("width"), data.get("height"))
        except ValueError as exc:
            raise ValueError(f"task {task.get('id')} (image {image_id}), annotation {annotation.get('id')}: {exc}") from exc

    def labeled(annotation: dict, labels, comment: str | None, source: str) -> LabeledImage:
        return LabeledImage(image_id=image_id, boxes=list(labels.boxes), impression=labels.impression,
                            comment=comment, annotation_id=annotation.get("id"),
                            updated_at=annotation.get("updated_at") or annotation.get("created_at"), source=source)

    readers = readings.readers(reviewers)
    review = readings.review(reviewers, stars=readers_per_image > 1)
    if readers_per_image == 1 or len(readers) <= 1:
        # One reader's word: only the latest reader's annotation is parsed (an older one by someone
        # else that no longer parses, e.g. after a label config change, is no reason to fail).
        latest = readings.latest(reviewers) if readers else None
        parsed = {reader_of(latest): parse(latest)} if latest else {}
    else:
        parsed = {reader: parse(a) for reader, a in readers.items()}
    labelings = [Labeling(labels.boxes, labels.impression) for labels in parsed.values()]
    if review is not None:
        reviewer = reader_of(review)
        decided = parsed[reviewer] if reviewer in parsed else parse(review)  # a star is one of the readers' own
        item = labeled(review, decided, decided.comment, "review")
        item.reviewer = reviewer
    elif len(parsed) == 1:
        ((reader, labels),) = parsed.items()
        item = labeled(readers[reader], labels, labels.comment, "reader")
    else:
        comments = [labels.comment for labels in parsed.values() if labels.comment]
        item = labeled(readings.latest(reviewers), consensus(labelings, schema.opacity, schema.pneumonia),
                       "\n".join(comments) if comments else None, "consensus")
    item.readers = [{"reader": reader, "boxes": [asdict(b) for b in labels.boxes], "impression": labels.impression}
                    for reader, labels in parsed.items()]
    if len(parsed) > 1:
        item.agreement = image_agreement(labelings)
    return item
