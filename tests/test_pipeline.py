"""The pipeline's pieces without training: the fixed patient-level split, labels applied to
records, the labels file's canonical bytes, dvc.yaml naming the paths the flows read, the code
version each stage depends on, and the workspace repository (real git + DVC)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cxrkit import pipeline
from cxrkit.core.atomic import own_copy
from cxrkit.core.manifest import Box, Record, read_manifest, write_manifest
from cxrkit.labelstudio.export import LabeledImage
from cxrkit.pipeline import PipelineError, prepare, project_repo
from cxrkit.pipeline.labels import apply_labels, labeled_ids, read_labels, write_labels

REPO = Path(__file__).resolve().parent.parent
SPLIT = {"split": {"val_fraction": 0.3, "salt": "test"}}


def record(i: int, patient: int | None = None, **kw) -> Record:
    return Record(image_id=f"img{i:04d}", path=f"images/img{i:04d}.png", source="dicom", width=100, height=80,
                  patient_id="" if patient is None else f"pat{patient:04d}", **kw)


def label(i: int, boxes=(), impression="Normal", annotation=1) -> LabeledImage:
    return LabeledImage(f"img{i:04d}", list(boxes), impression, None, annotation, "2026-11-25T10:00:00+00:00")


def test_split_is_per_patient_and_never_changes_as_images_arrive():
    records = [record(i, patient=i // 3) for i in range(600)]  # three films per patient
    first = {r.image_id: prepare.split_of(r, 0.2, "s") for r in records[:300]}
    later = {r.image_id: prepare.split_of(r, 0.2, "s") for r in records}
    assert all(later[i] == s for i, s in first.items())  # an image keeps its side as the pool grows
    by_patient = {}
    for r in records:
        by_patient.setdefault(r.patient_id, set()).add(later[r.image_id])
    assert all(len(sides) == 1 for sides in by_patient.values())  # a patient is on one side only
    share = sum(s == "val" for s in later.values()) / len(later)
    assert 0.13 < share < 0.27
    assert prepare.split_of(record(1), 0.2, "s") == prepare.split_of(record(1), 0.2, "s")  # no patient: by image id


def test_apply_labels_makes_annotated_images_labeled_with_complete_boxes():
    opacity = Box(10, 10, 20, 20, "Lung Opacity", subtype="Bacterial")
    records = [record(1), record(2), record(3, labeled=True, impression="Pneumonia")]
    merged, unknown = apply_labels(records, [label(1, [opacity, opacity], "Pneumonia"), label(2), label(9)])
    assert unknown == ["img0009"]
    one, two, three = merged
    assert one.labeled and one.boxes == [opacity, opacity] and one.subtype == "Bacterial"
    assert one.metadata["has_boxes"] is True and one.impression == "Pneumonia"
    assert two.labeled and two.boxes == [] and two.impression == "Normal" and two.subtype is None
    assert three == records[2]  # a source's own labels stay
    assert labeled_ids(records, [label(1)]) == {"img0001", "img0003"}


def test_labels_file_is_canonical(tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    items = [label(2, [Box(1.5, 2.25, 3, 4, "Nodule/Mass")]), label(1)]
    assert write_labels(items, a) == 2
    write_labels(list(reversed(items)), b)
    assert a.read_bytes() == b.read_bytes()  # same labels, same bytes, same data version
    assert [x.image_id for x in read_labels(a)] == ["img0001", "img0002"]
    assert read_labels(a)[1].boxes[0] == items[0].boxes[0]
    assert read_labels(tmp_path / "missing.jsonl") == []
    a.write_text(a.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"a.jsonl:3: unreadable labels line"):
        read_labels(a)


def test_labels_file_holds_what_trains_only(tmp_path):
    """Re-saving an unchanged annotation (a new updated_at, another annotation id) must not make a
    new data version; a radiologist's free-text comment (it can hold names) is not versioned."""
    box = Box(1.5, 2.25, 3, 4, "Nodule/Mass")
    first = LabeledImage("img0001", [box], "Pneumonia", "call Dr PHIHOUSE about Jane Doe", 7, "2026-11-25T10:00:00+00:00")
    resaved = LabeledImage("img0001", [box], "Pneumonia", None, 8, "2026-11-26T09:00:00+00:00")
    write_labels([first], tmp_path / "a.jsonl")
    write_labels([resaved], tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    text = (tmp_path / "a.jsonl").read_text()
    assert "PHIHOUSE" not in text and "Jane" not in text and "2026-11-25" not in text
    assert set(json.loads(text)) == {"image_id", "boxes", "impression"}
    (back,) = read_labels(tmp_path / "a.jsonl")
    assert (back.image_id, back.boxes, back.impression, back.comment) == ("img0001", [box], "Pneumonia", None)


def test_prepare_writes_train_and_val_and_refuses_an_empty_side(tmp_path):
    data = tmp_path / "data"
    write_manifest(data / "manifest.jsonl", [record(i, patient=i) for i in range(40)])
    write_labels([label(i) for i in range(30)], data / "labels.jsonl")
    counts = prepare.run(data, SPLIT, tmp_path / "prepared", tmp_path / "metrics" / "prepare.json")
    train, val = pipeline.read_prepared(tmp_path / "prepared")
    assert counts["labeled"] == 30 == len(train) + len(val) and counts["images"] == 40
    assert {r.split for r in train} == {"train"} and {r.split for r in val} == {"val"} and val
    assert json.loads((tmp_path / "metrics" / "prepare.json").read_text()) == counts

    write_labels([label(i) for i in range(1)], data / "labels.jsonl")
    with pytest.raises(PipelineError, match="1 labeled image.*label more images"):
        prepare.run(data, SPLIT, tmp_path / "prepared2", tmp_path / "m.json")


def test_prepare_validates_on_the_lowest_patient_until_one_falls_below_the_fraction(tmp_path):
    """A first round of few patients, none below val_fraction (pseudonyms are keyed per workspace,
    so this happens at random): the lowest-placed patient validates, with all of its films, until
    a patient below val_fraction is labeled."""
    from cxrkit.core.hashing import salted_position

    patients = list(range(200))
    place = {p: salted_position("test", f"pat{p:04d}") for p in patients}
    above = sorted((p for p in patients if place[p] >= 0.3), key=lambda p: place[p])[:4]
    below = next(p for p in patients if place[p] < 0.3)
    films = [(2 * k, p) for k, p in enumerate(above)] + [(2 * k + 1, p) for k, p in enumerate(above)]
    data = tmp_path / "data"
    write_manifest(data / "manifest.jsonl", [record(i, patient=p) for i, p in films] + [record(99, patient=below)])
    write_labels([label(i) for i, _ in films], data / "labels.jsonl")
    counts = prepare.run(data, SPLIT, tmp_path / "prepared", tmp_path / "prepare.json")
    train, val = pipeline.read_prepared(tmp_path / "prepared")
    assert {r.patient_id for r in val} == {f"pat{above[0]:04d}"} and len(val) == 2 == counts["val"]
    assert len(train) == 6 and {r.split for r in val} == {"val"}
    write_labels([label(i) for i, _ in films] + [label(99)], data / "labels.jsonl")
    prepare.run(data, SPLIT, tmp_path / "prepared2", tmp_path / "prepare2.json")
    train, val = pipeline.read_prepared(tmp_path / "prepared2")
    assert {r.patient_id for r in val} == {f"pat{below:04d}"} and len(train) == 8
    # One patient alone cannot be split: the clear error stays.
    write_labels([label(i) for i, p in films if p == above[0]], data / "labels.jsonl")
    with pytest.raises(PipelineError, match="2 labeled image.*2 for training, 0 for validation"):
        prepare.run(data, SPLIT, tmp_path / "prepared3", tmp_path / "m.json")


def test_prepare_holds_gold_standard_images_out(tmp_path):
    """Gold images (split.gold_share, cxrkit/labelstudio/review.py) test the readers: neither trained
    on nor validated on, whatever a reader said of them."""
    from cxrkit.labelstudio.review import gold_images

    data = tmp_path / "data"
    curated = [record(i, patient=i, labeled=True, impression="Normal") for i in range(20)]
    write_manifest(data / "manifest.jsonl", curated + [record(i, patient=i) for i in range(20, 40)])
    params = {"split": {**SPLIT["split"], "gold_share": 0.3, "gold_salt": "g"}}
    gold = set(gold_images(curated, 0.3, "g"))
    assert 0 < len(gold) < 20
    # Readers labeled the unlabeled half and one gold film: the gold set stays the curated one.
    read_gold = int(sorted(gold)[0].removeprefix("img"))
    write_labels([label(i) for i in range(20, 40)] + [label(read_gold, impression="Pneumonia")], data / "labels.jsonl")
    counts = prepare.run(data, params, tmp_path / "prepared", tmp_path / "prepare.json")
    train, val = pipeline.read_prepared(tmp_path / "prepared")
    assert not gold & {r.image_id for r in train + val}
    assert counts["gold_held_out"] == len(gold) and counts["labeled"] == 40 - len(gold) == len(train) + len(val)


def test_dvc_yaml_names_the_paths_the_flows_read():
    pipeline_file = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = pipeline_file["stages"]
    assert tuple(stages) == pipeline.STAGES
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"python -m cxrkit.pipeline.{name} ")
    outs = {o for s in stages.values() for o in s.get("outs", [])}
    code_files = {f"{pipeline.CODE_VERSION_DIR}/{s}.txt" for s in pipeline.STAGES if s != "code_version"}
    assert {str(Path(pipeline.DETECTOR_WEIGHTS).parent), str(Path(pipeline.CLASSIFIER_CHECKPOINT).parent),
            pipeline.PREPARED_DIR} | code_files == outs
    assert stages["code_version"]["always_changed"] is True
    for name in pipeline.STAGES[1:]:  # every other stage depends on the code it runs
        assert f"{pipeline.CODE_VERSION_DIR}/{name}.txt" in stages[name]["deps"], name
    metrics = {next(iter(m)) for s in stages.values() for m in s.get("metrics", [])}
    assert metrics == {pipeline.METRICS_FILE, pipeline.PREPARE_METRICS_FILE}
    assert pipeline_file["metrics"] == [pipeline.EFFORT_FILE]  # the retrain flow writes it, no stage
    assert f"--out {pipeline.PREPARED_DIR}" in stages["prepare"]["cmd"]
    assert pipeline.LABELS_FILE.startswith("data/") and stages["prepare"]["deps"][0] == "data"


