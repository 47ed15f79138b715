"""Acquisition strategies on hand-made pools, and embeddings of a real trained classifier."""
from __future__ import annotations

import numpy as np
import pytest

from cxrkit.models.predictor import Prediction
from cxrkit.selection import (
    MODEL_FREE,
    NEEDS_EMBEDDINGS,
    STRATEGIES,
    Pool,
    SelectionError,
    get_strategy,
    pool_from_predictions,
)
from cxrkit.selection.coreset import k_center_greedy
from cxrkit.selection.typiclust import mean_neighbor_distance


def make_pool(n: int = 6, **fields) -> Pool:
    signals = fields.pop("signals", {"uncertainty": np.linspace(0, 1, n)})
    return Pool([f"img{i}" for i in range(n)], signals, **fields)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_registry_names_and_unknown():
    assert set(STRATEGIES) == {"random", "least_confidence", "entropy", "margin", "flip", "uncertainty", "coreset", "hybrid",
                               "typiclust", "class_balanced", "likely_positive", "detector_uncertainty",
                               "hybrid_random"}
    for name, cls in STRATEGIES.items():
        assert get_strategy(name).name == name and isinstance(get_strategy(name), cls)
    with pytest.raises(SelectionError, match="unknown strategy 'nope'"):
        get_strategy("nope")
    with pytest.raises(SelectionError, match="bad settings"):
        get_strategy("entropy", {"candidates_factor": 2})
    with pytest.raises(SelectionError, match="strategy 'hybrid_random': bad settings"):
        get_strategy("hybrid_random", {"candidates_factor": "abc"})


def test_each_class_declares_what_it_reads():
    """The caller computes embeddings for NEEDS_EMBEDDINGS only, and the cold start offers MODEL_FREE
    only: each class's declaration must match what it does without them."""
    assert NEEDS_EMBEDDINGS == {"coreset", "hybrid", "typiclust", "likely_positive", "detector_uncertainty",
                                "hybrid_random"}
    assert MODEL_FREE == {"random", "coreset", "typiclust"}
    n = 12
    emb = rng(3).normal(size=(n, 4))
    signals = {s: rng(4).random(n) for s in ("uncertainty", "detection", "opacity", "classifier", "margin",
                                             "box", "subtype", "flip")}
    probs = rng(5).dirichlet(np.ones(3), n)
    for name in STRATEGIES:
        no_embeddings = make_pool(n, signals=signals, probs=probs, classes=["Normal", "Pneumonia", "Other"])
        if name in NEEDS_EMBEDDINGS:
            with pytest.raises(SelectionError, match="embeddings"):
                get_strategy(name).select(no_embeddings, 3, rng())
        else:
            assert len(get_strategy(name).select(no_embeddings, 3, rng())) == 3
        no_model = make_pool(n, signals={}, embeddings=emb, labeled_embeddings=emb[:0])
        if name in MODEL_FREE:
            assert len(get_strategy(name).select(no_model, 3, rng())) == 3
        else:
            with pytest.raises(SelectionError, match="needs the classifier|has no '"):
                get_strategy(name).select(no_model, 3, rng())


def test_random_is_seeded_reproducible_and_distinct():
    pool = make_pool(100)
    s = get_strategy("random")
    a, b, c = s.select(pool, 20, rng(1)), s.select(pool, 20, rng(1)), s.select(pool, 20, rng(2))
    assert a == b and a != c
    assert len(set(a)) == 20 and all(0 <= i < 100 for i in a)
    assert np.array_equal(s.scores(pool), s.scores(pool))  # fixed per pool without an rng


