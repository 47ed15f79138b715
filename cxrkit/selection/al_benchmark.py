"""The active-learning benchmark: the labeling loop simulated with an oracle.

    split_for_benchmark(records)                          -> (pool, val, test) records
    run_benchmark(records, data_dir, out_dir, params, settings, strategies) -> BenchmarkResult
    summarise(rows) / label_savings(summary, metric)      -> mean ± spread per strategy and round
    write_outputs(result, out_dir, title)                 -> table (CSV, JSON), learning-curve PNG
    merge_outputs(folders)                                -> one result from runs of other repeats

The loop, once per repeat and strategy:
1. seed: `seed_size` images drawn at random from the pool (the same draw for every strategy of
   a repeat, so strategies start from the same labeled set and the same round-0 model);
2. train the detector and the subtype classifier on the labeled images, evaluate them on the
   fixed test set (RSNA metric, mAP@0.5, subtype macro AUROC), record a row;
3. for `rounds` rounds: score the unlabeled pool with those models (the workbench's Predictor,
   plus classifier embeddings for the diversity strategies), let the strategy pick `batch`
   images, "label" them (the oracle: the record's ground truth becomes visible to training),
   retrain, evaluate.

The seed model is trained from scratch (`detector.epochs`). After that, each round's detector
either fine-tunes the previous round's detector of the same strategy for `finetune_epochs`
(`warm_start`, the default) or trains from scratch again for `detector.epochs`:
- warm start is what makes a curve with a useful detector affordable on a CPU: a from-scratch
  detector needs about 40 epochs before its boxes mean anything (BENCHMARKS.md), and every
  round would pay them again on a growing labeled set. Its cost: a point on the curve measures
  the labeled set *and* the path of models that led to it, and warm-started networks can
  generalise worse than fresh ones trained on the same data (Ash & Adams, 2020). All
  strategies run under the same rule, so the comparison stays fair.
- from scratch measures the labeled set alone, at full training cost every round; it is the
  retrain flow's rule (a model version is a function of its data version and params).
The subtype classifier is small and always trains from scratch.

Data: the records' `split`: "train" records with complete ground truth are the pool, "val"
records are the fixed validation set (the classifier's best epoch and temperature), "test"
records the fixed test set, never in the pool. A dataset without val/test splits gets them per
patient by a hash of the patient id (15 % each), so the same dataset always splits the same way.

Label savings: random's final quality Q is its mean metric at its last round. For each strategy,
the labels it needs to reach Q are read off its mean curve (linear interpolation between
rounds; "not reached" when it never gets there), divided by random's final label count. When
random's curve ends no higher than it starts, there is nothing to reach and no savings are given.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrkit.core.manifest import Record
from cxrkit.models.detector import has_complete_boxes
from cxrkit.selection import NEEDS_EMBEDDINGS, Pool, get_strategy, pool_from_predictions

log = logging.getLogger(__name__)

METRICS = ("rsna", "map50", "subtype_auroc")
# The benchmark's own sizes (not the pipeline's knobs): a CPU run of a few minutes per strategy.
DEFAULTS: dict = {
    "seed_size": 20,
    "rounds": 5,
    "batch": 20,
    "repeats": 2,
    "first_repeat": 0,  # run repeats first_repeat .. first_repeat + repeats - 1 (split a run over processes)
    "seed": 0,
    # Rounds 1.. fine-tune the previous round's detector for finetune_epochs (module docstring);
    # false: every round trains from scratch for detector.epochs.
    "warm_start": True,
    "finetune_epochs": 10,
    # Overrides of params.yaml's detector / classifier sections (small models, CPU). Batch 4: 20
    # labeled images are then 5 optimizer steps an epoch, not 2. 40 epochs for the seed model:
    # fewer are warm-up, with validation mAP 0 (BENCHMARKS.md). rsna_conf 0.1: a detector this
    # small and this briefly trained rarely scores a box above the pipeline's 0.3, and the RSNA
    # metric would read 0 at every point of the curve.
    "detector": {"imgsz": 128, "epochs": 40, "batch": 4, "nbs": 4, "warmup_epochs": 1, "val": False,
                 "patience": 100, "weights": None, "rsna_conf": 0.1},
    "classifier": {"input_size": 64, "epochs": 6, "patience": 0, "batch": 16, "weights": None},
    # Per-strategy settings, over params.yaml's select.strategies (e.g. {"hybrid": {"candidates_factor": 3}}).
    "strategies": {},
}


class BenchmarkError(ValueError):
    """A dataset or setting the benchmark cannot run on; the message says why."""


@dataclass
class BenchmarkResult:
    rows: list[dict]  # one per (strategy, repeat, round): labels, metrics, seconds
    summary: list[dict]  # one per (strategy, round): mean and std of each metric over repeats
    savings: dict  # metric -> strategy -> {"labels", "fraction"} (None when not reached)
    settings: dict
    selected: dict = field(default_factory=dict)  # "strategy/repeat" -> image ids per round (round 0: the seed)


def synthetic_records(root: str | Path, n: int, size: int, seed: int, difficulty: float,
                      positive_fraction: float = 0.6, workers: int = 0) -> tuple[Path, list[Record]]:
    """A synthetic study generated under root/study and ingested into the workspace root/workspace
    (both skipped when already there); (data_dir, records)."""
    from cxrkit.core.manifest import read_manifest
    from cxrkit.core.workspace import Workspace
    from cxrkit.data.importers.synthetic import load_synthetic
    from cxrkit.data.ingest import IngestOptions, ingest
    from cxrkit.data.synthetic import generate_study

    root = Path(root)
    study = root / "study"
    if not (study / "truth.jsonl").is_file():
        generate_study(study, n=n, seed=seed, size=size, positive_fraction=positive_fraction, difficulty=difficulty,
                       workers=workers)
    ws = Workspace(root / "workspace")
    report = ingest(load_synthetic(study), ws, IngestOptions(max_side=size, workers=workers))
    if not report.ok:
        raise BenchmarkError(f"ingest of the synthetic study failed for {len(report.failed)} files, "
                             f"e.g. {report.failed[0].path}: {report.failed[0].reason}")
    return ws.data_dir, read_manifest(ws.manifest_path)


def split_for_benchmark(records: Sequence[Record]) -> tuple[list[Record], list[Record], list[Record]]:
    """(pool, val, test): labeled records with complete boxes, by their split (module docstring)."""
    usable = [r for r in records if has_complete_boxes(r)]
    if not usable:
        raise BenchmarkError(f"none of the {len(records)} records is labeled with complete boxes: no oracle to simulate")
    splits = {r.split for r in usable}
    if not {"val", "test"} <= splits:
        log.info("no val/test splits in the records: splitting per patient by hash (15 %% val, 15 %% test)")
        usable = [_with_split(r, _hash_split(r.patient_id or r.image_id)) for r in usable]
    pool = [r for r in usable if r.split not in ("val", "test")]
    val = [r for r in usable if r.split == "val"]
    test = [r for r in usable if r.split == "test"]
    if not pool or not val or not test:
        raise BenchmarkError(f"need pool, val and test images; got {len(pool)}, {len(val)}, {len(test)}")
    return pool, val, test


def _hash_split(key: str) -> str:
    bucket = zlib.crc32(key.encode()) % 100
    return "test" if bucket < 15 else "val" if bucket < 30 else "train"


def _with_split(record: Record, split: str) -> Record:
    from dataclasses import replace

    return replace(record, split=split)


def benchmark_params(params: dict, settings: dict) -> dict:
    """The whole params file with the benchmark's detector/classifier overrides."""
    out = dict(params)
    out["detector"] = {**params["detector"], **settings["detector"]}
    out["classifier"] = {**params["classifier"], **settings["classifier"]}
    return out


