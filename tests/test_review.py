"""Review, gold standards and the queue (cxrkit/labelstudio/review.py, queue.py) on hand-made
exports and records: reviewers' annotations are final, disagreements are queued, gold tasks are
mixed evenly into the queue and never train, each reader is scored, the queue is shared."""
from __future__ import annotations

from dataclasses import asdict

import pytest

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box, Record
from cxrkit.labelstudio.ground_truth import ground_truth
from cxrkit.labelstudio.queue import (
    mix_gold,
    queue_field,
    share_queue,
    unfinished_first,
)
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.labelstudio.review import (
    ReviewSettings,
    gold_images,
    gold_settings,
    reader_report,
    review_queue,
    split_gold,
)

SIZE = 200


def box(x, y, w=40, h=40) -> Box:
    return Box(x, y, w, h, load_schema().opacity)


def annotation(i, reader, boxes, impression, when):
    return {"id": i, "completed_by": reader, "updated_at": f"2026-01-01T{when}:00+00:00",
            "result": boxes_to_results(boxes, SIZE, SIZE, load_schema(), impression)}


def task(i, image_id, *annotations):
    return {"id": i, "data": {"image_id": image_id, "width": SIZE, "height": SIZE}, "annotations": list(annotations)}


def test_settings_come_from_params_and_refuse_what_they_cannot_mean():
    assert ReviewSettings.from_params({}) == ReviewSettings()
    settings = ReviewSettings.from_params({"review": {"reviewers": ["reader-7"], "box_agreement": 0.3}})
    assert settings.reviewers == {"reader-7"} and settings.box_agreement == 0.3
    with pytest.raises(ValueError, match="reader ids"):
        ReviewSettings.from_params({"review": {"reviewers": ["ada@example.org"]}})
    assert gold_settings({}) == (0.0, "cxr-gold-v1")
    assert gold_settings({"split": {"gold_share": 0.1, "gold_salt": "s"}}) == (0.1, "s")
    with pytest.raises(ValueError, match="at most half"):
        gold_settings({"split": {"gold_share": 0.6}})


def test_a_reviewers_annotation_is_final_and_not_a_vote():
    schema = load_schema()
    export = [
        # Two readers disagree; reviewer 9 decides (even before the second reader's later save).
        task(1, "disputed", annotation(10, 1, [box(10, 10)], schema.pneumonia, "10:00"),
             annotation(11, 2, [], schema.normal, "12:00"),
             annotation(12, 9, [box(12, 12)], schema.pneumonia, "11:00")),
        # Two readers agree.
        task(2, "agreed", annotation(20, 1, [box(10, 10)], schema.pneumonia, "10:00"),
             annotation(21, 2, [box(11, 10)], schema.pneumonia, "10:30")),
        # Two readers draw boxes far apart, same impression.
        task(3, "boxes-apart", annotation(30, 1, [box(10, 10)], schema.pneumonia, "10:00"),
             annotation(31, 2, [box(150, 150)], schema.pneumonia, "10:30")),
    ]
    labels = {i.image_id: i for i in ground_truth(export, schema, readers_per_image=2, reviewers={"reader-9"})}
    disputed = labels["disputed"]
    assert (disputed.source, disputed.annotation_id, disputed.impression) == ("review", 12, schema.pneumonia)
    assert [r["reader"] for r in disputed.readers] == ["reader-1", "reader-2"]  # the reviewer is no reader
    assert labels["agreed"].source == "consensus"

    queue = review_queue(labels.values(), ReviewSettings(box_agreement=0.5), 2)
    # Resolved by the reviewer: out of the queue; agreement 1: out; boxes apart: in, with a reason
    # that does not repeat what each reader said.
    assert list(queue) == ["boxes-apart"]
    assert queue["boxes-apart"] == "2 readers: box agreement 0.00 < 0.50"
    without_reviewer = {i.image_id: i for i in ground_truth(export, schema, readers_per_image=2)}
    assert without_reviewer["disputed"].source == "consensus"  # reader 9 is one more reader now
    assert set(review_queue(without_reviewer.values(), ReviewSettings(), 2)) == {"disputed", "boxes-apart"}
    # With three readers per image, "disputed" is read by all three; the others are still waiting for
    # their third reader, who must not learn that the first two disagree.
    assert set(review_queue(without_reviewer.values(), ReviewSettings(), 3)) == {"disputed"}
    # With one reader per image the latest annotation wins and nothing is queued.
    single = ground_truth(export, schema, readers_per_image=1)
    assert review_queue(single, ReviewSettings(), 1) == {}
    # ... but a reviewer is final there too.
    reviewed = {i.image_id: i for i in ground_truth(export, schema, readers_per_image=1, reviewers={"reader-9"})}
    assert reviewed["disputed"].annotation_id == 12 and reviewed["agreed"].annotation_id == 21


