"""Detector training speed on every core vs on ultralytics' own thread choice, in one run.

    .venv/bin/python benchmarks/bench_train_threads.py [--n 100] [--epochs 3] [--repeats 3]

ultralytics' trainer sets torch to cpu_count - 1 threads for its run (1 of 2 cores on our
machines); `train_detector` puts the count back at the start of training and of every epoch.
The baseline re-applies ultralytics' choice at every epoch start (a callback after ours), which
is what training did before. The same synthetic study (256 px films, the demo's detector
settings: params.yaml `detector` with `demo.overrides`) is trained alternately by both, and the
table gives the median wall time per run, the CPU use (process CPU time / wall time) and the
ratio to the baseline. Run it alone: other jobs on the machine change both figures.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

from cxrkit.cli.demo_steps import merged_params  # noqa: E402
from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.importers.synthetic import load_synthetic  # noqa: E402
from cxrkit.data.ingest import IngestOptions, ingest  # noqa: E402
from cxrkit.data.synthetic import generate_study  # noqa: E402
from cxrkit.models.detector import import_ultralytics, train_detector  # noqa: E402


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="synthetic images (80 %% train)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternating")
    args = parser.parse_args()

    import_ultralytics()
    logging.getLogger("ultralytics").setLevel(logging.WARNING)  # its per-run report would bury the table
    import torch
    from ultralytics.utils import NUM_THREADS

    root = Path(tempfile.mkdtemp(prefix="bench-train-threads-"))
    os.environ.setdefault("CXR_DEID_SALT", "bench-train-threads-salt-0123456789")
    study = generate_study(root / "study", n=args.n, seed=7, size=256, positive_fraction=0.6, difficulty=0.2,
                           workers=2)
    ws = Workspace(root / "ws")
    ingest(load_synthetic(study), ws, IngestOptions(workers=2))
    records = [r for r in read_manifest(ws.manifest_path) if r.split != "test"]
    params = merged_params(load_params())["detector"] | {"epochs": args.epochs, "patience": 0, "val": False}

    threads = torch.get_num_threads()
    ultralytics_choice = {"on_train_epoch_start": lambda trainer: torch.set_num_threads(NUM_THREADS)}
    variants = {f"ultralytics' choice ({NUM_THREADS} threads; baseline)": ultralytics_choice,
                f"every core ({threads} threads, train_detector)": None}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, callbacks in variants.items():
            cpu, start = cpu_seconds(), time.perf_counter()
            train_detector(records, ws.data_dir, root / f"run-{repeat}", params, callbacks=callbacks)
            wall = time.perf_counter() - start
            times[name].append((wall, (cpu_seconds() - cpu) / wall))
            print(f"repeat {repeat}: {name}: {wall:.1f} s", file=sys.stderr)

    base = statistics.median(w for w, _ in next(iter(times.values())))
    print(f"\n{len(records)} images ({args.n} generated, 256 px), detector {params['model']} at {params['imgsz']} px, "
          f"{args.epochs} epochs, batch {params['batch']}; {args.repeats} runs each; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs\n")
    print("| training | median s | CPU use | vs baseline |\n|---|---:|---:|---:|")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        use = statistics.median(u for _, u in runs)
        print(f"| {name} | {wall:.1f} | {use * 100:.0f} % | {wall / base:.2f} |")


if __name__ == "__main__":
    main()
