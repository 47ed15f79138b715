"""The active-learning benchmark: the labeling loop simulated with an oracle.

    split_for_benchmark(records)                          -> (pool, val, test) records
    run_benchmark(records, data_dir, out_dir, params, settings, strategies) -> BenchmarkResult
    summarise(rows) / label_savings(summary, metric)      -> mean ± spread per strategy and round
    savings_intervals(rows, metric, baseline)              -> label savings with 95 % bootstrap intervals
    time_savings(rows, effort_model, resamples)            -> radiologist time to reach random's final quality
    write_outputs(result, out_dir, title)                 -> table (CSV, JSON), learning-curve PNG
    merge_outputs(folders)                                -> one result from runs of other repeats or arms
    read_rows(folder)                                     -> a result folder's rows.csv as numbers

The loop, once per repeat and arm (a strategy, with or without self-training):
1. seed: `seed_size` images drawn at random from the pool (the same draw for every arm of a
   repeat, so arms start from the same labeled set and the same round-0 model). With
   `cold_start` (e.g. typiclust) every arm but random's takes its seed from that strategy on
   model-free thumbnail embeddings instead (the workbench's first batch before any model:
   random order is how teams label without it);
2. train the detector and the subtype classifier on the labeled images, evaluate them on the
   fixed test set (RSNA metric, mAP@0.5, subtype macro AUROC), record a row;
3. for `rounds` rounds: score the unlabeled pool with those models (the workbench's Predictor,
   plus classifier embeddings for the diversity strategies), let the strategy pick `batch`
   images, "label" them (the oracle: the record's ground truth becomes visible to training),
   retrain, evaluate. An arm with self-training ("<strategy>+st": every strategy's with
   `semi_supervised`, or one named so among the strategies) also trains on the unlabeled images
   the previous round's model is sure of (cxrkit.models.pseudo_labels.self_train, settings
   `self_training`, its cutoffs set on the fixed validation images), by the retrain flow's rule
   (its boxes are the ones the benchmark's predictor shows, PREDICTOR); its rows count the
   pseudo-labeled images and how many were right.

The seed detector trains `detector.epochs` from its starting weights (none, or with `pretrain` the
weights pretrained on the pool). After that, each round's detector either fine-tunes the previous
round's detector of the same strategy for `finetune_epochs` (`warm_start`, the default) or trains
afresh from those starting weights for `detector.epochs`:
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
The 95 % interval resamples the repeats with replacement (the same repeats for every arm: the
arms of a repeat share their seed set, so they are paired) and recomputes the fraction, a draw
where the arm does not reach Q counting as above every fraction; `reached` is the share of draws
that reach it. The same against random with self-training ("random+st") when that arm ran: the
honest baseline (Lüth et al., NeurIPS 2023). Area under each mean learning curve (per label, over
the common label range) with the same intervals.

Radiologist time (`effort`): each round also counts the edits its batch needs
(cxrkit.evaluation.effort) over what the previous round's models show with the workbench's
display (params.yaml `predictor`, thresholds measured on the validation images), and from
scratch; the seed is labeled from scratch. A stated effort model (EffortModel: seconds to read a
film plus seconds per edit, constants from published figures) turns them into cumulative
seconds, and "time to reach random's final quality" is read off as the label savings are, each
arm with pre-annotations against random order with nothing shown (how teams label today), with
the same intervals.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrkit.core.labels import load_schema
from cxrkit.core.manifest import Record
from cxrkit.evaluation.effort import EffortModel, Labeling, annotation_edits
from cxrkit.evaluation.metrics import rsna_score, scored_at_least
from cxrkit.models.detector import has_complete_boxes
from cxrkit.models.pseudo_labels import (
    self_train,
    self_training_settings,
    teacher_entries,
)
from cxrkit.selection import (
    MODEL_FREE,
    NEEDS_EMBEDDINGS,
    Pool,
    get_strategy,
    labeled_class_counts,
    pool_from_predictions,
)

log = logging.getLogger(__name__)

# rsna_operating: the RSNA metric at the threshold the validation images choose (operating_rsna); parts
# recorded before it existed lack it, and every output below reads the metrics its rows hold (metrics_in).
METRICS = ("rsna", "rsna_operating", "map50", "subtype_auroc")
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
    # The seed of every arm but random's: "random", or a strategy that needs no model (typiclust,
    # coreset) run on thumbnail embeddings of the pool (module docstring).
    "cold_start": "random",
    # Also run every strategy with self-training ("<name>+st"), settings below (params.yaml
    # pseudo_labels.self_training has the same keys; there it is off until this benchmark says).
    # Precision target 0.8: measured in BENCHMARKS.md "Self-training's rules" (0.9 labeled nothing).
    "semi_supervised": False,
    "self_training": {"precision": 0.8, "subtype_threshold": 0.7, "max_ratio": 1.0, "normal_ratio": None},
    "bootstrap": 1000,  # resamples of the repeats for the savings' intervals
    # Start every arm's seed detector from weights pretrained without labels on the pool's films
    # (cxrkit.models.detector_pretrain; the dict overrides its knobs, e.g. {"epochs": 20}); the
    # arms are then named "<arm>+pt". None: from scratch.
    "pretrain": None,
    # Also count, each round, the edits the chosen batch needs over what the previous round's model
    # shows with the workbench's display (params.yaml `predictor`, its thresholds measured on the
    # validation images as `evaluate` measures them) and from scratch: radiologist time (below).
    "effort": False,
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


def synthetic_records(root: str | Path, n: int, size: int, seed: int, difficulty: float | None = None,
                      positive_fraction: float | None = None, workers: int = 0) -> tuple[Path, list[Record]]:
    """A synthetic study generated under root/study and ingested into the workspace root/workspace
    (both skipped when already there); (data_dir, records). By default the published population
    (cxrkit.data.synthetic.PUBLISHED); `positive_fraction` / `difficulty` as in generate_study."""
    from cxrkit.core.manifest import read_manifest
    from cxrkit.core.workspace import Workspace, stored_secret
    from cxrkit.data.importers.synthetic import load_synthetic
    from cxrkit.data.ingest import IngestOptions, ingest
    from cxrkit.data.pseudonym import SALT_ENV
    from cxrkit.data.synthetic import generate_study

    root = Path(root)
    study = root / "study"
    if not (study / "truth.jsonl").is_file():
        generate_study(study, n=n, seed=seed, size=size, positive_fraction=positive_fraction, difficulty=difficulty,
                       workers=workers)
    ws = Workspace(root / "workspace").create()
    # A fixed de-identification salt for the benchmark's own workspace (a workspace that already has one
    # keeps it): image ids are salted, and ultralytics orders a detector's batches by file name, so with a
    # random salt the same study ingested in another scratch folder trained other models, and a run whose
    # folder was lost (a reboot clears /tmp) could not be continued: every arm ran again. With this one the
    # same study gets the same ids on any machine. Synthetic films hold no PHI; real studies keep a secret,
    # random salt (ingest). $CXR_DEID_SALT, when set, still wins.
    stored_secret(ws.env_path, SALT_ENV, lambda: f"cxrkit-synthetic-benchmark-study-seed-{seed}")
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


# What the predictor shows in the benchmark: the settings the recorded run (BENCHMARKS.md: five
# repeats, run over several sittings) started with, before the predictor merged boxes and took its
# impression from them (predict_pool passes no measured threshold, so auto is AUTO_CONF_FALLBACK).
# The boxes shown feed the subtype signal and self-training's boxes, so every sitting of one run
# must show the same; a new run may move to params.yaml's settings.
PREDICTOR = {"conf": "auto", "merge_iou": None, "impression": "rule"}


def benchmark_params(params: dict, settings: dict) -> dict:
    """The whole params file with the benchmark's detector/classifier overrides and PREDICTOR."""
    out = dict(params)
    out["detector"] = {**params["detector"], **settings["detector"]}
    out["classifier"] = {**params["classifier"], **settings["classifier"]}
    out["predictor"] = {**(params.get("predictor") or {}), **PREDICTOR}
    return out


