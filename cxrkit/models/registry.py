"""The model registry: trained detector + classifier pairs, their metrics, and `current`.

Layout (under a workspace's models folder, `Workspace.models_dir`):

    versions/<version_id>/       one trained pair, never modified once registered
        detector.pt              ultralytics weights (plus detector.onnx when exported)
        classifier.pt            classifier checkpoint
        version.json             id, data_version, params_hash, code_version, params, metrics,
                                 created, and the sha256 of every file above (checked before
                                 anything is loaded)
    current                      text file: the serving version id
    promotions.jsonl             one line per gate decision (promoted or refused, and why)

A version id is `<data version[:8]>-<params hash[:8]>-<code version[:8]>`: the same labels, the
same knobs and the same code (cxrkit/pipeline/code_version.py) name the same model, so a re-run
of a retrain finds its version already registered, and a model trained by changed code is a new
version. Versions registered without a code version (by hand, or before code was versioned)
have the first two parts only.

Trust. A detector .pt is a pickle: ultralytics unpickles it (weights_only=False), so loading
one runs whatever it holds. A version's files are loaded only when their sha256 matches the one
recorded when the retrain registered them (`ModelVersion.verify`): a file replaced afterwards
(in the workspace, or restored by DVC from a shared remote) is refused. A user's own
`detector.weights` (params.yaml) is trusted input: it is loaded as given, like any code you run.

Atomicity, because the ML backend reads `current` while a retrain writes:
- a version folder is written under a temporary name and renamed into place (a reader
  sees a whole version or none);
- `current` is replaced atomically (cxrkit.core.atomic: a reader sees the old id or the new one);
- promotions.jsonl is appended after the pointer moved: it is the history, not the truth.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cxrkit.core.atomic import write_atomic
from cxrkit.core.hashing import file_sha256

log = logging.getLogger(__name__)

DETECTOR_FILE = "detector.pt"
CLASSIFIER_FILE = "classifier.pt"
INFO_FILE = "version.json"
CURRENT_FILE = "current"
PROMOTIONS_FILE = "promotions.jsonl"

# Metrics the gate compares when params.yaml has no `registry.gate_metrics` (all: higher is better).
DEFAULT_GATE_METRICS = ("detector.rsna", "detector.map50", "classifier.macro_auroc")
DEFAULT_TOLERANCE = 0.02


class RegistryError(RuntimeError):
    """A version that does not exist, is incomplete, or a registration that cannot be done."""


def params_hash(params: Mapping) -> str:
    """sha256 of the params as canonical JSON: key order and YAML formatting do not matter."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


_WARNED: set[str] = set()


def _warn_unhashed(version_id: str) -> None:
    if version_id not in _WARNED:
        _WARNED.add(version_id)
        log.warning("model version %s was registered before file hashes were recorded: its files are loaded "
                    "unchecked; the next retrain registers a checked version", version_id)


def make_version_id(data_version: str, params: Mapping, code_version: str | None = None) -> str:
    data = "".join(ch for ch in str(data_version) if ch.isalnum())[:8] or "nodata"
    return f"{data}-{params_hash(params)[:8]}" + (f"-{code_version[:8]}" if code_version else "")