def record(image_id, impression="Normal", boxes=(), labeled=True, has_boxes=True) -> Record:
    return Record(image_id=image_id, path=f"images/{image_id}.png", source="rsna", labeled=labeled,
                  impression=impression if labeled else None, boxes=list(boxes), metadata={"has_boxes": has_boxes})


def test_gold_images_are_curated_ones_drawn_by_a_stable_hash():
    records = [record(f"img{i:03d}") for i in range(400)] + [
        record("unlabeled", labeled=False), record("no-boxes", has_boxes=False), record("no-impression", impression=None)]
    gold = gold_images(records, 0.1, "salt")
    assert 20 <= len(gold) <= 60  # about 10 % of 400 (a hash, not a count)
    assert not {"unlabeled", "no-boxes", "no-impression"} & set(gold)  # no curated truth to score against
    assert gold == gold_images(list(reversed(records)), 0.1, "salt")  # order of the manifest does not matter
    assert set(gold) < set(gold_images(records, 0.2, "salt"))  # a larger share keeps the earlier gold
    assert gold != gold_images(records, 0.1, "other") and gold_images(records, 0.0, "salt") == []


def test_gold_tasks_are_spread_evenly_through_the_queue_with_their_neighbours_scores():
    score_of = {f"p{i}": 1.0 - i / 100 for i in range(12)}
    queue = mix_gold(score_of, ["g1", "g2", "g3", "g4", "g5"], 0.25)
    order = list(queue)
    assert [order.index(g) for g in ("g1", "g2", "g3", "g4")] == [2, 6, 10, 14]  # one in four, never first
    assert "g5" not in queue  # the queue ran out first
    assert queue[order[1]] > queue["g1"] > queue[order[3]] and queue[order[5]] > queue["g2"] > queue[order[7]]
    assert [i for i in order if i.startswith("p")] == sorted(score_of, key=lambda i: -score_of[i])
    assert sorted(queue, key=lambda i: -queue[i]) == order  # a stable sort by score keeps the places
    assert mix_gold(score_of, [], 0.25) == score_of and mix_gold(score_of, ["g1"], 0.0) == score_of
    shuffled = dict(reversed(score_of.items()))
    assert list(mix_gold(shuffled, [], 0.25)) == list(score_of)  # always in queue order: share_queue reads it so


