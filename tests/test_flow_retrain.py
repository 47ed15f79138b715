"""The retrain flow end to end: real Label Studio, real Prefect API, real git + DVC in a temporary
workspace, real (tiny) trainings. The tests build on each other in file order:

1. a retrain over a Label Studio export makes a data version, a model version, metrics, a
   commit + tag, pushes to the DVC remote, and ranks the rest in Label Studio;
2. a second retrain with no new labels is a no-op;
3. after more annotations, a retrain SIGKILLed (with its whole process group) during the
   detector's training loses nothing and leaves `current` serving; the re-run finishes the round.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
from cxrkit.core.manifest import read_manifest, write_manifest
from cxrkit.labelstudio.client import LabelStudio
from cxrkit.labelstudio.results import boxes_to_results
from cxrkit.models.registry import Registry, make_version_id
from cxrkit.pipeline import LABELS_FILE, STAGES, project_repo, read_timing
from cxrkit.pipeline.code_version import code_version
from cxrkit.pipeline.labels import read_labels
from tests.labelstudio_server import published_queue
from tests.retrain_setup import retrain_environment, tiny_retrain_params
from tests.synthetic_study import ingested_study

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 30
FIRST, SECOND = 18, 6  # images annotated before round 1, and before the killed round


@pytest.fixture(scope="module")
def setup(labelstudio, labelstudio_workspace, prefect_server, tmp_path_factory):
    """A workspace Label Studio can serve (under its document root), a project with one task per
    image, unlabeled manifest records, the synthetic truth to annotate with, and tiny params."""
    tmp = tmp_path_factory.mktemp("retrain")
    # Label Studio serves local files below its workspace's data folder only: put ours there.
    root = labelstudio_workspace.data_dir / f"retrain-{uuid.uuid4().hex[:8]}"
    ws, records = ingested_study(root, n=N_IMAGES, seed=11, size=192, positive_fraction=0.6, difficulty=0.15,
                                 salt="retrain-test-salt-0123456789", workers=2)
    truth = {r.image_id: r for r in records}
    # What a plain DICOM folder gives: images without labels (the study's truth plays the radiologist).
    write_manifest(ws.manifest_path, [replace(r, labeled=False, boxes=[], impression=None, subtype=None, split="")
                                      for r in records])
    ls = LabelStudio.for_server(labelstudio)
    project = ls.ensure_project(f"retrain test {uuid.uuid4().hex[:6]}", DEFAULT_CONFIG.read_text())
    report = ls.import_tasks(project, read_manifest(ws.manifest_path), ws.data_dir)
    assert len(report.imported) == N_IMAGES, report

    params = tiny_retrain_params(split_salt="retrain-test")
    # slot_wait_seconds: the test server (prefect_test_harness) runs no lease service, so the killed
    # run's slot is never reclaimed; the re-run goes on under the workspace lock after this wait.
    params["retrain"] = {"lease_seconds": 60, "slot_wait_seconds": 3, "retries": 1, "retry_delay_seconds": 1}
    # Self-training with a precision target of 0: any cutoff qualifies, the Normal one takes every
    # validation film's score, so round 2 has pseudo-labels whatever the 1-epoch teacher says.
    params["pseudo_labels"]["self_training"] = {"precision": 0.0, "subtype_threshold": 0.0}
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))

    with retrain_environment(labelstudio, tmp / "dvc-remote") as env:
        yield {"ws": ws, "ls": ls, "project": project, "truth": truth, "params_file": params_file, "params": params,
               "env": env, "tmp": tmp, "state": {}}


def annotate(ls: LabelStudio, project: int, truth: dict, image_ids: list[str]) -> None:
    schema = load_schema()
    tasks = ls.tasks_by_image(project)
    for image_id in image_ids:
        rec = truth[image_id]
        ls.create_annotation(tasks[image_id]["id"], boxes_to_results(rec.boxes, rec.width, rec.height, schema,
                                                                      rec.impression))


def git(ws, *args) -> str:
    return project_repo.git(ws.root, *args).stdout.strip()


def run_retrain(setup, **kwargs):
    from flows.retrain import retrain_flow

    return retrain_flow(workspace=str(setup["ws"].root), project=setup["project"], params=str(setup["params_file"]),
                        return_state=True, **kwargs)


def assert_consistent(ws, labeled: int) -> dict:
    """The end state of a finished round: everything points at the same data and model version."""
    info = json.loads((ws.root / "round.json").read_text())
    registry = Registry(ws.models_dir)
    version = registry.get(info["model_version"])
    assert info["data_version"] == project_repo.data_version(ws.root) == version.data_version
    assert info["labeled"] == labeled == len(read_labels(ws.root / LABELS_FILE))
    assert git(ws, "status", "--porcelain") == ""  # everything of the round is committed
    # Outputs match dvc.lock (code_version is always "changed": it runs on every repro by design).
    assert "up to date" in project_repo.dvc(ws.root, "status", *STAGES[1:]).stdout
    assert info["code_version"] == version.code_version == code_version()  # the code on disk trained it
    assert info["model_version"].endswith("-" + code_version()[:8])
    assert "in sync" in project_repo.dvc(ws.root, "status", "--cloud").stdout  # and are on the remote
    assert git(ws, "tag", "--points-at", "HEAD") == f"round-{info['round']}"
    return info


def test_retrain_over_labelstudio_export(setup):
    ws, ls, project, truth = setup["ws"], setup["ls"], setup["project"], setup["truth"]
    first = sorted(truth)[:FIRST]
    annotate(ls, project, truth, first)

    state = run_retrain(setup, reason="first labels")
    assert state.is_completed() and state.name == "Retrained", state
    result = state.result()
    info = assert_consistent(ws, FIRST)
    assert result["data_version"] == info["data_version"] and info["round"] == 1
    registry = Registry(ws.models_dir)
    assert registry.current_id() == result["model_version"] == make_version_id(
        info["data_version"], {k: setup["params"][k] for k in ("split", "detector", "classifier", "predictor",
                                                                "pseudo_labels")}, code_version())
    metrics = registry.current().metrics
    assert isinstance(metrics["detector"]["rsna"], float) and isinstance(metrics["detector"]["map50"], float)
    assert metrics == json.loads((ws.root / "metrics" / "metrics.json").read_text())
    # The version's fewest-edits threshold, measured on validation, is the one its predictor shows boxes from.
    from cxrkit.evaluation.metrics import OPERATING_GRID

    assert metrics["detector"]["effort_conf"] in OPERATING_GRID and metrics["detector"]["edits_per_image"] >= 0
    assert registry.current().predictor().settings["conf"] == metrics["detector"]["effort_conf"]
    assert all(result["stages"][s]["ran"] for s in ("prepare", "train_detector", "train_classifier", "evaluate"))
    # The version carries the detector's ONNX export, and on a CPU the predictor runs it (auto: measured faster).
    assert registry.current().file("detector.onnx") is not None
    from cxrkit.models.detector import resolve_inference_format

    detector_format = resolve_inference_format(registry.current().file("detector.pt"), "auto",
                                               setup["params"]["detector"]["imgsz"])
    assert detector_format == ("onnx" if not torch.cuda.is_available() else "pt")
    # The labels file holds exactly the submitted annotations, with the radiologist's boxes.
    labels = {item.image_id: item for item in read_labels(ws.root / LABELS_FILE)}
    assert sorted(labels) == first
    assert all(len(labels[i].boxes) == len(truth[i].boxes) for i in first)
    # DVC answers the questions the issue asks of it.
    shown = json.loads(project_repo.dvc(ws.root, "metrics", "show", "--json").stdout)
    assert "metrics/metrics.json" in json.dumps(shown) and "metrics/effort.json" in json.dumps(shown)
    # Then the select flow ranked the unlabeled images in Label Studio, with pre-annotations.
    select = result["select"]
    assert select["scored"] == N_IMAGES - FIRST and select["model_version"] == result["model_version"]
    queue, _ = published_queue(ls, project)
    assert set(queue) == set(truth) - set(first)
    assert select["predictions_pushed"] == N_IMAGES - FIRST
    # No model served before round 1: nothing was pseudo-labeled, and pseudo.dvc says so.
    assert json.loads((ws.root / "pseudo" / "teacher.json").read_text())["model_version"] is None
    assert json.loads((ws.root / "metrics" / "prepare.json").read_text())["pseudo"]["self_training"]["images"] == 0
    assert "pseudo.dvc" in git(ws, "ls-files")
    setup["state"]["round1"] = result


def test_second_retrain_without_new_labels_is_a_noop(setup):
    ws = setup["ws"]
    head = git(ws, "rev-parse", "HEAD")
    before = {s: read_timing(s, ws.root) for s in ("train_detector", "train_classifier")}
    state = run_retrain(setup, reason="nothing new")
    assert state.is_completed() and state.name == "NoNewLabels", state
    result = state.result()
    assert result["status"] == "no new labels"
    assert result["model_version"] == setup["state"]["round1"]["model_version"]
    assert git(ws, "rev-parse", "HEAD") == head  # no commit
    assert len(Registry(ws.models_dir).versions()) == 1
    assert {s: read_timing(s, ws.root) for s in before} == before  # nothing trained


def test_killed_retrain_loses_nothing_and_rerun_finishes(setup):
    from prefect.settings import get_current_settings

    ws, ls, project, truth = setup["ws"], setup["ls"], setup["project"], setup["truth"]
    serving = Registry(ws.models_dir).current_id()
    more = sorted(truth)[FIRST : FIRST + SECOND]
    annotate(ls, project, truth, more)

    env = {**os.environ, **setup["env"], "PREFECT_API_URL": str(get_current_settings().api.url)}
    cmd = [sys.executable, "-m", "flows.retrain", "--workspace", str(ws.root), "--project", str(project),
           "--params", str(setup["params_file"]), "--reason", "to be killed", "--no-select"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        training = False
        while not training and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                family = psutil.Process(proc.pid).children(recursive=True)
                training = any("cxrkit.pipeline.train_detector" in " ".join(p.cmdline()) for p in family)
            except psutil.Error:
                continue
        assert training, "the retrain never reached the detector's training"
        time.sleep(2)  # well inside the training
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: flow, dvc, the training stage
        proc.wait()

    # Killed mid-way: the old model still serves, no annotation is lost, the new labels are versioned.
    assert Registry(ws.models_dir).current_id() == serving
    assert len(Registry(ws.models_dir).versions()) == 1
    export = ls.export_snapshot(project)
    assert sum(bool(t["annotations"]) for t in export) == FIRST + SECOND
    killed_data_version = project_repo.data_version(ws.root)
    assert len(read_labels(ws.root / LABELS_FILE)) == FIRST + SECOND

    # The re-run (in-process) finishes the round: same data version, a new model serving.
    state = run_retrain(setup, reason="re-run after the kill", select=False)
    assert state.is_completed() and state.name == "Retrained", state
    result = state.result()
    info = assert_consistent(ws, FIRST + SECOND)
    assert info["round"] == 2 and result["data_version"] == killed_data_version
    assert Registry(ws.models_dir).current_id() == result["model_version"] != serving
    assert len(Registry(ws.models_dir).versions()) == 2
    # Both rounds are in the history: `dvc metrics diff` compares them.
    diff = project_repo.dvc(ws.root, "metrics", "diff", "round-1", "round-2", "--json").stdout
    assert "metrics/prepare.json" in diff
    assert_self_training(ws, ls, project, teacher=serving)


def assert_self_training(ws, ls, project: int, teacher: str) -> None:
    """Round 2 trained on round 1's model's pseudo-labels of unlabeled images, marked as such, and
    nowhere else: not in validation, not in Label Studio's annotations."""
    from cxrkit.pipeline import read_prepared

    labels = {item.image_id for item in read_labels(ws.root / LABELS_FILE)}
    train, val = read_prepared(ws.root / "pipeline" / "prepared")
    pseudo = [r for r in train if "pseudo" in r.metadata]
    assert pseudo, "the teacher pseudo-labeled nothing although every threshold is 0"
    assert all(r.image_id not in labels and r.metadata["pseudo"]["teacher"] == teacher for r in pseudo)
    assert all(b.rad_id == "pseudo" for r in pseudo for b in r.boxes)
    assert not any("pseudo" in r.metadata for r in val) and {r.image_id for r in val} <= labels
    counts = json.loads((ws.root / "metrics" / "prepare.json").read_text())["pseudo"]
    assert counts["teacher"] == teacher and counts["self_training"]["images"] == len(pseudo)
    assert json.loads((ws.root / "round.json").read_text())["teacher"] == teacher
    # What the teacher said reached training only: Label Studio holds the readers' annotations alone.
    export = {t["data"]["image_id"]: t for t in ls.export_snapshot(project)}
    assert all(not export[r.image_id]["annotations"] for r in pseudo)


