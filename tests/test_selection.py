"""Acquisition strategies on hand-made pools, and embeddings of a real trained classifier."""
from __future__ import annotations

import numpy as np
import pytest

from cxrkit.models.predictor import Prediction
from cxrkit.selection import (
    STRATEGIES,
    Pool,
    SelectionError,
    get_strategy,
    pool_from_predictions,
)
from cxrkit.selection.coreset import k_center_greedy


def make_pool(n: int = 6, **fields) -> Pool:
    signals = fields.pop("signals", {"uncertainty": np.linspace(0, 1, n)})
    return Pool([f"img{i}" for i in range(n)], signals, **fields)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_registry_names_and_unknown():
    assert set(STRATEGIES) == {"random", "least_confidence", "entropy", "margin", "flip", "uncertainty", "coreset", "hybrid"}
    for name, cls in STRATEGIES.items():
        assert get_strategy(name).name == name and isinstance(get_strategy(name), cls)
    with pytest.raises(SelectionError, match="unknown strategy 'nope'"):
        get_strategy("nope")
    with pytest.raises(SelectionError, match="bad settings"):
        get_strategy("entropy", {"candidates_factor": 2})


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


def test_hybrid_picks_uncertain_and_diverse():
    # 8 near-duplicates that are the most uncertain, 4 spread-out images slightly less uncertain, 8 certain ones
    r = rng(3)
    dupes = np.tile([[1.0, 0.0, 0.0]], (8, 1)) + r.normal(0, 0.01, (8, 3))
    spread = np.array([[0, 1.0, 0], [0, 0, 1.0], [0, -1.0, 0], [0, 0, -1.0]])
    certain = r.normal(0, 1, (8, 3))
    emb = np.vstack([dupes, spread, certain])
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


def test_select_k_bounds():
    pool = make_pool(3, probs=np.full((3, 2), 0.5), embeddings=np.eye(3))
    for name in STRATEGIES:
        if name == "flip":
            continue
        assert sorted(get_strategy(name).select(pool, 10, rng())) == [0, 1, 2]
        assert get_strategy(name).select(pool, 0, rng()) == []


def test_pool_from_predictions_excludes_errors():
    ok = Prediction(image_probs={"A": 0.7, "Normal": 0.3}, uncertainty=0.4,
                    signals={"detection": 0.2, "box": None, "classifier": 0.88, "margin": 0.6, "subtype": None, "flip": 0.0})
    bad = Prediction(error="img1.png: cannot decode image")
    pool = pool_from_predictions(["a", "b", "c"], [ok, bad, ok], embeddings=np.arange(6.0).reshape(3, 2))
    assert pool.image_ids == ["a", "c"] and pool.excluded == {"b": "img1.png: cannot decode image"}
    assert pool.signals["uncertainty"].tolist() == [0.4, 0.4]
    assert np.isnan(pool.signals["box"]).all() and pool.signals["classifier"][0] == 0.88
    assert pool.probs.tolist() == [[0.7, 0.3], [0.7, 0.3]]
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
