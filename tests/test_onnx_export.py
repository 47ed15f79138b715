"""The detector's ONNX export predicts the .pt's boxes, offline, and load_detector honours the format knob."""
from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest

from cxrkit.core.labels import load_schema
from cxrkit.evaluation.metrics import iou_matrix
from cxrkit.models import detector as detector_module
from cxrkit.models.detector import (
    DetectorError,
    export_detector_onnx,
    load_detector,
    onnx_imgsz,
    predict_boxes,
    resolve_inference_format,
)
from cxrkit.models.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(trained_models, tmp_path_factory):
    """The session's trained weights copied (the shared ones stay without an export), then exported
    with every DNS lookup and socket connect refused and recorded."""
    folder = tmp_path_factory.mktemp("onnx")
    weights = folder / "detector.pt"
    shutil.copyfile(trained_models.detector_weights, weights)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access during export")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket.socket, "connect", refuse)
        path = export_detector_onnx(weights, trained_models.params["detector"]["imgsz"])
    assert attempts == []
    return weights, path


def test_onnx_boxes_match_pt(trained_models, exported):
    weights, onnx_file = exported
    imgsz = trained_models.params["detector"]["imgsz"]
    assert onnx_file == weights.with_suffix(".onnx") and onnx_imgsz(onnx_file) == imgsz
    paths = [trained_models.data_dir / r.path for r in trained_models.records if r.split != "train"][:12]
    # The tiny model scores low: compare the boxes above 0.01, twice the 0.005 cut,
    # where a tiny numeric difference could flip a box in or out.
    pt = predict_boxes(load_detector(weights, inference_format="pt"), paths, imgsz, conf=0.005)
    ox = predict_boxes(load_detector(weights, inference_format="onnx", imgsz=imgsz), paths, imgsz, conf=0.005)
    assert sum(x.score >= 0.01 for boxes in pt for x in boxes) >= 3
    for a, b in zip(pt, ox):
        strong_a = [x for x in a if x.score >= 0.01]
        strong_b = [x for x in b if x.score >= 0.01]
        assert abs(len(strong_a) - len(strong_b)) <= 1
        for box in strong_a:
            same = [x for x in b if x.finding == box.finding]
            assert same, f"{box} has no {box.finding} box in the ONNX output"
            ious = iou_matrix(np.array([[box.x, box.y, box.w, box.h]]), np.array([[x.x, x.y, x.w, x.h] for x in same]))[0]
            k = int(ious.argmax())
            assert ious[k] > 0.95 and abs(same[k].score - box.score) < 0.002


def test_loading_the_onnx_model_keeps_torchs_threads(trained_models, exported):
    """ultralytics' select_device sets torch to cpu_count - 1 threads; setting up the ONNX model runs it.
    The classifier runs on torch next to the detector and would lose a core of its 2."""
    import os

    import torch

    weights, _ = exported
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count())
    try:
        model = load_detector(weights, inference_format="onnx", imgsz=trained_models.params["detector"]["imgsz"])
        assert torch.get_num_threads() == os.cpu_count()
        predict_boxes(model, [trained_models.data_dir / trained_models.records[0].path],
                      trained_models.params["detector"]["imgsz"])
        assert torch.get_num_threads() == os.cpu_count()
    finally:
        torch.set_num_threads(before)


def test_the_onnx_session_does_not_spin_between_runs(trained_models, exported):
    """ONNX Runtime's threads would spin after each run and take the cores from the torch
    classifier that runs next (detector._stop_spinning): the session ultralytics runs, also
    after it rebuilds its predictor for other arguments, has spinning off."""
    weights, _ = exported
    imgsz = trained_models.params["detector"]["imgsz"]
    model = load_detector(weights, inference_format="onnx", imgsz=imgsz)
    paths = [trained_models.data_dir / trained_models.records[0].path]
    for conf in (0.01, 0.5):  # a second call with other arguments, which may rebuild ultralytics' predictor
        boxes = predict_boxes(model, paths, imgsz, conf=conf)
        session = model.predictor.model.backend.session
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert [x.name for x in session.get_inputs()] and len(boxes) == 1


def test_loading_the_onnx_model_makes_few_sessions(trained_models, exported, monkeypatch):
    """Each read of an ONNX YOLO's `names` before its first prediction builds an ONNX Runtime
    session; load_detector read it once per class, and loading took 1.2 s instead of 0.3.
    Counted: the names check's, ultralytics' predictor's, and the one without spinning."""
    import onnxruntime

    weights, _ = exported
    imgsz = trained_models.params["detector"]["imgsz"]
    built, session_class = [], onnxruntime.InferenceSession

    def counted(*args, **kwargs):
        built.append(args[0] if args else kwargs.get("path_or_bytes"))
        return session_class(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counted)
    model = load_detector(weights, inference_format="onnx", imgsz=imgsz)
    predict_boxes(model, [trained_models.data_dir / trained_models.records[0].path], imgsz)
    assert len(built) == 3, built


def test_inference_format_resolution(trained_models, exported, tmp_path, monkeypatch):
    weights, _ = exported
    imgsz = trained_models.params["detector"]["imgsz"]
    assert resolve_inference_format(weights, "pt", imgsz) == "pt"
    assert resolve_inference_format(weights, "onnx", imgsz) == "onnx"
    monkeypatch.setattr(detector_module, "MEASURED_FASTER", "onnx")
    assert resolve_inference_format(weights, "auto", imgsz) == "onnx"
    assert resolve_inference_format(weights, "auto", imgsz * 2) == "pt"  # exported for another size
    monkeypatch.setattr(detector_module, "MEASURED_FASTER", "pt")
    assert resolve_inference_format(weights, "auto", imgsz) == "pt"
    with pytest.raises(DetectorError, match="exported for"):
        resolve_inference_format(weights, "onnx", imgsz * 2)
    alone = tmp_path / "alone.pt"
    shutil.copyfile(weights, alone)
    assert resolve_inference_format(alone, "auto", imgsz) == "pt"
    with pytest.raises(DetectorError, match="does not exist"):
        resolve_inference_format(alone, "onnx", imgsz)
    with pytest.raises(DetectorError, match="inference_format"):
        resolve_inference_format(weights, "tensorrt", imgsz)


def test_registry_version_serves_onnx(trained_models, exported, tmp_path):
    weights, onnx_file = exported
    params = dict(trained_models.params)
    params["detector"] = params["detector"] | {"inference_format": "onnx"}
    version = Registry(tmp_path / "models").register(weights, trained_models.classifier_checkpoint,
                                                     data_version="onnxtest", params=params, metrics={},
                                                     files={"detector.onnx": onnx_file})
    assert version.file("detector.onnx") is not None
    predictor = version.predictor()
    assert str(predictor.detector.ckpt_path).endswith("detector.onnx")
    paths = [trained_models.data_dir / r.path for r in trained_models.records if r.split != "train"][:2]
    assert all(p.ok for p in predictor.predict_paths(paths))
    assert load_schema().opacity in predictor.detector.names.values()
