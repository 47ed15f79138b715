"""Select-flow scoring throughput on a pool of unlabeled images (default 2,000 small ones).

    .venv/bin/python benchmarks/bench_select.py --model-from WORKSPACE [--n 2000] [--size 128] [--baseline 300]
        [--workers 1,2] [--dask 1,2] [--strategy uncertainty]

The serving model of WORKSPACE (e.g. the one bench_retrain.py leaves with --workspace) is
registered in a fresh workspace holding `--n` synthetic images (generated at `--size` px:
small images keep generation and decoding cheap; the detector runs at the model's imgsz either
way). The select flow then runs twice without Label Studio (scoring + ranking only): cold (every
image predicted) and warm (every prediction from the on-disk cache). The baseline is
`Predictor.predict_paths` called directly, without cache, on the first `--baseline` images: the
flow's per-image cost should equal it (the flow adds listing, ranking and Prefect). With
`--workers 1,2` the cold run is repeated (cache emptied) with `select.scoring.workers` at each
value: more than 1 scores on a Dask LocalCluster of that many processes (flows/scoring.py), and
the table gives each throughput as a ratio to 1 worker's. `--dask 1,2` runs it again on a Dask
LocalCluster of that many single-threaded worker processes that this script starts before the
run and points the flow to (`CXR_DASK_SCHEDULER`, a running cluster as on other machines): the
cluster's start is not timed, each worker's model load is; the ratio is to the 1-process
cluster, so the scaling with n is read at one thread per process. The strategy is `uncertainty` by default, so that
the run is the scoring; `--strategy hybrid` (params.yaml's default) adds the pass of the
classifier that embeds the pool and the labeled images, in the flow's process, every round.
The flows report to $PREFECT_API_URL, or to a Prefect server this script starts for the run.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import yaml  # noqa: E402

from cxrkit.core.manifest import read_manifest, write_manifest  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.importers.synthetic import load_synthetic  # noqa: E402
from cxrkit.data.ingest import IngestOptions, ingest  # noqa: E402
from cxrkit.data.synthetic import generate_study  # noqa: E402
from cxrkit.models.registry import Registry  # noqa: E402
from flows.scoring import SCHEDULER_ENV, worker_environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-from", type=Path, required=True, help="a workspace with a serving model")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--baseline", type=int, default=300,
                        help="images for the direct-predictor baseline (0: none; it runs torch in this process's "
                             "main thread, which can slow the in-process flow's scoring thread after it)")
    parser.add_argument("--workers", default="1", help="scoring processes to compare, e.g. 1,2")
    parser.add_argument("--strategy", default="uncertainty", help="select.strategy for the runs")
    parser.add_argument("--dask", default="", help="worker processes of a running Dask cluster to compare, e.g. 1,2")
    args = parser.parse_args()
    for key in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        os.environ.pop(key, None)  # scoring and ranking only
    os.environ.setdefault("CXR_DEID_SALT", "bench-select-salt-0123456789abcdef")
    serving = Registry(Workspace(args.model_from).models_dir).current()
    if serving is None:
        sys.exit(f"{args.model_from} has no serving model")

    root = Path(tempfile.mkdtemp(prefix="bench-select-"))
    start = time.perf_counter()
    study = generate_study(root / "study", n=args.n, seed=9, size=args.size, positive_fraction=0.5, difficulty=0.3,
                           workers=2)
    ws = Workspace(root / "ws")
    ingest(load_synthetic(study), ws, IngestOptions(workers=2))
    records = read_manifest(ws.manifest_path)
    write_manifest(ws.manifest_path, [replace(r, labeled=False, boxes=[], impression=None, subtype=None)
                                      for r in records])
    Registry(ws.models_dir).register(serving.detector_weights, serving.classifier_checkpoint,
                                     data_version=serving.data_version, params=serving.params, metrics=serving.metrics,
                                     version_id=serving.version_id)
    Registry(ws.models_dir).set_current(serving.version_id)
    print(f"pool of {len(records)} images ({args.size} px) ready in {time.perf_counter() - start:.0f} s")

    direct = None
    if args.baseline:
        predictor = serving.predictor()
        subset = [ws.data_dir / r.path for r in records[: args.baseline]]
        predictor.predict_paths(subset[:8])  # warm-up (model load, first batch)
        t = time.perf_counter()
        predictor.predict_paths(subset)
        direct = len(subset) / (time.perf_counter() - t)

    from flows.select import PREDICTION_CACHE, select_flow

    # One Prefect server for the run, named in the environment that the Dask workers inherit:
    # without PREFECT_API_URL each worker process would start a temporary server of its own for
    # its task runs (about 50 s each here), as the first run of this script measured.
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL, temporary_settings

        server = SubprocessASGIServer()
        server.start()
        os.environ["PREFECT_API_URL"] = server.api_url  # the workers' environment
        settings = temporary_settings(updates={PREFECT_API_URL: server.api_url})  # this process's
        settings.__enter__()
    def cold_and_warm(workers: int, label: str) -> None:
        params = load_params()
        params["select"]["scoring"] = {**(params["select"].get("scoring") or {}), "workers": workers}
        params["select"]["strategy"] = args.strategy  # uncertainty: no embeddings pass, the run is the scoring
        params_file = root / f"params-{workers}.yaml"
        params_file.write_text(yaml.safe_dump(params))
        for name in ("cold", "warm"):
            if name == "cold":
                shutil.rmtree(ws.root / PREDICTION_CACHE, ignore_errors=True)
            t = time.perf_counter()
            summary = select_flow(workspace=str(ws.root), params=str(params_file))
            runs[f"{name}, {label}"] = (time.perf_counter() - t, summary)

    runs = {}
    for workers in [int(w) for w in args.workers.split(",") if w]:
        cold_and_warm(workers, f"{workers} worker(s)")
    for n in [int(w) for w in args.dask.split(",") if w]:
        with running_cluster(n) as address:
            os.environ[SCHEDULER_ENV] = address
            try:
                cold_and_warm(1, f"Dask cluster of {n}")
            finally:
                del os.environ[SCHEDULER_ENV]
    print(f"\nselect flow ({args.strategy}) on {args.n} unlabeled {args.size} px images, model {serving.version_id} "
          f"(detector imgsz {serving.params['detector']['imgsz']}, flip {serving.params['predictor'].get('flip')})")
    one = next((seconds for name, (seconds, _) in runs.items() if name == "cold, 1 worker(s)"), None)
    one_dask = next((seconds for name, (seconds, _) in runs.items() if name == "cold, Dask cluster of 1"), None)
    print(f"{'run':<48}{'seconds':>9}{'images/s':>10}{'vs direct':>10}{'vs 1 worker':>12}{'vs cluster of 1':>16}")
    if direct:
        print(f"{'direct predict_paths, no cache (baseline)':<48}{args.baseline / direct:>9.1f}{direct:>10.1f}{1:>10.2f}")
    for name, (seconds, summary) in runs.items():
        rate = summary["scored"] / seconds
        cold = name.startswith("cold")
        vs_one = f"{one / seconds:>12.2f}" if one and cold else f"{'':>12}"
        vs_dask = f"{one_dask / seconds:>16.2f}" if one_dask and cold and "Dask" in name else ""
        vs_direct = f"{rate / direct:>10.2f}" if direct else f"{'':>10}"
        print(f"{'select flow, ' + name:<48}{seconds:>9.1f}{rate:>10.1f}{vs_direct}{vs_one}{vs_dask}")
        if name.startswith("warm"):
            print(f"  ({summary['cached']} of {summary['scored']} from the cache)")
    if server is not None:
        settings.__exit__(None, None, None)
        server.stop()
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_cluster(n: int):
    """A Dask LocalCluster of `n` worker processes, one thread each, on 127.0.0.1, started with the
    environment the select flow gives its own local workers; yields the scheduler's address. The
    nannies write their workers' environment into this process's os.environ: put back after."""
    from distributed import LocalCluster

    saved = dict(os.environ)
    try:
        with worker_environment(), LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                dashboard_address=None, host="127.0.0.1") as cluster:
            yield cluster.scheduler_address
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


if __name__ == "__main__":
    main()
