"""The model registry: version ids, idempotent registration, the atomic pointer and the gate."""
from __future__ import annotations

import threading

import pytest

from cxrkit.core.params import load_params
from cxrkit.models.registry import (
    Registry,
    RegistryError,
    gate_settings,
    make_version_id,
)


def _files(tmp_path, tag: str):
    det, clf = tmp_path / f"det-{tag}.pt", tmp_path / f"clf-{tag}.pt"
    det.write_bytes(b"detector " + tag.encode())
    clf.write_bytes(b"classifier " + tag.encode())
    return det, clf


def _metrics(rsna, map50, auroc):
    return {"detector": {"rsna": rsna, "map50": map50}, "classifier": {"macro_auroc": auroc}}


def test_version_id_depends_on_data_and_params_only():
    a = make_version_id("abcdef0123456789", {"detector": {"epochs": 5}, "x": 1})
    assert a == make_version_id("abcdef0123456789", {"x": 1, "detector": {"epochs": 5}})  # key order
    assert a != make_version_id("abcdef0123456789", {"detector": {"epochs": 6}, "x": 1})
    assert a != make_version_id("bbcdef0123456789", {"detector": {"epochs": 5}, "x": 1})
    assert a.startswith("abcdef01-")


def test_register_is_idempotent_and_complete(tmp_path):
    reg = Registry(tmp_path / "models")
    det, clf = _files(tmp_path, "a")
    v = reg.register(det, clf, data_version="d1", params={"p": 1}, metrics=_metrics(0.3, 0.5, 0.8))
    assert v.detector_weights.read_bytes() == b"detector a"
    assert v.classifier_checkpoint.read_bytes() == b"classifier a"
    det.write_bytes(b"changed")  # a second registration of the same id keeps the first files
    again = reg.register(det, clf, data_version="d1", params={"p": 1}, metrics=_metrics(0, 0, 0))
    assert again.version_id == v.version_id and again.detector_weights.read_bytes() == b"detector a"
    assert [x.version_id for x in reg.versions()] == [v.version_id]
    assert not [p for p in reg.versions_dir.iterdir() if p.name.startswith(".")]  # no staging left
    with pytest.raises(RegistryError, match="does not exist"):
        reg.register(tmp_path / "missing.pt", clf, data_version="d2", params={}, metrics={})
    with pytest.raises(RegistryError, match="not in the registry"):
        reg.get("nope")


def test_gate_promotes_first_refuses_worse_accepts_within_tolerance(tmp_path):
    reg = Registry(tmp_path / "models")
    assert reg.current() is None
    first = reg.register(*_files(tmp_path, "1"), data_version="d1", params={}, metrics=_metrics(0.30, 0.50, 0.80))
    assert reg.promote(first.version_id, tolerance=0.02).promoted
    assert reg.current().version_id == first.version_id

    worse = reg.register(*_files(tmp_path, "2"), data_version="d2", params={}, metrics=_metrics(0.31, 0.45, 0.81))
    decision = reg.promote(worse.version_id, tolerance=0.02)
    assert not decision.promoted and any("detector.map50" in r and "worse" in r for r in decision.reasons)
    assert reg.current().version_id == first.version_id

    close = reg.register(*_files(tmp_path, "3"), data_version="d3", params={}, metrics=_metrics(0.29, 0.49, 0.80))
    assert reg.promote(close.version_id, tolerance=0.02).promoted
    assert reg.current().version_id == close.version_id

    missing = reg.register(*_files(tmp_path, "4"), data_version="d4", params={}, metrics={"detector": {"rsna": 0.9}})
    assert not reg.promote(missing.version_id).promoted  # a gate metric it lacks cannot pass
    assert reg.promote(missing.version_id, force=True).promoted
    history = reg.promotions()
    assert [h["promoted"] for h in history] == [True, False, True, False, True]