def test_classifier_strategies_order():
    probs = np.array([
        [0.96, 0.01, 0.01, 0.01, 0.01],  # confident
        [0.3, 0.2, 0.2, 0.15, 0.15],  # flattest: highest entropy, least confident
        [0.5, 0.48, 0.01, 0.005, 0.005],  # a near-tie of two classes: smallest margin
        [0.6, 0.1, 0.1, 0.1, 0.1],
    ])
    pool = make_pool(4, probs=probs)
    assert get_strategy("entropy").select(pool, 4, rng())[0] == 1
    assert get_strategy("least_confidence").select(pool, 4, rng())[0] == 1
    assert get_strategy("margin").select(pool, 1, rng()) == [2]
    assert get_strategy("entropy").select(pool, 4, rng())[-1] == 0
    scores = get_strategy("entropy").scores(pool)
    assert scores[1] == scores.max() and 0 <= scores.min() and scores.max() <= 1
    with pytest.raises(SelectionError, match="needs the classifier's probabilities"):
        get_strategy("entropy").select(make_pool(4), 2, rng())


def test_signal_strategies_nan_last_and_ties_by_rng():
    flip = np.array([0.1, np.nan, 0.9, 0.5, 0.9])
    pool = make_pool(5, signals={"flip": flip, "uncertainty": np.array([0.3, 0.3, 0.3, 0.3, 0.3])})
    order = get_strategy("flip").select(pool, 5, rng())
    assert set(order[:2]) == {2, 4} and order[2:] == [3, 0, 1]
    # all tied: the order comes from the rng, not the pool order
    orders = {tuple(get_strategy("uncertainty").select(pool, 5, rng(s))) for s in range(8)}
    assert len(orders) > 1
    with pytest.raises(SelectionError, match="predictor.flip"):
        get_strategy("flip").select(make_pool(3, signals={"flip": np.full(3, np.nan)}), 1, rng())


def test_k_center_spreads_out_and_avoids_labeled():
    # two tight clusters and one lone point; the labeled set covers cluster A
    a = np.array([[0, 0], [0.1, 0], [0, 0.1]])
    b = np.array([[10, 0], [10.1, 0], [10, 0.1]])
    lone = np.array([[0, 10]])
    emb = np.vstack([a, b, lone])
    picks = k_center_greedy(emb, np.array([[0.05, 0.05]]), 2, rng())
    assert picks == [4, 6]  # the farthest point from the labeled one, then the farthest from both
    pool = make_pool(7, embeddings=emb, labeled_embeddings=np.array([[0.05, 0.05]]))
    chosen = get_strategy("coreset").select(pool, 2, rng())
    assert not set(chosen) & {0, 1, 2}  # keeps away from the labeled cluster
    assert 6 in chosen and any(i in (3, 4, 5) for i in chosen)  # one of each uncovered region
    # without labeled images: 3 picks land in 3 different regions
    three = get_strategy("coreset").select(make_pool(7, embeddings=emb), 3, rng(5))
    regions = {0 if i < 3 else 1 if i < 6 else 2 for i in three}
    assert regions == {0, 1, 2}
    assert sorted(np.argsort(-get_strategy("coreset").scores(pool))[:2].tolist()) == sorted(chosen)
    # Only the top `depth` places in k-center order; the rest farthest first from all of those.
    shallow = np.argsort(-get_strategy("coreset", {"depth": 2}).scores(pool)).tolist()
    assert sorted(shallow[:2]) == sorted(chosen) and sorted(shallow) == list(range(7))
    assert set(shallow[2:4]) == {3, 5} and set(shallow[4:]) == {0, 1, 2}  # the far cluster first


def dupes_spread_rest(r: np.random.Generator) -> np.ndarray:
    """Embeddings of 20 images: 8 near-duplicates, 4 spread-out ones, 8 scattered at random."""
    dupes = np.tile([[1.0, 0.0, 0.0]], (8, 1)) + r.normal(0, 0.01, (8, 3))
    spread = np.array([[0, 1.0, 0], [0, 0, 1.0], [0, -1.0, 0], [0, 0, -1.0]])
    return np.vstack([dupes, spread, r.normal(0, 1, (8, 3))])


