"""The detector trains on ingested synthetic X-rays, offline, and learns something.

One small study (80 images, 256 px) is generated, ingested and trained on once per
module (~1 minute on 2 CPU cores); the tests share it.
"""
from __future__ import annotations

import hashlib
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Box, Record
from cxrkit.evaluation.metrics import OPERATING_GRID, iou_matrix
from cxrkit.models import load_params
from cxrkit.models.detector import (
    DetectorError,
    build_detector,
    evaluate_detector,
    has_complete_boxes,
    load_detector,
    predict_boxes,
    train_detector,
)
from tests.synthetic_study import ingested_study
from tests.training_seed import TRAINING_SEED

pytestmark = pytest.mark.slow

SIZE = 256  # stored images
IMGSZ = 128  # network input: half the stored size, so unscaled boxes would be visibly wrong
# Measured on 2 CPU cores: 30 epochs ~60 s; held-out mAP@0.4 0.29-0.55 over training seeds 0-3
# (untrained: 0.0; see test_trained_detector_beats_untrained). nbs = batch: one optimizer step per batch (ultralytics'
# default nbs 64 gives less than one step an epoch on 51 images, and the model learns nothing).
TEST_PARAMS = {"imgsz": IMGSZ, "epochs": 30, "batch": 8, "nbs": 8, "warmup_epochs": 1, "val": False,
               "seed": TRAINING_SEED}
HOME_SETTINGS = Path.home() / ".config" / "Ultralytics" / "settings.json"


def _fingerprint(path: Path):
    return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) if path.exists() else None


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("detector-study")
    workspace, records = ingested_study(root, n=80, seed=0, size=SIZE, positive_fraction=0.8, difficulty=0.2,
                                        salt="detector-test-salt-0123456789", workers=2)
    return {"root": root, "data_dir": workspace.data_dir, "records": records}


@pytest.fixture(scope="module")
def network_attempts():
    """Every DNS lookup or socket connect while the fixture is active is recorded and refused."""
    attempts = []

    def refuse(kind):
        def call(*args, **kwargs):
            attempts.append((kind, args[:2]))
            raise OSError(f"network access in a test: {kind} {args[:2]}")
        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        mp.setattr(socket.socket, "connect", refuse("connect"))
        mp.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
        yield attempts


