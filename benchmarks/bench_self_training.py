"""Self-training's rules: how many unlabeled images a young model labels, and how many it gets right.

    .venv/bin/python benchmarks/bench_self_training.py [--n 900] [--labels 20 60 120] [--repeats 2]
        [--work DIR] [--json FILE]

The teacher is what the active-learning benchmark trains (cxrkit/selection/al_benchmark.py DEFAULTS:
yolo11n at 128 px for 40 epochs, resnet18 at 64 px for 6 epochs) on `--labels` images drawn at random
from the pool of a synthetic study of the published population (`--n` images, 256 px, seed 0;
about 70 % pool, 15 % validation, 15 % test). It predicts the validation images and the rest of the
pool (the workbench's Predictor), and each rule is read off those predictions against the truth
it never sees:

    fixed      the first rule, fixed thresholds on the impression rule's p_pneumonia (the average
               of the top opacity score and 1 - P(Normal)): Normal when p_pneumonia <= 1 - t and
               no box is shown, Pneumonia when p_pneumonia >= t with shown opacity boxes >= 0.5.
    measured   the rule of cxrkit.models.pseudo_labels (c): cutoffs on the detector's top box
               scores set on the validation images so that the precision's 95 % Wilson lower
               bound reaches the target (`self_training_cutoffs`), applied to the pool.

precision = share of the Normal pseudo-labels without pneumonia / of the Pneumonia ones with it;
coverage = share of the unlabeled pool labeled; box precision = pseudo boxes overlapping a true
box at IoU >= 0.4 (the RSNA metric's lowest threshold). Also the classifier's P(Normal) by truth
(does it separate the classes?). Figures are means over repeats; trained teachers are kept in
the work folder (metrics.json beside them) and reused when the script runs again there.
Prints Markdown tables with the machine and the date. Run it alone (it trains).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from cxrkit.evaluation.metrics import iou_matrix  # noqa: E402
from cxrkit.models.pseudo_labels import (  # noqa: E402
    self_train,
    self_training_settings,
    teacher_entries,
)
from cxrkit.selection.al_benchmark import (  # noqa: E402
    DEFAULTS,
    benchmark_params,
    predict_pool,
    split_for_benchmark,
    synthetic_records,
    train_and_evaluate,
)

FIXED_T = (0.8, 0.9)
TARGETS = (0.8, 0.9, 0.95)
MATCH_IOU = 0.4


def teacher(labeled, val, test, data_dir: Path, work: Path, params: dict) -> tuple[dict, Path, Path]:
    """Train (or reuse from `work`) the benchmark's models on `labeled`; (test metrics, weights, checkpoint)."""
    weights, checkpoint = work / "detector" / "train" / "weights" / "best.pt", work / "classifier" / "classifier.pt"
    if (work / "metrics.json").is_file() and weights.is_file() and checkpoint.is_file():
        return json.loads((work / "metrics.json").read_text()), weights, checkpoint
    metrics, weights, checkpoint = train_and_evaluate(labeled, val, test, data_dir, work, params)
    (work / "metrics.json").write_text(json.dumps(metrics))
    return metrics, weights, checkpoint


def fixed_rule(records, predictions, t: float, schema) -> list:
    """(record, prediction, "normal" | "pneumonia", kept boxes) under the first, fixed rule."""
    out = []
    for r, p in zip(records, predictions):
        if not p.ok:
            continue
        if p.p_pneumonia <= 1 - t and not p.boxes:
            out.append((r, "normal", []))
        elif p.p_pneumonia >= t:
            kept = [b for b in p.boxes if b.finding == schema.opacity and b.score >= 0.5]
            if kept:
                out.append((r, "pneumonia", kept))
    return out


def measured_rule(records, predictions, val, val_predictions, target: float, schema) -> tuple[list, dict]:
    settings = self_training_settings({"precision": target, "subtype_threshold": 0.7, "max_ratio": None})
    entries = teacher_entries([*records, *val], [*predictions, *val_predictions])
    hidden = [dataclasses.replace(r, labeled=False) for r in records]
    added, report = self_train(hidden, entries, val, settings, "teacher", 0, schema)
    truth = {r.image_id: r for r in records}
    return [(truth[a.image_id], "normal" if a.impression == schema.normal else "pneumonia", a.boxes)
            for a in added], report["cutoffs"]