def round_params(params: dict, settings: dict, previous_weights: Path) -> dict:
    """The params of a round after the seed: with `warm_start`, the detector starts from the
    previous round's weights and trains `finetune_epochs`; otherwise `params` unchanged."""
    if not settings["warm_start"]:
        return params
    detector = {**params["detector"], "weights": str(previous_weights), "epochs": int(settings["finetune_epochs"])}
    return {**params, "detector": detector}


def pretrained_detector(pool: list[Record], data_dir: Path, out_dir: Path, params: dict, settings: dict) -> Path:
    """The seed detectors' starting weights: pretrained on the pool's films, labels unread
    (cxrkit.models.detector_pretrain), once per output folder (kept there for the next run)."""
    from cxrkit.models.detector_pretrain import pretrain_detector

    knobs = {**(params.get("detector_pretrain") or {}), **(settings["pretrain"] or {})}
    path = out_dir / "pretrained" / "detector.pt"
    stamp = path.with_name("settings.json")
    wanted = json.dumps({"pretrain": knobs, "detector": params["detector"]["model"],
                         "imgsz": params["detector"]["imgsz"], "films": len(pool)}, sort_keys=True)
    if path.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return path
    # The stamp goes first: a kill after the new weights replace the old ones must not leave the old
    # settings' stamp beside them.
    stamp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    pretrain_detector([Path(data_dir) / r.path for r in pool], path, {**params, "detector_pretrain": knobs})
    stamp.write_text(wanted)
    log.info("benchmark: detector pretrained on %d pool films in %.0f s", len(pool), time.perf_counter() - t0)
    return path


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
    detector = load_detector(weights)
    d = evaluate_detector(detector, test, data_dir, int(det["imgsz"]), float(det.get("conf", 0.01)),
                          float(det.get("rsna_conf", 0.3)), keep_images=True)
    c = evaluate_classifier(load_classifier(checkpoint), test, data_dir, clf)
    metrics = {"rsna": float(d["rsna"]), "rsna_operating": operating_rsna(detector, d, val, data_dir, det),
               "map50": float(d["map50"]), "subtype_auroc": float(c.get("all", {}).get("macro_auroc", float("nan")))}
    return metrics, weights, checkpoint


def operating_rsna(detector, on_test: dict, val: list[Record], data_dir: Path, det: dict) -> float:
    """The RSNA metric on the test images at the box threshold the validation images choose for this
    detector (their operating_conf, as the `evaluate` stage measures it): the challenge's score counts
    every box as a guess, so a threshold is part of it, and a fixed one (detector.rsna_conf) reads a
    detector whose scores run higher, e.g. one trained on more boxed films, as one that guesses more."""
    from cxrkit.models.detector import evaluate_detector

    floor = float(det.get("conf", 0.01))
    chosen = evaluate_detector(detector, val, data_dir, int(det["imgsz"]), floor, float(det.get("rsna_conf", 0.3)))
    if chosen["operating_conf"] is None:  # no validation image with a box or a guess: no threshold to choose
        return float("nan")
    t = float(chosen["operating_conf"])
    boxes = on_test["images"]["by_class"][load_schema().opacity]  # every box >= floor, per test image
    return float(rsna_score(scored_at_least(boxes, t)))


def predict_pool(unlabeled: list[Record], data_dir: Path, weights: Path, checkpoint: Path, params: dict) -> list:
    """The workbench's Predictor over the unlabeled images (what the select flow scores with)."""
    from cxrkit.models.predictor import Predictor

    return Predictor(weights, checkpoint, params).predict_paths([Path(data_dir) / r.path for r in unlabeled])