def round_params(params: dict, settings: dict, previous_weights: Path) -> dict:
    """The params of a round after the seed: with `warm_start`, the detector starts from the
    previous round's weights and trains `finetune_epochs`; otherwise `params` unchanged."""
    if not settings["warm_start"]:
        return params
    detector = {**params["detector"], "weights": str(previous_weights), "epochs": int(settings["finetune_epochs"])}
    return {**params, "detector": detector}


def train_and_evaluate(labeled: list[Record], val: list[Record], test: list[Record], data_dir: Path,
                       work: Path, params: dict) -> tuple[dict, Path, Path]:
    """Train both models on `labeled` (the detector from params' detector.weights when set, else from
    scratch), evaluate on `test`; (metrics, weights, checkpoint)."""
    from cxrkit.models.classifier import (
        evaluate_classifier,
        load_classifier,
        train_classifier,
    )
    from cxrkit.models.detector import evaluate_detector, load_detector, train_detector

    det, clf = params["detector"], params["classifier"]
    # With `val: false` ultralytics only validates once, after the last epoch, and nothing reads that
    # result here (the test set is evaluated below): a few val images keep the check cheap.
    weights = train_detector(labeled, data_dir, work / "detector", det, val_records=val[:8])
    checkpoint = train_classifier(labeled, data_dir, work / "classifier", clf, val)
    d = evaluate_detector(load_detector(weights), test, data_dir, int(det["imgsz"]), float(det.get("conf", 0.01)),
                          float(det.get("rsna_conf", 0.3)))
    c = evaluate_classifier(load_classifier(checkpoint), test, data_dir, clf)
    metrics = {"rsna": float(d["rsna"]), "map50": float(d["map50"]),
               "subtype_auroc": float(c.get("all", {}).get("macro_auroc", float("nan")))}
    return metrics, weights, checkpoint


