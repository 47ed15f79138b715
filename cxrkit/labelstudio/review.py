"""Review and gold standards: which images a reviewer should see, and how well each reader reads.

    ReviewSettings.from_params(params)   -> params.yaml `review:` (disagreement threshold, reviewers)
    review_queue(labels, settings, k)    -> image_id -> reason, for the "Needs review" view
    gold_settings(params)                -> (share, salt): params.yaml `split.gold_share`, `split.gold_salt`
    gold_images(records, share, salt)    -> the gold-standard images, in the order they enter the queue
    split_gold(labels, gold)             -> (labels that train, readings of gold images)
    reader_report(labels, gold, truth)   -> per reader: images, agreement with the final label, gold accuracy

Needs review: an image all its readers (`retrain.readers_per_image`, at least two) have labeled
and who disagree, on the impression or on the boxes (mean pairwise matched-box agreement,
cxrkit.evaluation.agreement, below `review.box_agreement`), and that no reviewer has resolved
yet. Not before every reader has read it: a flag would tell the last reader that the others
disagree. The retrain's export step writes the queue into the tasks (`needs_review`,
`review_reason`; cleared once resolved) and keeps a Data Manager tab "Needs review" that lists
them. A reviewer resolves an image by annotating it: the latest annotation of a reviewer
(`review.reviewers`, pseudonymous reader ids) is final, and so is one starred as ground truth
(ground_truth.py). The reason says what differs, not what each reader said.

Gold standards: images whose labels are known from a curated source (an importer's labels:
`labeled` records with an impression, and boxes where the source draws them) are the gold set
when sha256("<gold_salt>:<image id>") falls below `split.gold_share`. They are a test of the
readers, not training data: the `prepare` stage holds them out of training and validation, so
the model's pre-annotation of a gold film is no better than of any unlabeled one, and what
readers say of them goes to the per-reader report, never into training. The select flow mixes
the unread ones into the queue (cxrkit.labelstudio.queue.mix_gold) so that `gold_share` of it is
gold, each scored between the images ranked above and below it and with the model's
pre-annotation like every other task, so a reader cannot tell them apart from the scores or the boxes (the
task's `source` column still says which dataset a film came from: draw gold from the same source
as the pool where that matters).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cxrkit.core.hashing import salted_position
from cxrkit.core.manifest import Box, Record
from cxrkit.evaluation.agreement import box_agreement
from cxrkit.labelstudio.export import LabeledImage


@dataclass(frozen=True)
class ReviewSettings:
    box_agreement: float = 0.5
    reviewers: frozenset[str] = frozenset()

    @classmethod
    def from_params(cls, params: dict) -> "ReviewSettings":
        section = params.get("review") or {}
        reviewers = section.get("reviewers") or []
        bad = [r for r in reviewers if not str(r).startswith("reader-")]
        if bad:
            raise ValueError(f"review.reviewers takes reader ids (reader-<Label Studio user id>, listed by "
                             f"`cxr labelstudio readers`), not {bad}")
        return cls(box_agreement=float(section.get("box_agreement", 0.5)), reviewers=frozenset(map(str, reviewers)))


def gold_settings(params: dict) -> tuple[float, str]:
    """(share, salt) of the gold set: params.yaml `split.gold_share` (0: none) and `split.gold_salt`."""
    section = params.get("split") or {}
    share = float(section.get("gold_share", 0.0))
    if not 0.0 <= share <= 0.5:
        raise ValueError(f"split.gold_share is the share of the labeling queue that is gold, at most half of it: "
                         f"got {share}")
    return share, str(section.get("gold_salt", "cxr-gold-v1"))


def _boxes(reading: dict) -> list[Box]:
    return [Box.from_dict(b) for b in reading["boxes"]]  # a reading's boxes are dicts (ground_truth, labels file)


def review_queue(labels: Iterable[LabeledImage], settings: ReviewSettings, readers_per_image: int) -> dict[str, str]:
    """image_id -> why it needs review, for the images all `readers_per_image` readers have read,
    whose readers disagree, and that no reviewer has resolved (module docstring)."""
    queue = {}
    for item in labels:
        if len(item.readers) < max(2, readers_per_image) or item.source == "review" or not item.agreement:
            continue
        reasons = []
        if not item.agreement["impression_unanimous"]:
            reasons.append("impressions differ")
        if item.agreement["box_agreement"] < settings.box_agreement:
            reasons.append(f"box agreement {item.agreement['box_agreement']:.2f} < {settings.box_agreement:.2f}")
        if reasons:
            queue[item.image_id] = f"{len(item.readers)} readers: " + ", ".join(reasons)
    return queue


def has_curated_truth(record: Record) -> bool:
    """Labels known from the source: an impression, and complete boxes (no box = none there)."""
    return record.labeled and record.impression is not None and record.metadata.get("has_boxes") is not False


def gold_images(records: Iterable[Record], share: float, salt: str) -> list[str]:
    """The gold set's image ids (module docstring), in the order they enter the queue."""
    if share <= 0:
        return []
    gold = [(salted_position(salt, r.image_id), r.image_id) for r in records if has_curated_truth(r)]
    return [image_id for position, image_id in sorted(gold) if position < share]


def split_gold(labels: Sequence[LabeledImage], gold: Iterable[str]) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """(the labels that train, the readings of gold images): what readers say of a gold image is
    the per-reader report's, never training data (`prepare` holds gold images out)."""
    gold = set(gold)
    return [i for i in labels if i.image_id not in gold], [i for i in labels if i.image_id in gold]


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def reader_report(labels: Sequence[LabeledImage], gold: Sequence[LabeledImage], truth: dict[str, Record]) -> dict:
    """reader id -> images read; against the image's final label where it is not just the
    reader's own (a consensus of several readers, or a review): the share of impressions that
    agree and the mean matched-box agreement; on gold images, the same against the curated truth."""
    rows: dict[str, dict] = defaultdict(lambda: {"images": 0, "with_final": ([], []), "gold": ([], [])})

    def judge(reader: str, against: str, reading: dict, impression: str | None, boxes: list[Box]) -> None:
        impressions, overlaps = rows[reader][against]
        impressions.append(reading["impression"] == impression)
        overlaps.append(box_agreement(_boxes(reading), boxes))

    for item in labels:
        for reading in item.readers:
            rows[reading["reader"]]["images"] += 1
            # Against the final label where it is more than this reader's own (a starred reading is the final).
            if (len(item.readers) > 1 or item.source == "review") and reading["reader"] != item.reviewer:
                judge(reading["reader"], "with_final", reading, item.impression, item.boxes)
    for item in gold:
        known = truth.get(item.image_id)
        for reading in item.readers:
            rows[reading["reader"]]["images"] += 1
            if known is not None:
                judge(reading["reader"], "gold", reading, known.impression, known.boxes)
    out = {}
    for reader, row in sorted(rows.items()):
        out[reader] = {"images": row["images"]}
        for against, key in (("with_final", "impression_agrees"), ("gold", "impression_correct")):
            impressions, overlaps = row[against]
            out[reader][against] = {"images": len(impressions), key: _share(impressions), "box_agreement": _mean(overlaps)}
    return out
