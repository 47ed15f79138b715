"""Pseudo-labels in the pipeline: the teacher's answers (pseudo/), the rules that turn them into
training records, and the `prepare` stage that adds them to the training records only."""
from __future__ import annotations

import json
import shutil

import pytest

from cxrkit import pipeline
from cxrkit.core.manifest import Box, Record, write_manifest
from cxrkit.models.pseudo_labels import (
    PSEUDO,
    PseudoLabelError,
    self_training_cutoffs,
    self_training_records,
    self_training_settings,
    wilson_lower,
)
from cxrkit.pipeline import PipelineError, prepare
from cxrkit.pipeline.labels import write_labels
from cxrkit.pipeline.pseudo import (
    BOX_SUBTYPES_FILE,
    POOL_FILE,
    TEACHER_FILE,
    already_asked,
    read_teacher,
    write_teacher,
)
from tests.test_pipeline import label, record

SURE = {"precision": 0.9, "subtype_threshold": 0.7}


def opacity(score: float, subtype: str | None = "Viral", subtype_p: float | None = 0.9, finding="Lung Opacity") -> dict:
    return {"x": 10.0, "y": 12.0, "w": 30.0, "h": 20.0, "finding": finding, "score": score, "subtype": subtype,
            "subtype_p": subtype_p}


def entry(boxes=(), top_opacity: float | None = None, error=None) -> dict:
    """A teacher entry: the shown boxes and the top scores of every detector box (by default those
    of the shown boxes: pass top_opacity for a box scored below the shown ones)."""
    def top(opacity: bool) -> float:
        return max((b["score"] for b in boxes if (b["finding"] == "Lung Opacity") == opacity), default=0.0)

    return {"top_opacity": top(True) if top_opacity is None else top_opacity, "top_other": top(False),
            "boxes": list(boxes), "error": error}


def test_the_cutoffs_are_as_sure_as_the_validation_films_show():
    # 40 validation films: 30 normal ones with low top scores, 10 pneumonia ones with higher scores,
    # one of them (0.03) hiding among the normals.
    normal = [entry(top_opacity=0.001 * i) for i in range(30)]
    sick = [entry(top_opacity=s) for s in (0.03, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)]
    entries, truth = normal + sick, [False] * 30 + [True] * 10
    cut = self_training_cutoffs(entries, truth, 0.85)
    # Normal: the largest score whose films are normal with a lower bound >= 0.85: all 30 normal ones
    # (lower bound of 30/30 is 0.886); adding the 0.03 pneumonia film drops it to 0.84.
    assert cut["normal"] == 0.029 and cut["validation"] == 40
    assert wilson_lower(30, 30) > 0.85 > wilson_lower(30, 31)
    # Pneumonia: no score reaches 0.85 with 10 films at most (10/10 has lower bound 0.72).
    assert cut["pneumonia"] is None
    # At 0.7: every pneumonia film (10/10: 0.72), not the next, a normal one (10/11: 0.62).
    assert self_training_cutoffs(entries, truth, 0.7)["pneumonia"] == 0.03
    assert wilson_lower(10, 10) >= 0.7 > wilson_lower(10, 11)
    # A target no set can show, no validation film, or off: nothing qualifies.
    assert self_training_cutoffs(entries, truth, 1.0)["normal"] is None
    assert self_training_cutoffs([], [], 0.5) == {"normal": None, "pneumonia": None, "validation": 0, "precision": 0.5}
    assert self_training_cutoffs(entries, truth, None)["normal"] is None
    assert wilson_lower(0, 0) == 0.0 and wilson_lower(5, 10) < 0.5 < wilson_lower(10, 10)


