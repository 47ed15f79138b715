"""Active-learning benchmark: the workbench's strategies against random sampling, with and without
self-training, on the synthetic generator's published population (issue 16's settings).

    .venv/bin/python benchmarks/bench_active_learning.py [--work DIR] [--processes 2]

Run it alone on a quiet machine: a few hours on 2 CPU cores (nothing else training or testing).

Runs the recorded settings of BENCHMARKS.md with `cxr al-benchmark` (cxrkit/selection/al_benchmark.py has
the method) in a scratch folder: generates and ingests the synthetic study once, runs the
repeats in `--processes` processes side by side (one torch thread each: on 2 cores that beats
one process with 2 threads for models this small), merges them, copies the small outputs
(table.txt, summary.csv, rows.csv, result.json, learning_curve.png) to
benchmarks/results/active_learning/ and prints the table.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The run issue 16 asks for (BENCHMARKS.md, "Active learning on the published population"): 2,200
# synthetic images at 256 px with the published population (about 1,540 pool, 330 fixed validation,
# 330 fixed test images, split by patient), 20 seed labels (random for random order, typiclust's cold
# start for the others), 6 rounds of 20, 5 repeats with paired seed sets; random, uncertainty, hybrid
# and class_balanced, each also with self-training (+st). The seed detector (yolo11n, 128 px) trains 40
# epochs from scratch; each round fine-tunes the previous round's detector for 10 epochs; the
# classifier (resnet18, 64 px, 6 epochs) trains from scratch every round.
STUDY = {"n": 2200, "size": 256, "seed": 0}
REPEATS = 5
ARGS = ["--seed-size", "20", "--rounds", "6", "--batch", "20", "--detector-epochs", "40", "--detector-imgsz", "128",
        "--warm-start", "--finetune-epochs", "10", "--classifier-epochs", "6", "--classifier-size", "64",
        "--strategies", "random,uncertainty,hybrid,class_balanced", "--cold-start", "typiclust", "--semi-supervised"]
RESULTS = ROOT / "benchmarks" / "results" / "active_learning_population"
OUTPUTS = ("table.txt", "summary.csv", "rows.csv", "result.json", "learning_curve.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--processes", type=int, default=2, help="processes the repeats are split over")
    args = parser.parse_args()
    from cxrkit.selection.al_benchmark import synthetic_records

    work = (args.work or Path(tempfile.mkdtemp(prefix="cxr-al-bench-"))).resolve()
    started = time.perf_counter()
    synthetic_records(work / "synthetic", **STUDY)
    cxr = [sys.executable, "-m", "cxrkit.cli"]
    shares = [REPEATS // args.processes + (k < REPEATS % args.processes) for k in range(args.processes)]
    runs, first = [], 0
    for k, repeats in enumerate(s for s in shares if s):
        out = work / f"part{k}"
        argv = [*cxr, "al-benchmark", "--out", str(out), "--workspace", str(work / "synthetic" / "workspace"),
                *ARGS, "--seed", str(STUDY["seed"]), "--first-repeat", str(first), "--repeats", str(repeats),
                "--threads", "1" if args.processes > 1 else "0"]
        print(" ".join(argv[2:]), flush=True)
        with (work / f"part{k}.log").open("w") as log:  # the child keeps its own copy of the handle
            runs.append((out, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)))
        first += repeats
    failed = [out for out, proc in runs if proc.wait() != 0]
    if failed:
        print(f"failed: {', '.join(str(out) for out in failed)} (see the .log beside each)", file=sys.stderr)
        return 1
    merged = work / "merged"
    argv = [*cxr, "al-benchmark", "--out", str(merged)] + [a for out, _ in runs for a in ("--merge", str(out))]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    print(result.stdout, result.stderr, sep="\n")
    if result.returncode != 0:
        return result.returncode
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        shutil.copyfile(merged / name, RESULTS / name)
    print(f"{time.perf_counter() - started:.0f} s; results copied to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
