"""The promotion gate on the RSNA metric: both models at one fixed box threshold, or each at its own.

    .venv/bin/python benchmarks/bench_gate_threshold.py --work W [--sizes 20 50 100] [--draws 10] [--resamples 300]

The gate (cxrkit/models/registry.py) refuses a candidate when the paired 95 % interval of
candidate - serving lies wholly below -tolerance on one of its metrics (cxrkit/pipeline/compare.py).
The RSNA metric counts every box as a guess, so its threshold is part of it: `detector.rsna`
reads both models at one fixed threshold, `detector.rsna_operating` each at the best threshold
of OPERATING_GRID on the images compared. This reads, on detectors the active-learning benchmark
trained, which reading's refusals the test films bear out. W is the work folder of a finished
benchmarks/bench_active_learning.py run that kept, per repeat, the seed model (20 random labels)
and random + pretraining's and hybrid + pretraining's last models (300 labels), as
`--run operating-point` does (part*/runs/repeat*/{seed-random, random+pt/round7, hybrid+pt/round7}).

For each pair (candidate, serving) the truth is the difference on the test films: on the RSNA
metric with each model at the threshold the whole validation set chooses for it (where the
workbench would serve it: the evaluate stage's operating_conf), at each fixed threshold, and on
mAP@0.5. The gate reads the whole validation set once and `--draws` random subsets of each of
`--sizes` films (a young project's validation set is small); each line says how often it refuses
the candidate on each reading. It also prints the threshold each model's validation films choose.
One prediction pass per model and split; about 6 minutes on 2 cores with `--draws 20`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIXED = (0.1, 0.3)  # the active-learning benchmark's detector.rsna_conf, and params.yaml's
MODELS = {"seed": "seed-random", "random": "random+pt/round7", "hybrid": "hybrid+pt/round7"}
PAIRS = (("random", "seed"), ("hybrid", "seed"), ("hybrid", "random"), ("random", "hybrid"))  # (candidate, serving)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a bench_active_learning.py work folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100], help="validation subset sizes")
    parser.add_argument("--draws", type=int, default=10, help="random subsets of each size")
    parser.add_argument("--resamples", type=int, default=300, help="bootstrap resamples per comparison")
    args = parser.parse_args()

    from cxrkit.core.labels import load_schema
    from cxrkit.core.manifest import read_manifest
    from cxrkit.core.params import load_params
    from cxrkit.evaluation.metrics import rsna_score, scored_at_least
    from cxrkit.models.detector import evaluate_detector, load_detector, trained_weights
    from cxrkit.models.registry import DEFAULT_TOLERANCE
    from cxrkit.pipeline.compare import detector_readers, paired
    from cxrkit.selection.al_benchmark import benchmark_params, split_for_benchmark

    runs = sorted(args.work.glob("part*/result.json"))
    repeats = []  # each part's own repeats (a work folder may hold older runs' folders beside them)
    for run in runs:
        settings = json.loads(run.read_text())["settings"]
        first = int(settings["first_repeat"])
        repeats += [run.parent / "runs" / f"repeat{k}" for k in range(first, first + int(settings["repeats"]))]
    repeats = [r for r in repeats if all((r / sub / "detector").is_dir() for sub in MODELS.values())]
    if not repeats:
        parser.error(f"{args.work} holds no finished run with {MODELS['hybrid']} models kept: give the work folder "
                     "of bench_active_learning.py --run operating-point")
    start = time.time()
    schema = load_schema()
    data_dir = args.work / "synthetic" / "workspace" / "data"
    _, val, test = split_for_benchmark(read_manifest(data_dir / "manifest.jsonl"))
    det = benchmark_params(load_params(), json.loads(runs[0].read_text())["settings"])["detector"]
    conf = float(det.get("conf", 0.01))
    print(f"{platform.node()}, {datetime.date.today()}: {len(repeats)} repeats, validation {len(val)} films, "
          f"test {len(test)}; tolerance {DEFAULT_TOLERANCE}, {args.resamples} resamples, {args.draws} draws a size")

    def evaluated(folder: Path, records) -> dict:
        detector = load_detector(trained_weights(folder / "detector"), schema)
        return evaluate_detector(detector, records, data_dir, int(det["imgsz"]), conf, FIXED[0], schema=schema,
                                 keep_images=True)

    # The gate's readers (cxrkit/pipeline/compare.py), one set per fixed threshold.
    readers_at = {t: detector_readers(schema.opacity, conf, t) for t in FIXED}

    def gate_readers(by_class: dict) -> dict:  # reading -> a function of drawn validation indices
        return {"rsna_operating": readers_at[FIXED[0]]["detector.rsna_operating"](by_class),
                **{f"rsna@{t}": readers_at[t]["detector.rsna"](by_class) for t in FIXED},
                "map50": readers_at[FIXED[0]]["detector.map50"](by_class)}

    readings = ["rsna_operating"] + [f"rsna@{t}" for t in FIXED] + ["map50"]
    truth = {pair: [] for pair in PAIRS}            # per repeat: {reading: test difference}
    chosen = {name: [] for name in MODELS}          # per repeat: the threshold the validation films choose
    n_val = len(val)  # split_for_benchmark keeps only films with complete boxes: evaluate_detector scores them all
    refused = {(pair, size): {r: [] for r in readings} for pair in PAIRS for size in args.sizes + [n_val]}
    for repeat in repeats:
        on_val, on_test = {}, {}
        for name, sub in MODELS.items():
            on_val[name], on_test[name] = evaluated(repeat / sub, val), evaluated(repeat / sub, test)
            chosen[name].append(on_val[name]["operating_conf"])
        gate = {name: gate_readers(on_val[name]["images"]["by_class"]) for name in MODELS}

        def test_reading(name: str) -> dict:
            opacity = on_test[name]["images"]["by_class"][schema.opacity]
            own = on_val[name]["operating_conf"]
            return {"rsna_operating": rsna_score(scored_at_least(opacity, own)) if own is not None else np.nan,
                    **{f"rsna@{t}": rsna_score(scored_at_least(opacity, t)) for t in FIXED},
                    "map50": on_test[name]["map50"]}

        tests = {name: test_reading(name) for name in MODELS}
        for candidate, serving in PAIRS:
            truth[(candidate, serving)].append({r: tests[candidate][r] - tests[serving][r] for r in readings})
            for size in args.sizes + [n_val]:
                for draw in range(args.draws if size < n_val else 1):
                    rng = np.random.default_rng([draw, size])  # the same subsets for every pair and repeat
                    index = np.sort(rng.choice(n_val, size, replace=False)) if size < n_val else np.arange(size)
                    draws = [index] + [index[rng.integers(0, size, size)] for _ in range(args.resamples)]
                    for reading in readings:
                        entry = paired(gate[candidate][reading], gate[serving][reading], draws)
                        if entry is not None:  # undefined on these films (no truth, no boxes): not read
                            refused[((candidate, serving), size)][reading].append(entry["high"] < -DEFAULT_TOLERANCE)
        print(f"  {repeat.relative_to(args.work)}: {time.time() - start:.0f} s", flush=True)

    print("\nThe threshold each model's validation films choose (the evaluate stage's operating_conf), per repeat\n")
    print("| model | " + " | ".join(r.name for r in repeats) + " |")
    print("|---|" + "---:|" * len(repeats))
    for name, values in chosen.items():
        print(f"| {name} | " + " | ".join("–" if v is None else f"{v:g}" for v in values) + " |")

    print("\nThe test's truth: candidate - serving on the test films, mean over repeats [min, max]\n")
    print("| candidate | serving | " + " | ".join(readings) + " |")
    print("|---|---|" + "---:|" * len(readings))
    for pair, rows in truth.items():
        cells = []
        for r in readings:
            v = np.array([row[r] for row in rows])
            cells.append(f"{np.nanmean(v):+.3f} [{np.nanmin(v):+.3f}, {np.nanmax(v):+.3f}]")
        print(f"| {pair[0]} | {pair[1]} | " + " | ".join(cells) + " |")

    print("\nThe gate: how often it refuses the candidate on each reading (refused / comparisons)\n")
    print("| candidate | serving | validation films | " + " | ".join(readings) + " |")
    print("|---|---|---:|" + "---:|" * len(readings))
    for (pair, size), by_reading in refused.items():
        print(f"| {pair[0]} | {pair[1]} | {size} | "
              + " | ".join(f"{sum(v)}/{len(v)}" for v in by_reading.values()) + " |")
    print(f"\n{time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
