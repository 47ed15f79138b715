"""Converged quality of the detector and the subtype classifier on a fixed synthetic set,
and the preprocessing measurements (CLAHE on/off, detector input size).

    python benchmarks/bench_quality.py [--train 600] [--val 200] [--size 512]
        [--imgsz 384 ...] [--clahe off on] [--det-epochs 60] [--det-patience 10]
        [--clf-size 128] [--clf-epochs 40] [--clf-patience 8] [--no-classifier] [--json out.json]

Data: one synthetic study (`cxrkit.data.synthetic.generate_study`, seed 11, `--size` px, 60 %
pneumonia, difficulty 0.5), ingested once per CLAHE setting (`IngestOptions.clahe`: the
same DICOMs, the PNGs equalised or not). The first `--train` images (by image id) train,
the next `--val` validate: the validation set picks the best epoch, stops training
(`patience`) and is the set every metric below is computed on. There is no third split:
these are converged validation figures, the same set the registry's promotion gate uses.

For every CLAHE setting and every detector input size (`--imgsz`) the detector is
trained to convergence (params.yaml's detector section with epochs/patience from the
flags); the classifier is trained once per CLAHE setting (input `--clf-size`). Rows:

    detector: RSNA score (boxes >= detector.rsna_conf; and at the operating point, the threshold
              with the best score on this set, as the predictor shows boxes), mAP@0.5, mAP@0.4, epochs run,
              best epoch, wall time, training images/s, peak RSS
    classifier: macro AUROC (whole images + crops, and each), accuracy, epochs, wall, images/s, peak RSS

Training images/s = images (samples, for the classifier) x epochs run / wall time of the
training call, validation included: the rate a user waits through. Peak RSS: the largest
resident set of this process (plus children) sampled every 0.2 s during that call.
Prints Markdown tables with the machine, the date and the load average.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import psutil  # noqa: E402

from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.importers.synthetic import load_synthetic  # noqa: E402
from cxrkit.data.ingest import IngestOptions, ingest  # noqa: E402
from cxrkit.data.synthetic import generate_study  # noqa: E402
from cxrkit.models.classifier import (  # noqa: E402
    evaluate_classifier,
    load_classifier,
    make_samples,
    train_classifier,
)
from cxrkit.models.detector import evaluate_detector, load_detector, train_detector  # noqa: E402

SEED = 11
SALT = "bench-quality-salt-0123456789abcdef"


class PeakRSS:
    """The largest RSS (this process + its children) seen while the block runs, in MiB."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.peak_mib = self.peak / 2**20


def make_data(root: Path, n: int, size: int, clahe_settings: list[str]) -> dict[str, tuple[Path, list]]:
    """The study once, ingested once per CLAHE setting: {setting: (data_dir, records)}."""
    study = generate_study(root / "study", n=n, seed=SEED, size=size, positive_fraction=0.6, difficulty=0.5,
                           labeled_fraction=1.0, workers=0)
    out = {}
    os.environ.setdefault("CXR_DEID_SALT", SALT)
    for setting in clahe_settings:
        ws = Workspace(root / f"ws-clahe-{setting}")
        report = ingest(load_synthetic(study), ws, IngestOptions(clahe=setting == "on", workers=0))
        if not report.ok:
            raise SystemExit(f"ingest failed: {report}")
        out[setting] = (ws.data_dir, sorted(read_manifest(ws.manifest_path), key=lambda r: r.image_id))
    return out


def split(records: list, n_train: int, n_val: int) -> tuple[list, list]:
    train = [dataclasses.replace(r, split="train") for r in records[:n_train]]
    val = [dataclasses.replace(r, split="val") for r in records[n_train:n_train + n_val]]
    return train, val


def epochs_run(run_dir: Path) -> tuple[int, int]:
    """(epochs run, best epoch by ultralytics' fitness 0.1 mAP50 + 0.9 mAP50-95) from results.csv."""
    with (run_dir / "results.csv").open() as fh:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(fh)]
    fitness = [0.1 * float(r["metrics/mAP50(B)"]) + 0.9 * float(r["metrics/mAP50-95(B)"]) for r in rows]
    return len(rows), 1 + max(range(len(rows)), key=fitness.__getitem__)


def bench_detector(data_dir, train, val, params, imgsz, out_dir) -> dict:
    det = params["detector"] | {"imgsz": imgsz}
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        weights = train_detector(train, data_dir, out_dir, det, val_records=val)
    wall = time.perf_counter() - t0
    epochs, best = epochs_run(weights.parent.parent)
    metrics = evaluate_detector(load_detector(weights), val, data_dir, imgsz, conf=det["conf"], rsna_conf=det["rsna_conf"])
    return {"imgsz": imgsz, "rsna": metrics["rsna"], "rsna_operating": metrics["rsna_operating"],
            "operating_conf": metrics["operating_conf"], "map50": metrics["map50"], "map40": metrics["map40"],
            "epochs": epochs, "best_epoch": best, "wall_s": wall, "images_per_s": len(train) * epochs / wall,
            "peak_rss_mib": mem.peak_mib}