def test_hybrid_picks_uncertain_and_diverse():
    # 8 near-duplicates that are the most uncertain, 4 spread-out images slightly less uncertain, 8 certain ones
    emb = dupes_spread_rest(rng(3))
    u = np.concatenate([np.full(8, 0.9), np.full(4, 0.8), np.full(8, 0.05)])
    pool = make_pool(20, signals={"uncertainty": u}, embeddings=emb)
    hybrid = get_strategy("hybrid", {"candidates_factor": 3})
    picks = hybrid.select(pool, 4, rng())
    assert all(i < 12 for i in picks)  # only uncertain ones
    assert sum(i < 8 for i in picks) <= 1  # not four copies of the same case
    top = get_strategy("uncertainty").select(pool, 4, rng())
    assert all(i < 8 for i in top)  # what plain uncertainty does instead
    with pytest.raises(SelectionError, match="needs image embeddings"):
        hybrid.select(make_pool(5), 2, rng())
    with pytest.raises(SelectionError, match="candidates_factor"):
        get_strategy("hybrid", {"candidates_factor": 0.5})
    full = hybrid.scores(pool)  # a full ranking: every image once, distinct scores
    assert len(set(full.tolist())) == 20
    queue = list(np.argsort(-full))
    batch = get_strategy("hybrid", {"candidates_factor": 3, "batch_size": 4}).scores(pool)
    first = list(np.argsort(-batch))[:4]  # the first batch of 4, as select picks it
    assert all(i < 12 for i in first) and sum(i < 8 for i in first) <= 1
    # Only the top `depth` places are ranked for diversity; the rest follow the signal.
    shallow = list(np.argsort(-get_strategy("hybrid", {"candidates_factor": 3, "depth": 2}).scores(pool)))
    assert shallow[:2] == queue[:2] and len(set(shallow)) == 20
    assert [u[i] for i in shallow[2:]] == sorted((u[i] for i in shallow[2:]), reverse=True)