def metric_value(metrics: Mapping, dotted: str) -> float | None:
    """metrics["detector"]["rsna"] for "detector.rsna"; None when absent or not a number."""
    value = metrics
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ModelVersion:
    """One registered pair. `path` is its folder; the files are read-only by convention."""

    version_id: str
    path: Path
    data_version: str
    params: dict
    metrics: dict
    created: float
    extra: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # file name -> sha256 recorded at registration
    code_version: str | None = None  # cxrkit.pipeline.code_version of the code that trained it

    @property
    def detector_weights(self) -> Path:
        return self.path / DETECTOR_FILE

    @property
    def classifier_checkpoint(self) -> Path:
        return self.path / CLASSIFIER_FILE

    def file(self, name: str) -> Path | None:
        """Another file of this version (e.g. detector.onnx), or None when it was not stored."""
        p = self.path / name
        return p if p.is_file() else None

    def verify(self) -> None:
        """Refuse (RegistryError) when a file differs from the sha256 recorded at registration.
        Versions registered before hashes were recorded have none to check (and say so once)."""
        if not self.files:
            _warn_unhashed(self.version_id)
            return
        for name, expected in self.files.items():
            path = self.path / name
            if not path.is_file() or file_sha256(path) != expected:
                raise RegistryError(
                    f"model version {self.version_id}: {name} is missing or differs from the file registered "
                    "(sha256 mismatch); refusing to load it, since a .pt file runs code when loaded. "
                    "Retrain to register a new version, or restore the original file")

    def predictor(self, schema=None, cache_dir: str | os.PathLike | None = None):
        """A Predictor over this version's models with the params it was trained with, showing
        boxes from the thresholds evaluation measured (predictor.conf effort or auto).
        The files are verified first (`verify`)."""
        from cxrkit.models.predictor import Predictor

        self.verify()

        return Predictor(self.detector_weights, self.classifier_checkpoint, self.params, schema=schema,
                         model_version=self.version_id, cache_dir=cache_dir,
                         operating_conf=metric_value(self.metrics, "detector.operating_conf"),
                         effort_conf=metric_value(self.metrics, "detector.effort_conf"))


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    candidate: str
    previous: str | None
    reasons: list[str]  # one line per compared metric, or why there was no comparison
    time: float
    comparison: dict = field(default_factory=dict)  # the paired comparison it decided on (cxrkit.pipeline.compare)

    def to_dict(self) -> dict:
        return {"promoted": self.promoted, "candidate": self.candidate, "previous": self.previous,
                "reasons": self.reasons, "time": self.time, "comparison": self.comparison}


