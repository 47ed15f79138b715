"""What each selection signal's candidates are made of: boxed, "not normal" and normal films.

    .venv/bin/python benchmarks/bench_signal_candidates.py --work W --models DIR [DIR ...] [--top 160]

hybrid-like strategies (cxrkit/selection/hybrid.py, likely_positive.py, detector_uncertainty.py)
take their candidates as the `--top` films of one pool signal, then pick a spread-out batch
among them; which films a signal puts there decides what the batch can be. This reads it off
models the active-learning benchmark trained: W is a work folder of benchmarks/bench_active_learning.py
(its `synthetic/` ingest: the pool and its truth), each DIR a model folder of that run (e.g.
W/part0/runs/repeat0/seed-random, W/part0/runs/repeat0/random/round7: `detector/` and
`classifier/` inside). For each model it predicts the whole pool with the workbench's Predictor
(the run's own settings, from its result.json; one torch thread) and prints, per signal, its mean on each kind of
film and the kinds among its top films. A few minutes a model on 2 cores; run it alone.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIGNALS = ("uncertainty", "uncertainty - subtype", "detection", "classifier", "subtype", "flip", "opacity")
KINDS = ("normal", "not normal", "boxed")
SEEN = 0.1


def film_kinds(records) -> np.ndarray:
    """0 normal, 1 "not normal" (no opacity box, impression not Normal), 2 boxed (an opacity box)."""
    from cxrkit.core.labels import load_schema

    schema = load_schema()
    return np.array([2 if any(b.finding == schema.opacity for b in r.boxes) else 0 if r.impression == schema.normal
                     else 1 for r in records])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a bench_active_learning.py work folder")
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="model folders of that run")
    parser.add_argument("--top", type=int, default=160, help="candidates per signal (hybrid: 4 x the batch)")
    args = parser.parse_args()

    import torch
    from bench_boxed_films import truth_by_id, what_was_chosen

    from cxrkit.core.manifest import read_manifest
    from cxrkit.core.params import load_params
    from cxrkit.models.detector import trained_weights
    from cxrkit.models.predictor import combine_uncertainty
    from cxrkit.selection import pool_from_predictions
    from cxrkit.selection.al_benchmark import (
        benchmark_params,
        predict_pool,
        split_for_benchmark,
    )

    runs = sorted(args.work.glob("part*/result.json"))
    if not runs:
        parser.error(f"{args.work} holds no part*/result.json: give the work folder of a finished "
                     "bench_active_learning.py run")
    torch.set_num_threads(1)
    data_dir = args.work / "synthetic" / "workspace" / "data"
    records = read_manifest(data_dir / "manifest.jsonl")
    pool, _, _ = split_for_benchmark(records)
    kinds = film_kinds(pool)
    truth = truth_by_id(args.work, records)
    ids = [r.image_id for r in pool]

    def boxed_view(index) -> str:  # the generator's difficulty and box area of the boxed films among `index`
        seen = what_was_chosen([ids[i] for i in index if kinds[i] == 2], truth)
        return f"{seen['difficulty']:.3f} | {seen['box_area']:.3f}"

    # The models' sizes and the predictor as the run had them (every part of a run shares them).
    params = benchmark_params(load_params(), json.loads(runs[0].read_text())["settings"])
    print(f"{platform.node()}, {datetime.date.today()}: pool {len(pool)} films, "
          + ", ".join(f"{int(np.sum(kinds == k))} {name}" for k, name in enumerate(KINDS)) + f"; top {args.top}")
    print(f"the pool's boxed films: difficulty | box area {boxed_view(range(len(pool)))}")
    print(f"\n| model | signal | mean: {' | '.join(KINDS)} | top {args.top}: {' | '.join(KINDS)} "
          "| their boxed films: difficulty | box area |")
    print("|---|---|" + "---:|" * 8)
    unseen = []
    for folder in args.models:
        label = folder.relative_to(args.work) if folder.is_relative_to(args.work) else folder
        predictions = predict_pool(pool, data_dir, trained_weights(folder / "detector"),
                                   folder / "classifier" / "classifier.pt", params)
        signals = pool_from_predictions(ids, predictions).signals
        without = {k: w for k, w in params["predictor"]["weights"].items() if k != "subtype"}
        signals["uncertainty - subtype"] = np.array([combine_uncertainty(p.signals, without) for p in predictions])
        low = np.nan_to_num(signals["opacity"]) < SEEN
        unseen.append(f"| {label} | "
                      f"{int(np.sum(low & (kinds == 2)))} | {boxed_view(np.flatnonzero(low))} | "
                      f"{int(np.sum(~low & (kinds == 2)))} | {boxed_view(np.flatnonzero(~low))} | "
                      f"{int(np.sum(low & (kinds < 2)))} |")
        for name in SIGNALS:
            v = signals[name]
            means = [np.nanmean(v[kinds == k]) if np.any(~np.isnan(v[kinds == k])) else np.nan for k in range(3)]
            top = np.argsort(-np.nan_to_num(v, nan=-1.0), kind="stable")[: args.top]
            counts = [int(np.sum(kinds[top] == k)) for k in range(3)]
            print(f"| {label} | {name} | "
                  + " | ".join("–" if np.isnan(m) else f"{m:.3f}" for m in means) + " | "
                  + " | ".join(str(c) for c in counts) + f" | {boxed_view(top)} |")
    print(f"\n| model | boxed films, best opacity score < {SEEN} | difficulty | box area | >= {SEEN} | difficulty "
          f"| box area | films without an opacity, < {SEEN} |")
    print("|---|" + "---:|" * 7)
    print("\n".join(unseen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
