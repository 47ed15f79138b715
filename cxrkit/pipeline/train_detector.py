"""Stage `train_detector`: the detector of a data version.

    python -m cxrkit.pipeline.train_detector --prepared pipeline/prepared --data data \
        --params params.yaml --out pipeline/detector --plot plots/detector.csv

Trains `cxrkit.models.detector.train_detector` on the prepared train records, validating on
the fixed validation records, in scratch/detector (ultralytics' run folder, git-ignored), and
keeps only what a model version needs: `detector.pt`, and its ONNX export `detector.onnx`
(faster on a CPU, BENCHMARKS.md; a failed export is logged and the .pt serves alone). Its
per-epoch history (ultralytics' results.csv) becomes the plot `plots/detector.csv` for
`dvc plots`.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shutil
import time
from pathlib import Path

from cxrkit.core.params import load_params
from cxrkit.models.detector import export_detector_onnx, onnx_path, train_detector
from cxrkit.pipeline import SCRATCH_DIR, read_prepared, record_timing

log = logging.getLogger(__name__)


def run(prepared_dir: Path, data_dir: Path, params: dict, out_dir: Path, plot_path: Path,
        scratch: Path = Path(SCRATCH_DIR) / "detector") -> Path:
    train, val = read_prepared(prepared_dir)
    weights = train_detector(train, Path(data_dir), Path(scratch), params["detector"], val_records=val)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, out_dir / "detector.pt")
    try:
        export_detector_onnx(out_dir / "detector.pt", int(params["detector"]["imgsz"]))
    except Exception as exc:  # noqa: BLE001 - an optional speed-up must not fail the round
        log.warning("ONNX export of the detector failed, the .pt serves alone: %s: %s", type(exc).__name__, exc)
        onnx_path(out_dir / "detector.pt").unlink(missing_ok=True)
    write_history(weights.parent.parent / "results.csv", Path(plot_path))
    return out_dir / "detector.pt"


def write_history(results_csv: Path, plot_path: Path) -> None:
    """ultralytics' results.csv with its padded column names stripped (dvc plots reads them as field names)."""
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if results_csv.is_file():
        with results_csv.open(newline="") as fh:
            rows = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]
    with plot_path.open("w", newline="") as fh:
        fields = list(rows[0]) if rows else ["epoch"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrkit.pipeline.train_detector", description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    run(args.prepared, args.data, load_params(args.params), args.out, args.plot)
    record_timing("train_detector", time.perf_counter() - start)


if __name__ == "__main__":
    main()
