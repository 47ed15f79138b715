"""What the detector learns from the films active learning chose: boxed films alone, and the rest.

    .venv/bin/python benchmarks/bench_boxed_films.py --work W [--result R] [--processes 2] [--evaluate-only]

Issue 16's shortfall, measured by the pretrained run (BENCHMARKS.md "The detector pretrained on the
pool"): hybrid reaches random's final mAP@0.5 holding more boxed films than random holds. Either
hybrid's boxed films teach less each, or the normal and "not normal" films random labels beside
them teach the detector too. This probe separates the two on the recorded picks, without
re-running selection: for each repeat of R (default the pretrained run's result.json) it trains
one detector from the run's pretrained weights, for the benchmark's 40 epochs at 128 px, on

- `random: all`: random + pretraining's 300 labeled films (its boxed films and its negatives);
- `random: boxed`: only the boxed films among them (n films);
- `hybrid: boxed`: the first n boxed films hybrid + pretraining labeled, in the order it picked them;
- `hybrid: boxed + random's rest`: those n films and random's negatives (as many films as `random: all`);

and evaluates each on the benchmark's fixed test films (mAP@0.5, RSNA, recall at IoU 0.5 of the
boxes scored >= 0.1, matched one to one as mAP@0.5 matches them, on all test opacities and on those of the fainter and the plainer half of the
films, false boxes >= 0.1 per film without an opacity), beside what the generator
knows of each condition's boxed films and the benchmark cannot see (study/truth.jsonl: their mean
difficulty, 0 conspicuous .. 1 faint, their boxes' median area as a fraction of the film, and films
whose label the generator corrupted on purpose). Each training is one shot
from the pretrained weights (the benchmark's arms fine-tune round after round; `random: all` is the
one-shot counterpart of random's final model). W is a work folder of `bench_active_learning.py
--run pretrained` (its `synthetic/` ingest and `part0/pretrained/detector.pt`); the ingest must be
the one R ran on (checked against R's ingest stamp when R has one; else every pick of R must be in
it, image ids being salted per ingest).
Writes benchmarks/results/boxed_films/{result.json,table.txt}; `--evaluate-only` trains nothing
and scores the weights an earlier run left under W/boxed_films/ again. Run it alone:
about 35 minutes on 2 cores in two single-thread processes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_RESULT = ROOT / "benchmarks" / "results" / "active_learning_pretrained" / "result.json"
OUT = ROOT / "benchmarks" / "results" / "boxed_films"
CONDITIONS = ("random: all", "random: boxed", "hybrid: boxed", "hybrid: boxed + random's rest")
SCORE = 0.1  # the benchmark's rsna_conf: the boxes its detectors count as guesses


def picks(result: dict, arm: str, repeat: int) -> list[str]:
    """The image ids `arm` labeled in `repeat`, in the order it labeled them (seed first)."""
    return [i for batch in result["selected"][f"{arm}/{repeat}"] for i in batch]


def training_sets(result: dict, repeat: int, by_id: dict) -> dict[str, list[str]]:
    """Each condition's image ids for one repeat (module docstring)."""
    random_ids = picks(result, "random+pt", repeat)
    boxed = [i for i in random_ids if by_id[i].boxes]
    rest = [i for i in random_ids if not by_id[i].boxes]
    hybrid_boxed = [i for i in picks(result, "hybrid+pt", repeat) if by_id[i].boxes][: len(boxed)]
    if len(hybrid_boxed) < len(boxed):
        raise SystemExit(f"repeat {repeat}: hybrid+pt labeled {len(hybrid_boxed)} boxed films, random+pt {len(boxed)}")
    return dict(zip(CONDITIONS, (random_ids, boxed, hybrid_boxed, hybrid_boxed + rest)))


def truth_by_id(work: Path, records: list) -> dict:
    """The generator's truth row of each ingested film. Ingest writes the manifest in the study's
    order; each row's boxes and DICOM header fields are checked against its record's, so a
    reordered ingest fails here."""
    from cxrkit.data.importers.synthetic import read_truth

    rows = read_truth(work / "synthetic" / "study")

    def same_film(row: dict, record) -> bool:  # the study and the workspace are both at 256 px
        header = {k: record.metadata.get(k) for k in ("view", "photometric", "bits_stored")}
        return (header == {k: row[k] for k in header}
                and [(b.x, b.y) for b in row["boxes"]] == [(round(b.x), round(b.y)) for b in record.boxes])

    if len(rows) != len(records) or not all(same_film(t, r) for t, r in zip(rows, records)):
        raise SystemExit(f"{work}/synthetic: the manifest is not in the study's order; cannot pair films with their truth")
    return {r.image_id: t for r, t in zip(records, rows)}


