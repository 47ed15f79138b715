"""The predictor: tiny trained models (tests/trained_models.py, trained once per session) on
ingested synthetic images; the uncertainty formula and the impression rule on chosen numbers;
the confident-vs-ambiguous ordering end to end with stand-in models whose outputs we set."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box
from cxrkit.labelstudio.results import results_to_labels
from cxrkit.models.classifier import attach_info, classifier_classes
from cxrkit.models.predictor import (
    AUTO_CONF_FALLBACK,
    SIGNALS,
    Prediction,
    Predictor,
    PredictorError,
    binary_entropy,
    combine_uncertainty,
    flip_disagreement,
    impression_rule,
    normalised_entropy,
    prune_prediction_cache,
    to_labelstudio,
    top2_margin,
)

pytestmark = pytest.mark.slow
# The tiny models' scores are low (15 epochs, top scores about 0.01-0.1): show the best boxes down to the
# detector's floor (detector.conf 0.01) so there are boxes and subtypes to check.
TEST_PREDICTOR = {"conf": 0.01, "flip_conf": 0.01}


def _params(trained_models, **predictor):
    params = dict(trained_models.params)
    params["predictor"] = {**params["predictor"], **TEST_PREDICTOR, **predictor}
    return params


@pytest.fixture(scope="module")
def predictor(trained_models):
    return Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint, _params(trained_models))


@pytest.fixture(scope="module")
def held_out(trained_models):
    return [r for r in trained_models.records if r.split != "train"]


@pytest.fixture(scope="module")
def held_out_predictions(predictor, trained_models, held_out):
    return [predictor.predict(cv2.imread(str(trained_models.data_dir / r.path), cv2.IMREAD_GRAYSCALE)) for r in held_out]


def _finite01(x) -> bool:
    return x is not None and math.isfinite(x) and -1e-9 <= x <= 1 + 1e-9


def test_predictions_are_well_formed(predictor, held_out, held_out_predictions):
    schema = load_schema()
    classes = classifier_classes(schema)
    assert predictor.model_version.startswith("det-") and "-clf-" in predictor.model_version
    assert sum(len(p.boxes) for p in held_out_predictions) >= 3  # there is something to check
    for record, p in zip(held_out, held_out_predictions):
        assert p.ok and (p.width, p.height) == (record.width, record.height)
        assert p.impression in schema.impressions
        assert _finite01(p.p_pneumonia)
        assert list(p.image_probs) == classes and math.isclose(sum(p.image_probs.values()), 1.0, abs_tol=1e-9)
        assert len(p.box_subtypes) == len(p.boxes) <= predictor.settings["max_boxes"]
        assert [b.score for b in p.boxes] == sorted((b.score for b in p.boxes), reverse=True)
        for box, dist in zip(p.boxes, p.box_subtypes):
            assert 0 <= box.x and 0 <= box.y and box.w > 0 and box.h > 0
            assert box.x + box.w <= p.width + 0.01 and box.y + box.h <= p.height + 0.01
            assert predictor.settings["conf"] <= box.score <= 1
            assert box.finding in schema.findings
            if box.finding == schema.opacity:
                assert list(dist) == list(schema.subtypes)
                assert math.isclose(sum(dist.values()), 1.0, abs_tol=1e-9) and all(v >= 0 for v in dist.values())
                assert box.subtype == max(dist, key=dist.get)
            else:
                assert dist == {} and box.subtype is None


def test_uncertainty_signals_in_documented_ranges(predictor, held_out_predictions):
    weights = predictor.settings["weights"]
    for p in held_out_predictions:
        assert set(p.signals) == set(SIGNALS)
        for name in ("detection", "classifier", "margin", "flip"):  # always there (flip is on)
            assert _finite01(p.signals[name]), (name, p.signals)
        assert (p.signals["box"] is None) == (not p.boxes)  # only with boxes
        assert (p.signals["subtype"] is None) == (not any(p.box_subtypes))  # only with opacity boxes
        for name in ("box", "subtype"):
            assert p.signals[name] is None or _finite01(p.signals[name])
        assert _finite01(p.cls_margin) and math.isclose(p.signals["margin"], 1 - p.cls_margin)
        assert _finite01(p.uncertainty)
        assert p.uncertainty == pytest.approx(combine_uncertainty(p.signals, weights))
        top = max(p.image_probs.values())
        assert p.signals["classifier"] == pytest.approx(normalised_entropy(list(p.image_probs.values())))
        assert top >= 1 / len(p.image_probs) - 1e-9


def test_labelstudio_round_trip(held_out_predictions):
    schema = load_schema()
    with_boxes = [p for p in held_out_predictions if p.boxes]
    assert with_boxes
    for p in with_boxes:
        results = to_labelstudio(p, p.width, p.height)
        json.dumps(results)  # what the Label Studio API receives
        assert all(r["score"] == b.score for r, b in zip([r for r in results if r["type"] == "rectanglelabels"], p.boxes))
        back = results_to_labels(results, schema)
        assert back.impression == p.impression
        assert len(back.boxes) == len(p.boxes)
        for got, want in zip(back.boxes, p.boxes):
            assert (got.finding, got.subtype, got.score) == (want.finding, want.subtype, want.score)
            assert [got.x, got.y, got.w, got.h] == pytest.approx([want.x, want.y, want.w, want.h], abs=1e-6)
    # The task's image at another size: boxes scale with it.
    p = with_boxes[0]
    back = results_to_labels(to_labelstudio(p, 2 * p.width, 2 * p.height), schema)
    assert back.boxes[0].x == pytest.approx(2 * p.boxes[0].x) and back.boxes[0].w == pytest.approx(2 * p.boxes[0].w)
    with pytest.raises(PredictorError, match="failed prediction"):
        to_labelstudio(Prediction(error="boom"), 10, 10)


def test_batched_paths_match_single_images(predictor, trained_models, held_out, held_out_predictions):
    paths = [trained_models.data_dir / r.path for r in held_out[:6]]
    batched = predictor.predict_paths(paths, batch=4)
    arrays = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    same_batches = predictor.predict_arrays(arrays[:4]) + predictor.predict_arrays(arrays[4:])
    for one, many, same in zip(held_out_predictions[:6], batched, same_batches):
        assert many.ok and not many.cached and many.image_sha256 and many.path
        # The same computation (file -> batch of 4): the same answer.
        assert (many.boxes, many.box_subtypes, many.signals, many.uncertainty) == \
               (same.boxes, same.box_subtypes, same.signals, same.uncertainty)
        # One image at a time: the same up to float noise of batched convolutions (the low-score
        # tail of boxes may reorder, so compare what does not depend on it).
        assert list(many.image_probs.values()) == pytest.approx(list(one.image_probs.values()), abs=1e-4)
        assert many.signals["detection"] == pytest.approx(one.signals["detection"], abs=1e-3)
        assert many.p_pneumonia == pytest.approx(one.p_pneumonia, abs=1e-3)


def test_cache_hits_on_the_second_call_and_misses_for_another_version(trained_models, held_out, tmp_path):
    paths = [trained_models.data_dir / r.path for r in held_out[:5]]
    cache = tmp_path / "cache"
    first = Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint, _params(trained_models),
                      cache_dir=cache)
    a = first.predict_paths(paths, batch=2)
    assert first.stats == {"cache_hits": 0, "cache_misses": 5, "predicted": 5, "errors": 0}
    files = sorted(cache.rglob("*.json"))
    assert len(files) == 5 and not list(cache.rglob("*.tmp"))  # atomic: no temp file left
    b = first.predict_paths(paths, batch=2)
    assert first.stats["cache_hits"] == 5 and first.stats["predicted"] == 5
    assert all(p.cached for p in b) and not any(p.cached for p in a)
    for x, y in zip(a, b):
        assert (x.path, x.image_sha256, x.uncertainty, x.impression, x.boxes, x.box_subtypes) == \
               (y.path, y.image_sha256, y.uncertainty, y.impression, y.boxes, y.box_subtypes)

    # The cache is keyed by content: the same bytes under another name hit.
    copy = tmp_path / "renamed.png"
    copy.write_bytes(paths[0].read_bytes())
    (c,) = first.predict_paths([copy])
    assert c.cached and c.path == str(copy) and c.uncertainty == a[0].uncertainty

    # Another model version misses (and writes its own entries); so does another setting.
    other = Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint, _params(trained_models),
                      model_version="v2", cache_dir=cache)
    assert other.model_version == "v2"
    assert not any(p.cached for p in other.predict_paths(paths))
    assert other.stats["cache_misses"] == 5 and other.stats["cache_hits"] == 0
    no_flip = Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint,
                        _params(trained_models, flip=False), model_version="v2", cache_dir=cache)
    assert not any(p.cached for p in no_flip.predict_paths(paths[:2]))
    assert other.predict_paths(paths[:1])[0].cached

    # A damaged cache file is a miss, and is rewritten.
    files[0].write_text("{not json")
    again = first.predict_paths(paths)
    assert sum(not p.cached for p in again) == 1
    assert json.loads(files[0].read_text())["model_version"] == first.model_version

    # Pruning keeps the versions asked for: v2's two folders (two settings) go, the first stays.
    assert sorted(prune_prediction_cache(cache, {first.model_version})) == ["v2", "v2"]
    assert all(p.cached for p in first.predict_paths(paths)) and not other.predict_paths(paths[:1])[0].cached


def test_bad_images_fail_alone(predictor, trained_models, held_out, tmp_path):
    good = [trained_models.data_dir / r.path for r in held_out[:2]]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good[0].read_bytes()[:40])  # a truncated PNG
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "nowhere.png"
    out = predictor.predict_paths([good[0], missing, corrupt, text, good[1]], batch=8)
    assert [p.ok for p in out] == [True, False, False, False, True]
    assert "not found" in out[1].error and str(missing) in out[1].error
    assert "cannot decode" in out[2].error and str(corrupt) in out[2].error
    assert "cannot decode" in out[3].error
    assert all(p.path for p in out)
    with pytest.raises(PredictorError, match="2-D grey"):
        predictor.predict(np.zeros((4, 4, 2), np.uint8))


def test_flip_off_and_tta(trained_models, held_out):
    img = cv2.imread(str(trained_models.data_dir / held_out[0].path), cv2.IMREAD_GRAYSCALE)
    no_flip = Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint,
                        _params(trained_models, flip=False))
    p = no_flip.predict(img)
    assert p.signals["flip"] is None and _finite01(p.uncertainty)
    assert p.uncertainty == pytest.approx(combine_uncertainty(p.signals, no_flip.settings["weights"]))
    tta = Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint, _params(trained_models, tta=True))
    assert tta.settings["flip"] is True
    for r in held_out[:4]:
        q = tta.predict(cv2.imread(str(trained_models.data_dir / r.path), cv2.IMREAD_GRAYSCALE))
        assert _finite01(q.signals["flip"])
        for b in q.boxes:
            assert 0 <= b.x and 0 <= b.y and b.x + b.w <= q.width + 0.01 and b.y + b.h <= q.height + 0.01
            assert 0 < b.score <= 1


def _same_boxes(a, b) -> bool:
    """The same boxes, to float noise (the detector sees the films in batches of another size)."""
    return len(a) == len(b) and all(
        (x.finding, x.subtype) == (y.finding, y.subtype)
        and [x.x, x.y, x.w, x.h, x.score] == pytest.approx([y.x, y.y, y.w, y.h, y.score], abs=1e-3)
        for x, y in zip(a, b))


def _counting_detector_inputs(predictor) -> list[int]:
    """Record how many images each detector call of `predictor` gets."""
    counts, detect = [], predictor._detect

    def counted(images):
        counts.append(len(images))
        return detect(images)

    predictor._detect = counted
    return counts


def test_the_scoring_pass_keeps_the_classifiers_embedding_of_each_film(trained_models, held_out, tmp_path):
    """The whole-film classification the uncertainty needs also gives the diversity strategies
    their embedding: the classifier's penultimate features, the same as image_embeddings gives
    (to float16's precision), kept through the cache; the backend's shown answer has none."""
    from cxrkit.models.classifier import load_classifier
    from cxrkit.selection.embeddings import image_embeddings

    paths = [trained_models.data_dir / r.path for r in held_out[:5]]
    p = Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint, _params(trained_models),
                  cache_dir=tmp_path / "cache")
    fresh = p.predict_paths(paths, batch=2)
    got = np.stack([q.embedding_vector() for q in fresh])
    expected = image_embeddings(load_classifier(trained_models.classifier_checkpoint), paths)
    assert got.shape == expected.shape == (5, 512) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 2e-3  # float16 of entries below 1: about 3 significant digits
    assert not np.allclose(got[0], got[1])
    cached = p.predict_paths(paths)
    assert all(q.cached for q in cached) and [q.embedding for q in cached] == [q.embedding for q in fresh]
    assert all(q.embedding is None for q in p.predict_arrays([cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)],
                                                              uncertainty=False))
    assert Prediction(error="unreadable").embedding_vector() is None
    assert len(p.classifier.fc._forward_hooks) == 0  # the hook is gone after each pass


def test_the_shown_answer_alone_skips_the_uncertainty_work(trained_models, held_out):
    """uncertainty=False (the ML backend's call) shows exactly what the full prediction shows,
    with one detector pass instead of two and no whole-image classification; tta and the
    impression rule, which shape what is shown, still get the passes they need."""
    images = [cv2.imread(str(trained_models.data_dir / r.path), cv2.IMREAD_GRAYSCALE) for r in held_out[:6]]
    p = Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint, _params(trained_models))
    assert p.settings["flip"] is True and p.settings["impression"] == "shown"
    full = p.predict_arrays(images)
    counts = _counting_detector_inputs(p)
    shown = p.predict_arrays(images, uncertainty=False)
    assert counts == [len(images)]  # the original films only: no mirrored pass
    assert any(f.boxes for f in full)
    for f, q in zip(full, shown):
        assert _same_boxes(q.boxes, f.boxes)
        assert q.impression == f.impression
        for a, b in zip(q.box_subtypes, f.box_subtypes):
            assert a == pytest.approx(b, abs=1e-5)  # the crops classified in another batch
        assert q.uncertainty is None and q.signals == {} and q.image_probs == {}
    for setting in ({"tta": True}, {"impression": "rule"}):
        p = Predictor(trained_models.detector_weights, trained_models.classifier_checkpoint,
                      _params(trained_models, **setting))
        full = p.predict_arrays(images)
        counts = _counting_detector_inputs(p)
        shown = p.predict_arrays(images, uncertainty=False)
        assert counts == [2 * len(images) if "tta" in setting else len(images)], setting
        assert [q.impression for q in shown] == [f.impression for f in full], setting
        assert all(_same_boxes(q.boxes, f.boxes) for q, f in zip(shown, full)), setting
        if "impression" in setting:
            assert all(q.p_pneumonia == pytest.approx(f.p_pneumonia) for q, f in zip(shown, full))


# --- the formula and the rule on chosen numbers ---------------------------------


def test_entropies_and_margin():
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0 and binary_entropy(0.5) == pytest.approx(1.0)
    ps = np.linspace(0, 0.5, 11)
    assert all(binary_entropy(a) < binary_entropy(b) for a, b in zip(ps, ps[1:]))  # rises towards 0.5
    assert binary_entropy(0.2) == pytest.approx(binary_entropy(0.8))
    assert normalised_entropy([1 / 6] * 6) == pytest.approx(1.0)
    assert normalised_entropy([1, 0, 0, 0, 0, 0]) == 0.0
    assert normalised_entropy([0.9, 0.1, 0, 0]) < normalised_entropy([0.6, 0.4, 0, 0]) < normalised_entropy([0.25] * 4)
    assert top2_margin([0.7, 0.2, 0.1]) == pytest.approx(0.5) and top2_margin([0.5, 0.5]) == 0.0


def test_flip_disagreement():
    a = [Box(10, 10, 20, 20, "Lung Opacity", score=0.9)]
    assert flip_disagreement([], []) == 0.0
    assert flip_disagreement(a, []) == flip_disagreement([], a) == 1.0
    assert flip_disagreement(a, a) == pytest.approx(0.0)
    shifted = [Box(15, 10, 20, 20, "Lung Opacity", score=0.8)]  # IoU 15*20 / (2*400 - 300) = 0.6
    assert flip_disagreement(a, shifted) == pytest.approx(0.4)
    far = [Box(100, 100, 20, 20, "Lung Opacity", score=0.8)]
    assert flip_disagreement(a, far) == 1.0
    assert flip_disagreement(a, [Box(10, 10, 20, 20, "Cardiomegaly", score=0.9)]) == 1.0  # other finding: no match
    assert flip_disagreement(a, a + far) == pytest.approx(1 - 2 / 3)  # one extra box


def test_combined_uncertainty_is_a_monotone_weighted_mean():
    w = {"detection": 1.0, "classifier": 1.0, "subtype": 0.5, "flip": 1.0, "box": 0.0, "margin": 0.0}
    base = {"detection": 0.2, "box": 0.3, "classifier": 0.4, "margin": 0.5, "subtype": 0.6, "flip": 0.1}
    u = combine_uncertainty(base, w)
    assert u == pytest.approx((0.2 + 0.4 + 0.5 * 0.6 + 0.1) / 3.5)
    for name in ("detection", "classifier", "subtype", "flip"):
        assert combine_uncertainty(base | {name: base[name] + 0.3}, w) > u  # rises with every weighted signal
    assert combine_uncertainty(base | {"box": 1.0, "margin": 1.0}, w) == u  # weight 0: no effect
    # A signal that does not apply drops out (its weight is not counted as certainty).
    assert combine_uncertainty(base | {"flip": None, "subtype": None}, w) == pytest.approx((0.2 + 0.4) / 2)
    assert combine_uncertainty({k: 0.0 for k in base}, w) == 0.0
    assert combine_uncertainty({k: 1.0 for k in base}, w) == 1.0
    assert combine_uncertainty({k: None for k in base}, w) == 0.0


def test_impression_rule():
    schema = load_schema()
    assert impression_rule(0.9, 0.1, 0.0, schema) == ("Pneumonia", pytest.approx(0.9))
    assert impression_rule(0.05, 0.95, 0.0, schema)[0] == "Normal"
    assert impression_rule(0.05, 0.95, 0.8, schema)[0] == "Other abnormality"
    assert impression_rule(0.9, 0.85, 0.0, schema)[0] == "Pneumonia"  # p = 0.525: a sure box outweighs a doubtful classifier
    assert impression_rule(0.55, 0.6, 0.0, schema)[0] == "Normal"  # p = 0.475: lukewarm box, classifier leaning Normal
    assert impression_rule(0.5, 0.4, 0.0, schema)[0] == "Pneumonia"  # p = 0.55: two lukewarm models agreeing
    assert impression_rule(0.3, 0.2, 0.0, schema, threshold=0.6)[0] == "Normal"  # p = 0.55 below a stricter threshold
    assert impression_rule(0.9, 0.1, 0.9, schema)[0] == "Pneumonia"  # pneumonia wins over other findings


# --- confident vs ambiguous, end to end, with models whose outputs we choose ----------


class _StubDetector:
    """Answers like ultralytics' YOLO.predict: for the original image `boxes`, for its mirror `flipped`
    (both xyxy in the image's pixels, the mirror's in mirrored pixels)."""

    def __init__(self, boxes, flipped):
        self.boxes, self.flipped = boxes, flipped

    def predict(self, images, **kwargs):
        out = []
        for img in images:
            rows = self.flipped if img[0, 0, 0] == 1 else self.boxes  # the mirror has the marker pixel top-left
            t = torch.tensor([r[:4] for r in rows], dtype=torch.float32).reshape(-1, 4)
            boxes = SimpleNamespace(xyxy=t, conf=torch.tensor([r[4] for r in rows]), cls=torch.zeros(len(rows)))
            out.append(SimpleNamespace(boxes=boxes, orig_shape=img.shape[:2]))
        return out


class _StubClassifier(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_confident_prediction_is_less_uncertain_than_an_ambiguous_one():
    schema = load_schema()
    classes = classifier_classes(schema)
    params = {"detector": {"imgsz": 64, "conf": 0.01}, "classifier": {"crop_margin": 0.25}, "predictor": {}}
    img = np.zeros((100, 100), np.uint8)
    img[0, -1] = 1  # mirrored: img[0, 0] == 1 tells the stub which one it sees

    def run(boxes, flipped, logits):
        clf = attach_info(_StubClassifier(logits), "stub", classes, 32)
        return Predictor.from_models(_StubDetector(boxes, flipped), clf, params, schema).predict(img)

    sharp = [10.0, 0, 0, 0, 0, 0]  # Bacterial, surely
    flat = [0.0] * len(classes)
    confident = run([[20, 20, 50, 60, 0.97]], [[50, 20, 80, 60, 0.96]], sharp)  # the mirror agrees exactly
    ambiguous = run([[20, 20, 50, 60, 0.5]], [[10, 50, 30, 90, 0.45]], flat)  # lukewarm, moves under the flip
    assert confident.impression == "Pneumonia" and confident.boxes[0].subtype == "Bacterial"
    assert confident.signals["flip"] == pytest.approx(0.0, abs=1e-6)
    assert ambiguous.signals["flip"] == 1.0
    assert confident.uncertainty < 0.2 < 0.8 < ambiguous.uncertainty
    for name in ("detection", "classifier", "subtype", "flip"):
        assert confident.signals[name] < ambiguous.signals[name], name
    # Nothing found and a sure "Normal" classifier: confident too.
    normal = run([], [], [0, 0, 0, 0, 0, 10.0])
    assert normal.impression == "Normal" and normal.boxes == [] and normal.uncertainty < 0.2


def test_names_follow_a_renamed_label_config(renamed_roles):
    """Impressions by position (normal, pneumonia, other abnormality), boxes in the config's opacity finding."""
    schema = renamed_roles
    assert impression_rule(0.9, 0.1, 0.0, schema)[0] == "Infection"
    assert impression_rule(0.05, 0.95, 0.8, schema)[0] == "Something else"
    assert impression_rule(0.05, 0.95, 0.0, schema)[0] == "Unremarkable"
    classes = classifier_classes(schema)
    params = {"detector": {"imgsz": 64, "conf": 0.01}, "classifier": {"crop_margin": 0.25}, "predictor": {"flip": False}}
    img = np.zeros((100, 100), np.uint8)

    def run(boxes, logits):
        clf = attach_info(_StubClassifier(logits), "stub", classes, 32)
        return Predictor.from_models(_StubDetector(boxes, []), clf, params, schema).predict(img)

    sure = run([[20, 20, 50, 60, 0.97]], [10.0, 0, 0, 0, 0, 0])
    assert sure.impression == "Infection"
    assert (sure.boxes[0].finding, sure.boxes[0].subtype) == ("Pneumonic Opacity", schema.subtypes[0])
    assert run([], [0, 0, 0, 0, 0, 10.0]).impression == "Unremarkable"


def test_shown_boxes_start_at_the_versions_measured_threshold():
    """predictor.conf effort / auto show the boxes from the thresholds measured on validation
    (or the fallback when none was measured); a number is used as given; anything else is refused."""
    schema = load_schema()
    clf = attach_info(_StubClassifier([0.0] * len(classifier_classes(schema))), "stub", classifier_classes(schema), 32)
    det = _StubDetector([[20, 20, 50, 60, 0.4], [60, 10, 90, 40, 0.12]], [])
    img = np.zeros((100, 100), np.uint8)

    def shown(predictor_section, operating_conf=None, effort_conf=None):
        params = {"detector": {"imgsz": 64, "conf": 0.01}, "classifier": {"crop_margin": 0.25},
                  "predictor": {"flip": False, **predictor_section}}
        p = Predictor.from_models(det, clf, params, schema, operating_conf=operating_conf, effort_conf=effort_conf)
        return p.settings["conf"], [round(b.score, 2) for b in p.predict(img).boxes]

    assert shown({"conf": "auto"}, operating_conf=0.1) == (0.1, [0.4, 0.12])
    assert shown({"conf": "auto"}) == (AUTO_CONF_FALLBACK, [0.4])
    assert shown({"conf": 0.3}, operating_conf=0.1) == (0.3, [0.4])
    # effort: the version's fewest-edits threshold; without one, the operating point, then the fallback
    assert shown({"conf": "effort"}, operating_conf=0.1, effort_conf=0.3) == (0.3, [0.4])
    assert shown({"conf": "effort"}, operating_conf=0.1) == (0.1, [0.4, 0.12])
    assert shown({"conf": "effort"}) == (AUTO_CONF_FALLBACK, [0.4])
    for bad in ({"conf": "lowish"}, {"conf": True}, {"impression": "vote"}, {"merge_iou": 1.5}):
        with pytest.raises(PredictorError, match="predictor."):
            shown(bad)


def test_stacked_boxes_are_merged_and_the_impression_follows_them():
    """What the demo's first task showed: overlapping low boxes on one lung and the impression Normal
    beside them. Shown now: one fused box (the best score kept) and Pneumonia; the old settings
    (merge off, impression rule) still give the old answer."""
    schema = load_schema()
    classes = classifier_classes(schema)
    clf = attach_info(_StubClassifier([0, 0, 0, 0, 0, 10.0]), "stub", classes, 32)  # the classifier: Normal
    det = _StubDetector([[20, 20, 50, 60, 0.04], [22, 24, 52, 62, 0.035], [18, 18, 48, 58, 0.03]], [])
    img = np.zeros((100, 100), np.uint8)

    def run(predictor_section):
        params = {"detector": {"imgsz": 64, "conf": 0.01}, "classifier": {"crop_margin": 0.25},
                  "predictor": {"flip": False, "conf": 0.02, **predictor_section}}
        return Predictor.from_models(det, clf, params, schema).predict(img)

    now = run({})
    assert [round(b.score, 3) for b in now.boxes] == [0.04] and now.impression == schema.pneumonia
    assert 18 <= now.boxes[0].x <= 22 and 50 <= now.boxes[0].x + now.boxes[0].w <= 52
    before = run({"merge_iou": None, "impression": "rule"})
    assert len(before.boxes) == 3 and before.impression == schema.normal
    assert now.p_pneumonia == pytest.approx(before.p_pneumonia)  # reported under either setting
    nothing = run({"conf": 0.5})
    assert nothing.boxes == [] and nothing.impression == schema.normal