def scores(chosen: list, n_pool: int, schema) -> dict:
    """Coverage and precision of (truth record, side, boxes) pseudo-labels."""
    out = {}
    for side in ("normal", "pneumonia"):
        mine = [(r, boxes) for r, s, boxes in chosen if s == side]
        right = [(r.impression == schema.pneumonia) == (side == "pneumonia") for r, _ in mine]
        out[f"{side}_coverage"] = len(mine) / n_pool
        out[f"{side}_precision"] = float(np.mean(right)) if mine else float("nan")
    hits = total = 0
    for r, side, boxes in chosen:
        if side != "pneumonia" or not boxes:
            continue
        truth = np.array([[b.x, b.y, b.w, b.h] for b in r.boxes if b.finding == schema.opacity]).reshape(-1, 4)
        iou = iou_matrix(np.array([[b.x, b.y, b.w, b.h] for b in boxes]).reshape(-1, 4), truth)
        hits += int((iou.max(axis=1) >= MATCH_IOU).sum()) if iou.shape[1] else 0
        total += len(boxes)
    out["box_precision"] = hits / total if total else float("nan")
    return out


def fmt(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v == v]  # NaN: nothing labeled on that side
    return f"{np.mean(values):.{digits}f}" if values else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=900)
    ap.add_argument("--labels", type=int, nargs="+", default=[20, 60, 120])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    work = (args.work or Path(tempfile.mkdtemp(prefix="cxr-st-bench-"))).resolve()
    schema = load_schema()
    data_dir, records = synthetic_records(work / "synthetic", n=args.n, size=256, seed=0)
    pool, val, test = split_for_benchmark(records)
    params = benchmark_params(load_params(), DEFAULTS)
    rows, teachers, p_normal = [], [], {c: [] for c in (schema.normal, schema.pneumonia, schema.other_abnormality)}
    for repeat in range(args.repeats):
        order = np.random.default_rng(repeat).permutation(len(pool))
        for k in args.labels:
            labeled, rest = [pool[i] for i in order[:k]], [pool[i] for i in order[k:]]
            metrics, weights, checkpoint = teacher(labeled, val, test, data_dir, work / f"r{repeat}-{k}", params)
            teachers.append({"repeat": repeat, "labels": k, **metrics})
            predictions = predict_pool(rest, data_dir, weights, checkpoint, params)
            val_predictions = predict_pool(val, data_dir, weights, checkpoint, params)
            for r, p in zip(rest, predictions):
                if p.ok:
                    p_normal[r.impression].append(p.image_probs[schema.normal])
            for t in FIXED_T:
                rows.append({"repeat": repeat, "labels": k, "rule": "fixed", "t": t,
                             **scores(fixed_rule(rest, predictions, t, schema), len(rest), schema)})
            for target in TARGETS:
                chosen, cutoffs = measured_rule(rest, predictions, val, val_predictions, target, schema)
                rows.append({"repeat": repeat, "labels": k, "rule": "measured", "t": target,
                             "normal_cutoff": cutoffs["normal"], "pneumonia_cutoff": cutoffs["pneumonia"],
                             **scores(chosen, len(rest), schema)})
            print(json.dumps(teachers[-1]), file=sys.stderr, flush=True)

    total = time.perf_counter() - started
    print(f"\n{datetime.date.today()}; {os.cpu_count()} cores, load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; total {total / 60:.1f} min")
    print(f"Study: {len(records)} films; pool {len(pool)}, validation {len(val)}, test {len(test)}; teachers on "
          f"{args.labels} random labels, {args.repeats} repeats. Pool: pneumonia "
          f"{np.mean([r.impression == schema.pneumonia for r in pool]):.3f}, Normal "
          f"{np.mean([r.impression == schema.normal for r in pool]):.3f}.\n")
    print("Teachers (test set): " + "; ".join(f"{t['labels']} labels r{t['repeat']}: RSNA {t['rsna']:.3f}, "
                                              f"mAP@0.5 {t['map50']:.3f}" for t in teachers))
    print("Classifier P(Normal), median over the unlabeled pool by truth: " + ", ".join(
        f"{c} {np.median(v):.2f}" for c, v in p_normal.items() if v) + "\n")
    print("| rule | t / target | labels | Normal coverage | Normal precision | Pneumonia coverage | "
          "Pneumonia precision | box precision | Normal cutoff | Pneumonia cutoff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rule, ts in (("fixed", FIXED_T), ("measured", TARGETS)):
        for t in ts:
            for k in args.labels:
                mine = [r for r in rows if r["rule"] == rule and r["t"] == t and r["labels"] == k]
                cut = ({side: fmt([r[f"{side}_cutoff"] if r[f"{side}_cutoff"] is not None else float("nan")
                                   for r in mine], 4) for side in ("normal", "pneumonia")} if rule == "measured"
                       else {"normal": "", "pneumonia": ""})
                print(f"| {rule} | {t} | {k} | {fmt([r['normal_coverage'] for r in mine])} | "
                      f"{fmt([r['normal_precision'] for r in mine])} | {fmt([r['pneumonia_coverage'] for r in mine])} | "
                      f"{fmt([r['pneumonia_precision'] for r in mine])} | {fmt([r['box_precision'] for r in mine])} | "
                      f"{cut['normal']} | {cut['pneumonia']} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "teachers": teachers, "rows": rows}, indent=1,
                                        default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