def score_pool(strategy_name: str, unlabeled: list[Record], labeled: list[Record], data_dir: Path,
               weights: Path, checkpoint: Path, params: dict) -> Pool:
    """The Pool the strategy reads: the predictor's signals and probabilities (the strategies
    that read them) and classifier embeddings (the diversity strategies), as the select flow does."""
    from cxrkit.models.classifier import load_classifier
    from cxrkit.models.predictor import Predictor
    from cxrkit.selection.embeddings import image_embeddings

    ids = [r.image_id for r in unlabeled]
    paths = [Path(data_dir) / r.path for r in unlabeled]
    embeddings = labeled_embeddings = None
    if strategy_name in NEEDS_EMBEDDINGS:
        model = load_classifier(checkpoint)
        embeddings = image_embeddings(model, paths)
        labeled_embeddings = image_embeddings(model, [Path(data_dir) / r.path for r in labeled])
    if strategy_name in ("random", "coreset"):  # they read no prediction: skip the predictor's cost
        return Pool(ids, {}, embeddings=embeddings, labeled_embeddings=labeled_embeddings)
    predictions = Predictor(weights, checkpoint, params).predict_paths(paths)
    return pool_from_predictions(ids, predictions, embeddings, labeled_embeddings)


def run_benchmark(records: Sequence[Record], data_dir: str | Path, out_dir: str | Path, params: dict,
                  settings: dict | None = None, strategies: Sequence[str] = ("random", "hybrid"),
                  report: Callable[[dict], None] | None = None,
                  on_repeat: Callable[[BenchmarkResult], None] | None = None) -> BenchmarkResult:
    """Simulate the labeling loop for every strategy and repeat (module docstring).

    params: the whole params file (load_params()); `settings`: DEFAULTS overrides (seed_size,
    rounds, batch, repeats, seed, warm_start, finetune_epochs, detector, classifier, strategies:
    name -> strategy settings, default params.yaml's select.strategies). `report(row)` is called
    after each evaluation, `on_repeat(result so far)` after each repeat (e.g. to write the
    outputs: a long run stopped early keeps its finished repeats)."""
    s = {**DEFAULTS, **(settings or {})}
    s["detector"] = {**DEFAULTS["detector"], **(settings or {}).get("detector", {})}
    s["classifier"] = {**DEFAULTS["classifier"], **(settings or {}).get("classifier", {})}
    strategy_params = {**((params.get("select") or {}).get("strategies") or {}), **(s.get("strategies") or {})}
    s["strategies"] = strategy_params
    strategies = list(dict.fromkeys(["random", *strategies]))  # random is the yardstick: always run
    for name in strategies:
        get_strategy(name, strategy_params.get(name))  # unknown names / bad settings fail before any training
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    pool, val, test = split_for_benchmark(records)
    need = int(s["seed_size"]) + int(s["rounds"]) * int(s["batch"])
    if need > len(pool):
        raise BenchmarkError(f"seed {s['seed_size']} + {s['rounds']} rounds x {s['batch']} = {need} labels, "
                             f"but the pool has only {len(pool)} images")
    log.info("benchmark: pool %d, val %d, test %d images; strategies %s; %d repeats", len(pool), len(val),
             len(test), ", ".join(strategies), s["repeats"])
    p = benchmark_params(params, s)
    rows: list[dict] = []
    selected: dict = {}
    test_ids = {r.image_id for r in test}
    first = int(s["first_repeat"])
    for repeat in range(first, first + int(s["repeats"])):
        seed_rng = np.random.default_rng([int(s["seed"]), repeat])
        seed_idx = sorted(seed_rng.choice(len(pool), int(s["seed_size"]), replace=False).tolist())
        t0 = time.perf_counter()
        work = out_dir / "runs" / f"repeat{repeat}" / "seed"
        metrics, weights, checkpoint = train_and_evaluate([pool[i] for i in seed_idx], val, test, data_dir, work, p)
        seed_row = {"round": 0, "labels": len(seed_idx), **metrics, "seconds": round(time.perf_counter() - t0, 1)}
        for name in strategies:
            rng = np.random.default_rng([int(s["seed"]), repeat, zlib.crc32(name.encode())])
            strategy = get_strategy(name, strategy_params.get(name))
            labeled = list(seed_idx)
            picks = [[pool[i].image_id for i in seed_idx]]
            row = {"strategy": name, "repeat": repeat, **seed_row}
            rows.append(row)
            if report:
                report(row)
            w, c = weights, checkpoint
            for rnd in range(1, int(s["rounds"]) + 1):
                t0 = time.perf_counter()
                taken = set(labeled)
                unlabeled = [i for i in range(len(pool)) if i not in taken]
                scored = score_pool(name, [pool[i] for i in unlabeled], [pool[i] for i in labeled], data_dir, w, c, p)
                index = {image_id: i for image_id, i in zip([pool[i].image_id for i in unlabeled], unlabeled)}
                chosen = [index[scored.image_ids[j]] for j in strategy.select(scored, int(s["batch"]), rng)]
                if len(chosen) != int(s["batch"]) or taken & set(chosen) or test_ids & {pool[i].image_id for i in chosen}:
                    raise BenchmarkError(f"{name} round {rnd}: selection of {len(chosen)} is not {s['batch']} new pool images")
                labeled += chosen
                picks.append([pool[i].image_id for i in chosen])
                work = out_dir / "runs" / f"repeat{repeat}" / name / f"round{rnd}"
                metrics, w, c = train_and_evaluate([pool[i] for i in labeled], val, test, data_dir, work,
                                                   round_params(p, s, w))
                row = {"strategy": name, "repeat": repeat, "round": rnd, "labels": len(labeled), **metrics,
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                if report:
                    report(row)
                if rnd > 1:  # keep only the models the next round reads (disk)
                    shutil.rmtree(out_dir / "runs" / f"repeat{repeat}" / name / f"round{rnd - 1}", ignore_errors=True)
            selected[f"{name}/{repeat}"] = picks
        if on_repeat:
            on_repeat(_result(rows, selected, s, strategies, pool, val, test, repeat + 1 - first))
    return _result(rows, selected, s, strategies, pool, val, test, int(s["repeats"]))


def _result(rows, selected, s, strategies, pool, val, test, repeats_done) -> BenchmarkResult:
    summary = summarise(rows)
    savings = {m: label_savings(summary, m) for m in METRICS}
    settings = {**s, "strategy_names": strategies, "pool": len(pool), "val": len(val), "test": len(test),
                "repeats_done": repeats_done}
    return BenchmarkResult(list(rows), summary, savings, settings, dict(selected))


def merge_outputs(folders: Sequence[str | Path]) -> BenchmarkResult:
    """One result from the result.json + rows.csv of runs over other repeats of the same settings
    (e.g. `--first-repeat 0` and `--first-repeat 1` run side by side)."""
    rows, selected, settings = [], {}, None
    for folder in folders:
        data = json.loads((Path(folder) / "result.json").read_text())
        with (Path(folder) / "rows.csv").open() as fh:
            for r in csv.DictReader(fh):
                rows.append({k: (v if k == "strategy" else float(v) if "." in v or "nan" in v else int(v))
                             for k, v in r.items()})
        selected.update(data["selected"])
        mine = {k: v for k, v in data["settings"].items() if k not in ("repeats", "first_repeat", "repeats_done")}
        if settings is not None and mine != settings:
            raise BenchmarkError(f"{folder}: other settings than the first folder's; only repeats may differ")
        settings = mine
    keys = [(r["strategy"], r["repeat"], r["round"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise BenchmarkError("the folders share a repeat: give each run its own --first-repeat")
    summary = summarise(rows)
    savings = {m: label_savings(summary, m) for m in METRICS}
    repeats = sorted({r["repeat"] for r in rows})
    return BenchmarkResult(rows, summary, savings, {**settings, "repeats": len(repeats), "repeat_ids": repeats,
                                                    "merged_from": [str(f) for f in folders]}, selected)


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Mean and standard deviation (over repeats) of each metric, per strategy and round."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["round"]), []).append(r)
    out = []
    for (name, rnd), rs in groups.items():
        entry = {"strategy": name, "round": rnd, "labels": rs[0]["labels"], "n": len(rs)}
        for m in METRICS:
            values = np.array([r[m] for r in rs], dtype=np.float64)
            ok = values[~np.isnan(values)]
            entry[m] = float(ok.mean()) if len(ok) else float("nan")
            entry[f"{m}_std"] = float(ok.std()) if len(ok) else float("nan")
        out.append(entry)
    return out


def labels_to_reach(labels: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The first label count where the curve reaches `target` (linear between points), or None."""
    for k, (x, y) in enumerate(zip(labels, values)):
        if y >= target:
            if k == 0:
                return float(x)
            x0, y0 = labels[k - 1], values[k - 1]
            return float(x0 + (x - x0) * (target - y0) / (y - y0)) if y != y0 else float(x)
    return None


def label_savings(summary: Sequence[dict], metric: str) -> dict:
    """Per strategy: the labels it needs to reach random's final mean `metric`, as a fraction of random's."""
    curves: dict[str, list[dict]] = {}
    for e in summary:
        curves.setdefault(e["strategy"], []).append(e)
    for c in curves.values():
        c.sort(key=lambda e: e["labels"])
    if "random" not in curves:
        raise BenchmarkError("label savings need the random strategy's curve")
    first, final = curves["random"][0], curves["random"][-1]
    target, budget = final[metric], final["labels"]
    out = {}
    for name, c in curves.items():
        if not final[metric] > first[metric]:  # random never improved: "reaching" its final quality means nothing
            out[name] = {"target": target, "labels": None, "fraction": None, "note": "random did not improve"}
            continue
        needed = labels_to_reach([e["labels"] for e in c], [e[metric] for e in c], target)
        out[name] = {"target": target, "labels": needed, "fraction": None if needed is None else needed / budget}
    return out


# --- outputs --------------------------------------------------------------------


def table_lines(result: BenchmarkResult) -> list[str]:
    """The summary as fixed-width text: one line per strategy and round, then the savings."""
    lines = [f"{'strategy':<18}{'round':>6}{'labels':>8}{'RSNA':>16}{'mAP@0.5':>16}{'subtype AUROC':>18}"]
    for e in sorted(result.summary, key=lambda e: (e["strategy"] != "random", e["strategy"], e["round"])):
        lines.append(f"{e['strategy']:<18}{e['round']:>6}{e['labels']:>8}"
                     + "".join(f"{e[m]:>10.3f} ±{e[m + '_std']:.3f}".rjust(w)
                               for m, w in (("rsna", 16), ("map50", 16), ("subtype_auroc", 18))))
    lines.append("")
    lines.append("labels needed to reach random's final quality (fraction of random's labels):")
    for metric, per in result.savings.items():
        for name, v in per.items():
            got = v.get("note") or ("not reached" if v["fraction"] is None else
                                    f"{v['labels']:.0f} labels = {v['fraction']:.0%}")
            lines.append(f"  {metric:<13} {name:<18} target {v['target']:.3f}: {got}")
    return lines


def write_outputs(result: BenchmarkResult, out_dir: str | Path, title: str = "Active learning") -> dict:
    """rows.csv, summary.csv, result.json (settings, summary, savings, selections), learning_curve.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"rows": out / "rows.csv", "summary": out / "summary.csv", "json": out / "result.json",
             "png": out / "learning_curve.png", "table": out / "table.txt"}
    for key, data in (("rows", result.rows), ("summary", result.summary)):
        with paths[key].open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    paths["json"].write_text(json.dumps({"settings": result.settings, "summary": result.summary,
                                         "savings": result.savings, "selected": result.selected},
                                        indent=1, default=str))
    paths["table"].write_text("\n".join(table_lines(result)) + "\n")
    plot_learning_curves(result.summary, paths["png"], title)
    return paths


def plot_learning_curves(summary: Sequence[dict], out_png: str | Path, title: str) -> Path:
    """Labels vs RSNA metric and vs mAP@0.5, mean line and ±1 std band per strategy (Agg, DejaVu)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({e["strategy"] for e in summary}, key=lambda n: (n != "random", n))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=90)
    for ax, (metric, label) in zip(axes, (("rsna", "RSNA metric"), ("map50", "mAP@0.5"))):
        for name in names:
            c = sorted((e for e in summary if e["strategy"] == name), key=lambda e: e["labels"])
            x = np.array([e["labels"] for e in c])
            y = np.array([e[metric] for e in c])
            sd = np.array([e[f"{metric}_std"] for e in c])
            style = {"color": "black", "linestyle": "--"} if name == "random" else {}
            (line,) = ax.plot(x, y, marker="o", markersize=3, label=name, **style)
            ax.fill_between(x, y - sd, y + sd, alpha=0.15, color=line.get_color())
        ax.set_xlabel("labeled images")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