def blobs(sizes: list[int], seed: int = 0, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated 2-D blobs of these sizes (centres 10 apart on a line), and each point's blob."""
    r = rng(seed)
    points = np.vstack([[10.0 * b, 0.0] + r.normal(0, spread, (n, 2)) for b, n in enumerate(sizes)])
    return points, np.repeat(np.arange(len(sizes)), sizes)


def most_central(points: np.ndarray, members: np.ndarray, neighbors: int) -> int:
    """The member with the smallest mean distance to its `neighbors` nearest fellow members (brute force)."""
    d = np.linalg.norm(points[members][:, None] - points[members][None], axis=2)
    mean = np.sort(d, axis=1)[:, 1 : neighbors + 1].mean(axis=1)
    return int(members[mean.argmin()])


def test_typiclust_takes_the_typical_image_of_each_cluster_largest_first():
    sizes = [9, 30, 4, 17]
    emb, blob = blobs(sizes)
    pool = make_pool(len(emb), embeddings=emb)
    typiclust = get_strategy("typiclust", {"neighbors": 3})
    picks = typiclust.select(pool, 4, rng())
    assert blob[picks].tolist() == [1, 3, 0, 2]  # one per blob, largest blob first
    for i in picks:  # and in each, its most central image
        assert i == most_central(emb, np.flatnonzero(blob == blob[i]), 3)
    # The full ranking's first batch is that selection (the select flow writes scores, shows the batch).
    full = get_strategy("typiclust", {"neighbors": 3, "batch_size": 4}).scores(pool)
    assert np.argsort(-full)[:4].tolist() == picks and len(set(full.tolist())) == len(emb)


def test_typiclust_keeps_away_from_labeled_clusters():
    emb, blob = blobs([30, 12, 20, 6])
    labeled = emb[blob == 0][:1] + 0.01  # a labeled image in the largest blob: 1 + 3 clusters, one per blob
    pool = make_pool(len(emb), embeddings=emb, labeled_embeddings=labeled)
    picks = get_strategy("typiclust", {"neighbors": 3}).select(pool, 3, rng())
    assert blob[picks].tolist() == [2, 1, 3]
    # Without the labeled images the largest blob comes first.
    assert blob[get_strategy("typiclust", {"neighbors": 3}).select(make_pool(len(emb), embeddings=emb), 1, rng())] == [0]


def test_typiclust_small_pools_duplicates_and_settings():
    typiclust = get_strategy("typiclust")
    emb, _ = blobs([3, 2])
    assert sorted(typiclust.select(make_pool(5, embeddings=emb), 50, rng())) == [0, 1, 2, 3, 4]  # k > pool
    assert typiclust.select(make_pool(1, embeddings=np.ones((1, 3))), 5, rng()) == [0]
    assert typiclust.scores(make_pool(1, embeddings=np.ones((1, 3)))).tolist() == [1.0]
    assert typiclust.select(make_pool(0, embeddings=np.zeros((0, 3))), 5, rng()) == []
    # Identical embeddings (the same film twice, a blank pool): every image still ranked once.
    same = make_pool(6, embeddings=np.tile([[0.5, 0.5]], (6, 1)), labeled_embeddings=np.array([[0.5, 0.5]]))
    assert sorted(typiclust.select(same, 6, rng())) == list(range(6))
    assert sorted(typiclust.scores(same).tolist()) == [(i + 1) / 6 for i in range(6)]
    # More labeled images than max_clusters: the clusters are capped, the ranking still complete.
    emb, _ = blobs([20, 20, 20])
    capped = make_pool(60, embeddings=emb, labeled_embeddings=emb[:8] + 0.01)
    assert len(set(get_strategy("typiclust", {"max_clusters": 5, "batch_size": 3}).scores(capped).tolist())) == 60
    with pytest.raises(SelectionError, match="needs image embeddings"):
        typiclust.select(make_pool(3), 1, rng())
    with pytest.raises(SelectionError, match="typiclust neighbors must be >= 1"):
        get_strategy("typiclust", {"neighbors": 0})


def test_mean_neighbor_distance_drops_only_the_point_itself():
    points = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert mean_neighbor_distance(points, 1).tolist() == [0.0, 0.0, 3.0, 4.0]  # a duplicate is a neighbour at 0
    assert mean_neighbor_distance(points, 2, chunk=3).tolist() == [1.5, 1.5, 3.0, 4.0]
    assert mean_neighbor_distance(points, 0).tolist() == [0.0] * 4


def test_thumbnail_embeddings(tmp_path):
    import cv2

    from cxrkit.selection.embeddings import thumbnail_embeddings

    r = rng(4)
    paths = []
    for i in range(6):
        img = (r.random((48 + 8 * i, 40)) * 60 + 40 * (i % 3)).astype(np.uint8)  # sizes and exposures differ
        paths.append(tmp_path / f"img{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    emb, failed = thumbnail_embeddings(paths, size=16, components=4)
    assert emb.shape == (6, 4) and failed == {}
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    again, _ = thumbnail_embeddings([str(p) for p in paths], size=16, components=4)
    assert np.array_equal(emb, again)  # deterministic, signs included
    # Standardised per image: the same film brighter and with more contrast embeds the same.
    bright = tmp_path / "bright.png"
    cv2.imwrite(str(bright), np.clip(cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE) * 2.0 + 10, 0, 255).astype(np.uint8))
    with_bright, _ = thumbnail_embeddings([*paths, bright], size=16, components=4)
    assert np.allclose(with_bright[0], with_bright[6], atol=1e-3)
    # Fewer films than components: the dimensions PCA cannot fill are 0 (two films: one direction).
    two, _ = thumbnail_embeddings(paths[:2], size=16, components=4)
    assert two.shape == (2, 4) and np.all(two[:, 2:] == 0) and np.allclose(two[:, 1], 0)
    assert np.allclose(two[:, 0], [1, -1]) or np.allclose(two[:, 0], [-1, 1])
    # An unreadable file is named and its row is NaN; the others are embedded without it.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    emb2, failed = thumbnail_embeddings([paths[0], broken, paths[1], tmp_path / "missing.png"], size=16, components=4)
    assert set(failed) == {1, 3} and str(broken) in failed[1] and "missing.png" in failed[3]
    assert "cannot read image" in failed[1]
    assert np.isnan(emb2[[1, 3]]).all() and np.allclose(np.linalg.norm(emb2[[0, 2]], axis=1), 1.0)


def test_class_balanced_prefers_the_rare_class():
    # Two images equally uncertain: one probably of the rare class, one of the frequent one.
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.3, 0.4, 0.3]])
    u = np.array([0.6, 0.6, 0.5])
    counts = {"Bacterial": 40.0, "Viral": 3.0, "Normal": 60.0}
    pool = make_pool(3, signals={"uncertainty": u}, probs=probs, classes=["Bacterial", "Viral", "Normal"],
                     labeled_counts=counts)
    balanced = get_strategy("class_balanced")
    assert balanced.select(pool, 3, rng())[0] == 1
    scores = balanced.scores(pool)
    assert scores[1] > scores[0] and 0 <= scores.min() and scores.max() <= 1
    # The rare class outweighs a little less uncertainty too, but not with rarity_weight 0 (the plain signal).
    assert scores[2] > scores[0]
    assert np.array_equal(get_strategy("class_balanced", {"rarity_weight": 0}).scores(pool), u)
    # The frequent class labeled rarely instead: the order turns.
    flipped = make_pool(3, signals={"uncertainty": u}, probs=probs, classes=["Bacterial", "Viral", "Normal"],
                        labeled_counts={"Bacterial": 3.0, "Viral": 40.0, "Normal": 60.0})
    assert balanced.select(flipped, 1, rng()) == [0]


