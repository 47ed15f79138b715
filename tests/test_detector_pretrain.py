"""Detector pretraining without labels: what it trains, what it leaves alone, what it refuses."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from cxrkit.models.detector_pretrain import (
    DEFAULTS,
    PretrainError,
    pretrain_detector,
    pretrain_settings,
)

TINY = {"epochs": 2, "batch": 4}


def test_settings_are_checked_before_any_training():
    base = {"detector": {"imgsz": 64}}
    assert pretrain_settings(base) == {**DEFAULTS, "imgsz": 64}  # the training size is the detector's
    assert pretrain_settings({**base, "detector_pretrain": {"epochs": 3}})["epochs"] == 3
    with pytest.raises(PretrainError, match=r"unknown keys \['epoch'\]"):
        pretrain_settings({**base, "detector_pretrain": {"epoch": 3}})
    with pytest.raises(PretrainError, match="not a multiple of 32"):
        pretrain_settings({"detector": {"imgsz": 48}})
    with pytest.raises(PretrainError, match="patch 24 does not divide imgsz 64"):
        pretrain_settings({**base, "detector_pretrain": {"patch": 24}})
    with pytest.raises(PretrainError, match="mask_ratio"):
        pretrain_settings({**base, "detector_pretrain": {"mask_ratio": 1.0}})


def test_pretraining_trains_what_the_head_reads_and_a_detector_trains_from_it(trained_models, tmp_path, caplog):
    """On the tiny study's films (labels unread) plus one unreadable file: the backbone and neck
    change, the detection head is left as built, and train_detector starts from the weights."""
    import torch

    from cxrkit.models.detector import (
        build_detector,
        import_ultralytics,
        train_detector,
    )

    params = {**trained_models.params, "detector_pretrain": TINY}
    films = [trained_models.data_dir / r.path for r in trained_models.records]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with caplog.at_level("WARNING", logger="cxrkit.models.detector_pretrain"):
        out = pretrain_detector([*films, broken], tmp_path / "pretrained.pt", params)
    assert f"{broken} skipped" in caplog.text  # reported by name, the rest went on

    scratch = build_detector({**params["detector"], "weights": None}).model.state_dict()
    pretrained = import_ultralytics().YOLO(str(out), task="detect").model.float().state_dict()
    head = f"model.{max(int(k.split('.')[1]) for k in scratch)}."
    convs = [k for k in scratch if k.endswith("conv.weight")]
    body = [k for k in convs if not k.startswith(head)]
    assert body and all(not torch.allclose(scratch[k], pretrained[k], atol=1e-3) for k in body)
    for k in (k for k in convs if k.startswith(head)):  # saved in half precision: equal to that
        assert torch.allclose(scratch[k], pretrained[k], atol=1e-3), k

    labeled = [r for r in trained_models.records if r.split == "train"][:8]
    val = [r for r in trained_models.records if r.split == "val"][:2]
    weights = train_detector(labeled, trained_models.data_dir, tmp_path / "det",
                             {**params["detector"], "weights": str(out), "epochs": 1}, val_records=val)
    args = yaml.safe_load((weights.parents[1] / "args.yaml").read_text())
    assert args["model"] == str(out) and args["pretrained"] is True


def test_refuses_too_few_readable_films(tmp_path):
    broken = tmp_path / "a.png"
    broken.write_bytes(b"")
    with pytest.raises(PretrainError, match=r"none of the 1 films could be read.*a\.png: (not an image|UnidentifiedImageError)"):
        pretrain_detector([broken], tmp_path / "w.pt", {"detector": {"imgsz": 64, "model": "yolo11n.yaml"}})
    assert not (tmp_path / "w.pt").exists()


def test_cli_leaves_validation_patients_out(trained_models, tmp_path, monkeypatch):
    from cxrkit.cli import app
    from cxrkit.pipeline.prepare import split_of

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({**trained_models.params, "detector_pretrain": TINY}))
    monkeypatch.setenv("CXR_PARAMS", str(params_file))
    out = tmp_path / "w" / "pretrained.pt"
    result = CliRunner().invoke(app, ["pretrain-detector", "--workspace", str(trained_models.data_dir.parent),
                                      "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    split = trained_models.params["split"]
    val = sum(split_of(r, split["val_fraction"], split["salt"]) == "val" for r in trained_models.records)
    assert 0 < val < len(trained_models.records)
    assert f"pretrained on {len(trained_models.records) - val} films ({val} of validation patients left out)" \
        in " ".join(result.output.split())
    assert out.is_file() and not list(out.parent.glob("*.tmp.pt"))
