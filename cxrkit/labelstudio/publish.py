"""Publish the labeling queue to Label Studio in a few requests, however many tasks it has.

    publish_queue(ls, project, tasks, order, shown, model_version, queues) -> Publication
    prune_publications(ls, project, publication)  -> the superseded publications, deleted

A selection round's queue reaches Label Studio as predictions: one per queued task, carrying the
model's boxes and impression (the pre-annotation radiologists correct) and, as its score, the
task's place in the queue (0 for the first task, i / n for the i-th of n). The tab "Most
uncertain first" sorts by Label Studio's prediction score (`tasks:predictions_score`, the mean
score of the task's predictions of the project's current model version), lowest first, which is
also the order Label Studio's own "Uncertainty sampling" hands tasks out in. A new queue is then
one bulk prediction import (PREDICTION_BATCH per request), one PATCH of the project's model
version, where a PATCH per task (98-155 ms each) took 16-26 minutes at 10,000 tasks.
Deleting a superseded publication is one request, but Label Studio updates each task's
prediction counter as it deletes (about 9 ms a prediction): that is why it is a step of its
own, after the new queue is live (BENCHMARKS.md, "A large project").

Each publication has a label of its own, `<model version>@<digest>` (`cold-start@<digest>`,
with empty results, before any model), the digest naming the queue's order and content:
- a queue cannot be re-scored in place (Label Studio has no bulk update of predictions), and the
  predictions a radiologist's open editor was made from must not vanish: Label Studio sends that
  prediction's id (`parent_prediction`) with the submitted annotation and refuses an unknown one.
  So the publication shown before stays until the next one replaces it; older ones are pruned.
- the same queue published again is recognised by its label: nothing is written, and a run
  killed part-way (a publication with fewer predictions than tasks) is deleted and redone.
Effort and status read a publication's model version with tasks.model_version_of.

With several readers (`queues`: image id -> reader ids, cxrkit.labelstudio.queue) each task's
`queue` data field is written with the Data Manager's bulk action, one request per distinct
value (and per ACTION_BATCH tasks), only for the tasks whose value changes.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from cxrkit.core.labels import parse_label_config
from cxrkit.core.manifest import Box
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.queue import queue_field
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.labelstudio.tasks import COLD_START, is_publication, publication_label


@dataclass
class Publication:
    label: str  # the project's model version now: this publication's
    tasks: int  # tasks in the queue
    created: int = 0  # predictions created (0: this queue was already published)
    stale: list[str] = field(default_factory=list)  # superseded publications, for prune_publications
    sizes: dict[str, int] = field(default_factory=dict)  # predictions per model version, before this one
    queue_changed: int = 0  # tasks whose reader queue changed


def publish_queue(ls: LabelStudio, project: int, tasks: dict[str, dict], order: Sequence[str],
                  shown: dict[str, tuple[list[Box], str | None]], model_version: str | None,
                  queues: dict[str, list[str]] | None = None) -> Publication:
    """Make `order` (image ids of `tasks`, first to label first) the project's queue, each task
    showing `shown`'s boxes and impression (none for an image not in it); `model_version` None is
    the cold start. `tasks`: image id -> task as LabelStudio.tasks_by_image lists it."""
    info = ls.project(project)
    if not order:  # nothing to label: the queue shown stays (Label Studio refuses a version with no predictions)
        return Publication(info.get("model_version") or "", 0, queue_changed=write_queues(ls, project, tasks, {}))
    schema = parse_label_config(info["label_config"])
    n = len(order)
    items = []
    for place, image_id in enumerate(order):
        task = tasks[image_id]
        result = []  # nothing drawn: the cold start, or an image the model could not read
        if image_id in shown:
            boxes, impression = shown[image_id]
            result = boxes_to_results(boxes, task["data"]["width"], task["data"]["height"], schema, impression)
        items.append({"task": task["id"], "result": result, "score": place / n})
    digest = hashlib.sha256(json.dumps([model_version, items], sort_keys=True).encode()).hexdigest()
    label = publication_label(model_version or COLD_START, digest)
    for item in items:
        item["model_version"] = label

    versions = ls.model_versions(project)
    before = info.get("model_version") or None
    publication = Publication(label, n, sizes=versions)
    if versions.get(label, 0) != n:  # new, or a run killed while importing it
        if versions.get(label):
            ls.delete_model_version(project, label, versions[label])
        publication.created = ls.import_predictions(project, items)
    if before != label:
        ls.set_model_version(project, label)
    keep = {label, before}  # the one shown until now: editors opened on it submit its ids
    publication.stale = [v for v in versions if is_publication(v) and v not in keep]
    publication.queue_changed = write_queues(ls, project, tasks, queues or {})
    return publication


def prune_publications(ls: LabelStudio, project: int, publication: Publication) -> list[str]:
    """Delete the publications `publication` superseded (one request each); returns their labels."""
    for old in publication.stale:
        ls.delete_model_version(project, old, publication.sizes.get(old, 0))
    return publication.stale


def write_queues(ls: LabelStudio, project: int, tasks: dict[str, dict], queues: dict[str, list[str]]) -> int:
    """Set each task's `queue` field to its readers (queue_field; "" for a task in no reader's
    queue), one bulk request per distinct value; returns how many tasks changed."""
    wanted: dict[str, list[int]] = {}
    for image_id, task in tasks.items():
        value = queue_field(queues[image_id]) if queues.get(image_id) else ""
        if (task["data"].get("queue") or "") != value:
            wanted.setdefault(value, []).append(task["id"])
    for value, ids in wanted.items():
        ls.set_data_field(project, ids, "queue", value)
    return sum(len(ids) for ids in wanted.values())