def test_class_balanced_without_counts_is_the_plain_signal():
    r = rng(2)
    probs = r.dirichlet(np.ones(4), 30)
    u = r.random(30)
    for counts in (None, {}, {"a": 5.0, "b": 5.0, "c": 5.0, "d": 5.0}):
        pool = make_pool(30, signals={"uncertainty": u}, probs=probs, classes=list("abcd"), labeled_counts=counts)
        assert np.allclose(get_strategy("class_balanced").scores(pool), u)
        assert get_strategy("class_balanced").select(pool, 30, rng()) == get_strategy("uncertainty").select(pool, 30, rng())
    with pytest.raises(SelectionError, match="needs pool.classes"):
        get_strategy("class_balanced").scores(make_pool(30, signals={"uncertainty": u}, probs=probs,
                                                        labeled_counts={"a": 1.0}))
    with pytest.raises(SelectionError, match="rarity_weight must be >= 0"):
        get_strategy("class_balanced", {"rarity_weight": -1})


def test_labeled_class_counts_follow_the_classifier_classes():
    from dataclasses import replace

    from cxrkit.core.labels import load_schema
    from cxrkit.core.manifest import Record
    from cxrkit.selection import labeled_class_counts

    schema = load_schema()
    bacterial, viral = schema.subtypes[0], schema.subtypes[1]
    base = Record(image_id="x", path="x.png", source="test", labeled=True)
    records = [
        replace(base, subtype=bacterial, impression=schema.pneumonia),
        replace(base, subtype=bacterial, impression=schema.pneumonia),
        replace(base, subtype=viral, impression=schema.pneumonia),
        replace(base, impression=schema.normal),
        replace(base, impression=schema.pneumonia),  # no subtype (RSNA): not a classifier class
        replace(base, impression=schema.normal, labeled=False),  # unlabeled: unknown
    ]
    assert labeled_class_counts(records, schema) == {bacterial: 2.0, viral: 1.0, schema.normal: 1.0}