def _touch(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


def test_a_code_change_reruns_the_stages_that_run_that_code_and_no_other(tmp_path):
    """The real code_version stage of dvc.yaml, run by real DVC over a copy of the code, with a
    stand-in for a training stage (the real ones train for minutes) wired as dvc.yaml wires them."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "cxrkit", src / "cxrkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.lock", "label_config.xml"):
        shutil.copy(REPO / name, src / name)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    code_dir = pipeline.CODE_VERSION_DIR
    trained = {name: {"cmd": f"cp {code_dir}/{name}.txt {name}.done",
                      "deps": [d for d in stages[name]["deps"] if d.startswith(code_dir)], "outs": [f"{name}.done"]}
               for name in ("train_detector", "train_classifier")}
    repo = tmp_path / "ws"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"code_version": stages["code_version"], **trained}}))
    env = {**os.environ, "PYTHONPATH": str(src), "DVC_NO_ANALYTICS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    env.pop("CXR_LABEL_CONFIG", None)
    dvc = str(Path(project_repo.dvc_executable()))

    def repro() -> set[str]:
        """The stand-in training stages that ran."""
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=repo, env=env, check=False, capture_output=True)
        out = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout
        return {name for name in trained if f"Running stage '{name}'" in out}

    assert repro() == {"train_detector", "train_classifier"}
    listed = (repo / code_dir / "train_classifier.txt").read_text()
    assert "cxrkit/models/classifier.py" in listed and "requirements.lock" in listed and "label_config.xml" in listed
    assert "cxrkit/models/classifier.py" not in (repo / code_dir / "train_detector.txt").read_text()
    assert repro() == set()  # nothing changed: nothing trains
    _touch(src / "cxrkit" / "cli" / "main.py", "# the CLI runs in no stage")
    assert repro() == set()
    _touch(src / "cxrkit" / "models" / "classifier.py", "# a fix in the classifier's code")
    assert repro() == {"train_classifier"}
    _touch(src / "cxrkit" / "evaluation" / "metrics.py", "# both models are scored with it")
    assert repro() == {"train_detector", "train_classifier"}
    _touch(src / "requirements.lock", "# another torch")
    assert repro() == {"train_detector", "train_classifier"}
    _touch(src / "label_config.xml", "<!-- another vocabulary -->")
    assert repro() == {"train_detector", "train_classifier"}


def test_the_model_version_names_its_code():
    from cxrkit.models.registry import make_version_id
    from cxrkit.pipeline.code_version import code_version

    code = code_version()
    assert code == code_version() and len(code) == 64  # a pure function of the files on disk
    assert make_version_id("abcdef0123", {"p": 1}, code).endswith("-" + code[:8])
    assert make_version_id("abcdef0123", {"p": 1}, code) != make_version_id("abcdef0123", {"p": 1}, "0" * 64)


def test_project_repo_init_commit_and_data_version(tmp_path, monkeypatch):
    monkeypatch.delenv(project_repo.REMOTE_ENV, raising=False)
    root = project_repo.init(tmp_path / "ws")
    assert project_repo.remote_settings(root) == (str(tmp_path / "dvc-remote"), None)
    assert "/.env" in (root / ".gitignore").read_text()
    first = project_repo.head(root)
    assert project_repo.init(root) == root and project_repo.head(root) == first  # idempotent: no new commit
    (root / ".git" / "index.lock").write_text("")  # what a killed git leaves
    project_repo.init(root)
    assert not (root / ".git" / "index.lock").exists()

    write_manifest(root / "data" / "manifest.jsonl", [record(1)])
    project_repo.dvc(root, "add", "--quiet", "data")
    version = project_repo.data_version(root)
    assert version.endswith(".dir")
    # The tracked file is a hard link into DVC's cache (one copy on disk), and own_copy (what
    # ingest calls before appending) gives it back a file of its own: the cache keeps its bytes.
    manifest = root / "data" / "manifest.jsonl"
    assert project_repo.dvc_setting(root, "cache", "type") == "hardlink,copy" and manifest.stat().st_nlink == 2
    cached = manifest.read_bytes()
    with open(own_copy(manifest), "a") as out:
        out.write("appended\n")
    assert manifest.stat().st_nlink == 1 and manifest.read_bytes() == cached + b"appended\n"
    assert project_repo.dvc(root, "status", "--quiet", "data.dvc", check=False).returncode == 1  # modified
    project_repo.dvc(root, "checkout", "--quiet", "--force", "data.dvc")
    assert manifest.read_bytes() == cached  # from the cache, untouched by the append
    assert project_repo.commit(root, "data", ["data.dvc", ".gitignore"])
    assert project_repo.commit(root, "again", ["data.dvc", ".gitignore"]) is None
    project_repo.tag(root, "round-1", "first")
    project_repo.tag(root, "round-1", "first")  # an existing tag is left as it is
    assert project_repo.git(root, "tag").stdout.split() == ["round-1"]
    with pytest.raises(project_repo.ProjectRepoError, match="git bogus.*failed"):
        project_repo.git(root, "bogus")
    write_manifest(root / "data" / "manifest.jsonl", [record(1), replace(record(2), labeled=True)])
    project_repo.dvc(root, "add", "--quiet", "data")
    assert project_repo.data_version(root) != version
    assert len(read_manifest(root / "data" / "manifest.jsonl")) == 2


def test_an_older_params_file_gets_the_keys_dvc_yaml_declares(tmp_path):
    """DVC refuses a stage whose declared param is missing: the workspace's copy of a params file
    from before predictor.merge_iou existed gets the default; a current file is copied as it is."""
    from flows.retrain import copy_params

    current = REPO / "params.yaml"
    assert copy_params(current, tmp_path / "same.yaml") == {}
    assert (tmp_path / "same.yaml").read_bytes() == current.read_bytes()
    older = yaml.safe_load(current.read_text())
    del older["predictor"]["merge_iou"]
    del older["explain"]
    older["detector"]["epochs"] = 7
    (tmp_path / "older.yaml").write_text(yaml.safe_dump(older))
    assert copy_params(tmp_path / "older.yaml", tmp_path / "copy.yaml") == {"predictor.merge_iou": 0.4,
                                                                           "explain.eval_images": 100}
    copied = yaml.safe_load((tmp_path / "copy.yaml").read_text())
    assert copied["predictor"]["merge_iou"] == 0.4 and copied["detector"]["epochs"] == 7
    assert copied["explain"] == {"eval_images": 100}