def strategy_pool(strategy_name: str, unlabeled: list[Record], labeled: list[Record], data_dir: Path,
                  checkpoint: Path, predictions: list | None) -> Pool:
    """The Pool the strategy reads: the predictor's signals and probabilities (`predictions`, for
    the strategies that read them), classifier embeddings (the diversity strategies) and the
    labeled set's classes (class-aware ones), as the select flow builds it."""
    from cxrkit.models.classifier import load_classifier
    from cxrkit.selection.embeddings import image_embeddings

    ids = [r.image_id for r in unlabeled]
    embeddings = labeled_embeddings = None
    if strategy_name in NEEDS_EMBEDDINGS:
        model = load_classifier(checkpoint)
        embeddings = image_embeddings(model, [Path(data_dir) / r.path for r in unlabeled])
        labeled_embeddings = image_embeddings(model, [Path(data_dir) / r.path for r in labeled])
    if predictions is None:
        return Pool(ids, {}, embeddings=embeddings, labeled_embeddings=labeled_embeddings)
    return pool_from_predictions(ids, predictions, embeddings, labeled_embeddings,
                                 labeled_counts=labeled_class_counts(labeled))


def cold_start_seed(pool: list[Record], data_dir: Path, strategy_name: str, size: int, settings: dict,
                    rng: np.random.Generator) -> list[int]:
    """Seed indices into `pool` chosen by a model-free strategy on thumbnail embeddings."""
    from cxrkit.selection.embeddings import thumbnail_embeddings

    embeddings, failed = thumbnail_embeddings([Path(data_dir) / r.path for r in pool])
    if failed:
        raise BenchmarkError(f"cold start: {len(failed)} pool images unreadable, e.g. {next(iter(failed.values()))}")
    strategy = get_strategy(strategy_name, settings.get(strategy_name))
    return sorted(strategy.select(Pool([r.image_id for r in pool], {}, embeddings=embeddings), size, rng))


def shown_by_workbench(batch: list[Record], data_dir: Path, weights: Path, checkpoint: Path, params: dict,
                       display: dict, val: list[Record]) -> list[Labeling | None]:
    """What the workbench would show on `batch` with this model pair: the Predictor with the
    `display` settings (params.yaml `predictor`), its thresholds measured on `val` as the
    `evaluate` stage measures them; None where a film cannot be predicted."""
    from cxrkit.models.detector import evaluate_detector, load_detector
    from cxrkit.models.preannotation import SHOWN_DEFAULTS, effort_conf
    from cxrkit.models.predictor import Predictor

    schema = load_schema()
    det, shown = params["detector"], {**SHOWN_DEFAULTS, **display}
    floor = float(det.get("conf", 0.01))
    measured = evaluate_detector(load_detector(weights), val, data_dir, int(det["imgsz"]), conf=floor,
                                 rsna_conf=float(det.get("rsna_conf", 0.3)), keep_images=True)
    fewest, _ = effort_conf(measured["images"], shown["merge_iou"], int(shown["max_boxes"]), schema, floor)
    predictor = Predictor(weights, checkpoint, {**params, "predictor": display}, schema=schema,
                          operating_conf=measured["operating_conf"], effort_conf=fewest)
    return [Labeling(pred.boxes, pred.impression) if pred.ok else None
            for pred in predictor.predict_paths([Path(data_dir) / r.path for r in batch])]


def batch_edits(batch: Sequence[Record], shown: Sequence[Labeling | None] | None) -> dict:
    """{"shown_edits", "scratch_edits"}: the mean edits per film that turn what is shown (None: nothing;
    a film the model could not predict counts as nothing shown) into the batch's truth, and from scratch."""
    truths = [Labeling(r.boxes, r.impression) for r in batch]
    scratch = [annotation_edits(t, None).total for t in truths]
    edits = scratch if shown is None else [annotation_edits(t, v).total for t, v in zip(truths, shown)]
    return {"shown_edits": float(np.mean(edits)), "scratch_edits": float(np.mean(scratch))}


def pseudo_labeled(unlabeled: list[Record], predictions: list, val: list[Record], val_predictions: list,
                   settings: dict, teacher: str, labeled_count: int) -> tuple[list[Record], dict]:
    """Self-training records from the teacher's predictions of the unlabeled pool images (their
    truth hidden first: the teacher sees what the workbench would), with its cutoffs set on the
    validation images as the `prepare` stage sets them, and how many were right."""
    schema = load_schema()
    hidden = [dataclasses.replace(r, labeled=False, boxes=[], impression=None, subtype=None) for r in unlabeled]
    entries = teacher_entries([*unlabeled, *val], [*predictions, *val_predictions])
    added, _ = self_train(hidden, entries, val, self_training_settings(settings), teacher, labeled_count, schema)
    truth = {r.image_id: r for r in unlabeled}
    right = sum((r.impression == schema.pneumonia) == (truth[r.image_id].impression == schema.pneumonia) for r in added)
    return added, {"pseudo": len(added), "pseudo_right": right}


def positives(batch: Sequence[Record]) -> int:
    """How many films of a labeled batch show an opacity box: the films a detector learns boxes from."""
    opacity = load_schema().opacity
    return sum(1 for r in batch if any(b.finding == opacity for b in r.boxes))


def benchmark_arms(strategies: Sequence[str], semi_supervised: bool) -> list[tuple[str, str, bool]]:
    """The arms to run as (arm name, strategy, with self-training): random first, since it is the
    yardstick every arm is read against, then each strategy as named. A name ending in "+st" runs
    that strategy with self-training only (so a later run can add hybrid+st to a folder that holds
    hybrid); `semi_supervised` adds the "+st" arm of every strategy, random's included."""
    plain, with_st = ["random"], []
    for name in strategies:
        (with_st if name.endswith("+st") else plain).append(name.removesuffix("+st"))
    plain = list(dict.fromkeys(plain))
    with_st = list(dict.fromkeys([*plain, *with_st] if semi_supervised else with_st))
    return [(name, name, False) for name in plain] + [(f"{name}+st", name, True) for name in with_st]