def test_likely_positive_takes_the_likely_positives_spread_out():
    # 8 near-duplicates the detector finds an opacity in, 4 spread-out ones it scores a little lower,
    # 8 films it sees nothing in but is the least sure of (what uncertainty-led hybrid takes)
    emb = dupes_spread_rest(rng(5))
    opacity = np.concatenate([np.full(8, 0.6), np.full(4, 0.5), np.full(8, 0.02)])
    doubt = np.concatenate([np.full(12, 0.3), np.full(8, 0.9)])
    pool = make_pool(20, signals={"uncertainty": doubt, "opacity": opacity}, embeddings=emb)
    strategy = get_strategy("likely_positive", {"candidates_factor": 3})
    picks = strategy.select(pool, 4, rng())
    assert all(i < 12 for i in picks)  # only films with an opacity the detector sees
    assert sum(i < 8 for i in picks) <= 1  # not four views of one kind of opacity
    assert all(i >= 12 for i in get_strategy("hybrid", {"candidates_factor": 2}).select(pool, 4, rng()))
    queue = list(np.argsort(-get_strategy("likely_positive", {"candidates_factor": 3, "batch_size": 4}).scores(pool)))
    assert all(i < 12 for i in queue[:4]) and sum(i < 8 for i in queue[:4]) <= 1 and len(set(queue)) == 20
    with pytest.raises(SelectionError, match="no 'opacity' signal"):
        strategy.select(make_pool(5, embeddings=np.eye(5)), 2, rng())
    with pytest.raises(SelectionError, match="likely_positive candidates_factor"):
        get_strategy("likely_positive", {"candidates_factor": 0.5})


def test_detector_uncertainty_takes_the_detectors_doubt_not_the_classifiers():
    # 8 near-duplicates whose best box scores near 0.5 (detection signal 0.99: the detector's doubt),
    # 4 spread-out ones a little less doubtful, and 8 films the detector is sure of (a box at 0.98)
    # whose combined uncertainty the classifier's doubt makes the highest: hybrid takes those, and
    # likely_positive too (the highest opacity scores); detector_uncertainty must not
    emb = dupes_spread_rest(rng(6))
    detection = np.concatenate([np.full(8, 0.99), np.full(4, 0.9), np.full(8, 0.1)])
    doubt = np.concatenate([np.full(12, 0.4), np.full(8, 0.9)])
    opacity = np.concatenate([np.full(12, 0.5), np.full(8, 0.98)])
    pool = make_pool(20, signals={"uncertainty": doubt, "detection": detection, "opacity": opacity}, embeddings=emb)
    strategy = get_strategy("detector_uncertainty", {"candidates_factor": 3})
    picks = strategy.select(pool, 4, rng())
    assert all(i < 12 for i in picks) and sum(i < 8 for i in picks) <= 1  # doubtful to the detector, spread out
    assert all(i >= 12 for i in get_strategy("hybrid", {"candidates_factor": 2}).select(pool, 4, rng()))
    assert all(i >= 12 for i in get_strategy("likely_positive", {"candidates_factor": 2}).select(pool, 4, rng()))
    queue = list(np.argsort(-get_strategy("detector_uncertainty", {"candidates_factor": 3, "batch_size": 4}).scores(pool)))
    assert all(i < 12 for i in queue[:4]) and sum(i < 8 for i in queue[:4]) <= 1 and len(set(queue)) == 20
    with pytest.raises(SelectionError, match="no 'detection' signal"):
        strategy.select(make_pool(5, embeddings=np.eye(5)), 2, rng())


