"""Stage `evaluate`: both models of a data version on the fixed validation records.

    python -m cxrkit.pipeline.evaluate --prepared pipeline/prepared --data data --params params.yaml \
        --detector pipeline/detector/detector.pt --classifier pipeline/classifier/classifier.pt \
        --metrics metrics/metrics.json --confusion plots/confusion.csv

metrics.json is the version's metrics as the registry and its promotion gate read them
({"detector": {"rsna", "map50", "map40", "operating_conf", "effort_conf", "edits_per_image", ...},
"classifier": {"macro_auroc", ...}}: the thresholds are those the predictor shows boxes from);
`dvc metrics diff` compares it between rounds. A metric that cannot be computed (NaN, e.g. an
AUROC with one class in the validation set) is written as null, so the gate says "none"
rather than comparing NaN. plots/confusion.csv has one `actual,predicted` row per
validation sample of the classifier, for `dvc plots`' confusion template.

metrics.json's `explain` block says whether the classifier's heatmaps point at the opacities: the
pointing game (cxrkit.models.explain.pointing_game) of its whole-image HiResCAM heatmap on the validation
films that have a ground-truth opacity box, at most params.yaml `explain.eval_images` of them
(default 100; the first by image id, a stable choice as the validation set grows), each map's
peak inside a true box or not: {"n", "hit_rate", "uniform_hit_rate", "centre_hit_rate",
"candidates" (films with boxes), "seconds"}; the two baselines are maps that know nothing (a
uniformly random peak, a peak at the centre). It is measured, not gated on, and optional: a
failure is written as {"error": ...} and logged, and the stage (so the retrain) goes on.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import time
from pathlib import Path

from cxrkit.core.labels import load_schema
from cxrkit.core.params import load_params
from cxrkit.models.classifier import evaluate_classifier, load_classifier
from cxrkit.models.detector import evaluate_detector, load_detector
from cxrkit.models.explain import DEFAULTS as EXPLAIN_DEFAULTS
from cxrkit.models.preannotation import SHOWN_DEFAULTS, effort_conf
from cxrkit.pipeline import read_prepared, record_timing, write_json

log = logging.getLogger(__name__)

CLASSIFIER_KEYS = ("macro_auroc", "accuracy", "ece", "nll", "n")


def _number(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def run(prepared_dir: Path, data_dir: Path, params: dict, detector_weights: Path, classifier_checkpoint: Path,
        metrics_path: Path, confusion_path: Path) -> dict:
    _, val = read_prepared(prepared_dir)
    det = params["detector"]
    detector = evaluate_detector(load_detector(Path(detector_weights)), val, Path(data_dir), int(det["imgsz"]),
                                 conf=float(det.get("conf", 0.01)), rsna_conf=float(det.get("rsna_conf", 0.3)),
                                 keep_images=True)
    # The threshold with the fewest edits for what the predictor shows (its boxes merged and capped).
    shown = {**SHOWN_DEFAULTS, **(params.get("predictor") or {})}
    detector["effort_conf"], detector["edits_per_image"] = effort_conf(
        detector["images"], shown["merge_iou"], int(shown["max_boxes"]), load_schema(), float(det.get("conf", 0.01)))
    model = load_classifier(classifier_checkpoint)
    classifier = evaluate_classifier(model, val, Path(data_dir), params["classifier"])
    overall = classifier.get("all", {})
    metrics = {
        "detector": {k: _number(detector[k]) for k in ("rsna", "map50", "map40", "rsna_operating", "operating_conf",
                                                       "effort_conf", "edits_per_image", "n_images")},
        "classifier": {k: _number(overall.get(k)) for k in CLASSIFIER_KEYS}
        | {f"{kind}_macro_auroc": _number(classifier[kind]["macro_auroc"]) for kind in ("image", "crop") if kind in classifier},
        "explain": explain_metrics(model, val, Path(data_dir), params),
    }
    write_json(metrics_path, metrics)
    write_confusion(classifier["classes"], overall.get("confusion", []), Path(confusion_path))
    log.info("evaluate on %d val images: detector RSNA %s, mAP50 %s; classifier macro AUROC %s, accuracy %s",
             len(val), metrics["detector"]["rsna"], metrics["detector"]["map50"],
             metrics["classifier"]["macro_auroc"], metrics["classifier"]["accuracy"])
    return metrics


def explain_metrics(classifier, records, data_dir: Path, params: dict) -> dict:
    """The `explain` block (module docstring): the pointing game of `classifier`'s whole-image
    heatmaps on the labeled `records` with opacity boxes. Never raises: a failure is the block
    {"error": ...}, logged as a warning."""
    start = time.perf_counter()
    try:
        limit = int((params.get("explain") or {}).get("eval_images", EXPLAIN_DEFAULTS["eval_images"]))
        if limit <= 0:
            return {"skipped": "explain.eval_images is 0"}
        from cxrkit.models.classifier import read_grey
        from cxrkit.models.explain import explain_image, pointing_game

        opacity = load_schema().opacity
        films = sorted(((r, [b for b in r.boxes if b.finding == opacity]) for r in records if r.labeled),
                       key=lambda rb: rb[0].image_id)
        films = [(r, boxes) for r, boxes in films if boxes]
        heatmaps, truth = [], []
        for record, boxes in films[:limit]:
            grey = read_grey(Path(data_dir) / record.path)
            heatmaps.append(explain_image(classifier, grey, [], float(params["classifier"]["crop_margin"])).heatmap)
            truth.append(boxes)
        block = pointing_game(heatmaps, truth)
    except Exception as exc:  # noqa: BLE001 - a measurement, not the model: the retrain goes on without it
        log.warning("evaluate: no heatmap pointing game: %s: %s", type(exc).__name__, exc, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"}
    block.update(candidates=len(films), seconds=round(time.perf_counter() - start, 2))
    log.info("evaluate: heatmap pointing game %s on %d of %d validation films with opacity boxes "
             "(uniform %s, centre %s)", block["hit_rate"], block["n"], len(films), block["uniform_hit_rate"],
             block["centre_hit_rate"])
    return block


def write_confusion(classes: list[str], confusion: list[list[int]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                writer.writerows([[classes[i], classes[j]]] * int(count))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrkit.pipeline.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--confusion", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    run(args.prepared, args.data, load_params(args.params), args.detector, args.classifier, args.metrics,
        args.confusion)
    record_timing("evaluate", time.perf_counter() - start)


if __name__ == "__main__":
    main()