def test_gold_readings_are_no_training_data_and_each_reader_is_scored():
    schema = load_schema()
    truth = {"gold-a": record("gold-a", schema.pneumonia, [box(10, 10)]), "gold-b": record("gold-b", schema.normal)}
    export = [
        task(1, "gold-a", annotation(10, 1, [box(10, 10)], schema.pneumonia, "10:00")),  # right
        task(2, "gold-b", annotation(20, 2, [box(50, 50)], schema.pneumonia, "10:00")),  # wrong
        task(3, "pair", annotation(30, 1, [box(10, 10)], schema.pneumonia, "10:00"),
             annotation(31, 2, [], schema.normal, "10:30")),
        task(4, "alone", annotation(40, 2, [], schema.normal, "10:00")),
    ]
    labels, gold = split_gold(ground_truth(export, schema, readers_per_image=2), truth)
    assert [i.image_id for i in labels] == ["alone", "pair"] and [i.image_id for i in gold] == ["gold-a", "gold-b"]
    report = reader_report(labels, gold, truth)
    # The pair's consensus: the box drawn by one of two readers stays (half), the tie of impressions
    # goes to what the boxes imply: pneumonia. Reader 1 agrees with it fully, reader 2 not at all.
    assert report["reader-1"] == {"images": 2, "with_final": {"images": 1, "impression_agrees": 1.0, "box_agreement": 1.0},
                                  "gold": {"images": 1, "impression_correct": 1.0, "box_agreement": 1.0}}
    assert report["reader-2"]["images"] == 3
    assert report["reader-2"]["with_final"] == {"images": 1, "impression_agrees": 0.0, "box_agreement": 0.0}
    assert report["reader-2"]["gold"] == {"images": 1, "impression_correct": 0.0, "box_agreement": 0.0}
    assert {asdict(b)["x"] for i in labels for b in i.boxes} == {10}  # nothing of the gold images trains


def test_the_queue_is_shared_so_no_two_readers_hold_one_task():
    order = [f"t{i}" for i in range(7)]
    one = share_queue(order, ["reader-1", "reader-2", "reader-3"], 1)
    assert [one[i] for i in order] == [["reader-1"], ["reader-2"], ["reader-3"], ["reader-1"], ["reader-2"],
                                        ["reader-3"], ["reader-1"]]  # each starts at the top of the ranking
    two = share_queue(order[:3], ["reader-1", "reader-2", "reader-3"], 2)
    assert [two[i] for i in order[:3]] == [["reader-1", "reader-2"], ["reader-3", "reader-1"], ["reader-2", "reader-3"]]
    with pytest.raises(ValueError, match="fewer than retrain.readers_per_image"):
        share_queue(order, ["reader-1"], 2)
    # The tab's filter is "contains" (case-insensitive): the commas keep reader-1 out of reader-12's queue.
    assert queue_field(["reader-12"]).count(queue_field(["reader-1"])) == 0


def test_status_prints_one_line_per_reader():
    from cxrkit.services.status import reader_lines

    report = {"reader-2": {"images": 5, "with_final": {"images": 4, "impression_agrees": 0.75, "box_agreement": 0.5},
                           "gold": {"images": 0, "impression_correct": None, "box_agreement": None}},
              "reader-3": {"images": 1, "with_final": {"images": 0, "impression_agrees": None, "box_agreement": None},
                           "gold": {"images": 1, "impression_correct": 1.0, "box_agreement": 0.8}}}
    assert [line.strip() for line in reader_lines(report)] == [
        "reader-2: 5 images; with the final label on 4: impression 75%, boxes 0.50",
        "reader-3: 1 images; gold on 1: impression 100%, boxes 0.80"]


def test_a_starred_reader_is_not_scored_against_their_own_reading():
    schema = load_schema()
    starred = {**annotation(11, 2, [], schema.normal, "10:30"), "ground_truth": True}
    export = [task(1, "starred", annotation(10, 1, [box(10, 10)], schema.pneumonia, "10:00"), starred)]
    (item,) = ground_truth(export, schema, readers_per_image=2)
    assert (item.source, item.reviewer, item.impression) == ("review", "reader-2", schema.normal)
    report = reader_report([item], [], {})
    assert report["reader-1"]["with_final"] == {"images": 1, "impression_agrees": 0.0, "box_agreement": 0.0}
    assert report["reader-2"]["with_final"]["images"] == 0 and report["reader-2"]["images"] == 1


def test_partly_read_images_come_first_in_their_own_order():
    score_of = {"a": 0.9, "b": 0.5, "c": 0.2, "d": 0.1}
    lifted = unfinished_first(score_of, {"c", "d", "not-ranked"})
    assert sorted(lifted, key=lambda i: -lifted[i]) == ["c", "d", "a", "b"]
    assert (lifted["a"], lifted["b"]) == (0.9, 0.5) and unfinished_first(score_of, set()) == score_of
