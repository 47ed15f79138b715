"""Stage `train_classifier`: the subtype classifier of a data version.

    python -m cxrkit.pipeline.train_classifier --prepared pipeline/prepared --data data \
        --params params.yaml --out pipeline/classifier --plot plots/classifier.csv

Trains `cxrkit.models.classifier.train_classifier` on the prepared train records (best epoch
and temperature on the fixed validation records) and writes `classifier.pt` plus its per-epoch
history as the plot `plots/classifier.csv`.
"""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import torch

from cxrkit.core.params import load_params
from cxrkit.models.classifier import train_classifier
from cxrkit.pipeline import read_prepared, record_timing

log = logging.getLogger(__name__)


def run(prepared_dir: Path, data_dir: Path, params: dict, out_dir: Path, plot_path: Path) -> Path:
    train, val = read_prepared(prepared_dir)
    checkpoint = train_classifier(train, Path(data_dir), Path(out_dir), params["classifier"], val)
    history = torch.load(checkpoint, map_location="cpu", weights_only=True)["history"]
    plot_path = Path(plot_path)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    with plot_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]) if history else ["epoch"])
        writer.writeheader()
        writer.writerows(history)
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrkit.pipeline.train_classifier",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    run(args.prepared, args.data, load_params(args.params), args.out, args.plot)
    record_timing("train_classifier", time.perf_counter() - start)


if __name__ == "__main__":
    main()