def test_current_pointer_is_never_torn(tmp_path):
    """A reader polling `current` while it flips between two versions only ever sees one of them."""
    reg = Registry(tmp_path / "models")
    ids = [reg.register(*_files(tmp_path, t), data_version=t, params={}, metrics={}).version_id for t in "ab"]
    reg.set_current(ids[0])
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(reg.current_id())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        reg.set_current(ids[i % 2])
    stop.set()
    reader.join()
    assert seen <= set(ids) and seen


def test_gate_settings_come_from_params():
    metrics, tolerance = gate_settings(load_params())
    assert "detector.rsna" in metrics and tolerance == pytest.approx(0.02)


def test_a_file_replaced_after_registration_is_never_loaded(tmp_path):
    """A detector .pt is a pickle (loading it runs what it holds): a version's files load only when
    they match the sha256 recorded at registration, e.g. not after a swap in the workspace or a
    tampered DVC remote."""
    import hashlib

    reg = Registry(tmp_path / "models")
    det, clf = _files(tmp_path, "a")
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"onnx a")
    v = reg.register(det, clf, data_version="d1", params={"p": 1}, metrics=_metrics(0.3, 0.5, 0.8),
                     files={"detector.onnx": onnx})
    assert v.files == {name: hashlib.sha256(data).hexdigest() for name, data in
                       (("detector.pt", b"detector a"), ("classifier.pt", b"classifier a"), ("detector.onnx", b"onnx a"))}
    v.verify()
    for name in ("detector.pt", "classifier.pt", "detector.onnx"):
        original = (v.path / name).read_bytes()
        (v.path / name).write_bytes(original + b" and something else")
        with pytest.raises(RegistryError, match=f"{name} is missing or differs"):
            reg.get(v.version_id).verify()
        with pytest.raises(RegistryError, match="sha256 mismatch"):
            reg.get(v.version_id).predictor()  # refused before anything is unpickled
        (v.path / name).write_bytes(original)
    reg.get(v.version_id).verify()


def _paired(candidate: float, current: float, low: float, high: float, n: int = 20) -> dict:
    return {"candidate": candidate, "current": current, "difference": candidate - current, "low": low, "high": high,
            "n": n}


def test_gate_on_paired_intervals_does_not_refuse_on_noise(tmp_path):
    """On the same 20 images, a 0.02 drop whose interval spans 0 is noise: promoted. A drop whose
    whole interval lies below -tolerance is refused. A gate metric the comparison lacks falls back
    to the stored metrics, and says so."""
    reg = Registry(tmp_path / "models")
    first = reg.register(*_files(tmp_path, "1"), data_version="d1", params={}, metrics=_metrics(0.30, 0.50, 0.80))
    reg.promote(first.version_id)
    noisy = reg.register(*_files(tmp_path, "2"), data_version="d2", params={}, metrics=_metrics(0.10, 0.10, 0.10))
    decision = reg.promote(noisy.version_id, ("detector.rsna",), 0.02,
                           comparison={"detector.rsna": _paired(0.40, 0.42, -0.11, 0.07)})
    assert decision.promoted, decision.reasons  # the stored 0.10 (an earlier, other set) is not what it read
    assert "on the same 20 validation images" in decision.reasons[0] and "[-0.1100, +0.0700]" in decision.reasons[0]
    assert reg.current_id() == noisy.version_id

    worse = reg.register(*_files(tmp_path, "3"), data_version="d3", params={}, metrics=_metrics(0.9, 0.9, 0.9))
    decision = reg.promote(worse.version_id, ("detector.rsna", "detector.map50"), 0.02,
                           comparison={"detector.rsna": _paired(0.20, 0.42, -0.31, -0.12)})
    assert not decision.promoted and reg.current_id() == noisy.version_id
    assert "worse beyond noise" in decision.reasons[0]
    assert "stored metrics of two validation sets" in decision.reasons[1]  # map50: not in the comparison
    assert reg.promotions()[-1]["comparison"]["detector.rsna"]["high"] == -0.12
