"""The teacher's output that the `prepare` stage turns into pseudo-labels: the folder `pseudo/`.

    write_teacher(out_dir, version, records, data_dir, params, cache_dir, data_version)
                                                       -> counts (teacher.json)
    already_asked(pseudo_dir, data_version, params)    -> those counts, if the folder answers
                                                          this data version under these params
    read_teacher(pseudo_dir)                           -> Teacher

Pseudo-labels come from the serving model (the teacher), which is not an output of this round's
pipeline, so the retrain flow asks it before `dvc repro` and versions what it said with
`dvc add pseudo` (pseudo.dvc is committed with the round): `git checkout round-3 && dvc
checkout && dvc repro` then rebuilds round 3 from the same pseudo-labels without any model
(cxrkit/models/pseudo_labels.py has the rules, params.yaml `pseudo_labels` the thresholds):

    pseudo/teacher.json         the teacher's model version (null in the first round: no model
                                serves yet, so nothing is pseudo-labeled), the data version
                                and what was asked, and counts
    pseudo/pool.jsonl           (c) self-training: the teacher's prediction of each image (the
                                unlabeled ones are the candidates; the labeled validation ones
                                set how sure is sure enough)
    pseudo/box_subtypes.jsonl   (a) P(subtype | pneumonia) of each labeled opacity box without a
                                subtype (detection-only sets such as RSNA)

Sorted by image id with sorted keys, so the same teacher and images give the same bytes. The
pool's predictions go through the predictor's cache (the select flow already predicted the
pool with the same model), so asking the teacher costs little after a select round. What the
teacher says is never written to Label Studio as an annotation: it reaches only training.

The teacher is asked once per data version: a round that trains the same labels again (the
re-run of a killed round, a code or knob change) keeps the answers already asked for that data
version (`already_asked`). So a model never teaches the round that made it (after a kill
past the promotion the serving model is that round's own), and two models of one data version
differ only in what changed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cxrkit.core.atomic import write_atomic
from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Record
from cxrkit.models.pseudo_labels import (
    box_subtype_probs,
    needs_subtype,
    self_training_settings,
    teacher_entry,
)

log = logging.getLogger(__name__)

PSEUDO_DIR = "pseudo"
TEACHER_FILE = "teacher.json"
POOL_FILE = "pool.jsonl"
BOX_SUBTYPES_FILE = "box_subtypes.jsonl"


@dataclass
class Teacher:
    """What `read_teacher` found: the model version (None: no teacher) and its two outputs."""

    model_version: str | None = None
    pool: dict[str, dict] = field(default_factory=dict)  # image_id -> teacher_entry
    box_subtypes: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in sorted(rows, key=lambda r: r["image_id"]))


def asked(params: dict) -> list[str]:
    """What write_teacher asks under `params`: the pool's predictions (self-training), the
    subtypes of subtype-less boxes (a), each only when `pseudo_labels` switches it on."""
    settings = params.get("pseudo_labels") or {}
    return [name for name, on in (("pool", self_training_settings(settings.get("self_training")) is not None),
                                  ("box_subtypes", settings.get("subtype_threshold") is not None)) if on]


def already_asked(pseudo_dir: str | Path, data_version: str, params: dict) -> dict | None:
    """teacher.json's counts when the folder holds the answers for `data_version` to what `params`
    ask (written last, so its presence means the other two files are complete), else None."""
    path = Path(pseudo_dir) / TEACHER_FILE
    if not path.is_file():
        return None
    counts = json.loads(path.read_text())
    same = counts.get("data_version") == data_version and counts.get("asked") == asked(params)
    return counts if same else None


def write_teacher(out_dir: str | Path, version, records: list[Record], data_dir: str | Path, params: dict,
                  cache_dir: str | Path | None = None, data_version: str | None = None) -> dict:
    """Ask the serving model `version` (a registry ModelVersion, or None) what the `prepare` stage
    needs and write the three files. `records`: the manifest with the readers' labels applied
    (cxrkit.pipeline.labels.apply_labels), so "unlabeled" means what no reader labeled. Only
    what `params["pseudo_labels"]` switches on is asked. `data_version`: the data version the
    answers are for (recorded for `already_asked`). Returns the counts in teacher.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    questions = asked(params)
    pool_rows: list[dict] = []
    subtype_rows: list[dict] = []
    errors: list[tuple[str, str]] = []
    if version is not None:
        if "pool" in questions:
            # Every image: which labeled ones validate is the `prepare` stage's split, not known here.
            predictor = version.predictor(cache_dir=cache_dir)
            predictions = predictor.predict_paths([Path(data_dir) / r.path for r in records])
            for record, prediction in zip(records, predictions):
                if prediction.ok:
                    pool_rows.append({"image_id": record.image_id, **teacher_entry(prediction)})
                else:
                    errors.append((record.image_id, prediction.error))
        if "box_subtypes" in questions:
            from cxrkit.models.classifier import load_classifier

            version.verify()
            schema = load_schema()
            todo = [r for r in records if needs_subtype(r, schema)]
            if todo:
                probs, failed = box_subtype_probs(todo, load_classifier(version.classifier_checkpoint), data_dir,
                                                  float(version.params["classifier"]["crop_margin"]))
                errors += failed
                subtype_rows = [{"image_id": i, "boxes": {str(k): v for k, v in p.items()}} for i, p in probs.items()]
    for image_id, reason in errors:
        log.warning("teacher: image %s not pseudo-labeled: %s", image_id, reason)
    counts = {"model_version": version.version_id if version is not None else None, "pool": len(pool_rows),
              "box_subtypes": len(subtype_rows), "errors": len(errors), "data_version": data_version,
              "asked": questions}
    write_atomic(out / POOL_FILE, _jsonl(pool_rows))
    write_atomic(out / BOX_SUBTYPES_FILE, _jsonl(subtype_rows))
    write_atomic(out / TEACHER_FILE, json.dumps(counts, indent=2, sort_keys=True) + "\n")
    return counts


def read_teacher(pseudo_dir: str | Path | None) -> Teacher:
    """The folder's contents; a missing folder or teacher.json means no teacher (nothing pseudo)."""
    if pseudo_dir is None or not (Path(pseudo_dir) / TEACHER_FILE).is_file():
        return Teacher()
    folder = Path(pseudo_dir)
    meta = json.loads((folder / TEACHER_FILE).read_text())

    def rows(name: str) -> list[dict]:
        path = folder / name
        if not path.is_file():
            return []
        out = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path}:{lineno}: unreadable line: {exc}") from exc
        return out

    pool = {r.pop("image_id"): r for r in rows(POOL_FILE)}
    subtypes = {r["image_id"]: {int(k): v for k, v in r["boxes"].items()} for r in rows(BOX_SUBTYPES_FILE)}
    return Teacher(meta.get("model_version"), pool, subtypes)