@pytest.fixture(scope="module")
def trained(study, network_attempts, tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("ultralytics-config")
    home_before = _fingerprint(HOME_SETTINGS)
    runs_before = {p: p.exists() for p in (Path.cwd() / "runs", Path(__file__).resolve().parent.parent / "runs")}
    first_import = "ultralytics" not in sys.modules
    with pytest.MonkeyPatch.context() as mp:
        if first_import:  # ultralytics reads YOLO_CONFIG_DIR once, at import
            mp.setenv("YOLO_CONFIG_DIR", str(config_dir))
        params = load_params()["detector"] | TEST_PARAMS
        records = study["records"]
        train = [r for r in records if r.split == "train"]
        val = [r for r in records if r.split == "val"]
        held_out = [r for r in records if r.split != "train"]  # val is not used for model selection (val: false)
        out_dir = study["root"] / "run"
        weights = train_detector(train, study["data_dir"], out_dir, params, val_records=val)
        model = load_detector(weights)
        trained_metrics = evaluate_detector(model, held_out, study["data_dir"], IMGSZ)
        untrained_metrics = evaluate_detector(build_detector(params), held_out, study["data_dir"], IMGSZ)
    print(f"\ntrained:   {trained_metrics}\nuntrained: {untrained_metrics}")
    return {
        "weights": weights, "model": model, "out_dir": out_dir, "params": params, "held_out": held_out,
        "trained": trained_metrics, "untrained": untrained_metrics, "config_dir": config_dir,
        "first_import": first_import, "home_before": home_before, "runs_before": runs_before,
    }


def test_trained_detector_beats_untrained(trained):
    t, u = trained["trained"], trained["untrained"]
    assert t["n_images"] == u["n_images"] == len(trained["held_out"]) > 20
    assert set(t["ap40"]) == {load_schema().opacity}  # the only finding with ground truth
    # Measured over training seeds 0-3 (CXR_TEST_SEED, tests/training_seed.py), 2 threads: mAP@0.4
    # 0.29-0.55, mAP@0.5 0.28-0.49, RSNA at the operating point 0.11-0.32; untrained 0.0 on all.
    # RSNA at the fixed 0.3 was 0.0 on seed 1 (a young model scores its boxes low): not asserted.
    assert t["map40"] >= u["map40"] + 0.15, (t, u)
    assert t["map50"] > u["map50"], (t, u)
    assert t["rsna"] >= u["rsna"], (t, u)
    assert t["rsna_operating"] > 0, t
    # The operating point is the grid threshold with the best RSNA score: at least as good as the fixed one.
    assert t["operating_conf"] in OPERATING_GRID and t["rsna_operating"] >= t["rsna"], t


def test_boxes_are_in_stored_image_pixels(trained, study, tmp_path):
    schema = load_schema()
    held_out = [r for r in trained["held_out"] if r.boxes]
    paths = [study["data_dir"] / r.path for r in held_out]
    predictions = predict_boxes(trained["model"], paths, IMGSZ, conf=0.01, batch=4)
    assert len(predictions) == len(held_out)
    every = [b for boxes in predictions for b in boxes]
    assert every and all(b.finding in schema.findings and 0 < b.score <= 1 for b in every)
    for record, boxes in zip(held_out, predictions):
        assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
        for b in boxes:
            assert 0 <= b.x and 0 <= b.y and b.w > 0 and b.h > 0
            assert b.x + b.w <= record.width + 0.01 and b.y + b.h <= record.height + 0.01
    # Boxes reach past the network input's 128 px: they were mapped back to the 256 px image.
    assert max(b.x + b.w for b in every) > IMGSZ and max(b.y + b.h for b in every) > IMGSZ
    # The clearest positive (largest ground-truth opacity): the top box lies on it.
    clearest = max(range(len(held_out)), key=lambda i: max(b.w * b.h for b in held_out[i].boxes))
    top = predictions[clearest][0]
    gt = np.array([[b.x, b.y, b.w, b.h] for b in held_out[clearest].boxes])
    assert iou_matrix(np.array([[top.x, top.y, top.w, top.h]]), gt).max() > 0.3, (top, held_out[clearest].boxes)

    # A non-square image (letterboxed for the network) comes back in its own pixels.
    import cv2

    image = cv2.imread(str(paths[clearest]), cv2.IMREAD_GRAYSCALE)
    cropped = tmp_path / "cropped.png"
    cv2.imwrite(str(cropped), image[32:224, :])  # 256 wide, 192 tall
    (boxes,) = predict_boxes(trained["model"], [cropped], IMGSZ)
    assert boxes and all(b.x + b.w <= 256.01 and b.y + b.h <= 192.01 for b in boxes)


def test_training_set_and_outputs(trained):
    schema = load_schema()
    data = yaml.safe_load((trained["out_dir"] / "dataset" / "data.yaml").read_text())
    assert data["names"] == list(schema.findings)  # class k = finding k in every dataset
    labels = list((trained["out_dir"] / "dataset" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 51
    classes = {line.split()[0] for p in labels for line in p.read_text().splitlines()}
    assert classes == {"0"}  # Lung Opacity
    assert trained["weights"] == trained["out_dir"] / "train" / "weights" / "best.pt"
    args = yaml.safe_load((trained["out_dir"] / "train" / "args.yaml").read_text())
    assert (args["flipud"], args["hsv_h"], args["hsv_s"], args["plots"], args["amp"]) == (0.0, 0.0, 0.0, False, False)
    assert args["device"] == "cpu" or args["device"] == 0


def test_offline_and_nothing_written_outside_tmp(trained, network_attempts):
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    assert network_attempts == []  # no DNS lookup, no connection: fonts, AMP check, hub, telemetry
    assert _fingerprint(HOME_SETTINGS) == trained["home_before"]  # ~/.config/Ultralytics untouched
    for path, existed in trained["runs_before"].items():
        assert path.exists() == existed, f"{path} appeared"
    if trained["first_import"]:
        assert Path(USER_CONFIG_DIR).is_relative_to(trained["config_dir"])
        assert SETTINGS["sync"] is False and SETTINGS["runs_dir"].startswith(str(trained["config_dir"]))
        assert (Path(USER_CONFIG_DIR) / "Arial.ttf").is_file()  # check_font finds it: no HEAD request


def test_missing_or_remote_weights_are_clear_errors(study, tmp_path, network_attempts):
    params = load_params()["detector"] | TEST_PARAMS
    records = study["records"]
    missing = tmp_path / "nowhere" / "best.pt"
    with pytest.raises(FileNotFoundError, match=r"nowhere/best\.pt not found.*nothing is downloaded"):
        train_detector(records, study["data_dir"], tmp_path / "run", params | {"weights": str(missing)})
    with pytest.raises(FileNotFoundError, match="not found"):
        load_detector(missing)
    with pytest.raises(DetectorError, match="URL"):
        train_detector(records, study["data_dir"], tmp_path / "run", params | {"weights": "https://example.com/yolo11n.pt"})
    with pytest.raises(FileNotFoundError, match="not found"):
        train_detector(records, study["data_dir"], tmp_path / "run", params | {"model": "yolo11n.pt"})
    with pytest.raises(DetectorError, match="fp16"):
        train_detector(records, study["data_dir"], tmp_path / "run", params | {"amp": "fp16"})
    with pytest.raises(DetectorError, match="nothing to train on"):
        train_detector([r for r in records if not has_complete_boxes(r)], study["data_dir"], tmp_path / "run", params)
    assert not (tmp_path / "run").exists()
    assert network_attempts == []


def test_which_records_have_complete_boxes():
    def rec(**kw):
        return Record(image_id="a", path="images/a.png", **({"source": "synthetic"} | kw))

    assert has_complete_boxes(rec(labeled=True))  # the synthetic importer sets no flag: its truth is complete
    assert not has_complete_boxes(rec(labeled=False))
    assert has_complete_boxes(rec(source="rsna", labeled=True, metadata={"has_boxes": True}))
    assert not has_complete_boxes(rec(source="kermany", labeled=True, metadata={"has_boxes": False}))
    assert not has_complete_boxes(rec(source="nih", labeled=False, metadata={"has_boxes": False}, boxes=[Box(1, 1, 2, 2, "Nodule/Mass")]))
    assert not has_complete_boxes(rec(source="dicom", labeled=True))  # no flag, not synthetic: unknown


def test_params_file(tmp_path, monkeypatch):
    detector = load_params()["detector"]
    assert detector["flipud"] == 0 and detector["hsv_h"] == 0 and detector["hsv_s"] == 0
    assert detector["model"].endswith(".yaml") and detector["weights"] is None
    other = tmp_path / "params.yaml"
    other.write_text("detector:\n  epochs: 3\n")
    monkeypatch.setenv("CXR_PARAMS", str(other))
    assert load_params() == {"detector": {"epochs": 3}}
    monkeypatch.setenv("CXR_PARAMS", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="CXR_PARAMS"):
        load_params()


def test_training_from_user_weights(trained, study, tmp_path, network_attempts):
    """weights: a local .pt (here the model trained above) is the starting point."""
    params = trained["params"] | {"weights": str(trained["weights"]), "epochs": 1}
    records = [r for r in study["records"] if r.split == "train"][:16]
    weights = train_detector(records, study["data_dir"], tmp_path / "finetune", params)
    assert weights.is_file() and weights.is_relative_to(tmp_path)
    assert load_detector(weights).names == trained["model"].names
    assert network_attempts == []


def test_training_uses_every_thread_it_is_given(trained, study, tmp_path):
    """ultralytics' trainer sets torch to cpu_count - 1 threads for its run (1 of 2 cores on our
    machines): the batches must run on the threads the caller has, and the count survives training."""
    import torch
    from ultralytics.utils import NUM_THREADS

    seen = []
    before = torch.get_num_threads()
    wanted = NUM_THREADS + 1  # what the trainer would not choose by itself, on any machine
    torch.set_num_threads(wanted)
    try:
        params = trained["params"] | {"epochs": 1}
        records = [r for r in study["records"] if r.split == "train"][:16]
        train_detector(records, study["data_dir"], tmp_path / "threads", params,
                       callbacks={"on_train_batch_start": lambda trainer: seen.append(torch.get_num_threads())})
        assert seen and set(seen) == {wanted}
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_importing_ultralytics_leaves_the_thread_settings_alone(tmp_path):
    """ultralytics sets OMP_NUM_THREADS=1 on import when unset: torch then starts on one thread,
    and every process started afterwards (gunicorn, dvc's stages) inherits the 1."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    probe = ("import os, torch; n = torch.get_num_threads(); "
             "from cxrkit.models.detector import import_ultralytics; import_ultralytics(); "
             "import torch; print(n, torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))")
    # A fresh process imports ultralytics before anything else has imported torch.
    first = ("from cxrkit.models.detector import import_ultralytics; import_ultralytics(); import os, torch; "
             "print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))")
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
    # (the last line: a first import in a fresh config folder prints a note about its settings file)
    out = subprocess.run([sys.executable, "-c", first], env=env | {"YOLO_CONFIG_DIR": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.splitlines()[-1].split()
    assert out == [default[0], "None"]
    out = subprocess.run([sys.executable, "-c", probe], env=env | {"YOLO_CONFIG_DIR": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.splitlines()[-1].split()
    assert out == [default[0], default[0], "None"]


def test_batch_sized_to_memory_on_a_gpu():
    """batch auto: ultralytics' AutoBatch on a GPU (batch -1), a fixed batch on a CPU."""
    import inspect

    from ultralytics.engine.trainer import BaseTrainer

    from cxrkit.models import detector

    assert detector._batch("auto", "cpu") == detector.CPU_AUTO_BATCH
    assert detector._batch("auto", 0) == -1
    assert detector._batch(8, 0) == 8 and detector._batch("4", "cpu") == 4
    for value in (0, -1, "big", None):
        with pytest.raises(DetectorError, match="detector.batch"):
            detector._batch(value, "cpu")
    # What -1 does in the trainer: the single-GPU AutoBatch estimate.
    assert "self.batch_size < 1" in inspect.getsource(BaseTrainer._setup_train)


def test_mixed_precision_never_asks_for_the_fp16_check(monkeypatch):
    """ultralytics' check_amp (fp16) downloads yolo26n.pt; bf16 skips it, and fp16 is refused."""
    import inspect

    import torch
    from ultralytics.engine.trainer import BaseTrainer

    from cxrkit.models import detector

    assert detector._amp("auto", "cpu") is False
    assert detector._amp("fp32", 0) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert detector._amp("auto", 0) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert detector._amp("auto", 0) is False
    for value in ("fp16", True, "True"):
        with pytest.raises(DetectorError, match="fp16"):
            detector._amp(value, 0)
    # What makes bf16 safe: the trainer calls check_amp only when amp is not "bf16".
    assert 'self.args.amp != "bf16"' in inspect.getsource(BaseTrainer._setup_train)
