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

# The recorded run (BENCHMARKS.md): 300 synthetic images at 256 px (pool 212, val 44, test 44),
# 20 random seed labels, 2 rounds of 20, 2 repeats, random vs hybrid, tiny models trained from
# scratch every round. Sized for the shared 2-core dev VM; a free machine can afford the
# defaults of `cxr al-benchmark` (5 rounds, detector 128 px / 15 epochs, four strategies).
ARGS = ["--n", "300", "--size", "256", "--difficulty", "0.5", "--seed-size", "20", "--rounds", "2", "--batch", "20",
        "--repeats", "2", "--detector-epochs", "10", "--detector-imgsz", "96", "--classifier-epochs", "3",
        "--classifier-size", "32", "--threads", "1", "--strategies", "random,hybrid"]
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
