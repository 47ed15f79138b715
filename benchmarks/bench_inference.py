"""Inference latency: detector, classifier and the whole predictor, per image and in batches.

    python benchmarks/bench_inference.py [--n 30] [--warmup 3] [--size 640] [--batch 8]

Models: the architectures of params.yaml (detector.model at detector.imgsz, classifier.arch at
classifier.input_size), built untrained: latency does not depend on the weights, so no
training or fixture is needed. An untrained detector scores every box near zero, so the
predictor would classify no crops; the "10 crops" rows therefore show the 10 best boxes
whatever their score (predictor.conf 0), as a trained model showing 10 boxes would.

Data: `--n` synthetic chest X-rays of `--size` px (cxrkit.data.synthetic.generate_case, 8-bit),
fed as arrays (no PNG decode). Per-image rows: median and p95 seconds over the n images
after `--warmup` untimed calls. Batch rows: images per second through
`Predictor.predict_arrays` in batches of `--batch` (median of the batches' rates).
Prints a Markdown table with the machine and the date. CPU timings move with other load on
the machine: the load average is printed.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cxrkit.core.labels import load_schema  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.data.synthetic import generate_case  # noqa: E402
from cxrkit.models.classifier import (  # noqa: E402
    attach_info,
    build_classifier,
    classifier_classes,
    predict_proba,
)
from cxrkit.models.detector import build_detector  # noqa: E402
from cxrkit.models.predictor import Predictor  # noqa: E402


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def per_image(fn, images, warmup):
    for img in images[:warmup]:
        fn(img)
    times = []
    for img in images:
        t0 = time.perf_counter()
        fn(img)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), percentile(times, 95)


def throughput(predictor, images, batch, warmup):
    predictor.predict_arrays(images[:batch])  # warm-up
    rates = []
    for start in range(0, len(images) - batch + 1, batch):
        chunk = images[start: start + batch]
        t0 = time.perf_counter()
        predictor.predict_arrays(chunk)
        rates.append(len(chunk) / (time.perf_counter() - t0))
    return statistics.median(rates)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU, torch {torch.get_num_threads()} threads"
    return (f"{cpu}, {os.cpu_count()} cores, {device}; Python {platform.python_version()}, torch {torch.__version__}; "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=640, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    schema = load_schema()
    params = load_params()
    det_params, clf_params = params["detector"], params["classifier"]
    imgsz, input_size = int(det_params["imgsz"]), int(clf_params["input_size"])
    detector = build_detector(det_params, schema)
    classes = classifier_classes(schema)
    classifier = attach_info(build_classifier(clf_params["arch"], len(classes)), clf_params["arch"], classes, input_size)
    classifier = classifier.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    images = [(np.clip(generate_case(10_000 + i, args.size, positive=True, difficulty=0.3).image, 0, 1) * 255)
              .round().astype(np.uint8) for i in range(args.n + args.warmup)]
    timed = images[args.warmup:]

    def predictor(**settings):
        p = dict(params)
        # merge_iou off: the "10 crops" rows time 10 crops, which merging the untrained boxes would cut.
        p["predictor"] = {**params.get("predictor", {}), "batch": args.batch, "merge_iou": None, **settings}
        return Predictor.from_models(detector, classifier, p, schema, model_version="bench")

    plain, flipped = predictor(flip=False), predictor(flip=True)
    crops, crops_flip = predictor(flip=False, conf=0.0), predictor(flip=True, conf=0.0)
    crops_fused = predictor(tta=True, conf=0.0)
    # Untrained boxes sit below the detector's own floor (detector.conf): lower it for the crop rows.
    for p in (crops, crops_flip, crops_fused):
        p.det_conf = 0.0
    shown = np.mean([len(b.boxes) for b in crops.predict_arrays(timed[: args.batch])])

    rows = []

    def row(name, fn):
        med, p95 = per_image(fn, images, args.warmup)
        rows.append((name, med, p95))
        print(f"  {name}: median {med * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms", file=sys.stderr)

    row(f"detector ({det_params['model']}, imgsz {imgsz})", lambda img: plain._detect([img]))
    row(f"classifier ({clf_params['arch']}, {input_size} px), whole image", lambda img: predict_proba(classifier, [img]))
    row("predictor, no flip (untrained: 0 boxes)", plain.predict)
    row("predictor, flip (untrained: 0 boxes)", flipped.predict)
    row(f"predictor, no flip, {shown:.0f} crops", crops.predict)
    row(f"predictor, flip, {shown:.0f} crops", crops_flip.predict)
    row(f"predictor, flip + WBF tta, {shown:.0f} crops", crops_fused.predict)

    rates = []
    for name, p in (("no flip, 0 boxes", plain), ("flip, 0 boxes", flipped),
                    (f"no flip, {shown:.0f} crops", crops), (f"flip, {shown:.0f} crops", crops_flip)):
        rate = throughput(p, timed, args.batch, args.warmup)
        rates.append((name, rate))
        print(f"  batch {args.batch}, {name}: {rate:.2f} images/s", file=sys.stderr)

    today = datetime.date.today().isoformat()
    print(f"\nMachine: {machine()}; {today}.")
    print(f"Images: {args.n} synthetic {args.size}x{args.size} 8-bit arrays after {args.warmup} warm-up calls; "
          f"untrained models of params.yaml.\n")
    print("| per image | median ms | p95 ms |\n|---|---:|---:|")
    for name, med, p95 in rows:
        print(f"| {name} | {med * 1000:.1f} | {p95 * 1000:.1f} |")
    print(f"\n| predictor, batches of {args.batch} | images/s |\n|---|---:|")
    for name, rate in rates:
        print(f"| {name} | {rate:.2f} |")


if __name__ == "__main__":
    main()