def run_benchmark(records: Sequence[Record], data_dir: str | Path, out_dir: str | Path, params: dict,
                  settings: dict | None = None, strategies: Sequence[str] = ("random", "hybrid"),
                  report: Callable[[dict], None] | None = None,
                  on_repeat: Callable[[BenchmarkResult], None] | None = None) -> BenchmarkResult:
    """Simulate the labeling loop for every arm and repeat (module docstring).

    params: the whole params file (load_params()); `settings`: DEFAULTS overrides (seed_size,
    rounds, batch, repeats, seed, warm_start, finetune_epochs, detector, classifier, strategies:
    name -> strategy settings, default params.yaml's select.strategies; cold_start,
    semi_supervised, self_training, bootstrap). `report(row)` is called after each evaluation,
    `on_repeat(result so far)` after each repeat (e.g. to write the outputs: a long run stopped
    early keeps its finished repeats)."""
    s = {**DEFAULTS, **(settings or {})}
    s["detector"] = {**DEFAULTS["detector"], **(settings or {}).get("detector", {})}
    s["classifier"] = {**DEFAULTS["classifier"], **(settings or {}).get("classifier", {})}
    s["self_training"] = {**DEFAULTS["self_training"], **(settings or {}).get("self_training", {})}
    strategy_params = {**((params.get("select") or {}).get("strategies") or {}), **(s.get("strategies") or {})}
    s["strategies"] = strategy_params
    arms = benchmark_arms(strategies, bool(s["semi_supervised"]))
    for name in [*dict.fromkeys(a[1] for a in arms), s["cold_start"]]:
        get_strategy(name, strategy_params.get(name))  # unknown names / bad settings fail before any training
    self_training_settings(s["self_training"])
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    pool, val, test = split_for_benchmark(records)
    need = int(s["seed_size"]) + int(s["rounds"]) * int(s["batch"])
    if need > len(pool):
        raise BenchmarkError(f"seed {s['seed_size']} + {s['rounds']} rounds x {s['batch']} = {need} labels, "
                             f"but the pool has only {len(pool)} images")
    if s["pretrain"] is not None:
        arms = [(f"{arm}+pt", name, with_st) for arm, name, with_st in arms]
    log.info("benchmark: pool %d, val %d, test %d images; arms %s; %d repeats", len(pool), len(val),
             len(test), ", ".join(a[0] for a in arms), s["repeats"])
    p = benchmark_params(params, s)
    if s["pretrain"] is not None:
        p = {**p, "detector": {**p["detector"], "weights": str(pretrained_detector(pool, data_dir, out_dir, p, s))}}
    display = dict(params.get("predictor") or {})  # what the workbench shows radiologists (the effort columns)
    rows: list[dict] = []
    selected: dict = {}
    test_ids = {r.image_id for r in test}
    index = {r.image_id: i for i, r in enumerate(pool)}
    first = int(s["first_repeat"])
    for repeat in range(first, first + int(s["repeats"])):
        seed_rng = np.random.default_rng([int(s["seed"]), repeat])
        seeds = {"random": sorted(seed_rng.choice(len(pool), int(s["seed_size"]), replace=False).tolist())}
        if s["cold_start"] != "random":
            seeds[s["cold_start"]] = cold_start_seed(pool, data_dir, s["cold_start"], int(s["seed_size"]),
                                                     strategy_params, np.random.default_rng([int(s["seed"]), repeat, 7]))
        seed_models = {}
        for kind, idx in seeds.items():
            t0 = time.perf_counter()
            work = out_dir / "runs" / f"repeat{repeat}" / f"seed-{kind}"
            metrics, weights, checkpoint = train_and_evaluate([pool[i] for i in idx], val, test, data_dir, work, p)
            seed_models[kind] = (metrics, weights, checkpoint, round(time.perf_counter() - t0, 1))
        for arm, name, with_st in arms:
            rng = np.random.default_rng([int(s["seed"]), repeat, zlib.crc32(name.encode())])
            strategy = get_strategy(name, strategy_params.get(name))
            kind = "random" if name == "random" else s["cold_start"]
            labeled = list(seeds[kind])
            metrics, w, c, seconds = seed_models[kind]
            picks = [[pool[i].image_id for i in labeled]]
            row = {"strategy": arm, "repeat": repeat, "round": 0, "labels": len(labeled), **metrics,
                   "positives": positives([pool[i] for i in labeled]), "pseudo": 0, "pseudo_right": 0,
                   "seconds": seconds}
            if s["effort"]:  # the seed is labeled with nothing shown: there is no model yet
                row.update(batch_edits([pool[i] for i in labeled], None))
            rows.append(row)
            if report:
                report(row)
            for rnd in range(1, int(s["rounds"]) + 1):
                t0 = time.perf_counter()
                taken = set(labeled)
                unlabeled = [pool[i] for i in range(len(pool)) if i not in taken]
                predictions = (predict_pool(unlabeled, data_dir, w, c, p)
                               if with_st or name not in MODEL_FREE else None)  # they read no prediction
                scored = strategy_pool(name, unlabeled, [pool[i] for i in labeled], data_dir, c, predictions)
                chosen = [index[scored.image_ids[j]] for j in strategy.select(scored, int(s["batch"]), rng)]
                if len(chosen) != int(s["batch"]) or taken & set(chosen) or test_ids & {pool[i].image_id for i in chosen}:
                    raise BenchmarkError(f"{arm} round {rnd}: selection of {len(chosen)} is not {s['batch']} new pool images")
                labeled += chosen
                picks.append([pool[i].image_id for i in chosen])
                effort = {}
                if s["effort"]:  # before retraining: the batch is corrected over the previous round's model
                    batch = [pool[i] for i in chosen]
                    effort = batch_edits(batch, shown_by_workbench(batch, data_dir, w, c, p, display, val))
                train = [pool[i] for i in labeled]
                pseudo = {"pseudo": 0, "pseudo_right": 0}
                if with_st:
                    now_labeled = set(chosen)
                    left = [(r, pred) for r, pred in zip(unlabeled, predictions) if index[r.image_id] not in now_labeled]
                    added, pseudo = pseudo_labeled([r for r, _ in left], [pred for _, pred in left], val,
                                                   predict_pool(val, data_dir, w, c, p), s["self_training"],
                                                   f"{arm}/round{rnd - 1}", len(labeled))
                    train += added
                work = out_dir / "runs" / f"repeat{repeat}" / arm / f"round{rnd}"
                metrics, w, c = train_and_evaluate(train, val, test, data_dir, work, round_params(p, s, w))
                row = {"strategy": arm, "repeat": repeat, "round": rnd, "labels": len(labeled), **metrics,
                       "positives": positives([pool[i] for i in chosen]), **pseudo,
                       "seconds": round(time.perf_counter() - t0, 1), **effort}
                rows.append(row)
                if report:
                    report(row)
                if rnd > 1:  # keep only the models the next round reads (disk)
                    shutil.rmtree(out_dir / "runs" / f"repeat{repeat}" / arm / f"round{rnd - 1}", ignore_errors=True)
            selected[f"{arm}/{repeat}"] = picks
        if on_repeat:
            on_repeat(_result(rows, selected, s, [a[0] for a in arms], pool, val, test, repeat + 1 - first))
    return _result(rows, selected, s, [a[0] for a in arms], pool, val, test, int(s["repeats"]))