def test_hybrid_random_takes_part_of_each_batch_at_random():
    # The 8 near-duplicates are the most uncertain; the other 12 films are sure ones. Half of a batch
    # of 4 is hybrid's (uncertain, spread out), the other half random: over many draws the random half
    # reaches the sure films in about their share of the films left (12 of 18)
    emb = dupes_spread_rest(rng(6))
    doubt = np.concatenate([np.full(8, 0.9), np.full(12, 0.1)])
    pool = make_pool(20, signals={"uncertainty": doubt}, embeddings=emb)
    strategy = get_strategy("hybrid_random", {"random_share": 0.5, "candidates_factor": 2})
    sure = []
    for seed in range(200):
        picks = strategy.select(pool, 4, rng(seed))
        assert len(set(picks)) == 4 and all(i < 8 for i in picks[:2])  # hybrid's half: uncertain films
        sure.append(sum(i >= 8 for i in picks[2:]))
    assert 0.55 < np.mean(sure) / 2 < 0.8  # 12/18 = 0.67 expected
    assert sorted(get_strategy("hybrid_random", {"random_share": 0.0, "candidates_factor": 2}).select(pool, 4, rng())) \
        == sorted(get_strategy("hybrid", {"candidates_factor": 2}).select(pool, 4, rng()))
    # the queue: batches of 4, the first two of each hybrid's, the next two random's; a full ranking
    queue = list(np.argsort(-get_strategy("hybrid_random", {"batch_size": 4, "candidates_factor": 2}).scores(pool)))
    assert len(set(queue)) == 20 and all(i < 8 for i in queue[:2]) and all(i < 8 for i in queue[4:6])
    with pytest.raises(SelectionError, match="random_share must be in"):
        get_strategy("hybrid_random", {"random_share": 1.5})


def test_select_k_bounds():
    pool = make_pool(3, signals={"uncertainty": np.linspace(0, 1, 3), "opacity": np.linspace(0, 1, 3),
                                "detection": np.linspace(0, 1, 3)},
                     probs=np.full((3, 2), 0.5), embeddings=np.eye(3))
    for name in STRATEGIES:
        if name == "flip":
            continue
        assert sorted(get_strategy(name).select(pool, 10, rng())) == [0, 1, 2]
        assert get_strategy(name).select(pool, 0, rng()) == []


def test_pool_from_predictions_excludes_errors():
    ok = Prediction(image_probs={"A": 0.7, "Normal": 0.3}, uncertainty=0.4, top_opacity=0.35,
                    signals={"detection": 0.2, "box": None, "classifier": 0.88, "margin": 0.6, "subtype": None, "flip": 0.0})
    bad = Prediction(error="img1.png: cannot decode image")
    blank = Prediction(image_probs={"A": 0.7, "Normal": 0.3}, uncertainty=0.4, signals={})  # no detector box at all
    pool = pool_from_predictions(["a", "b", "c"], [ok, bad, ok], embeddings=np.arange(6.0).reshape(3, 2))
    assert pool.image_ids == ["a", "c"] and pool.excluded == {"b": "img1.png: cannot decode image"}
    assert pool.signals["opacity"].tolist() == [0.35, 0.35]  # the detector's best opacity score
    assert np.isnan(pool_from_predictions(["d"], [blank]).signals["opacity"]).all()
    assert pool.signals["uncertainty"].tolist() == [0.4, 0.4]
    assert np.isnan(pool.signals["box"]).all() and pool.signals["classifier"][0] == 0.88
    assert pool.probs.tolist() == [[0.7, 0.3], [0.7, 0.3]] and pool.classes == ["A", "Normal"]
    assert pool.embeddings.tolist() == [[0.0, 1.0], [4.0, 5.0]]
    with pytest.raises(SelectionError, match="3 image ids but 2 predictions"):
        pool_from_predictions(["a", "b", "c"], [ok, ok])


def test_image_embeddings_of_trained_classifier(trained_models):
    from cxrkit.models.classifier import load_classifier
    from cxrkit.selection.embeddings import image_embeddings

    model = load_classifier(trained_models.classifier_checkpoint)
    paths = [trained_models.data_dir / r.path for r in trained_models.records[:6]]
    emb = image_embeddings(model, paths, batch=4)
    assert emb.shape == (6, 512) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    from cxrkit.models.classifier import read_grey

    again = image_embeddings(model, [read_grey(p) for p in paths[:2]])
    assert np.allclose(again, emb[:2], atol=1e-5)  # arrays and files alike, batch size does not matter
    assert not np.allclose(emb[0], emb[1])
    # the hook is gone: the classifier's own output is unchanged afterwards
    assert len(model.fc._forward_hooks) == 0
