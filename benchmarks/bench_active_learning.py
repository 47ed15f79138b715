"""Active-learning benchmark: every strategy against random sampling, on the synthetic generator's data.

    .venv/bin/python benchmarks/bench_active_learning.py [--work DIR] [-- extra `cxr al-benchmark` options]

Runs `cxr al-benchmark` (cxrkit/al_benchmark.py has the method) with the sizes recorded in
BENCHMARKS.md, in a scratch folder (models and the synthetic study stay there), then copies
the small outputs (table.txt, summary.csv, rows.csv, result.json, learning_curve.png) to
benchmarks/results/active_learning/ and prints the table.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The recorded run (BENCHMARKS.md): 400 synthetic images at 256 px, 20 random seed labels, 5 rounds
# of 20, 3 repeats, random vs hybrid. The seed detector (yolo11n, 128 px) trains 40 epochs from
# scratch; each round fine-tunes the previous round's detector for 10 epochs; the classifier
# (resnet18, 64 px, 6 epochs) trains from scratch every round. About 40 min on 2 idle cores.
ARGS = ["--n", "400", "--size", "256", "--difficulty", "0.5", "--seed-size", "20", "--rounds", "5", "--batch", "20",
        "--repeats", "3", "--detector-epochs", "40", "--detector-imgsz", "128", "--warm-start", "--finetune-epochs",
        "10", "--classifier-epochs", "6", "--classifier-size", "64", "--strategies", "random,hybrid"]
RESULTS = ROOT / "benchmarks" / "results" / "active_learning"
OUTPUTS = ("table.txt", "summary.csv", "rows.csv", "result.json", "learning_curve.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("extra", nargs="*", help="more `cxr al-benchmark` options (they override the recorded ones)")
    args = parser.parse_args()
    from typer.testing import CliRunner

    from cxrkit.cli import app

    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-al-bench-"))
    argv = ["al-benchmark", "--out", str(work), *ARGS, *args.extra]
    print("cxr " + " ".join(argv), flush=True)
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    print(result.output)
    if result.exit_code != 0:
        return result.exit_code
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        shutil.copyfile(work / name, RESULTS / name)
    print(f"results copied to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