def _result(rows, selected, s, strategies, pool, val, test, repeats_done) -> BenchmarkResult:
    settings = {**s, "strategy_names": strategies, "pool": len(pool), "val": len(val), "test": len(test),
                "ingest": ingest_stamp([*pool, *val, *test]), "repeats_done": repeats_done}
    return BenchmarkResult(list(rows), summarise(rows), all_savings(rows, int(s.get("bootstrap", 1000))),
                           settings, dict(selected))


def ingest_stamp(records: Sequence[Record]) -> str:
    """Which ingest the benchmark ran on: a digest of its image ids, which are salted per workspace (the
    same films ingested under another salt get other ids, and ultralytics orders batches by file name),
    so parts of one benchmark merge only when their stamps agree. synthetic_records salts its workspace
    by the study's seed, so the same study ingested again stamps the same; ingests from before that
    (random salts) each stamp their own."""
    ids = "\n".join(sorted(r.image_id for r in records))
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def metrics_in(rows: Sequence[dict]) -> list[str]:
    """The METRICS every row (or summary entry) holds, in METRICS' order (rows recorded before
    rsna_operating existed lack it)."""
    return [m for m in METRICS if rows and all(m in r for r in rows)]


def all_savings(rows: Sequence[dict], resamples: int) -> dict:
    """metric -> baseline -> arm -> savings with intervals; baselines: random, and random+st,
    random+pt (pretrained) and random+st+pt when they ran. Plus "aulc": metric -> arm -> area under the mean curve with its interval."""
    baselines = [b for b in ("random", "random+st", "random+pt", "random+st+pt") if any(r["strategy"] == b for r in rows)]
    out = {m: {b: savings_intervals(rows, m, b, resamples) for b in baselines} for m in metrics_in(rows)}
    out["aulc"] = {m: aulc_intervals(rows, m, resamples) for m in metrics_in(rows)}
    if rows and all("shown_edits" in r for r in rows):
        out["time"] = time_savings(rows, EffortModel(), resamples)
    return out


def with_radiologist_time(rows: Sequence[dict], model: EffortModel) -> list[dict]:
    """The rows with `time_shown` and `time_scratch`: the radiologist seconds spent on an arm's
    labels up to that round, by `model`, with the pre-annotations of the model before each batch
    (the seed is labeled from scratch: no model yet) and with nothing shown."""
    out, spent = [], {}
    for r in sorted(rows, key=lambda r: (r["strategy"], r["repeat"], r["round"])):
        key = (r["strategy"], r["repeat"])
        labels, shown, scratch = spent.get(key, (0, 0.0, 0.0))
        batch = r["labels"] - labels
        shown += model.seconds(batch, r["shown_edits"])
        scratch += model.seconds(batch, r["scratch_edits"])
        spent[key] = (r["labels"], shown, scratch)
        out.append({**r, "time_shown": shown, "time_scratch": scratch})
    return out


def time_savings(rows: Sequence[dict], model: EffortModel, resamples: int) -> dict:
    """Radiologist time to reach random's final quality: each arm labeling with the workbench's
    pre-annotations (time_shown) against random order with nothing shown (time_scratch), which
    is how teams label today; per metric, with the same intervals as the label savings. Also
    the model's constants."""
    timed = with_radiologist_time(rows, model)
    return {"model": dataclasses.asdict(model),
            **{m: savings_intervals(timed, m, "random", resamples, "time_shown", "time_scratch")
               for m in metrics_in(rows)}}


# Which arms a part ran: a later part may add arms to an earlier part's repeats (its own rows of the
# shared arms, e.g. random, must then equal the earlier part's: same code, study and thread count).
ARM_SETTINGS = ("strategy_names", "semi_supervised", "pretrain")


