"""Ingest throughput against the raw decode-and-encode rate, measured in the same run.

    python benchmarks/bench_ingest.py [--n 64] [--repeats 3]

Data: synthetic 1024x1024 8-bit JPEG Baseline DICOMs (RSNA's format).
Baseline ("raw"): one process doing only pydicom's decode plus a PNG encode to disk,
the least any ingest must do; also run in one process per core, which shows what
the cores give together (they share memory bandwidth and caches). Ours: the full `cxrkit.data.ingest.ingest` (hash, de-identify,
window, PNG, manifest) with 1 worker and with one worker per core.
Printed: median images/s over the repeats, ratios against raw, and the mean busy
share of each core during the parallel run.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import psutil
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.ingest import IngestOptions, ingest  # noqa: E402
from cxrkit.data.sources import SourceImage  # noqa: E402
from cxrkit.data.synthetic import generate_study  # noqa: E402


def raw_rate(files: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, path in enumerate(files):
        pixels = pydicom.dcmread(path).pixel_array
        ok, png = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])  # the level ingest uses
        (out / f"{i}.png").write_bytes(png.tobytes())
    return len(files) / (time.perf_counter() - start)


def raw_rate_parallel(files: list[Path], out: Path, workers: int) -> float:
    """The raw pipeline in `workers` processes at once: what the cores can give together."""
    shards = [files[i::workers] for i in range(workers)]
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(raw_rate, [shards[0][:1]] * workers, [out / "warm"] * workers))  # import cost out of the timing
        start = time.perf_counter()
        list(pool.map(raw_rate, shards, [out / str(i) for i in range(workers)]))
    return len(files) / (time.perf_counter() - start)


def ingest_rate(files: list[Path], root: Path, workers: int) -> tuple[float, list[float]]:
    """images/s of a fresh ingest, and each core's busy percent while it ran."""
    ws = Workspace(root)
    sources = [SourceImage(path=p, source="bench", original_id=p.name) for p in files]
    samples: list[list[float]] = []
    stop = threading.Event()

    def sample():
        psutil.cpu_percent(percpu=True)
        while not stop.wait(0.2):
            samples.append(psutil.cpu_percent(percpu=True))

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    report = ingest(sources, ws, IngestOptions(workers=workers))
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join()
    assert report.ok and report.ingested == len(files), report
    per_core = [statistics.mean(s[i] for s in samples) for i in range(len(samples[0]))] if samples else []
    return len(files) / elapsed, per_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="DICOMs per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("CXR_DEID_SALT", "benchmark-salt-not-a-secret-0123456789")
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = generate_study(tmp / "study", n=args.n, seed=1, size=1024,
                               transfer_syntaxes=("jpeg-baseline",), workers=cores)
        files = sorted(Path(study).glob("*.dcm"))
        raw, raw_many, one, many, busy = [], [], [], [], []
        for r in range(args.repeats):
            raw.append(raw_rate(files, tmp / f"raw{r}"))
            raw_many.append(raw_rate_parallel(files, tmp / f"rawmany{r}", cores))
            one.append(ingest_rate(files, tmp / f"one{r}", workers=1)[0])
            rate, per_core = ingest_rate(files, tmp / f"many{r}", workers=cores)
            many.append(rate)
            busy.append(per_core)

    med = statistics.median
    raw_m, raw_many_m, one_m, many_m = med(raw), med(raw_many), med(one), med(many)
    core_busy = [med(b[i] for b in busy) for i in range(cores)] if busy and busy[0] else []
    print(f"ingest benchmark: {args.n} x 1024x1024 JPEG Baseline DICOMs, median of {args.repeats}")
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {cores} cores, "
          f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print()
    print(f"| {'pipeline':<36} | {'images/s':>9} | {'vs raw (1 core)':>15} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 17}|")
    print(f"| {'raw: pydicom decode + PNG encode':<36} | {raw_m:9.1f} | {1.0:15.2f} |")
    print(f"| {f'raw, {cores} processes':<36} | {raw_many_m:9.1f} | {raw_many_m / raw_m:15.2f} |")
    print(f"| {'cxr ingest, 1 worker':<36} | {one_m:9.1f} | {one_m / raw_m:15.2f} |")
    print(f"| {f'cxr ingest, {cores} workers':<36} | {many_m:9.1f} | {many_m / raw_m:15.2f} |")
    print()
    print(f"per core, {cores} workers vs raw on 1 core: {many_m / cores / raw_m:.2f} (target >= 0.8)")
    print(f"{cores} workers vs raw in {cores} processes: {many_m / raw_many_m:.2f}")
    print("core busy during the parallel run: " + ", ".join(f"{b:.0f}%" for b in core_busy))


if __name__ == "__main__":
    main()