def what_was_chosen(ids: list[str], truth: dict) -> dict:
    """The generator's view of a training set's boxed films (module docstring)."""
    boxed = [truth[i] for i in ids if truth[i]["boxes"]]
    areas = [b.w * b.h / (t["width"] * t["height"]) for t in boxed for b in t["boxes"]]
    return {"difficulty": float(np.mean([t["difficulty"] for t in boxed])), "box_area": float(np.median(areas)),
            "noisy": sum(1 for i in ids if truth[i]["label_noise"] is not None)}


FAINT = 0.5  # the generator's difficulty is Beta(2, 2) around 0.5: films at or above it are the fainter half


def train_one(job: tuple) -> dict:
    """Train (unless `evaluate_only`) and evaluate one condition of one repeat, in a worker process
    on one torch thread. The weights stay under W/boxed_films/ for `--evaluate-only`."""
    repeat, condition, ids, work, weights, evaluate_only = job
    import torch

    torch.set_num_threads(1)
    from cxrkit.core.manifest import read_manifest
    from cxrkit.core.params import load_params
    from cxrkit.evaluation.metrics import image_matches
    from cxrkit.models.detector import (
        evaluate_detector,
        load_detector,
        train_detector,
        trained_weights,
    )
    from cxrkit.selection.al_benchmark import (
        DEFAULTS,
        benchmark_params,
        split_for_benchmark,
    )

    work = Path(work)
    data_dir = work / "synthetic" / "workspace" / "data"
    records = read_manifest(data_dir / "manifest.jsonl")
    _, val, test = split_for_benchmark(records)
    by_id = {r.image_id: r for r in records}
    truth = truth_by_id(work, records)
    det = {**benchmark_params(load_params(ROOT / "params.yaml"), DEFAULTS)["detector"], "weights": str(weights)}
    out = work / "boxed_films" / f"repeat{repeat}" / condition.replace(" ", "_").replace(":", "").replace("'", "")
    if evaluate_only:
        best = trained_weights(out)
    else:
        best = train_detector([by_id[i] for i in ids], data_dir, out, det, val_records=val[:8])
    d = evaluate_detector(load_detector(best), test, data_dir, int(det["imgsz"]), float(det["conf"]), SCORE,
                          keep_images=True)
    # (truth, boxes >= SCORE, scores) per test film, in the order of d["images"]["image_ids"]; matched
    # one to one at IoU 0.5 as mAP@0.5 matches them
    test_ids, images = d["images"]["image_ids"], d["images"]["rsna"]
    matches = image_matches(images, 0.5)

    def recall(faint: bool | None) -> float:
        found = [(int(hit.sum()), n) for i, (_, hit, n) in zip(test_ids, matches)
                 if n and (faint is None or (truth[i]["difficulty"] >= FAINT) == faint)]
        return sum(f for f, _ in found) / sum(n for _, n in found)

    negatives = [len(p) for g, p, _ in images if not len(g)]
    return {"repeat": repeat, "condition": condition, "films": len(ids),
            "boxed": sum(1 for i in ids if by_id[i].boxes), "map50": float(d["map50"]), "rsna": float(d["rsna"]),
            "recall": recall(None), "recall_faint": recall(True), "recall_plain": recall(False),
            "false_boxes": float(np.mean(negatives))}


def table(rows: list[dict]) -> list[str]:
    lines = [f"{'condition':30s} {'films':>6s} {'boxed':>6s} {'mAP@0.5':>15s} {'RSNA':>15s} "
             f"{'recall':>6s} {'faint':>5s} {'plain':>5s} {'false/neg':>9s} {'difficulty':>10s} {'box area':>8s} {'noisy':>5s}"]
    for condition in CONDITIONS:
        mine = [r for r in rows if r["condition"] == condition]
        if not mine:
            continue
        m = {k: np.array([r[k] for r in mine], dtype=float)
             for k in ("films", "boxed", "map50", "rsna", "recall", "recall_faint", "recall_plain", "false_boxes",
                       "difficulty", "box_area", "noisy")}
        lines.append(f"{condition:30s} {m['films'].mean():6.1f} {m['boxed'].mean():6.1f} "
                     f"{m['map50'].mean():7.3f} ± {m['map50'].std():.3f} {m['rsna'].mean():7.3f} ± {m['rsna'].std():.3f} "
                     f"{m['recall'].mean():6.2f} {m['recall_faint'].mean():5.2f} {m['recall_plain'].mean():5.2f} "
                     f"{m['false_boxes'].mean():9.2f} {m['difficulty'].mean():10.3f} "
                     f"{m['box_area'].mean():8.3f} {m['noisy'].mean():5.1f}")
    lines.append("")
    for mine, theirs in ((CONDITIONS[3], CONDITIONS[0]), (CONDITIONS[2], CONDITIONS[1])):
        pairs = [(a["map50"], b["map50"]) for a in rows for b in rows
                 if a["repeat"] == b["repeat"] and a["condition"] == mine and b["condition"] == theirs]
        if pairs:
            d = np.array([a - b for a, b in pairs])
            lines.append(f"{mine} minus {theirs}, mAP@0.5 paired over repeats: mean {d.mean():+.3f}, "
                         f"range [{d.min():+.3f}, {d.max():+.3f}], lower in {int((d < 0).sum())} of {len(d)}")
    lines.append("per repeat, mAP@0.5: " + "; ".join(
        f"{c}: " + " ".join(f"{r['map50']:.3f}" for r in sorted(rows, key=lambda r: r["repeat"]) if r["condition"] == c)
        for c in CONDITIONS))
    return lines