def merge_outputs(folders: Sequence[str | Path]) -> BenchmarkResult:
    """One result from the result.json + rows.csv of runs of the same settings over other repeats
    (e.g. `--first-repeat 0` and `--first-repeat 1` run side by side) or with other arms over the
    same repeats (e.g. random + self-training added to a run of random and hybrid)."""
    rows, selected, settings, names, semi, strategy_settings, pretrain = [], {}, None, [], False, {}, None
    ingest: tuple[str, str] | None = None  # the first stamped part's ingest, and which part it was
    seen: dict[tuple, tuple[dict, frozenset, str]] = {}
    seeds: dict[str, tuple[list, str]] = {}  # repeat -> the seed films random order labeled first, and where
    for folder in folders:
        data = json.loads((Path(folder) / "result.json").read_text())
        part = read_rows(folder)
        arms = frozenset(r["strategy"] for r in part)
        for r in part:
            key = (r["strategy"], r["repeat"], r["round"])
            if key not in seen:
                seen[key] = (r, arms, str(folder))
                rows.append(r)
            elif seen[key][1] == arms:
                raise BenchmarkError("the folders share a repeat: give each run its own --first-repeat")
            elif _measured(seen[key][0]) != _measured(r):
                raise BenchmarkError(f"{folder}: {key[0]} of repeat {key[1]}, round {key[2]}, measured otherwise "
                                     f"than in {seen[key][2]}: parts that add arms to the same repeats must "
                                     "run the same code on the same study with the same thread count")
        selected.update(data["selected"])
        mine = {k: v for k, v in data["settings"].items()
                if k not in ("repeats", "first_repeat", "repeats_done", "strategies", "ingest", *ARM_SETTINGS)}
        mine.setdefault("effort", False)  # parts run before the effort setting existed counted no edits
        if "self_training" in mine:  # parts run before normal_ratio existed capped no side alone
            mine["self_training"] = {"normal_ratio": None, **mine["self_training"]}
        if settings is not None and mine != settings:
            raise BenchmarkError(f"{folder}: other settings than the first folder's; only repeats and arms may differ")
        settings = mine
        # Parts stamp the ingest they ran on; parts recorded before the stamp existed lack it, and for
        # them the seed films below are the check (which covers only parts that share a repeat).
        stamp = data["settings"].get("ingest")
        if stamp is not None:
            ingest = ingest or (stamp, str(folder))
            if stamp != ingest[0]:
                raise BenchmarkError(f"{folder}: ran on ingest {stamp}, {ingest[1]} on ingest {ingest[0]}: the "
                                     "parts ran on different ingests (run every part with --work holding the "
                                     "same synthetic/)")
        # Image ids are salted per ingest: random order's first films of a repeat, drawn by the same
        # seed in every part (the settings agree by now), are the same films only on one ingest.
        for key, picks in data["selected"].items():
            arm, repeat = key.rsplit("/", 1)
            if arm.split("+")[0] == "random" and picks:
                films = sorted(picks[0])
                first, where = seeds.setdefault(repeat, (films, str(folder)))
                if films != first:
                    raise BenchmarkError(f"{folder}: {arm}'s seed films of repeat {repeat} are not those of {where}: "
                                         "the parts ran on different ingests (run every part with --work "
                                         "holding the same synthetic/)")
        # Strategy settings (params.yaml's select.strategies at the time): a strategy's must agree
        # wherever two parts name it; a part from before a strategy existed simply lacks its entry.
        for name, conf in (data["settings"].get("strategies") or {}).items():
            if strategy_settings.setdefault(name, conf) != conf:
                raise BenchmarkError(f"{folder}: strategy {name!r} has other settings ({conf}) than in an earlier "
                                     f"folder ({strategy_settings[name]})")
        names += [n for n in data["settings"].get("strategy_names", []) if n not in names]
        semi = semi or bool(data["settings"].get("semi_supervised"))
        if data["settings"].get("pretrain") is not None:  # its arms are named "+pt": one setting per merge
            if pretrain is not None and pretrain != data["settings"]["pretrain"]:
                raise BenchmarkError(f"{folder}: pretrained with {data['settings']['pretrain']}, an earlier folder "
                                     f"with {pretrain}: their +pt arms would share a name")
            pretrain = data["settings"]["pretrain"]
    repeats = sorted({r["repeat"] for r in rows})
    # The bootstrap pairs arms by repeat and the mean curves compare arms over their repeats: an arm missing a
    # repeat (a partner part not recorded yet) would be averaged over fewer, and read as if over the same.
    missing = {arm: sorted(set(repeats) - {r["repeat"] for r in rows if r["strategy"] == arm})
               for arm in sorted({r["strategy"] for r in rows})}
    if any(missing.values()):
        raise BenchmarkError("every arm must hold the same repeats: " + "; ".join(
            f"{arm} has no repeat {', '.join(map(str, gone))}" for arm, gone in missing.items() if gone)
            + " (merge once the parts that run them are recorded, or leave out the repeats not every arm ran)")
    return BenchmarkResult(rows, summarise(rows), all_savings(rows, int(settings.get("bootstrap", 1000))),
                           {**settings, "strategies": strategy_settings, "strategy_names": names,
                            "semi_supervised": semi, "pretrain": pretrain, "repeats": len(repeats),
                            **({"ingest": ingest[0]} if ingest else {}),
                            "repeat_ids": repeats, "merged_from": [str(f) for f in folders]}, selected)


def read_rows(folder: str | Path) -> list[dict]:
    """A result folder's rows.csv as rows of numbers (the strategy's name a string)."""
    with (Path(folder) / "rows.csv").open() as fh:
        return [{k: (v if k == "strategy" else float(v) if "." in v or "nan" in v else int(v))
                 for k, v in r.items() if v != ""}  # "": a column this row's part did not count
                for r in csv.DictReader(fh)]


def _measured(row: dict) -> dict:
    """A row's measurements: everything but the seconds it took (which load moves)."""
    return {k: v for k, v in row.items() if k != "seconds"}


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Mean and standard deviation (over repeats) of each metric, per strategy and round."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["round"]), []).append(r)
    out = []
    for (name, rnd), rs in groups.items():
        entry = {"strategy": name, "round": rnd, "labels": rs[0]["labels"], "n": len(rs)}
        for cost in TIME_COLUMNS:  # radiologist seconds so far (with_radiologist_time), where counted
            if all(cost in r for r in rs):
                entry[cost] = float(np.mean([r[cost] for r in rs]))
        if all("positives" in r for r in rs):  # boxed films in the round's batch (parts before it counted none)
            entry["positives"] = float(np.mean([r["positives"] for r in rs]))
        for m in metrics_in(rs):
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


