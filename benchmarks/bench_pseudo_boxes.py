"""Self-training's pseudo-labels checked box by box against the truth the teacher never saw.

    .venv/bin/python benchmarks/bench_pseudo_boxes.py --work W --models DIR [DIR ...]

The active-learning benchmark counts a self-training film as right when its impression is
(pneumonia or not); this reads what the detector then trains on. W is a work folder of
benchmarks/bench_active_learning.py, each DIR a model folder of that run
(W/partK/runs/repeatR/ARM/roundN: `detector/` and `classifier/` inside). Each model is the
teacher: it predicts the pool films its arm had not labeled by then (from the part's
result.json) and the validation films, and the recorded self-training rule of that part labels
what it is sure of, as the benchmark's rounds do (cxrkit.selection.al_benchmark.pseudo_labeled:
the truth hidden, the cutoffs set on the validation films, capped by the films labeled).
Printed per teacher: Pneumonia films and how many show pneumonia; their pseudo boxes and the
share that match a true opacity box at IoU >= 0.5 (the mAP@0.5 criterion; one to one, greedily
by IoU) or overlap one at all (IoU >= 0.1: there, but misplaced); the share of those films' true
opacity boxes matched (the rest the detector is told is background); Normal films and how many
are free of pneumonia. Some 15 s a model on 2 cores; run it alone.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IOUS = (0.5, 0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a bench_active_learning.py work folder")
    parser.add_argument("--models", type=Path, nargs="+", required=True,
                        help="model folders of that run: W/partK/runs/repeatR/ARM/roundN")
    args = parser.parse_args()

    import torch

    from cxrkit.core.labels import load_schema
    from cxrkit.core.manifest import read_manifest
    from cxrkit.core.params import load_params
    from cxrkit.evaluation.effort import match_boxes
    from cxrkit.models.detector import trained_weights
    from cxrkit.selection.al_benchmark import (
        benchmark_params,
        predict_pool,
        pseudo_labeled,
        split_for_benchmark,
    )

    torch.set_num_threads(1)
    schema = load_schema()
    data_dir = args.work / "synthetic" / "workspace" / "data"
    pool, val, _ = split_for_benchmark(read_manifest(data_dir / "manifest.jsonl"))
    print(f"{platform.node()}, {datetime.date.today()}: pool {len(pool)} films, validation {len(val)}")
    print("\n| teacher | labeled | Pneumonia films | showing pneumonia | pseudo boxes | IoU >= 0.5 | IoU >= 0.1 "
          "| true boxes matched (0.5) | Normal films | free of pneumonia |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_params = load_params()
    for folder in args.models:
        rnd, arm, repeat = folder.name, folder.parent.name, folder.parent.parent.name
        if (len(folder.parents) < 4 or not (folder.parents[3] / "result.json").is_file()
                or not rnd.startswith("round") or not repeat.startswith("repeat")):
            parser.error(f"{folder}: not a model folder W/partK/runs/repeatR/ARM/roundN of a finished run")
        result = json.loads((folder.parents[3] / "result.json").read_text())
        picks = result["selected"][f"{arm}/{repeat.removeprefix('repeat')}"][: int(rnd.removeprefix("round")) + 1]
        labeled = {i for batch in picks for i in batch}
        unlabeled = [r for r in pool if r.image_id not in labeled]
        params = benchmark_params(base_params, result["settings"])
        weights, checkpoint = trained_weights(folder / "detector"), folder / "classifier" / "classifier.pt"
        predictions = predict_pool([*unlabeled, *val], data_dir, weights, checkpoint, params)
        added, _ = pseudo_labeled(unlabeled, predictions[: len(unlabeled)], val, predictions[len(unlabeled):],
                                  result["settings"]["self_training"], str(folder), len(labeled))
        truth = {r.image_id: r for r in unlabeled}
        sick = [r for r in added if r.impression == schema.pneumonia]
        normal = [r for r in added if r.impression == schema.normal]
        true_boxes = {r.image_id: [b for b in truth[r.image_id].boxes if b.finding == schema.opacity] for r in sick}
        boxes = sum(len(r.boxes) for r in sick)
        hits = {t: sum(len(match_boxes(r.boxes, true_boxes[r.image_id], min_iou=t)) for r in sick) for t in IOUS}
        n_true = sum(len(v) for v in true_boxes.values())

        def share(k: int, n: int) -> str:
            return f"{k / n:.2f}" if n else "–"

        print(f"| {folder.relative_to(args.work) if folder.is_relative_to(args.work) else folder} | {len(labeled)} "
              f"| {len(sick)} | {sum(truth[r.image_id].impression == schema.pneumonia for r in sick)} | {boxes} "
              f"| {share(hits[0.5], boxes)} | {share(hits[0.1], boxes)} | {share(hits[0.5], n_true)} of {n_true} "
              f"| {len(normal)} | {sum(truth[r.image_id].impression != schema.pneumonia for r in normal)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
