"""What each arm of an active-learning run labeled, counted on the synthetic generator's truth.

    .venv/bin/python benchmarks/bench_picks_on_truth.py --work W --result R

The benchmark sees only the labels. The generator also knows how hard each film is (study/truth.jsonl:
difficulty 0 conspicuous .. 1 faint, and the boxes' size), which says what kind of positives a strategy
feeds the detector (BENCHMARKS.md "What the detector learns from the chosen films": the plainer ones
teach it less). For each arm of R, over the model-driven rounds (1 ..; round 0 is the seed, the same
films for every arm with a random first batch), mean over the repeats: the films labeled, the boxed
films among them, their mean difficulty and their boxes' median area (fraction of the film). An arm of
hybrid_random is also split into its two halves: each batch's first films are hybrid's pick
(`HybridRandom.select` returns them first, and the benchmark keeps each batch in that order), the rest
its random draw. The pool's boxed films are the last row, for scale.

W holds the ingest R ran on (its `synthetic/`, checked by R's ingest stamp); R is a merged or a part's
result.json. Reads files only: a few seconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_boxed_films import read_run, what_was_chosen  # noqa: E402


def halves(result: dict, arm: str) -> dict[str, slice] | None:
    """For an arm of hybrid_random: which films of each batch are hybrid's and which random's; else None."""
    if arm.split("+")[0] != "hybrid_random":
        return None
    from cxrkit.selection import get_strategy

    strategy = get_strategy("hybrid_random", result["settings"]["strategies"].get("hybrid_random"))
    n_hybrid = strategy.hybrid_part(int(result["settings"]["batch"]))
    return {"hybrid half": slice(0, n_hybrid), "random half": slice(n_hybrid, None)}


def counted(ids_by_repeat: list[list[str]], truth: dict) -> dict:
    """Films, boxed films and what the boxed ones are made of, mean over the repeats."""
    per_repeat = [{"films": len(ids), "boxed": sum(1 for i in ids if truth[i]["boxes"]), **what_was_chosen(ids, truth)}
                  for ids in ids_by_repeat]
    return {k: float(np.mean([r[k] for r in per_repeat])) for k in ("films", "boxed", "difficulty", "box_area")}


def rows(result: dict, truth: dict) -> list[tuple[str, dict]]:
    """(name, counts) for every arm of `result`, a hybrid_random arm's halves after it."""
    out = []
    arms = dict.fromkeys(key.rsplit("/", 1)[0] for key in result["selected"])
    for arm in arms:
        by_repeat = [result["selected"][key][1:] for key in result["selected"] if key.rsplit("/", 1)[0] == arm]
        out.append((arm, counted([[i for batch in rounds for i in batch] for rounds in by_repeat], truth)))
        for name, part in (halves(result, arm) or {}).items():
            out.append((f"  {name}", counted([[i for batch in rounds for i in batch[part]] for rounds in by_repeat],
                                             truth)))
    return out


def main() -> int:
    from cxrkit.selection.al_benchmark import split_for_benchmark

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="the work folder whose synthetic/ the run ran on")
    parser.add_argument("--result", type=Path, required=True, help="the run's result.json")
    args = parser.parse_args()
    result, records, truth = read_run(args.work, args.result)
    pool = {r.image_id for r in split_for_benchmark(records)[0]}
    lines = [f"{args.result}: rounds 1..{result['settings']['rounds']} of batch {result['settings']['batch']}, "
             f"mean over {len({k.rsplit('/', 1)[1] for k in result['selected']})} repeats",
             "| arm | films | boxed films | difficulty of the boxed | median box area |", "|---|---:|---:|---:|---:|"]
    whole_pool = counted([sorted(pool)], truth)
    for name, c in [*rows(result, truth), ("the pool (all of it)", whole_pool)]:
        lines.append(f"| {name} | {c['films']:.1f} | {c['boxed']:.1f} | {c['difficulty']:.3f} | {c['box_area']:.3f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