def label_savings(summary: Sequence[dict], metric: str, baseline: str = "random", cost: str = "labels",
                  baseline_cost: str | None = None) -> dict:
    """Per strategy: the labels it needs to reach the baseline's final mean `metric`, as a fraction of
    the baseline's labels. With `cost` another cumulative column of the summary (e.g. time_shown)
    is the axis instead, the baseline's own being `baseline_cost` (e.g. time_scratch); the amount
    needed is then under that column's name."""
    baseline_cost = baseline_cost or cost
    curves: dict[str, list[dict]] = {}
    for e in summary:
        curves.setdefault(e["strategy"], []).append(e)
    for c in curves.values():
        c.sort(key=lambda e: e["labels"])
    if baseline not in curves:
        raise BenchmarkError(f"label savings need the {baseline} strategy's curve")
    first, final = curves[baseline][0], curves[baseline][-1]
    target, budget = final[metric], final[baseline_cost]
    out = {}
    for name, c in curves.items():
        if not final[metric] > first[metric]:  # the baseline never improved: "reaching" it means nothing
            out[name] = {"target": target, cost: None, "fraction": None, "note": f"{baseline} did not improve"}
            continue
        needed = labels_to_reach([e[cost] for e in c], [e[metric] for e in c], target)
        out[name] = {"target": target, cost: needed, "fraction": None if needed is None else needed / budget}
    return out


def _resampled(rows: Sequence[dict], resamples: int, seed: int = 0):
    """Summaries of the rows with the repeats drawn with replacement (the same draw for every arm)."""
    repeats = sorted({r["repeat"] for r in rows})
    by_repeat = {k: [r for r in rows if r["repeat"] == k] for k in repeats}
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        draw = rng.choice(repeats, len(repeats), replace=True)
        yield summarise([{**r, "repeat": j} for j, k in enumerate(draw) for r in by_repeat[k]])


_NOT_REACHED = 1e9
TIME_COLUMNS = ("time_shown", "time_scratch")


def savings_intervals(rows: Sequence[dict], metric: str, baseline: str = "random", resamples: int = 1000,
                      cost: str = "labels", baseline_cost: str | None = None) -> dict:
    """label_savings on the mean curves, each arm's fraction with a 95 % bootstrap interval over the
    repeats and the share of draws in which it reaches the baseline's final quality (module docstring)."""
    point = label_savings(summarise(rows), metric, baseline, cost, baseline_cost)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for summary in _resampled(rows, resamples):
        for name, v in label_savings(summary, metric, baseline, cost, baseline_cost).items():
            if v.get("note") is None:
                draws[name].append(np.inf if v["fraction"] is None else v["fraction"])
    for name, v in point.items():
        d = np.array(draws[name])
        if len(d):
            # Not reached counts as above every fraction (a large finite stand-in: percentiles of inf are NaN).
            lo, hi = np.percentile(np.where(np.isfinite(d), d, _NOT_REACHED), [2.5, 97.5], method="nearest")
            # None: not reached in more than 2.5 % of the draws (or, for the lower end, in 97.5 %).
            v["interval"] = [None if lo >= _NOT_REACHED else float(lo), None if hi >= _NOT_REACHED else float(hi)]
            v["reached"] = float(np.isfinite(d).mean())
    return point


def area_under_curve(summary: Sequence[dict], metric: str) -> dict[str, float]:
    """Per arm: the mean curve's area (trapezoids) divided by its label range: the average quality
    over the labeling budget."""
    out = {}
    for name in sorted({e["strategy"] for e in summary}):
        c = sorted((e for e in summary if e["strategy"] == name), key=lambda e: e["labels"])
        x, y = np.array([e["labels"] for e in c], float), np.array([e[metric] for e in c], float)
        out[name] = float(np.trapezoid(y, x) / (x[-1] - x[0])) if len(x) > 1 and x[-1] > x[0] else float("nan")
    return out


def aulc_intervals(rows: Sequence[dict], metric: str, resamples: int = 1000) -> dict:
    """area_under_curve per arm with its 95 % bootstrap interval over the repeats."""
    point = area_under_curve(summarise(rows), metric)
    draws = [area_under_curve(s, metric) for s in _resampled(rows, resamples)]
    return {name: {"aulc": value, "interval": [float(np.nanpercentile([d[name] for d in draws], 2.5)),
                                               float(np.nanpercentile([d[name] for d in draws], 97.5))]}
            for name, value in point.items()}


# --- outputs --------------------------------------------------------------------


def table_lines(result: BenchmarkResult) -> list[str]:
    """The summary as fixed-width text: one line per strategy and round, then the savings."""
    widths = {"rsna": 16, "rsna_operating": 18, "map50": 16, "subtype_auroc": 18}
    columns = [(m, widths[m]) for m in metrics_in(result.summary)]
    headers = {"rsna": "RSNA", "rsna_operating": "RSNA (val's t)", "map50": "mAP@0.5", "subtype_auroc": "subtype AUROC"}
    lines = [f"{'strategy':<18}{'round':>6}{'labels':>8}" + "".join(f"{headers[m]:>{w}}" for m, w in columns)]
    for e in sorted(result.summary, key=lambda e: (e["strategy"] != "random", e["strategy"], e["round"])):
        lines.append(f"{e['strategy']:<18}{e['round']:>6}{e['labels']:>8}"
                     + "".join(f"{e[m]:>10.3f} ±{e[m + '_std']:.3f}".rjust(w) for m, w in columns))
    lines.append("")
    lines.append("labels needed to reach the baseline's final quality (fraction of its labels; 95 % interval over "
                 "repeats; share of resamples that reach it):")
    for metric in METRICS:
        for baseline, per in result.savings.get(metric, {}).items():
            for name, v in per.items():
                if name == baseline:
                    continue
                lines.append(f"  {metric:<13} vs {baseline:<10} {name:<18} target {v['target']:.3f}: {_saving(v)}")
    aulc = result.savings.get("aulc") or {}
    if aulc:
        lines.append("")
        lines.append("area under the learning curve (mean quality over the label budget; 95 % interval):")
        for metric in METRICS:
            for name, v in (aulc.get(metric) or {}).items():
                lo, hi = v["interval"]
                lines.append(f"  {metric:<13} {name:<18} {v['aulc']:.3f} [{lo:.3f}, {hi:.3f}]")
    time = result.savings.get("time") or {}
    if time:
        model = time["model"]
        lines.append("")
        lines.append(f"radiologist time to reach random's final quality, each arm with the workbench's pre-annotations "
                     f"against random order with nothing shown (effort model: {model['look_seconds']} s a film + "
                     f"{model['edit_seconds']} s an edit; fraction of random's time, 95 % interval):")
        for metric in METRICS:
            for name, v in (time.get(metric) or {}).items():
                needed = v.get("time_shown")
                spent = "" if needed is None else f"{needed / 60:.0f} min = "
                lines.append(f"  {metric:<13} {name:<18} target {v['target']:.3f}: "
                             + (_saving(v) if v.get("note") or needed is None else spent + _interval(v)))
    return lines


