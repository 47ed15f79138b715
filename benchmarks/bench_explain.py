"""Heatmaps measured: does the classifier's heatmap (HiResCAM) point at the opacities, and what does it cost?

    .venv/bin/python benchmarks/bench_explain.py [--n-train 160] [--n-val 40] [--n-test 120] [--size 256]
        [--difficulty 0.4] [--det-imgsz 128] [--det-epochs 25] [--clf-size 224] [--clf-epochs 8]
        [--detector PT --classifier PT] [--dilate 3] [--warmup 3] [--seed 21] [--work DIR] [--out DIR]

Data: synthetic films drawn by cxrkit.data.synthetic.generate_case with `masks=True` (`--size` px,
60 % pneumonia of a uniformly drawn subtype, the rest normal, one `--difficulty`, 35 % AP views,
which carry most of the ECG leads and tubes), each with its truth boxes, its lung fields and its
distractors (nipple markers, ECG electrodes and wires, tubes and lines, granulomas, the burnt-in
side marker and "AP PORTABLE"). The films are written as 8-bit PNGs and trained on as records
(no DICOM round trip: the masks must sit on the very pixels the models see); train, validation
and test films come from disjoint seeds. Models: a detector (params.yaml's detector at `--det-imgsz`
for `--det-epochs`) and the subtype classifier (params.yaml's arch at `--clf-size`; the heatmap's grid
is size/32 cells a side, 7 at 224) trained on the training films, or the given `--detector` and
`--classifier`; the predictor shows boxes from the thresholds measured on the validation films as
the `evaluate` stage measures them. `--work DIR` keeps films and models and reuses them.

On the test films, the whole-image heatmap (`Predictor.explain`: HiResCAM of the pneumonia-vs-normal
evidence) is scored against maps that know nothing, a uniform one and a centred Gaussian
(cxrkit.models.explain.uniform_map / centre_map):

- pointing game (positive films): the heatmap's peak inside a true opacity box. Uniform: the
  boxes' mean area share (a peak drawn at random); centre: a box over the film's centre pixel;
- lungs (every film): the share of heatmap mass inside the lung fields, and the share of films
  whose peak lies in them (uniform: the lungs' area share; centre: the centre map's mass there,
  the centre pixel in a lung);
- shortcuts (every film, and the films with a distractor): films whose peak falls on a distractor,
  its mask dilated by `--dilate` px (a 7-cell grid cannot land on a 1-px wire). Uniform: the
  dilated mask's area share, i.e. a peak drawn at random; centre: the centre pixel on it. A rate
  well above the uniform one is a classifier that learned the leads, not the lungs. The same at
  the map's own resolution: the top grid cell (`peak_cell`) holding distractor pixels, or mostly
  lung, against a cell drawn at random (uniform) and the centre cell.

Cost: per test film, `Predictor.predict_arrays([film])` alone and `predict_arrays` + `explain` (the
whole film and each shown opacity box's crop), in alternating order (film k: A then B for even k, B
then A for odd), after `--warmup` untimed films; median ms and the ratio of the medians, once with
uncertainty off (what the ML backend computes) and once on (the select flow's scoring).

Prints Markdown tables with the machine, the date and the load average; `--out DIR` also writes
DIR/result.json (every number, and per film) and DIR/table.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from cxrkit.core.labels import load_schema  # noqa: E402
from cxrkit.core.manifest import Record  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.data.synthetic import generate_case  # noqa: E402
from cxrkit.models.explain import (  # noqa: E402
    cell_windows,
    centre_map,
    mass_inside,
    peak_cell,
    peak_inside,
    pointing_game,
)
from cxrkit.models.predictor import Predictor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import machine  # noqa: E402  (the machine line every benchmark prints)

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}  # disjoint seed streams per split


def films(split: str, n: int, args, data_dir: Path, keep_masks: bool) -> tuple[list[Record], list[dict]]:
    """`n` films of `split` as PNGs under data_dir/images and their records; with keep_masks also
    each film's pixels and masks (for the test films)."""
    schema = load_schema()
    records, extra = [], []
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        seed = int(np.random.SeedSequence([args.seed, SPLIT_SEEDS[split], i]).generate_state(1)[0])
        case = generate_case(seed, args.size, positive_fraction=0.6, difficulty=args.difficulty, masks=keep_masks)
        pixels = np.round(np.clip(case.image, 0, 1) * 255).astype(np.uint8)
        image_id = f"{split}{i:05d}"
        path = data_dir / "images" / f"{image_id}.png"
        if not path.is_file():
            cv2.imwrite(str(path), pixels)
        records.append(Record(image_id=image_id, path=f"images/{image_id}.png", source="synthetic", split=split,
                              patient_id=image_id, width=args.size, height=args.size,
                              metadata={"view": case.view}, boxes=case.boxes, impression=case.impression,
                              subtype=case.subtype, labeled=True))
        if keep_masks:
            extra.append({"pixels": pixels, "lungs": case.lung_mask.astype(bool),
                          "distractors": case.distractor_mask, "view": case.view,
                          "opacity": [b for b in case.boxes if b.finding == schema.opacity]})
    return records, extra


