"""Detector CPU latency: PyTorch (.pt) against its ONNX export (ONNX Runtime), same run.

    python benchmarks/bench_onnx.py [--n 30] [--warmup 3] [--imgsz 640] [--batch 8]

The detector is params.yaml's architecture (detector.model), built untrained and saved as a
.pt, then exported with `export_detector_onnx` (static input, onnxslim): latency does not
depend on the weights. Both are loaded through `load_detector` (inference_format pt / onnx)
and run through `predict_boxes`, the path the predictor and evaluation use, so pre- and
post-processing (letterbox, NMS, box scaling) are in the figures. Images: `--n` synthetic
chest X-rays of `--imgsz` px (PNG files, as the workbench stores them). The two formats are
timed alternately image by image, so load from other jobs falls on both alike. Per image:
median and p95 after `--warmup` untimed calls each; batch: images/s over batches of `--batch`.
Prints a Markdown table with the ratio onnx / pt and the machine.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
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
import torch  # noqa: E402

from cxrkit.core.labels import load_schema  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.data.synthetic import generate_case  # noqa: E402
from cxrkit.models.detector import (  # noqa: E402
    build_detector,
    export_detector_onnx,
    load_detector,
    predict_boxes,
)


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}; "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    schema = load_schema()
    params = load_params()["detector"]

    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        tmp = Path(tmp)
        weights = tmp / "detector.pt"
        build_detector(params, schema).save(str(weights))
        t0 = time.perf_counter()
        export_detector_onnx(weights, args.imgsz)
        export_s = time.perf_counter() - t0
        models = {fmt: load_detector(weights, schema, fmt, args.imgsz) for fmt in ("pt", "onnx")}
        paths = []
        for i in range(args.n + args.warmup):
            img = (np.clip(generate_case(20_000 + i, args.imgsz, positive=True, difficulty=0.3).image, 0, 1) * 255)
            paths.append(tmp / f"img{i:03d}.png")
            cv2.imwrite(str(paths[-1]), img.round().astype(np.uint8))
        where = machine()

        for fmt, model in models.items():
            for p in paths[: args.warmup]:
                predict_boxes(model, [p], args.imgsz, conf=0.01, schema=schema)
        times = {fmt: [] for fmt in models}
        for p in paths[args.warmup:]:
            for fmt, model in models.items():
                t = time.perf_counter()
                predict_boxes(model, [p], args.imgsz, conf=0.01, schema=schema)
                times[fmt].append(time.perf_counter() - t)
        rates = {fmt: [] for fmt in models}
        timed = paths[args.warmup:]
        for start in range(0, len(timed) - args.batch + 1, args.batch):
            chunk = timed[start: start + args.batch]
            for fmt, model in models.items():
                t = time.perf_counter()
                predict_boxes(model, chunk, args.imgsz, conf=0.01, batch=args.batch, schema=schema)
                rates[fmt].append(len(chunk) / (time.perf_counter() - t))

    med = {f: statistics.median(v) for f, v in times.items()}
    p95 = {f: float(np.percentile(v, 95)) for f, v in times.items()}
    rate = {f: statistics.median(v) for f, v in rates.items()}
    print(f"\nMachine: {where}; {datetime.date.today()}.")
    print(f"{params['model']} untrained, {args.imgsz} px, {args.n} synthetic PNGs after {args.warmup} warm-up calls; "
          f"ONNX export took {export_s:.1f} s.\n")
    print("| format | median ms | p95 ms | images/s, batches of %d |\n|---|---:|---:|---:|" % args.batch)
    for f in models:
        print(f"| {f} | {med[f] * 1000:.1f} | {p95[f] * 1000:.1f} | {rate[f]:.2f} |")
    print(f"\nonnx / pt: median latency {med['onnx'] / med['pt']:.2f}, p95 {p95['onnx'] / p95['pt']:.2f}, "
          f"batch throughput {rate['onnx'] / rate['pt']:.2f}")
    print(f"faster on this CPU: {'onnx' if med['onnx'] < med['pt'] else 'pt'}")


if __name__ == "__main__":
    main()
