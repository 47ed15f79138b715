"""Pseudo-labels: their precision and coverage by threshold, and what they do downstream.

    python benchmarks/bench_pseudo_labels.py [--n 200] [--val 50] [--size 256]
        [--subtype-thresholds none 0.5 0.7 0.9] [--box-thresholds none 0.25 0.5]
        [--det-imgsz 128] [--det-epochs 20] [--clf-size 64] [--clf-epochs 8] [--seed 21]

A synthetic mix that simulates the heterogeneous sets: one synthetic study (`--seed`, 21,
`--size` px, 70 % pneumonia), the first `--n - --val` images (by image id) train, the rest
validate. The training images are split in three equal parts:

    A  full labels (boxes with subtypes, image subtype)            -- the labeled core
    B  detection-only: boxes kept, every subtype removed            -- RSNA-like
    C  classification-only: boxes removed, metadata has_boxes False -- Kermany/COVID-like

Start: classifier0 on A + B + C (B adds only its Normal films), detector0 on A + B (C has
no boxes). Then

(a) for each subtype threshold: B's boxes get classifier0's subtype where sure enough;
    precision = pseudo subtypes equal to the synthetic truth, coverage = share of B's
    opacity boxes labeled; a classifier retrained on A + B' + C is scored on the validation
    set (macro AUROC over whole images and crops, and crops alone). "none" is classifier0.
(b) for each box threshold: C's pneumonia images get detector0's opacity boxes; precision
    = pseudo boxes overlapping a true box at IoU >= 0.4, coverage = true boxes of those
    images found; a detector retrained on A + B + C' is scored on the validation set
    (mAP@0.5, mAP@0.4, RSNA). Rows: "none" = detector0; "negatives" = C's Normal films
    added as images without boxes, no pseudo boxes; thresholds add both.

All trainings use the same seeds, so differences between rows are the pseudo-labels'
(plus run-to-run noise of small data: read differences under ~0.03 as noise).
Prints Markdown tables with the machine and the date.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
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
from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.importers.synthetic import load_synthetic  # noqa: E402
from cxrkit.data.ingest import IngestOptions, ingest  # noqa: E402
from cxrkit.data.synthetic import generate_study  # noqa: E402
from cxrkit.evaluation.metrics import iou_matrix  # noqa: E402
from cxrkit.models.classifier import (  # noqa: E402
    evaluate_classifier,
    load_classifier,
    train_classifier,
)
from cxrkit.models.detector import evaluate_detector, load_detector, train_detector  # noqa: E402
from cxrkit.models.pseudo_labels import pseudo_label_boxes, pseudo_label_subtypes  # noqa: E402


def threshold(text: str) -> float | None:
    return None if text.lower() in {"none", "off", "null"} else float(text)


def detection_only(r):
    return dataclasses.replace(r, subtype=None, boxes=[dataclasses.replace(b, subtype=None) for b in r.boxes],
                               metadata={**r.metadata, "has_boxes": True})


def classification_only(r):
    return dataclasses.replace(r, boxes=[], metadata={**r.metadata, "has_boxes": False})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--subtype-thresholds", type=threshold, nargs="+", default=[None, 0.5, 0.7, 0.9])
    ap.add_argument("--box-thresholds", type=threshold, nargs="+", default=[None, 0.25, 0.5])
    ap.add_argument("--det-imgsz", type=int, default=128)
    ap.add_argument("--det-epochs", type=int, default=20)
    ap.add_argument("--clf-size", type=int, default=64)
    ap.add_argument("--clf-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=21, help="the synthetic study's seed (another seed: other images)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    schema = load_schema()
    params = load_params()
    det = params["detector"] | {"imgsz": args.det_imgsz, "epochs": args.det_epochs, "batch": 8, "nbs": 8,
                                "warmup_epochs": 1, "val": False, "seed": 0}
    clf = params["classifier"] | {"input_size": args.clf_size, "epochs": args.clf_epochs, "patience": 0}
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-pseudo-") as tmp:
        root = Path(tmp)
        study = generate_study(root / "study", n=args.n, seed=args.seed, size=args.size, positive_fraction=0.7,
                               difficulty=0.3, labeled_fraction=1.0, workers=0)
        os.environ.setdefault("CXR_DEID_SALT", "bench-pseudo-salt-0123456789abcdef")
        ws = Workspace(root / "ws")
        ingest(load_synthetic(study), ws, IngestOptions(workers=0))
        data = ws.data_dir
        records = sorted(read_manifest(ws.manifest_path), key=lambda r: r.image_id)
        n_train = args.n - args.val
        train = [dataclasses.replace(r, split="train") for r in records[:n_train]]
        val = [dataclasses.replace(r, split="val") for r in records[n_train:]]
        third = n_train // 3
        a, b, c = train[:third], [detection_only(r) for r in train[third:2 * third]], \
            [classification_only(r) for r in train[2 * third:]]
        truth = {r.image_id: r for r in train}

        def fit_classifier(name, recs):
            ckpt = train_classifier(recs, data, root / name, clf, val)
            m = evaluate_classifier(load_classifier(ckpt), val, data, clf)
            return {"macro_auroc": m["all"]["macro_auroc"], "crop_auroc": m["crop"]["macro_auroc"],
                    "image_auroc": m["image"]["macro_auroc"]}

        def fit_detector(name, recs):
            weights = train_detector(recs, data, root / name, det, val_records=val)
            m = evaluate_detector(load_detector(weights), val, data, args.det_imgsz, conf=det["conf"],
                                  rsna_conf=det["rsna_conf"])
            return {"map50": m["map50"], "map40": m["map40"], "rsna": m["rsna"]}, weights

        clf0_metrics = fit_classifier("clf0", a + b + c)
        clf0 = load_classifier(root / "clf0" / "classifier.pt")
        det0_metrics, det0_weights = fit_detector("det0", a + b + c)
        det0 = load_detector(det0_weights)
        print(f"start models ready after {time.perf_counter() - started:.0f} s", file=sys.stderr)

        sub_rows = []
        for t in args.subtype_thresholds:
            if t is None:
                sub_rows.append({"threshold": "none", "precision": float("nan"), "coverage": 0.0, "labeled": 0} | clf0_metrics)
                continue
            b2, report = pseudo_label_subtypes(b, clf0, data, t, clf["crop_margin"], schema)
            right = [truth[i].boxes[k].subtype == s for i, k, s, _ in report["boxes"]]
            row = {"threshold": t, "precision": float(np.mean(right)) if right else float("nan"),
                   "coverage": report["labeled"] / max(report["considered"], 1), "labeled": report["labeled"]}
            sub_rows.append(row | fit_classifier(f"clf-{t}", a + b2 + c))
            print(json.dumps(sub_rows[-1]), file=sys.stderr)

        box_rows = [{"setting": "none", "precision": float("nan"), "coverage": 0.0, "boxes": 0, "negatives": 0} | det0_metrics]
        for t in ["negatives", *[t for t in args.box_thresholds if t is not None]]:
            c2, report = pseudo_label_boxes(c, det0, data, None if t == "negatives" else t, args.det_imgsz,
                                            normal_negatives=True, schema=schema)
            hits, found, n_true = [], 0, 0
            for r in c2:
                if not r.boxes:
                    continue
                gt = np.array([[x.x, x.y, x.w, x.h] for x in truth[r.image_id].boxes]).reshape(-1, 4)
                mine = np.array([[x.x, x.y, x.w, x.h] for x in r.boxes]).reshape(-1, 4)
                iou = iou_matrix(mine, gt)
                hits.extend(iou.max(1) >= 0.4 if gt.size else np.zeros(len(mine), bool))
                found += int((iou.max(0) >= 0.4).sum()) if gt.size else 0
                n_true += len(gt)
            pneumonia_boxes = sum(len(truth[r.image_id].boxes) for r in c if r.impression == schema.pneumonia)
            metrics, _ = fit_detector(f"det-{t}", a + b + c2)
            box_rows.append({"setting": t, "precision": float(np.mean(hits)) if hits else float("nan"),
                             "coverage": found / max(pneumonia_boxes, 1), "boxes": report["boxes"],
                             "negatives": report["normal_negatives"]} | metrics)
            print(json.dumps(box_rows[-1]), file=sys.stderr)

    total = time.perf_counter() - started
    print(f"\n{datetime.date.today()}; {os.cpu_count()} cores, load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; total {total / 60:.1f} min")
    print(f"Data: {args.n - args.val} train (A {len(a)} full, B {len(b)} detection-only, C {len(c)} "
          f"classification-only) / {args.val} val, {args.size} px; detector {args.det_imgsz} px x {args.det_epochs} "
          f"epochs, classifier {args.clf_size} px x {args.clf_epochs} epochs.\n")
    print("(a) subtypes of B's boxes from classifier0\n")
    print("| threshold | precision | coverage | boxes labeled | val macro AUROC | crops AUROC | images AUROC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in sub_rows:
        print(f"| {r['threshold']} | {r['precision']:.3f} | {r['coverage']:.2f} | {r['labeled']} | "
              f"{r['macro_auroc']:.3f} | {r['crop_auroc']:.3f} | {r['image_auroc']:.3f} |")
    print("\n(b) opacity boxes on C from detector0\n")
    print("| setting | precision | coverage | pseudo boxes | normal negatives | val mAP@0.5 | mAP@0.4 | RSNA |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in box_rows:
        print(f"| {r['setting']} | {r['precision']:.3f} | {r['coverage']:.2f} | {r['boxes']} | {r['negatives']} | "
              f"{r['map50']:.3f} | {r['map40']:.3f} | {r['rsna']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "subtypes": sub_rows, "boxes": box_rows}, indent=2,
                                        default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