def models(args, params: dict, train, val, data_dir: Path, work: Path) -> tuple[Path, Path]:
    from cxrkit.models.classifier import train_classifier
    from cxrkit.models.detector import train_detector

    if args.detector and args.classifier:
        return Path(args.detector), Path(args.classifier)
    weights = work / "detector" / "train" / "weights" / "best.pt"
    checkpoint = work / "classifier" / "classifier.pt"
    if not weights.is_file():
        started = time.perf_counter()
        weights = train_detector(train, data_dir, work / "detector", params["detector"], val_records=val[:8])
        print(f"  detector trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not checkpoint.is_file():
        started = time.perf_counter()
        checkpoint = train_classifier(train, data_dir, work / "classifier", params["classifier"], val)
        print(f"  classifier trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return weights, checkpoint


def thresholds(weights: Path, val, data_dir: Path, params: dict) -> dict:
    """The operating and fewest-edits thresholds on the validation films, as the evaluate stage measures them."""
    from cxrkit.models.detector import evaluate_detector, load_detector
    from cxrkit.models.preannotation import SHOWN_DEFAULTS, effort_conf

    det = params["detector"]
    found = evaluate_detector(load_detector(weights), val, data_dir, int(det["imgsz"]), conf=float(det.get("conf", 0.01)),
                              rsna_conf=float(det.get("rsna_conf", 0.3)), keep_images=True)
    shown = {**SHOWN_DEFAULTS, **(params.get("predictor") or {})}
    effort, _ = effort_conf(found["images"], shown["merge_iou"], int(shown["max_boxes"]), load_schema(),
                            float(det.get("conf", 0.01)))
    return {"operating_conf": found["operating_conf"], "effort_conf": effort, "map50": found["map50"]}


def timed_explanations(predictor: Predictor, images: list[np.ndarray], uncertainty: bool, warmup: int):
    """(predict ms, predict + explain ms, explanations) per image, alternating which goes first."""
    def predict(img):
        return predictor.predict_arrays([img], uncertainty=uncertainty)[0]

    def both(img):
        return predictor.explain(img, predict(img))

    for img in images[:warmup]:
        both(img)
    alone, with_explain, explanations = [], [], []
    for k, img in enumerate(images):
        order = ("alone", "both") if k % 2 == 0 else ("both", "alone")
        for which in order:
            t0 = time.perf_counter()
            if which == "alone":
                predict(img)
                alone.append(time.perf_counter() - t0)
            else:
                explanations.append(both(img))
                with_explain.append(time.perf_counter() - t0)
    return alone, with_explain, explanations


def rate(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def score(explanations, test: list[dict], dilate: int) -> tuple[dict, list[dict]]:
    """Pointing game, lungs and shortcuts of the heatmaps against the uniform and centre maps."""
    shape = test[0]["pixels"].shape
    centre = centre_map(shape)
    cy, cx = (shape[0] - 1) // 2, (shape[1] - 1) // 2
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
    per_film = []
    heatmaps = [e.heatmap for e in explanations]
    for heat, found, film in zip(heatmaps, explanations, test):
        x0, y0, x1, y1 = peak_cell(found)
        cells = cell_windows(found)
        on_marks = [bool(film["distractors"][b:d, a:c].any()) for a, b, c, d in cells]
        lungs = film["lungs"]
        distractors = cv2.dilate(film["distractors"], kernel).astype(bool) if dilate > 0 else film["distractors"].astype(bool)
        per_film.append({
            "view": film["view"], "positive": bool(film["opacity"]), "has_distractor": bool(film["distractors"].any()),
            "lung_mass": mass_inside(heat, lungs), "peak_in_lungs": peak_inside(heat, lungs),
            "lung_area": float(lungs.mean()), "centre_lung_mass": mass_inside(centre, lungs),
            "centre_in_lungs": bool(lungs[cy, cx]),
            "peak_on_distractor": peak_inside(heat, distractors), "distractor_area": float(distractors.mean()),
            "distractor_mass": mass_inside(heat, distractors), "centre_distractor_mass": mass_inside(centre, distractors),
            "centre_on_distractor": bool(distractors[cy, cx]),
            "peak_cell_on_distractor": bool(film["distractors"][y0:y1, x0:x1].any()),
            "cells_on_distractor": float(np.mean(on_marks)), "centre_cell_on_distractor": on_marks[len(cells) // 2],
            "peak_cell_in_lungs": bool(lungs[y0:y1, x0:x1].mean() >= 0.5),
            "cells_in_lungs": float(np.mean([lungs[b:d, a:c].mean() >= 0.5 for a, b, c, d in cells])),
        })
    positives = [(h, f["opacity"]) for h, f in zip(heatmaps, test) if f["opacity"]]
    pointing = pointing_game([h for h, _ in positives], [b for _, b in positives])

    def shortcut(rows):
        return {"films": len(rows), "peaks_on_distractor": sum(r["peak_on_distractor"] for r in rows),
                "rate": rate([r["peak_on_distractor"] for r in rows]),
                "uniform_rate": rate([r["distractor_area"] for r in rows]),
                "centre_rate": rate([r["centre_on_distractor"] for r in rows]),
                "mass": rate([r["distractor_mass"] for r in rows]),
                "uniform_mass": rate([r["distractor_area"] for r in rows]),
                "centre_mass": rate([r["centre_distractor_mass"] for r in rows]),
                "peak_cells_on_distractor": sum(r["peak_cell_on_distractor"] for r in rows),
                "cell_rate": rate([r["peak_cell_on_distractor"] for r in rows]),
                "uniform_cell_rate": rate([r["cells_on_distractor"] for r in rows]),
                "centre_cell_rate": rate([r["centre_cell_on_distractor"] for r in rows])}

    result = {
        "pointing": pointing,
        "lungs": {"films": len(per_film), "mass": rate([r["lung_mass"] for r in per_film]),
                  "uniform_mass": rate([r["lung_area"] for r in per_film]),
                  "centre_mass": rate([r["centre_lung_mass"] for r in per_film]),
                  "peak_rate": rate([r["peak_in_lungs"] for r in per_film]),
                  "uniform_peak_rate": rate([r["lung_area"] for r in per_film]),
                  "centre_peak_rate": rate([r["centre_in_lungs"] for r in per_film]),
                  "peak_cell_rate": rate([r["peak_cell_in_lungs"] for r in per_film]),
                  "uniform_peak_cell_rate": rate([r["cells_in_lungs"] for r in per_film])},
        "shortcuts_all": shortcut(per_film),
        "shortcuts_with_distractor": shortcut([r for r in per_film if r["has_distractor"]]),
    }
    return result, per_film


def fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(result: dict, args) -> str:
    p, lungs = result["pointing"], result["lungs"]
    s_all, s_dis = result["shortcuts_all"], result["shortcuts_with_distractor"]
    lines = [
        f"Machine: {result['machine']}; {result['date']}.",
        f"Films: {args.n_train} train / {args.n_val} val / {args.n_test} test, {args.size} px, difficulty "
        f"{args.difficulty}; models: {result['models']}; total {result['minutes']:.1f} min. Heatmaps zero "
        f"everywhere (point nowhere): {result['empty_heatmaps']}; opacity boxes explained per film: "
        f"{result['opacity_boxes_explained_per_film']:.1f}.",
        "",
        "| heatmap measure (test films) | classifier HiResCAM | uniform map | centre map |",
        "|---|---:|---:|---:|",
        f"| pointing game: peak in a true opacity box ({p['n']} positive films) | {fmt(p['hit_rate'])} | "
        f"{fmt(p['uniform_hit_rate'])} | {fmt(p['centre_hit_rate'])} |",
        f"| heatmap mass inside the lungs ({lungs['films']} films) | {fmt(lungs['mass'])} | {fmt(lungs['uniform_mass'])} | "
        f"{fmt(lungs['centre_mass'])} |",
        f"| peak inside the lungs | {fmt(lungs['peak_rate'])} | {fmt(lungs['uniform_peak_rate'])} | "
        f"{fmt(lungs['centre_peak_rate'])} |",
        f"| top grid cell mostly lung | {fmt(lungs['peak_cell_rate'])} | {fmt(lungs['uniform_peak_cell_rate'])} | "
        f"{fmt(lungs['centre_peak_rate'])} |",
        f"| peak on a distractor (+{args.dilate} px), all {s_all['films']} films | "
        f"{fmt(s_all['rate'])} ({s_all['peaks_on_distractor']} films) | {fmt(s_all['uniform_rate'])} | "
        f"{fmt(s_all['centre_rate'])} |",
        f"| peak on a distractor, {s_dis['films']} films with one | {fmt(s_dis['rate'])} "
        f"({s_dis['peaks_on_distractor']} films) | {fmt(s_dis['uniform_rate'])} | {fmt(s_dis['centre_rate'])} |",
        f"| heatmap mass on distractors, films with one | {fmt(s_dis['mass'], 3)} | {fmt(s_dis['uniform_mass'], 3)} | "
        f"{fmt(s_dis['centre_mass'], 3)} |",
        f"| top grid cell holds a distractor, {s_dis['films']} films with one | {fmt(s_dis['cell_rate'])} "
        f"({s_dis['peak_cells_on_distractor']} films) | {fmt(s_dis['uniform_cell_rate'])} | "
        f"{fmt(s_dis['centre_cell_rate'])} |",
        "",
        f"| per test film ({args.n_test} films, alternating order) | predict ms | predict + explain ms | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, c in result["cost"].items():
        lines.append(f"| {name} | {c['predict_ms']:.1f} | {c['explain_ms']:.1f} | {c['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=160)
    ap.add_argument("--n-val", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=120)
    ap.add_argument("--size", type=int, default=256, help="film side in pixels")
    ap.add_argument("--difficulty", type=float, default=0.4)
    ap.add_argument("--det-imgsz", type=int, default=128)
    ap.add_argument("--det-epochs", type=int, default=25)
    ap.add_argument("--clf-size", type=int, default=224, help="classifier input; heatmap grid = size/32 cells a side")
    ap.add_argument("--clf-epochs", type=int, default=8)
    ap.add_argument("--detector", type=Path, default=None, help="given detector weights (with --classifier): no training")
    ap.add_argument("--classifier", type=Path, default=None, help="given classifier checkpoint (with --detector)")
    ap.add_argument("--dilate", type=int, default=3, help="pixels the distractor mask is grown by")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--work", type=Path, default=None, help="keep films and models here, and reuse them (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write result.json and table.md here (benchmarks/results/explain)")
    args = ap.parse_args(argv)
    if (args.detector is None) != (args.classifier is None):
        ap.error("--detector and --classifier go together")
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    base = load_params()
    params = dict(base)
    params["detector"] = base["detector"] | {"imgsz": args.det_imgsz, "epochs": args.det_epochs, "batch": 8, "nbs": 8,
                                             "warmup_epochs": 1, "val": False, "seed": 0}
    params["classifier"] = base["classifier"] | {"input_size": args.clf_size, "epochs": args.clf_epochs, "patience": 0}

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        work = args.work or Path(tmp)
        data_dir = work / "data"
        train, _ = films("train", args.n_train, args, data_dir, keep_masks=False)
        val, _ = films("val", args.n_val, args, data_dir, keep_masks=False)
        test_records, test = films("test", args.n_test, args, data_dir, keep_masks=True)
        print(f"  {len(train) + len(val) + len(test)} films ready after {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        weights, checkpoint = models(args, params, train, val, data_dir, work)
        measured = thresholds(weights, val, data_dir, params)
        predictor = Predictor(weights, checkpoint, params, model_version="bench-explain",
                              operating_conf=measured["operating_conf"], effort_conf=measured["effort_conf"])
        images = [f["pixels"] for f in test]
        cost, explanations = {}, None
        for name, uncertainty in (("uncertainty off (ML backend)", False), ("uncertainty on (select flow)", True)):
            alone, both, found = timed_explanations(predictor, images, uncertainty, args.warmup)
            cost[name] = {"predict_ms": statistics.median(alone) * 1000, "explain_ms": statistics.median(both) * 1000,
                          "ratio": statistics.median(both) / statistics.median(alone)}
            explanations = explanations or found
            print(f"  {name}: {json.dumps(cost[name])}", file=sys.stderr)
        failed = [e.error for e in explanations if not e.ok]
        if failed:
            raise SystemExit(f"{len(failed)} heatmaps failed, e.g. {failed[0]}")
        scores, per_film = score(explanations, test, args.dilate)
        shown = float(np.mean([len(e.boxes) for e in explanations]))
        empty = sum(not np.any(e.heatmap > 0) for e in explanations)

    result = {"machine": machine(), "date": datetime.date.today().isoformat(),
              "models": ("given " + f"{args.detector}, {args.classifier}") if args.detector else
              (f"trained: detector {args.det_imgsz} px x {args.det_epochs} epochs (val mAP@0.5 "
               f"{measured['map50']:.2f}), classifier {params['classifier']['arch']} {args.clf_size} px x "
               f"{args.clf_epochs} epochs"),
              "thresholds": measured, "opacity_boxes_explained_per_film": shown,
              "empty_heatmaps": int(empty), **scores, "cost": cost,
              "minutes": (time.perf_counter() - started) / 60,
              "films": [{"image_id": r.image_id, **f} for r, f in zip(test_records, per_film)],
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    text = table(result, args)
    print("\n" + text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        (args.out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