def test_plots_of_the_rounds_and_of_the_serving_model(setup):
    """`cxr plots` after the two rounds above: a learning curve with one point per round (labels
    from each round's commit) and the serving model's PR curve and confusion matrix as real PNGs."""
    import numpy as np
    from PIL import Image

    from cxrkit.pipeline.round_plots import round_rows, write_plots

    ws = setup["ws"]
    rows = round_rows(ws)
    assert [r["round"] for r in rows] == [1, 2]
    assert [r["labeled"] for r in rows] == sorted(r["labeled"] for r in rows) and rows[0]["labeled"] < rows[1]["labeled"]
    assert rows[1]["model_version"] == Registry(ws.models_dir).current_id()

    done = subprocess.run([sys.executable, "-m", "cxrkit.cli", "plots", "-w", str(ws.root)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    written = write_plots(ws)
    assert [p.name for p in written["learning_curve"]] == ["learning_curve.png"]
    assert [p.name for p in written["confusion"]] == ["confusion.png"]
    assert any(p.name == "pr-lung-opacity.png" for p in written["pr"])
    assert [p.name for p in written["effort"]] == ["effort.png"]
    for path in [*written["learning_curve"], *written["confusion"], *written["pr"], *written["effort"]]:
        pixels = np.asarray(Image.open(path).convert("L"))
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200 and pixels.std() > 10, path


def test_killed_between_round_file_and_commit_the_next_run_commits_the_round(setup):
    """The narrow window at the end of a round: round.json written, its commit and tag not yet. The
    next run must not take that file for a finished round (and answer "no new labels" for ever):
    it finishes the round, committed and tagged."""
    from prefect.settings import get_current_settings

    ws, ls, project, truth = setup["ws"], setup["ls"], setup["project"], setup["truth"]
    rounds_before = git(ws, "tag", "--list", "round-*").split()
    annotate(ls, project, truth, sorted(truth)[FIRST + SECOND : FIRST + SECOND + 3])
    # The kill at that exact point, which no timing from outside can hit: the child SIGKILLs itself
    # when the flow asks git to commit the round (round.json is written just before).
    child = (
        "import os, signal, sys\n"
        "import flows.retrain as retrain\n"
        "commit = retrain.project_repo.commit\n"
        "def killed(repo, message, paths):\n"
        "    if message.startswith('round '):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return commit(repo, message, paths)\n"
        "retrain.project_repo.commit = killed\n"
        f"sys.exit(retrain.main(['--workspace', {str(ws.root)!r}, '--project', '{project}', '--params', "
        f"{str(setup['params_file'])!r}, '--reason', 'killed before its commit', '--no-select']))\n"
    )
    env = {**os.environ, **setup["env"], "PREFECT_API_URL": str(get_current_settings().api.url)}
    killed = subprocess.run([sys.executable, "-c", child], cwd=REPO, env=env, capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = json.loads((ws.root / "round.json").read_text())  # written, not committed
    assert left["round"] == len(rounds_before) + 1 and git(ws, "tag", "--list", "round-*").split() == rounds_before

    state = run_retrain(setup, reason="re-run after the kill", select=False)
    assert state.is_completed() and state.name == "Retrained", state
    info = assert_consistent(ws, FIRST + SECOND + 3)
    assert info["round"] == left["round"] and info["model_version"] == left["model_version"]
    # The killed run had promoted its model, yet that model did not teach its own round: the
    # re-run kept the pseudo-labels already asked for the data version, so nothing
    # retrained, and the committed outputs are the ones the registered (serving) model was made of.
    assert info["teacher"] == left["teacher"] != info["model_version"]
    stages = state.result()["stages"]
    assert not any(stages[s]["ran"] for s in ("prepare", "train_detector", "train_classifier", "evaluate")), stages
    assert git(ws, "tag", "--points-at", "HEAD") == f"round-{info['round']}"
    assert git(ws, "status", "--porcelain", "round.json") == ""  # committed as it is on disk


def test_a_fix_in_the_training_code_trains_a_new_version(setup, tmp_path):
    """Same labels, same knobs, a changed classifier module: the round is not a no-op, only the
    stages that run that code rerun, and the new model is a new version. The run is a checkout
    of its own (a copy of the code with the fix), as after a `git pull`."""
    from prefect.settings import get_current_settings

    ws = setup["ws"]
    before = json.loads((ws.root / "round.json").read_text())
    serving = Registry(ws.models_dir).current_id()
    fixed = tmp_path / "checkout"
    for name in ("cxrkit", "flows"):
        shutil.copytree(REPO / name, fixed / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "requirements.lock", "label_config.xml"):
        shutil.copy(REPO / name, fixed / name)
    classifier = fixed / "cxrkit" / "models" / "classifier.py"
    classifier.write_text(classifier.read_text() + "\n# a fix in the classifier's training code\n")
    env = {**os.environ, **setup["env"], "PREFECT_API_URL": str(get_current_settings().api.url),
           "PYTHONPATH": str(fixed)}
    run = subprocess.run([sys.executable, "-m", "flows.retrain", "--workspace", str(ws.root), "--project",
                          str(setup["project"]), "--params", str(setup["params_file"]), "--reason", "classifier fix",
                          "--no-select"], cwd=fixed, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["status"] == "retrained", result
    # prepare reruns too (cheaply): its pseudo-label rules live beside the model calls of (a), which
    # import the classifier module. Its output is unchanged (the same data version keeps the
    # pseudo-labels of its first round's teacher), so the detector is not retrained.
    assert {s for s, stage in result["stages"].items() if stage["ran"]} == {"code_version", "prepare",
                                                                            "train_classifier", "evaluate"}
    info = json.loads((ws.root / "round.json").read_text())
    assert info["round"] == before["round"] + 1 and info["data_version"] == before["data_version"]
    assert info["code_version"] != before["code_version"] and info["model_version"] != before["model_version"]
    assert Registry(ws.models_dir).get(info["model_version"]).code_version == info["code_version"]
    # The gate had both models predict this round's validation images: the detector is the same
    # file in both (not retrained), so its paired difference is exactly 0.
    gate = Registry(ws.models_dir).promotions()[-1]
    assert gate["candidate"] == info["model_version"] and gate["previous"] == serving
    assert gate["comparison"]["detector.map50"]["difference"] == 0.0
    assert any("on the same" in reason for reason in gate["reasons"]), gate["reasons"]