def bench_classifier(data_dir, train, val, params, out_dir) -> dict:
    clf = params["classifier"]
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        checkpoint = train_classifier(train, data_dir, out_dir, clf, val)
    wall = time.perf_counter() - t0
    report = json.loads((Path(checkpoint).parent / "classifier_report.json").read_text())
    epochs = len(report["history"])
    samples = len(make_samples(train, clf))
    metrics = evaluate_classifier(load_classifier(checkpoint), val, data_dir, clf)
    return {"input_size": clf["input_size"], "macro_auroc": metrics["all"]["macro_auroc"],
            "auroc_image": metrics["image"]["macro_auroc"], "auroc_crop": metrics["crop"]["macro_auroc"],
            "accuracy": metrics["all"]["accuracy"], "epochs": epochs, "best_epoch": report["best_epoch"],
            "wall_s": wall, "images_per_s": samples * epochs / wall, "peak_rss_mib": mem.peak_mib}


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--size", type=int, default=512, help="stored image size (px)")
    ap.add_argument("--imgsz", type=int, nargs="+", default=None, help="detector input sizes (default: params.yaml's)")
    ap.add_argument("--clahe", choices=("off", "on"), nargs="+", default=["off"])
    ap.add_argument("--det-epochs", type=int, default=60)
    ap.add_argument("--det-patience", type=int, default=10)
    ap.add_argument("--clf-size", type=int, default=None, help="classifier input (default: params.yaml's)")
    ap.add_argument("--clf-epochs", type=int, default=40)
    ap.add_argument("--clf-patience", type=int, default=8)
    ap.add_argument("--no-classifier", action="store_true")
    ap.add_argument("--no-detector", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data and runs here (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    params = load_params()
    params["detector"] = params["detector"] | {"epochs": args.det_epochs, "patience": args.det_patience}
    params["classifier"] = params["classifier"] | {"epochs": args.clf_epochs, "patience": args.clf_patience}
    if args.clf_size:
        params["classifier"]["input_size"] = args.clf_size
    sizes = args.imgsz or [params["detector"]["imgsz"]]

    started, where = time.perf_counter(), machine()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        root = args.workdir or Path(tmp)
        data = make_data(root, args.train + args.val, args.size, args.clahe)
        print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)
        det_rows, clf_rows = [], []
        for setting, (data_dir, records) in data.items():
            train, val = split(records, args.train, args.val)
            if not args.no_detector:
                for imgsz in sizes:
                    row = {"clahe": setting} | bench_detector(data_dir, train, val, params, imgsz,
                                                              root / f"det-{setting}-{imgsz}")
                    det_rows.append(row)
                    print(json.dumps(row), flush=True)
            if not args.no_classifier:
                row = {"clahe": setting} | bench_classifier(data_dir, train, val, params, root / f"clf-{setting}")
                clf_rows.append(row)
                print(json.dumps(row), flush=True)

    total = time.perf_counter() - started
    print()
    print(f"Machine: {where}; {datetime.date.today()}; load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; total {total / 60:.1f} min")
    print(f"Data: {args.train} train / {args.val} val synthetic images, stored at {args.size} px; "
          f"detector epochs <= {args.det_epochs}, patience {args.det_patience}; classifier epochs <= "
          f"{args.clf_epochs}, patience {args.clf_patience}, input {params['classifier']['input_size']} px")
    if det_rows:
        print("\n| CLAHE | imgsz | RSNA | RSNA at operating point (threshold) | mAP@0.5 | mAP@0.4 | epochs (best) "
              "| wall min | train img/s | peak RSS MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in det_rows:
            print(f"| {r['clahe']} | {r['imgsz']} | {r['rsna']:.3f} | {r['rsna_operating']:.3f} ({r['operating_conf']}) | "
                  f"{r['map50']:.3f} | {r['map40']:.3f} | "
                  f"{r['epochs']} ({r['best_epoch']}) | {r['wall_s'] / 60:.1f} | {r['images_per_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    if clf_rows:
        print("\n| CLAHE | input | macro AUROC | images | crops | accuracy | epochs (best) | wall min | train samples/s | peak RSS MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in clf_rows:
            print(f"| {r['clahe']} | {r['input_size']} | {r['macro_auroc']:.3f} | {r['auroc_image']:.3f} | "
                  f"{r['auroc_crop']:.3f} | {r['accuracy']:.3f} | {r['epochs']} ({r['best_epoch']}) | "
                  f"{r['wall_s'] / 60:.1f} | {r['images_per_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"detector": det_rows, "classifier": clf_rows, "args": vars(args) | {"json": str(args.json), "workdir": str(args.workdir)}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