def test_self_training_takes_only_what_the_teacher_is_sure_of():
    records = [record(i) for i in range(9)] + [record(9, labeled=True, impression="Normal")]
    cutoffs = {"normal": 0.05, "pneumonia": 0.5}
    teacher = {
        "img0000": entry(top_opacity=0.02),                       # nothing anywhere near the cutoff: normal
        "img0001": entry([opacity(0.8), opacity(0.3, "Bacterial", 0.99), opacity(0.7, "COVID-19", 0.5)]),
        "img0002": entry([opacity(0.3)]),                         # in between: the readers' queue
        "img0003": entry([opacity(0.2, finding="Nodule/Mass")]),  # a box of another finding: not normal
        "img0004": entry(top_opacity=0.1),                        # a box not shown, above the normal cutoff
        "img0005": entry(error="cannot read"),
        "img0006": entry([opacity(0.9, finding="Nodule/Mass")]),  # no opacity box to keep
        "img0007": entry([opacity(0.6)]),                         # pneumonia, less sure than img0001
        "img0008": {"p_pneumonia": 0.01, "boxes": []},            # a teacher file without the top scores
        "img0009": entry(),                                       # a reader labeled it: never touched
    }
    before = [Record(**vars(r)) for r in records]
    out, report = self_training_records(records, teacher, self_training_settings(SURE), cutoffs, "model-v1")
    assert records == before  # inputs untouched
    # Pneumonia first, surest first; then Normal.
    assert [r.image_id for r in out] == ["img0001", "img0007", "img0000"]
    by_id = {r.image_id: r for r in out}
    normal, pneumonia = by_id["img0000"], by_id["img0001"]
    assert normal.labeled and normal.impression == "Normal" and normal.boxes == [] and normal.metadata["has_boxes"]
    assert normal.metadata["pseudo"] == {"self_training": "normal", "teacher": "model-v1", "top_box": 0.02,
                                         "cutoff": 0.05}
    # Only the boxes at or above the pneumonia cutoff; a subtype only where the teacher is sure of it.
    assert [(b.score, b.subtype, b.rad_id) for b in pneumonia.boxes] == [(0.8, "Viral", PSEUDO), (0.7, None, PSEUDO)]
    assert pneumonia.impression == "Pneumonia" and pneumonia.subtype == "Viral"
    assert report == {"considered": 7, "unreadable": 1, "normal": 1, "pneumonia": 2, "boxes": 3, "capped": 0,
                      "teacher": "model-v1"}
    # max_ratio: at most that many per reader-labeled training image; the rarer side first.
    capped, report = self_training_records(records, teacher, self_training_settings({**SURE, "max_ratio": 0.5}),
                                           cutoffs, "model-v1", labeled_count=2)
    assert [r.image_id for r in capped] == ["img0001"] and report["capped"] == 2 and report["normal"] == 0
    # normal_ratio caps the Normal side alone: 0 keeps the Pneumonia films only, 0.5 of 2 labeled one Normal.
    for ratio, kept in ((0.0, ["img0001", "img0007"]), (0.5, ["img0001", "img0007", "img0000"])):
        capped, report = self_training_records(records, teacher, self_training_settings({**SURE, "normal_ratio": ratio}),
                                               cutoffs, "model-v1", labeled_count=2)
        assert [r.image_id for r in capped] == kept and report["capped"] == 3 - len(kept)
        assert report["normal"] == len(kept) - 2 and report["pneumonia"] == 2
    # A side without a cutoff labels nothing; off, or no teacher: nothing at all.
    assert [r.image_id for r in self_training_records(records, teacher, self_training_settings(SURE),
                                                      {"normal": None, "pneumonia": 0.5}, "m")[0]] == ["img0001", "img0007"]
    assert self_training_records(records, teacher, None, cutoffs, "model-v1")[0] == []
    assert self_training_records(records, {}, self_training_settings(SURE), cutoffs, None)[0] == []


