"""Pre-annotations worth correcting: the edits a radiologist needs per film to turn what the predictor
shows into the truth, before and after this wave's settings, on the same models.

    .venv/bin/python benchmarks/bench_preannotation.py [--labels 20 60 140] [--work DIR] [--json FILE]
        [--models LABELS=DIR ...]

The study is the active-learning benchmark's (2,200 synthetic films of the published population,
256 px, seed 0; its pool, fixed validation and fixed test split). For each `--labels` count a model
pair is trained as that benchmark trains its seed models (yolo11n at 128 px for 40 epochs,
resnet18 at 64 px for 6 epochs) on that many films drawn at random from the pool (kept in the work
folder and reused when the script runs there again; `--models 140=DIR` takes the pair in DIR, laid
out as the active-learning benchmark keeps a round's models, instead). The version's thresholds are measured on the
validation films as the `evaluate` stage measures them (the RSNA operating point, and the
fewest-edits threshold for boxes merged at 0.4), and
each setting's Predictor predicts the test films; every film's edits against its truth are
counted by cxrkit.evaluation.effort (boxes adjusted, deleted, added; subtypes and impression
changed) and averaged:

    before        conf auto (RSNA operating point), no merge, impression rule   (the predictor until now)
    merge         before + merge_iou 0.4
    merge+shown   merge + impression shown (implied by the boxes shown)
    after         merge+shown + conf effort (the fewest-edits threshold)         (params.yaml now)

Also "nothing shown" (every box, subtype and impression to add: labeling from scratch).
Prints a Markdown table with the machine and the date. Run it alone (it trains).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import numpy as np  # noqa: E402

from cxrkit.core.labels import load_schema  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.evaluation.effort import EDIT_KINDS, Labeling, annotation_edits  # noqa: E402
from cxrkit.models.detector import evaluate_detector, load_detector  # noqa: E402
from cxrkit.models.preannotation import effort_conf  # noqa: E402
from cxrkit.models.predictor import DEFAULTS as PREDICTOR_DEFAULTS  # noqa: E402
from cxrkit.models.predictor import Predictor  # noqa: E402
from cxrkit.selection.al_benchmark import (  # noqa: E402
    DEFAULTS,
    benchmark_params,
    split_for_benchmark,
    synthetic_records,
    train_and_evaluate,
)

STUDY = {"n": 2200, "size": 256, "seed": 0}  # benchmarks/bench_active_learning.py's study
SETTINGS = {
    "before": {"conf": "auto", "merge_iou": None, "impression": "rule"},
    "merge": {"conf": "auto", "merge_iou": 0.4, "impression": "rule"},
    "merge+shown": {"conf": "auto", "merge_iou": 0.4, "impression": "shown"},
    "after": {"conf": "effort", "merge_iou": 0.4, "impression": "shown"},
}


def models(labeled, val, test, data_dir: Path, work: Path, params: dict) -> tuple[Path, Path]:
    """Train (or reuse from `work`) the benchmark's models on `labeled`; (weights, checkpoint)."""
    weights, checkpoint = work / "detector" / "train" / "weights" / "best.pt", work / "classifier" / "classifier.pt"
    if not (weights.is_file() and checkpoint.is_file()):
        _, weights, checkpoint = train_and_evaluate(labeled, val, test, data_dir, work, params)
    return weights, checkpoint


def edits_of(truths: list, predictions: list) -> dict:
    """Mean edits per film and per kind, over the films predicted (None: nothing shown)."""
    counted = [annotation_edits(t, None if p is None else Labeling(p.boxes, p.impression))
               for t, p in zip(truths, predictions) if p is None or p.ok]
    return {"films": len(counted), "edits": float(np.mean([e.total for e in counted])),
            **{k: float(np.mean([getattr(e, k) for e in counted])) for k in EDIT_KINDS},
            "kept": float(np.mean([e.kept for e in counted])),
            "unchanged": float(np.mean([e.total == 0 for e in counted]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=int, nargs="+", default=[20, 60, 140])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    ap.add_argument("--models", nargs="*", default=[], metavar="LABELS=DIR",
                    help="use the models in DIR (detector/train/weights/best.pt, classifier/classifier.pt) for LABELS")
    args = ap.parse_args(argv)
    given = {int(k): Path(v) for k, v in (m.split("=", 1) for m in args.models)}
    for k, folder in given.items():
        if not (folder / "detector/train/weights/best.pt").is_file() or not (folder / "classifier/classifier.pt").is_file():
            ap.error(f"--models {k}={folder}: no detector/train/weights/best.pt and classifier/classifier.pt there")
    started = time.perf_counter()
    work = (args.work or Path(tempfile.mkdtemp(prefix="cxr-preannotation-"))).resolve()
    schema = load_schema()
    data_dir, records = synthetic_records(work / "synthetic", **STUDY)
    pool, val, test = split_for_benchmark(records)
    params = benchmark_params(load_params(), DEFAULTS)
    truths = [Labeling(r.boxes, r.impression) for r in test]
    rows = [{"labels": 0, "setting": "nothing shown", "conf": None, **edits_of(truths, [None] * len(test))}]
    order = np.random.default_rng(0).permutation(len(pool))
    for k in args.labels:
        weights, checkpoint = models([pool[i] for i in order[:k]], val, test, data_dir, given.get(k, work / f"models-{k}"),
                                     params)
        det = params["detector"]
        floor = float(det.get("conf", 0.01))
        measured = evaluate_detector(load_detector(weights), val, data_dir, int(det["imgsz"]), conf=floor,
                                     keep_images=True)
        fewest, _ = effort_conf(measured["images"], 0.4, int(PREDICTOR_DEFAULTS["max_boxes"]), schema, floor)
        for name, setting in SETTINGS.items():
            p = {**params, "predictor": {**(params.get("predictor") or {}), **setting}}
            predictor = Predictor(weights, checkpoint, p, schema=schema, model_version=f"bench-{k}",
                                  operating_conf=measured["operating_conf"], effort_conf=fewest)
            predictions = predictor.predict_paths([data_dir / r.path for r in test])
            rows.append({"labels": k, "setting": name, "conf": predictor.settings["conf"],
                         **edits_of(truths, predictions)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    total = time.perf_counter() - started
    print(f"\n{datetime.date.today()}; {os.cpu_count()} cores, load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; total {total / 60:.1f} min")
    print(f"Study: {len(records)} films; pool {len(pool)}, validation {len(val)}, test {len(test)} (pneumonia "
          f"{np.mean([r.impression == schema.pneumonia for r in test]):.3f}); models on {args.labels} random "
          "pool films. Per test film, means:\n")
    print("| labels | setting | threshold | edits | adjusted | deleted | added | subtype | impression | kept | "
          "unchanged |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        conf = "" if r["conf"] is None else f"{r['conf']:.2f}"
        print(f"| {r['labels'] or '-'} | {r['setting']} | {conf} | {r['edits']:.2f} | {r['adjusted']:.2f} | "
              f"{r['deleted']:.2f} | {r['added']:.2f} | {r['subtype_changed']:.2f} | {r['impression_changed']:.2f} | "
              f"{r['kept']:.2f} | {r['unchanged']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