def markdown_tables(result: BenchmarkResult) -> list[str]:
    """The mean ± std curves of mAP@0.5 and the RSNA metric as Markdown tables (one row per label
    count, one column per arm, random first), as BENCHMARKS.md quotes them; and, where counted, the
    films with an opacity box among each arm's labels so far (mean over the repeats)."""
    ran = {e["strategy"] for e in result.summary}
    arms = [a for a in result.settings.get("strategy_names") or sorted(ran) if a in ran]  # the order they ran in
    by = {(e["strategy"], e["labels"]): e for e in result.summary}
    labels = sorted({e["labels"] for e in result.summary})
    lines = []
    for metric, name in (("map50", "mAP@0.5"), ("rsna", "RSNA"),
                         ("rsna_operating", "RSNA at the validation's threshold")):
        if metric not in metrics_in(result.summary):
            continue
        lines += [f"{name}, mean ± std over the repeats:", "", "| labels | " + " | ".join(arms) + " |",
                  "|---:|" + "---:|" * len(arms)]
        for n in labels:
            cells = [f"{by[a, n][metric]:.3f} ± {by[a, n][metric + '_std']:.3f}" if (a, n) in by else "" for a in arms]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    if all("positives" in e for e in result.summary):
        lines += ["Films with an opacity box among the labels so far, mean over the repeats:", "",
                  "| labels | " + " | ".join(arms) + " |", "|---:|" + "---:|" * len(arms)]
        so_far = {a: 0.0 for a in arms}
        for n in labels:
            for a in arms:
                so_far[a] += by[a, n]["positives"] if (a, n) in by else float("nan")
            lines.append(f"| {n} | " + " | ".join(f"{so_far[a]:.1f}" for a in arms) + " |")
        lines.append("")
    return lines


def _interval(v: dict) -> str:
    text = f"{v['fraction']:.0%}"
    if "interval" in v:
        lo, hi = ("not reached" if x is None else f"{x:.0%}" for x in v["interval"])
        text += f" [{lo}, {hi}], reached in {v['reached']:.0%}"
    return text


def _saving(v: dict) -> str:
    if v.get("note"):
        return v["note"]
    if v["fraction"] is None:
        text = "not reached"
        if "interval" in v:
            lo, hi = ("not reached" if x is None else f"{x:.0%}" for x in v["interval"])
            text += f" [{lo}, {hi}], reached in {v['reached']:.0%}"
        return text
    return f"{v['labels']:.0f} labels = " + _interval(v)


def write_outputs(result: BenchmarkResult, out_dir: str | Path, title: str = "Active learning") -> dict:
    """rows.csv, summary.csv, result.json (settings, summary, savings, selections), table.txt, tables.md
    (the curves as Markdown), learning_curve.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"rows": out / "rows.csv", "summary": out / "summary.csv", "json": out / "result.json",
             "png": out / "learning_curve.png", "table": out / "table.txt", "tables": out / "tables.md"}
    for key, data in (("rows", result.rows), ("summary", result.summary)):
        with paths[key].open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in data for k in row)))
            writer.writeheader()
            writer.writerows(data)
    paths["json"].write_text(json.dumps({"settings": result.settings, "summary": result.summary,
                                         "savings": result.savings, "selected": result.selected},
                                        indent=1, default=str))
    paths["table"].write_text("\n".join(table_lines(result)) + "\n")
    paths["tables"].write_text("\n".join(markdown_tables(result)))
    plot_learning_curves(result.summary, paths["png"], title)
    return paths


def plot_learning_curves(summary: Sequence[dict], out_png: str | Path, title: str) -> Path:
    """Labels vs RSNA metric (also at the validation's threshold where counted), mAP@0.5 and subtype
    AUROC, mean line and ±1 std band per arm (Agg, DejaVu)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({e["strategy"] for e in summary}, key=lambda n: (n != "random", n))
    labels = {"rsna": "RSNA metric", "rsna_operating": "RSNA at val's threshold", "map50": "mAP@0.5",
              "subtype_auroc": "subtype macro AUROC"}
    panels = [(m, labels[m]) for m in metrics_in(summary)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8), dpi=90)
    for ax, (metric, label) in zip(axes, panels):
        for name in names:
            c = sorted((e for e in summary if e["strategy"] == name), key=lambda e: e["labels"])
            x = np.array([e["labels"] for e in c])
            y = np.array([e[metric] for e in c])
            sd = np.array([e[f"{metric}_std"] for e in c])
            style = ({"color": "black", "linestyle": "--"} if name == "random" else
                     {"color": "grey", "linestyle": "--"} if name in ("random+st", "random+pt") else
                     {"linestyle": ":"} if name.endswith("+st") else {})
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