def read_run(work: Path, result_path: Path) -> tuple[dict, list, dict]:
    """A run's result.json, the records of the ingest under `work` it ran on, and their truth
    (`truth_by_id`). Refuses another ingest: by the run's ingest stamp where it has one, else
    by its picks, image ids being salted per ingest."""
    from cxrkit.core.manifest import read_manifest
    from cxrkit.selection.al_benchmark import ingest_stamp, split_for_benchmark

    result = json.loads(result_path.read_text())
    records = read_manifest(work / "synthetic" / "workspace" / "data" / "manifest.jsonl")
    truth = truth_by_id(work, records)
    stamp = result["settings"].get("ingest")
    if stamp and stamp != ingest_stamp([r for part in split_for_benchmark(records) for r in part]):
        raise SystemExit(f"{work}: its ingest is not the one {result_path} ran on")
    missing = {i for batch in result["selected"].values() for b in batch for i in b} - set(truth)
    if missing:
        raise SystemExit(f"{work}: {len(missing)} of {result_path}'s picks are not in its ingest")
    return result, records, truth


def main() -> int:
    from cxrkit.selection.al_benchmark import split_for_benchmark

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a `--run pretrained` work folder")
    parser.add_argument("--result", type=Path, default=DEFAULT_RESULT, help="the merged result.json whose picks to train on")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="train nothing: score the weights an earlier run left under WORK/boxed_films")
    args = parser.parse_args()
    result, records, truth = read_run(args.work, args.result)
    by_id = {r.image_id: r for r in records}
    pool, val, test = split_for_benchmark(records)
    weights = args.work / "part0" / "pretrained" / "detector.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights}: no pretrained weights (run bench_active_learning.py --run pretrained --work {args.work})")
    repeats = sorted({int(k.rsplit("/", 1)[1]) for k in result["selected"] if k.startswith("random+pt/")})
    sets = {r: training_sets(result, r, by_id) for r in repeats}
    jobs = [(r, c, ids, str(args.work), str(weights), args.evaluate_only) for r in repeats for c, ids in sets[r].items()]
    jobs.sort(key=lambda j: -len(j[2]))  # the large sets first: the processes finish together
    with ProcessPoolExecutor(args.processes, mp_context=get_context("spawn")) as ex:
        trained = list(ex.map(train_one, jobs))
    rows = [{**row, **what_was_chosen(sets[row["repeat"]][row["condition"]], truth)} for row in trained]
    lines = table(rows)
    # For scale: the same view of the pool's and the test's boxed films, and of all hybrid+pt labeled.
    hybrid_all = [what_was_chosen(picks(result, "hybrid+pt", r), truth) for r in repeats]
    for name, seen in (("the pool's boxed films", what_was_chosen([r.image_id for r in pool], truth)),
                       ("the test's boxed films", what_was_chosen([r.image_id for r in test], truth)),
                       ("all hybrid+pt labeled (mean over repeats)",
                        {k: float(np.mean([h[k] for h in hybrid_all])) for k in hybrid_all[0]})):
        lines.append(f"{name}: difficulty {seen['difficulty']:.3f}, box area {seen['box_area']:.3f}, "
                     f"noisy labels {seen['noisy']:g}")
    print("\n".join(lines))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "table.txt").write_text("\n".join(lines) + "\n")
    (OUT / "result.json").write_text(json.dumps({"result": os.path.relpath(args.result, ROOT), "repeats": len(repeats),
                                                 "test": len(test), "score": SCORE, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
