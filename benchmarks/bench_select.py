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
the run is the scoring; `--strategy hybrid` (params.yaml's default) also scores the labeled
images, for their embeddings (the scoring pass keeps each image's classifier features, so the
pool is read once), and runs the k-center choice in the flow's process.
The flows report to $PREFECT_API_URL, or to a Prefect server this script starts for the run.

`--labelstudio 3` runs whole select rounds instead, end to end: a real Label Studio (started as
`cxr labelstudio start` starts it) holds a task per image in the project the flow writes to, and
the flow runs that many times with params.yaml's strategy and heatmaps. Before each round after
the first, a reader labels 1 % of the tasks; the prediction cache is emptied before every round
but the second (a retrain's new model re-scores the whole pool; the second round re-ranks with
the same model), so the third round is one after a retrain that also prunes the first round's
queue. The table gives each step's seconds (the flow's summary `step_seconds`) and what is not
the model's work (listing, ranking, publishing and pruning, Prefect) against the scoring.
Results: --out (default benchmarks/results/select_rounds/) rounds.json and table.txt.
"""
from __future__ import annotations

import argparse
import contextlib
import json
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
    parser.add_argument("--labelstudio", type=int, default=0,
                        help="select rounds to run end to end against a real Label Studio (0: none)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "select_rounds",
                        help="where --labelstudio writes rounds.json and table.txt")
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

    if args.labelstudio:
        params = load_params()
        params["select"]["strategy"] = args.strategy
        params_file = root / "params-rounds.yaml"
        params_file.write_text(yaml.safe_dump(params))
        rounds = labelstudio_rounds(ws, records, params_file, args.labelstudio)
        report_rounds(rounds, args, serving)
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
    if runs:  # the cold and warm runs' table
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


def labelstudio_rounds(ws: Workspace, records: list, params_file: Path, rounds: int) -> list[dict]:
    """`rounds` select rounds against a real Label Studio holding a task per record (see the
    module docstring); each round's wall seconds and the flow's summary."""
    from cxrkit.core.labels import DEFAULT_CONFIG, load_schema
    from cxrkit.labelstudio.client import DEFAULT_PROJECT, LabelStudio
    from cxrkit.labelstudio.results import boxes_to_results
    from cxrkit.services import labelstudio_server
    from cxrkit.services.process import free_port
    from flows.select import PREDICTION_CACHE, select_flow

    info = labelstudio_server.start(ws, port=free_port())
    try:
        ls = LabelStudio.for_server(info)
        project = ls.ensure_project(DEFAULT_PROJECT, DEFAULT_CONFIG.read_text())
        ls.ensure_view(project)
        start = time.perf_counter()
        report = ls.import_tasks(project, records, ws.data_dir)
        print(f"Label Studio: {len(report.imported)} tasks imported in {time.perf_counter() - start:.1f} s")
        tasks, schema = ls.tasks_by_image(project), load_schema()
        by_id = {r.image_id: r for r in records}
        ids = sorted(tasks)
        results = []
        for k in range(rounds):
            if k:  # a reader labels 1 % of the tasks (Normal, no boxes)
                for image_id in ids[k::100]:
                    record = by_id[image_id]
                    ls.create_annotation(tasks[image_id]["id"],
                                         boxes_to_results([], record.width, record.height, schema, schema.normal))
            if k != 1:
                shutil.rmtree(ws.root / PREDICTION_CACHE, ignore_errors=True)
            start = time.perf_counter()
            summary = select_flow(workspace=str(ws.root), project=project, params=str(params_file))
            seconds = time.perf_counter() - start
            print(f"round {k + 1}: {seconds:.1f} s, steps {summary['step_seconds']}", flush=True)
            results.append({"round": k + 1, "seconds": seconds, "cold": k != 1, "scored": summary["scored"],
                            "cached": summary["cached"], "predictions_pushed": summary["predictions_pushed"],
                            "steps": summary["step_seconds"]})
        return results
    finally:
        labelstudio_server.stop(ws)


def report_rounds(rounds: list[dict], args, serving) -> None:
    """The rounds' table (printed and table.txt) and rounds.json under --out."""
    header = (f"select rounds ({args.strategy}) on {args.n} images of {args.size} px in a real Label Studio, model "
              f"{serving.version_id} (detector imgsz {serving.params['detector']['imgsz']}, classifier "
              f"{serving.params['classifier']['arch']} at {serving.params['classifier']['input_size']} px)")
    names = ["list tasks", "score", "rank", "publish and prune", "heatmaps"]
    lines = [header, "", "| round | scored (cached) | " + " | ".join(names) + " | other (Prefect, manifest) | total "
             "| not the model's work / scoring |", "|" + "---|" * (len(names) + 5)]
    for r in rounds:
        steps = r["steps"]
        other = r["seconds"] - sum(steps.values())
        bookkeeping = r["seconds"] - steps.get("score", 0.0) - steps.get("heatmaps", 0.0)
        share = f"{bookkeeping / steps['score']:.1%}" if steps.get("score") else ""
        lines.append(f"| {r['round']}{' (cold)' if r['cold'] else ' (warm)'} | {r['scored']} ({r['cached']}) | "
                     + " | ".join(f"{steps.get(n, 0.0):.1f}" for n in names)
                     + f" | {other:.1f} | {r['seconds']:.1f} | {share} |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.txt").write_text(text + "\n")
    (args.out / "rounds.json").write_text(json.dumps({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
                                                      "n": args.n, "size": args.size, "rounds": rounds}, indent=2) + "\n")


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