def test_self_train_sets_the_cutoffs_on_the_validation_records_then_labels():
    """The one path prepare and the benchmarks share: the teacher's entries of the readers' validation
    films against their impressions give the cutoffs (as self_training_cutoffs), then the rule runs."""
    from cxrkit.models.predictor import Prediction
    from cxrkit.models.pseudo_labels import self_train, teacher_entries

    scores = [0.001 * i for i in range(30)] + [0.03, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    val = [record(100 + i, labeled=True, impression="Normal" if i < 30 else "Pneumonia") for i in range(40)]
    candidates = [record(0), record(1), record(2)]
    predictions = [Prediction(top_opacity=s, top_other=0.0) for s in scores] + [
        Prediction(top_opacity=0.01, top_other=0.0), Prediction(top_opacity=0.5, top_other=0.0),
        Prediction(error="cannot read")]
    teacher = teacher_entries([*val, *candidates], predictions)
    assert len(teacher) == 42 and "img0002" not in teacher  # a failed prediction is no entry
    added, report = self_train(candidates, teacher, val, self_training_settings({**SURE, "precision": 0.85}), "t1")
    assert report["cutoffs"] == self_training_cutoffs([teacher[r.image_id] for r in val],
                                                      [r.impression == "Pneumonia" for r in val], 0.85)
    assert report["cutoffs"]["normal"] == 0.029 and report["cutoffs"]["pneumonia"] is None
    assert [(r.image_id, r.impression) for r in added] == [("img0000", "Normal")]  # 0.01 <= 0.029; 0.5 unsure
    assert self_train(candidates, teacher, val, None, "t1")[0] == []  # off


def test_self_training_settings_are_checked():
    assert self_training_settings(None) is None
    assert self_training_settings({"precision": None, "subtype_threshold": 0.7}) is None
    with pytest.raises(PseudoLabelError, match="unknown keys.*normal_threshold"):
        self_training_settings({"normal_threshold": 0.9})
    with pytest.raises(PseudoLabelError, match=r"must be in \[0, 1\]"):
        self_training_settings({"precision": 1.5})
    with pytest.raises(PseudoLabelError, match="max_ratio must be >= 0"):
        self_training_settings({"precision": 0.9, "max_ratio": -1})
    with pytest.raises(PseudoLabelError, match="normal_ratio must be >= 0"):
        self_training_settings({"precision": 0.9, "normal_ratio": -0.5})


def write_folder(folder, model_version, pool: dict, box_subtypes: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TEACHER_FILE).write_text(json.dumps({"model_version": model_version}))
    (folder / POOL_FILE).write_text("".join(json.dumps({"image_id": k, **v}) + "\n" for k, v in pool.items()))
    (folder / BOX_SUBTYPES_FILE).write_text("".join(json.dumps({"image_id": k, "boxes": v}) + "\n"
                                                    for k, v in box_subtypes.items()))


def test_prepare_adds_pseudo_labels_to_the_training_records_only(tmp_path):
    data = tmp_path / "data"
    write_manifest(data / "manifest.jsonl", [record(i, patient=i) for i in range(40)])
    split = {i: prepare.split_of(record(i, patient=i), 0.3, "test") for i in range(40)}
    plain = Box(5, 5, 20, 20, "Lung Opacity")  # a reader's box without a subtype
    labeled = list(range(20))
    train_box = next(i for i in labeled if split[i] == "train")
    val_box = next(i for i in labeled if split[i] == "val")
    write_labels([label(i, [plain] if i in (train_box, val_box) else [], "Pneumonia" if i in (train_box, val_box)
                        else "Normal") for i in labeled], data / "labels.jsonl")
    # A lax target: this small validation set (its normal films, every one with nothing scored) is enough.
    params = {"split": {"val_fraction": 0.3, "salt": "test"},
              "pseudo_labels": {"subtype_threshold": 0.7, "self_training": {**SURE, "precision": 0.5}}}
    sure_subtype = {"0": {"Bacterial": 0.9, "Viral": 0.1}}
    teacher = {f"img{i:04d}": entry() for i in range(40)}  # every image: the labeled ones set the cutoffs
    teacher[f"img{val_box:04d}"] = teacher[f"img{train_box:04d}"] = entry([opacity(0.9)])
    write_folder(tmp_path / "pseudo", "model-v1", teacher,
                 {f"img{train_box:04d}": sure_subtype, f"img{val_box:04d}": sure_subtype})
    val_normals = sum(split[i] == "val" and i != val_box for i in labeled)
    assert wilson_lower(val_normals, val_normals) >= 0.5 > wilson_lower(val_normals, val_normals + 1)

    counts = prepare.run(data, params, tmp_path / "prepared", tmp_path / "prepare.json", tmp_path / "pseudo")
    train, val = pipeline.read_prepared(tmp_path / "prepared")
    pseudo = [r for r in train if "self_training" in r.metadata.get("pseudo", {})]
    # Unlabeled images of training patients only: a validation patient's film never trains.
    assert sorted(r.image_id for r in pseudo) == [f"img{i:04d}" for i in range(20, 40) if split[i] == "train"]
    assert all(r.impression == "Normal" and r.split == "train" and r.metadata["pseudo"]["teacher"] == "model-v1"
               for r in pseudo)
    # (a): the training record's box got the teacher's subtype, the validation record's did not.
    boxed = {r.image_id: r for r in train + val}
    assert boxed[f"img{train_box:04d}"].boxes[0].subtype == "Bacterial"
    assert boxed[f"img{train_box:04d}"].metadata["pseudo"]["box_subtypes"] == [0]
    assert boxed[f"img{val_box:04d}"].boxes[0].subtype is None and not any("pseudo" in r.metadata for r in val)
    assert counts["labeled"] == 20 and counts["train"] == len(train) and len(val) + len(train) == 20 + len(pseudo)
    assert counts["pseudo"] == {"teacher": "model-v1", "box_subtypes": 1,
                                "self_training": {"considered": len(pseudo), "images": len(pseudo), "normal": len(pseudo),
                                                  "pneumonia": 0, "boxes": 0, "capped": 0, "unreadable": 0,
                                                  "cutoffs": {"normal": 0.0, "pneumonia": None,
                                                              "validation": val_normals + 1, "precision": 0.5}}}

    # Thresholds off, or no teacher folder: the readers' labels alone, as before.
    params["pseudo_labels"] = {"subtype_threshold": None, "self_training": None}
    assert prepare.run(data, params, tmp_path / "p2", tmp_path / "p2.json", tmp_path / "pseudo")["train"] == len(train) - len(pseudo)
    assert prepare.run(data, params, tmp_path / "p3", tmp_path / "p3.json")["pseudo"]["teacher"] is None

    # Pseudo-labels never stand in for the readers: no reader-labeled training image is an error
    # even when the teacher (uncapped) would fill the training side.
    write_labels([label(val_box)], data / "labels.jsonl")
    params["pseudo_labels"] = {"self_training": {**SURE, "precision": 0.0, "max_ratio": None}}
    with pytest.raises(PipelineError, match="0 for training"):
        prepare.run(data, params, tmp_path / "p4", tmp_path / "p4.json", tmp_path / "pseudo")


@pytest.mark.slow
def test_write_teacher_asks_the_serving_model_once_per_image(trained_models, tmp_path):
    """The session's tiny models as the serving version: the pool's predictions and the subtype-less
    boxes' subtypes are written, read back, identical on a second run (from the predictor's cache)."""
    from dataclasses import replace

    from cxrkit.models.registry import ModelVersion

    folder = tmp_path / "version"
    folder.mkdir()
    shutil.copy(trained_models.detector_weights, folder / "detector.pt")
    shutil.copy(trained_models.classifier_checkpoint, folder / "classifier.pt")
    version = ModelVersion("v-test", folder, "data", trained_models.params, {}, 0.0)
    held_out = [r for r in trained_models.records if r.split != "train"]
    pool = [replace(r, labeled=False, boxes=[], impression=None, subtype=None) for r in held_out[:8]]
    rsna_like = [replace(r, boxes=[replace(b, subtype=None) for b in r.boxes]) for r in held_out[8:] if r.boxes][:3]
    assert rsna_like, "the study has held-out films with boxes"
    params = {"pseudo_labels": {"subtype_threshold": 0.7, "self_training": SURE}}

    counts = write_teacher(tmp_path / "pseudo", version, pool + rsna_like, trained_models.data_dir, params,
                           cache_dir=tmp_path / "cache", data_version="d1")
    # Every image is predicted (the labeled validation films set the cutoffs); subtypes where a box lacks one.
    assert counts == {"model_version": "v-test", "pool": 8 + len(rsna_like), "box_subtypes": len(rsna_like),
                      "errors": 0, "data_version": "d1", "asked": ["pool", "box_subtypes"]}
    # Asked once per data version: the folder answers d1 under these params, not another data
    # version, nor params that ask something else (self-training switched off here).
    assert already_asked(tmp_path / "pseudo", "d1", params) == counts
    assert already_asked(tmp_path / "pseudo", "d2", params) is None
    assert already_asked(tmp_path / "pseudo", "d1", {"pseudo_labels": {"subtype_threshold": 0.7}}) is None
    assert already_asked(tmp_path / "missing", "d1", params) is None
    teacher = read_teacher(tmp_path / "pseudo")
    assert teacher.model_version == "v-test" and sorted(teacher.pool) == sorted(r.image_id for r in pool + rsna_like)
    assert all(0.0 <= e[k] <= 1.0 for e in teacher.pool.values() for k in ("top_opacity", "top_other", "p_pneumonia"))
    for r in rsna_like:
        probs = teacher.box_subtypes[r.image_id]
        assert sorted(probs) == list(range(len(r.boxes)))
        assert all(abs(sum(p.values()) - 1.0) < 1e-4 for p in probs.values())
    first = {name: (tmp_path / "pseudo" / name).read_bytes() for name in (TEACHER_FILE, POOL_FILE, BOX_SUBTYPES_FILE)}
    write_teacher(tmp_path / "pseudo", version, pool + rsna_like, trained_models.data_dir, params,
                  cache_dir=tmp_path / "cache", data_version="d1")
    assert first == {name: (tmp_path / "pseudo" / name).read_bytes() for name in first}  # same answers, same bytes

    # No serving model (the first round): an empty folder that says so.
    assert write_teacher(tmp_path / "none", None, pool, trained_models.data_dir, params)["model_version"] is None
    assert read_teacher(tmp_path / "none").pool == {} and read_teacher(tmp_path / "missing").model_version is None
