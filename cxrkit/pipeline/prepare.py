"""Stage `prepare`: the training and validation records of a data version.

    python -m cxrkit.pipeline.prepare --data data --pseudo pseudo --params params.yaml \
        --out pipeline/prepared --metrics metrics/prepare.json

Reads the manifest and the Label Studio labels (`data/labels.jsonl`), applies the labels
(cxrkit.pipeline.labels), and splits the labeled records by patient. Then the pseudo-labels
of params.yaml `pseudo_labels`, from what the serving model said (`pseudo/`, written by the
retrain flow: cxrkit/pipeline/pseudo.py), join the training records only:
(a) subtype-less opacity boxes of training records get the teacher's confident subtype;
(c) unlabeled images the teacher is sure of become training records (self-training), unless
    their patient is a validation patient; how sure is enough is measured on this round's
    validation records (the teacher's predictions of them, against the readers' labels).
Each is marked (`metadata["pseudo"]`, boxes with rad_id "pseudo"), counted in the metrics
(`pseudo`), and the validation records stay the readers' labels alone.

The validation set is fixed across rounds: a patient is in it when
sha256("<split.salt>:<patient pseudonym>") falls below `split.val_fraction`, a pure function of
the patient, so a validation image stays one in every later round, new images join it by the
same rule, and two films of one patient never sit on both sides. The promotion gate has the
candidate and the serving model predict this round's set (cxrkit/pipeline/compare.py); the rule
is part of the stored metrics' meaning: changing `split.salt` or `split.val_fraction` makes
earlier rounds' stored metrics incomparable with later ones. One exception, for the first rounds:
while no labeled patient falls below val_fraction (a few patients, and pseudonyms keyed per
workspace can put them all above it), the labeled patient with the lowest position is the
validation set, so the first model can train and be gated instead of failing at random; that
patient returns to training once a patient below val_fraction is labeled.
Images without a patient pseudonym are split by their own id. Gold-standard images
(`split.gold_share`, cxrkit/labelstudio/review.py) are in neither set: they test the readers.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from cxrkit.core.hashing import salted_position
from cxrkit.core.manifest import Record, read_manifest, write_manifest
from cxrkit.core.params import load_params
from cxrkit.labelstudio.review import gold_images, gold_settings
from cxrkit.models.pseudo_labels import (
    apply_box_subtypes,
    self_train,
    self_training_settings,
)
from cxrkit.pipeline import PipelineError, record_timing, write_json
from cxrkit.pipeline.labels import apply_labels, read_labels
from cxrkit.pipeline.pseudo import read_teacher

log = logging.getLogger(__name__)


def patient_key(record: Record) -> str:
    """What the split keeps together: the patient pseudonym, else the image id."""
    return record.patient_id or record.image_id


def split_of(record: Record, val_fraction: float, salt: str) -> str:
    """"val" or "train", from the patient pseudonym (see the module docstring)."""
    return "val" if salted_position(salt, patient_key(record)) < val_fraction else "train"


def split_settings(params: dict) -> tuple[float, str]:
    """(val_fraction, salt) of params.yaml `split`, with the defaults the stored metrics assume."""
    section = params.get("split") or {}
    return float(section.get("val_fraction", 0.2)), str(section.get("salt", "cxr-val-v1"))


def run(data_dir: Path, params: dict, out_dir: Path, metrics_path: Path, pseudo_dir: Path | None = None) -> dict:
    """Write out_dir/train.jsonl and out_dir/val.jsonl; returns (and writes) the counts.
    pseudo_dir: the teacher's folder (None or absent: no pseudo-labels)."""
    val_fraction, salt = split_settings(params)
    records = read_manifest(Path(data_dir) / "manifest.jsonl")
    labels = read_labels(Path(data_dir) / "labels.jsonl")
    merged, unknown = apply_labels(records, labels)
    if unknown:
        log.warning("%d labeled image(s) are not in the manifest, left out: %s", len(unknown), unknown[:5])
    # Gold-standard images test the readers, not the model (cxrkit/labelstudio/review.py): held out.
    gold = set(gold_images(records, *gold_settings(params)))  # curated labels only, not the readers' (merged)
    labeled = [r for r in merged if r.labeled and r.image_id not in gold]
    parts: dict[str, list[Record]] = {"train": [], "val": []}
    for rec in labeled:
        split = split_of(rec, val_fraction, salt)
        parts[split].append(replace(rec, split=split))
    patients = {patient_key(r) for r in labeled}
    if not parts["val"] and len(patients) > 1:  # the first rounds' exception (module docstring)
        first = min(patients, key=lambda key: salted_position(salt, key))
        parts["val"] = [replace(r, split="val") for r in parts["train"] if patient_key(r) == first]
        parts["train"] = [r for r in parts["train"] if patient_key(r) != first]
        log.info("prepare: no labeled patient falls below split.val_fraction yet; the lowest validates until one does")
    # Checked on the readers' labels: pseudo-labels below never stand in for a missing side.
    if not parts["train"] or not parts["val"]:
        raise PipelineError(
            f"{len(labeled)} labeled image(s): {len(parts['train'])} for training, {len(parts['val'])} for validation; "
            "both need at least one: label more images in Label Studio (the validation share is split.val_fraction)"
        )
    pseudo = add_pseudo_labels(parts, merged, read_teacher(pseudo_dir), params, val_fraction, salt)
    counts = {
        "images": len(records),
        "labeled": len(labeled),
        "gold_held_out": len(gold),
        "from_labelstudio": len(labels) - len(unknown),
        "train": len(parts["train"]),
        "val": len(parts["val"]),
        "val_patients": len({patient_key(r) for r in parts["val"]}),
        "train_by_impression": dict(Counter(r.impression or "none" for r in parts["train"])),
        "pseudo": pseudo,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, recs in parts.items():
        write_manifest(out_dir / f"{split}.jsonl", sorted(recs, key=lambda r: r.image_id))
    write_json(metrics_path, counts)
    log.info("prepare: %d labeled of %d images: %d train, %d val", len(labeled), len(records), counts["train"], counts["val"])
    return counts


def add_pseudo_labels(parts: dict[str, list[Record]], records: list[Record], teacher, params: dict,
                      val_fraction: float, salt: str) -> dict:
    """(a) and (c) of the module docstring, into parts["train"]; returns the counts."""
    settings = params.get("pseudo_labels") or {}
    parts["train"], subtypes = apply_box_subtypes(parts["train"], teacher.box_subtypes, settings.get("subtype_threshold"))
    # Unlabeled films of training patients only (dropped before the cap, which counts the readers' training labels).
    validating = {patient_key(r) for r in parts["val"]}
    candidates = [r for r in records if not r.labeled and split_of(r, val_fraction, salt) == "train"
                  and patient_key(r) not in validating]
    added, report = self_train(candidates, teacher.pool, parts["val"], self_training_settings(settings.get("self_training")),
                               teacher.model_version, labeled_count=len(parts["train"]))
    added = [replace(r, split="train") for r in added]
    parts["train"] += added
    return {"teacher": teacher.model_version, "box_subtypes": subtypes["labeled"],
            "self_training": {"considered": report["considered"], "images": len(added), "normal": report["normal"],
                              "pneumonia": report["pneumonia"], "boxes": report["boxes"], "capped": report["capped"],
                              "unreadable": report["unreadable"], "cutoffs": report["cutoffs"]}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrkit.pipeline.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the data folder (manifest.jsonl, labels.jsonl)")
    parser.add_argument("--pseudo", type=Path, default=None, help="the teacher's folder (cxrkit.pipeline.pseudo)")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml (sections split, pseudo_labels)")
    parser.add_argument("--out", type=Path, required=True, help="folder for train.jsonl and val.jsonl")
    parser.add_argument("--metrics", type=Path, required=True, help="counts as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    run(args.data, load_params(args.params), args.out, args.metrics, args.pseudo)
    record_timing("prepare", time.perf_counter() - start)


if __name__ == "__main__":
    main()
