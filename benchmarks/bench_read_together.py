"""Arms of active-learning results read against a baseline arm recorded under other settings.

    .venv/bin/python benchmarks/bench_read_together.py --baseline FOLDER:ARM FOLDER [FOLDER ...] [--repeats 0,1]

`cxr al-benchmark --merge` joins parts of one protocol only: it refuses parts whose settings differ,
so that one folder's figures always rest on one protocol. A question across protocols (arms whose
detector trains afresh each round against random + pretraining warm-started, say) still needs both
read on the same repeats. This reads each results folder's rows.csv (the merged rows), takes ARM of the
baseline folder as the yardstick (renamed "baseline", so it cannot clash with an arm of the same name in
the others) and prints the merge's table (cxrkit.selection.al_benchmark.table_lines): every arm's curve, its labels
to reach the baseline's final quality and its area under each curve, with the 95 % bootstrap intervals
over the repeats that the merge computes (savings_intervals, aulc_intervals). The folders must hold the same
repeats and have run on one ingest (result.json's stamp): the resampling pairs arms by repeat.
`--repeats` reads only the repeats named (a run of fewer repeats against a baseline of more), each of
which every folder must hold.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrkit.selection.al_benchmark import (  # noqa: E402
    BenchmarkResult,
    aulc_intervals,
    metrics_in,
    read_rows,
    savings_intervals,
    summarise,
    table_lines,
)


def rows_read_together(baseline: Path, arm: str, folders: list[Path], repeats: set[int] | None = None) -> list[dict]:
    """The baseline folder's `arm` as "baseline" beside every arm of the other folders, over `repeats`
    (None: all); a clear error when the folders ran on other ingests or hold other repeats, or the arm
    is not there."""
    stamps = {f: json.loads((f / "result.json").read_text())["settings"].get("ingest") for f in [baseline, *folders]}
    if None in stamps.values() or len(set(stamps.values())) > 1:
        raise SystemExit("the folders must have run on one ingest: "
                         + ", ".join(f"{f}: {s}" for f, s in stamps.items()))
    base = [{**r, "strategy": "baseline"} for r in read_rows(baseline) if r["strategy"] == arm]
    if not base:
        raise SystemExit(f"{baseline} has no arm {arm!r}")
    read = {f: read_rows(f) for f in folders}
    rows = [r for f in folders for r in read[f]]
    if repeats is not None:
        held = [{r["repeat"] for r in base}, *({r["repeat"] for r in read[f]} for f in folders)]
        if not all(repeats <= h for h in held):
            raise SystemExit(f"not every folder holds repeats {sorted(repeats)}: "
                             + ", ".join(f"{f}: {sorted(h)}" for f, h in zip([baseline, *folders], held)))
        base, rows = ([r for r in x if r["repeat"] in repeats] for x in (base, rows))
    if {r["repeat"] for r in base} != {r["repeat"] for r in rows}:
        raise SystemExit(f"the folders hold other repeats: {sorted({r['repeat'] for r in base})} in {baseline}, "
                         f"{sorted({r['repeat'] for r in rows})} in the others")
    return base + rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="FOLDER:ARM, the results folder and arm to read against")
    parser.add_argument("folders", nargs="+", type=Path, help="results folders whose arms are read against it")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap draws over the repeats")
    parser.add_argument("--repeats", default=None, help="read only these repeats, e.g. 0,1 (default: all)")
    args = parser.parse_args()
    folder, sep, arm = args.baseline.rpartition(":")
    if not sep or not folder or not arm:
        parser.error("--baseline takes FOLDER:ARM, e.g. benchmarks/results/x/warm_random:random+pt")
    try:
        repeats = {int(r) for r in args.repeats.split(",")} if args.repeats else None
    except ValueError:
        parser.error(f"--repeats takes repeat numbers separated by commas, e.g. 0,1; got {args.repeats!r}")
    rows = rows_read_together(Path(folder), arm, args.folders, repeats)
    metrics = metrics_in(rows)
    savings: dict = {m: {"baseline": savings_intervals(rows, m, "baseline", args.resamples)} for m in metrics}
    savings["aulc"] = {m: aulc_intervals(rows, m, args.resamples) for m in metrics}
    print(f"baseline: {arm} of {folder}; {len({r['repeat'] for r in rows})} repeats")
    print("\n".join(table_lines(BenchmarkResult(rows, summarise(rows), savings, settings={}))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