class Registry:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # --- reading ----------------------------------------------------------------

    def get(self, version_id: str) -> ModelVersion:
        folder = self.versions_dir / version_id
        info_path = folder / INFO_FILE
        if not info_path.is_file():
            raise RegistryError(f"model version {version_id!r} is not in the registry at {self.root}")
        info = json.loads(info_path.read_text())
        return ModelVersion(version_id=info["version_id"], path=folder, data_version=info["data_version"],
                            params=info["params"], metrics=info["metrics"], created=info["created"],
                            extra=info.get("extra", {}), files=info.get("files", {}),
                            code_version=info.get("code_version"))

    def has(self, version_id: str) -> bool:
        return (self.versions_dir / version_id / INFO_FILE).is_file()

    def versions(self) -> list[ModelVersion]:
        """Every registered version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        found = [self.get(p.name) for p in self.versions_dir.iterdir()
                 if p.is_dir() and not p.name.startswith(".") and (p / INFO_FILE).is_file()]
        return sorted(found, key=lambda v: (v.created, v.version_id))

    def current_id(self) -> str | None:
        try:
            text = (self.root / CURRENT_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def current(self) -> ModelVersion | None:
        """The serving version, or None before the first promotion."""
        version_id = self.current_id()
        return self.get(version_id) if version_id else None

    def promotions(self) -> list[dict]:
        path = self.root / PROMOTIONS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # --- writing ----------------------------------------------------------------

    def register(self, detector_weights: str | os.PathLike, classifier_checkpoint: str | os.PathLike, *,
                 data_version: str, params: Mapping, metrics: Mapping, code_version: str | None = None,
                 version_id: str | None = None, files: Mapping[str, str | os.PathLike] | None = None, extra: Mapping | None = None) -> ModelVersion:
        """Copy a trained pair (and any `files`, stored under their key as name) into a new version.

        Idempotent: a version id already registered is returned as it is, so a retrain that is
        re-run after a crash does not duplicate or overwrite a version the backend may serve."""
        version_id = version_id or make_version_id(data_version, params, code_version)
        if self.has(version_id):
            return self.get(version_id)
        sources = {DETECTOR_FILE: Path(detector_weights), CLASSIFIER_FILE: Path(classifier_checkpoint)}
        sources.update({name: Path(p) for name, p in (files or {}).items()})
        for name, src in sources.items():
            if not src.is_file():
                raise RegistryError(f"cannot register {version_id}: {name} source {src} does not exist")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version_id}.", dir=self.versions_dir))
        try:
            for name, src in sources.items():
                shutil.copy2(src, staging / name)
            info = {"version_id": version_id, "data_version": str(data_version), "params_hash": params_hash(params),
                    "code_version": code_version,
                    "params": dict(params), "metrics": dict(metrics), "created": time.time(), "extra": dict(extra or {}),
                    "files": {name: file_sha256(staging / name) for name in sources}}
            (staging / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
            staging.chmod(0o755)
            os.replace(staging, self.versions_dir / version_id)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if self.has(version_id):  # a concurrent registration of the same id won the rename
                return self.get(version_id)
            raise
        return self.get(version_id)

    def set_current(self, version_id: str) -> None:
        """Move `current` to a registered version, atomically. Prefer promote(), which gates."""
        self.get(version_id)  # refuses unknown ids
        write_atomic(self.root / CURRENT_FILE, version_id + "\n")

    def promote(self, version_id: str, gate_metrics: tuple[str, ...] | list[str] = DEFAULT_GATE_METRICS,
                tolerance: float = DEFAULT_TOLERANCE, force: bool = False,
                comparison: Mapping[str, Mapping] | None = None) -> GateDecision:
        """The promotion gate: `version_id` becomes current unless, on some gate metric, it is
        worse than the current version beyond noise.

        Paired (`comparison`, cxrkit.pipeline.compare: both models on the same validation
        images, each difference with a 95 % bootstrap interval): refused when the whole
        interval of candidate - current lies below -`tolerance`. A drop inside the interval
        is noise and does not refuse a model.
        Unpaired (a gate metric the comparison lacks): the metrics each version stored, which
        were measured on different rounds' validation sets, refused when worse by more than
        `tolerance`. A metric the current version lacks is not compared; one the candidate
        lacks while current has it refuses promotion."""
        candidate = self.get(version_id)
        previous = self.current()
        reasons: list[str] = []
        ok = True
        if force:
            reasons.append("forced")
        elif previous is None:
            reasons.append("no current version: the first model is promoted")
        elif previous.version_id == version_id:
            reasons.append("already current")
        else:
            for name in gate_metrics:
                paired = (comparison or {}).get(name)
                if paired is not None:
                    passed = paired["high"] >= -tolerance
                    ok &= passed
                    reasons.append(
                        f"{name}: {paired['candidate']:.4f} vs current {paired['current']:.4f} on the same "
                        f"{paired['n']} validation images, difference {paired['difference']:+.4f}, 95 % interval "
                        f"[{paired['low']:+.4f}, {paired['high']:+.4f}] "
                        f"({'ok' if passed else 'worse beyond noise and'} tolerance {tolerance})")
                    continue
                old, new = metric_value(previous.metrics, name), metric_value(candidate.metrics, name)
                if old is None:
                    reasons.append(f"{name}: current has none, not compared")
                elif new is None:
                    ok = False
                    reasons.append(f"{name}: candidate has none (current {old:.4f})")
                else:
                    passed = new >= old - tolerance
                    ok &= passed
                    reasons.append(f"{name}: {new:.4f} vs current {old:.4f}, stored metrics of two validation sets "
                                   f"({'ok' if passed else 'worse by more than'} tolerance {tolerance})")
        decision = GateDecision(promoted=ok, candidate=version_id,
                                previous=previous.version_id if previous else None, reasons=reasons, time=time.time(),
                                comparison=dict(comparison or {}))
        if ok:
            self.set_current(version_id)
        with open(self.root / PROMOTIONS_FILE, "a") as f:
            f.write(json.dumps(decision.to_dict()) + "\n")
        return decision


def gate_settings(params: Mapping) -> tuple[tuple[str, ...], float]:
    """(gate metrics, tolerance) from params.yaml's `registry:` section, with the defaults above."""
    section = params.get("registry") or {}
    metrics = tuple(section.get("gate_metrics") or DEFAULT_GATE_METRICS)
    return metrics, float(section.get("tolerance", DEFAULT_TOLERANCE))
