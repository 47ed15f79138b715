"""The labeling queue the select flow writes: gold tasks mixed in, and shared among readers.

    unfinished_first(score_of, waiting)  -> the scores with partly read images lifted to the top
    mix_gold(score_of, gold, share)      -> the ranking's scores with gold tasks spread evenly through it
    share_queue(order, readers, k)       -> image_id -> the k readers whose queue it is in

Why share it: Label Studio (community edition) locks a task for the reader who opened it only in
its own labeling stream; a reader who labels "as displayed" from a sorted tab gets that tab's
first unsolved task, whoever else has it open. So with several readers (params.yaml
`select.readers`) each ranked task goes to readers_per_image of them in turn (the first task to
the first k readers, the next to the next k, ...), written into the task as `queue`
(",reader-3,reader-5,"), and each reader has a tab "Queue of reader-<id>" that lists only their
tasks, most informative first: two readers never open the same task unless the project gives
each task to several readers. Every reader's queue starts at the top of the ranking.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def unfinished_first(score_of: dict[str, float], waiting: Iterable[str]) -> dict[str, float]:
    """The scores with the images that some but not all of their readers have read lifted above
    every other, in their own order. Label Studio gives a task to its next reader before starting
    a new one (its breadth-first rule), and a partly read image, already trained on, would
    otherwise sink to the bottom of the ranking and wait for its last readers indefinitely."""
    waiting = set(waiting) & set(score_of)
    if not waiting:
        return dict(score_of)
    lift = max(score_of.values()) - min(score_of.values()) + 1.0
    return {i: round(s + lift, 6) if i in waiting else s for i, s in score_of.items()}


def mix_gold(score_of: dict[str, float], gold: Sequence[str], share: float) -> dict[str, float]:
    """The ranking of `score_of` in queue order (highest score first) with unread gold images spread evenly
    through it, so that `share` of every stretch of the queue is gold (while gold images last);
    each is scored between the images above and below it. Insertion order is queue order: equal
    scores keep it (the queue is published in this order, cxrkit.labelstudio.publish)."""
    out: dict[str, float] = {}
    pending = list(gold) if share > 0 else []
    placed = 0
    for image_id in sorted(score_of, key=lambda i: -score_of[i]):  # queue order, with or without gold
        # Gold's share of the queue so far, rounded half up: the first gold task comes after
        # about 1 / (2 share) others, not first, so the top of a round is never a giveaway.
        if pending and out and share * (len(out) + 1) > placed + 0.5:
            # Between its neighbours' scores, like any task there (an exact copy would pair up).
            out[pending.pop(0)] = round((out[next(reversed(out))] + score_of[image_id]) / 2, 6)
            placed += 1
        out[image_id] = score_of[image_id]
    return out


def share_queue(order: Sequence[str], readers: Sequence[str], readers_per_image: int) -> dict[str, list[str]]:
    """image_id -> its readers: task j of `order` goes to readers j*k .. j*k + k - 1 (mod the
    number of readers), so each reader gets every n/k-th task of the ranking."""
    if len(readers) < readers_per_image:
        raise ValueError(f"select.readers lists {len(readers)} reader(s), fewer than retrain.readers_per_image "
                         f"({readers_per_image}): each task could not reach that many readers")
    n, k = len(readers), readers_per_image
    return {image_id: [readers[(j * k + m) % n] for m in range(k)] for j, image_id in enumerate(order)}


def queue_field(readers: Sequence[str]) -> str:
    """The task's `queue` value: the readers between commas, so ",reader-3," matches reader-3 only."""
    return "," + ",".join(readers) + ","
