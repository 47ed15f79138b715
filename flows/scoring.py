"""The select flow's inference: score the pool here, or spread over the processes of a Dask cluster.

    score_images(models_dir, version_id, paths, cache_dir, settings) -> list[Prediction]
        runs score_pool (a Prefect subflow, given the paths in a file) on scoring_runner(settings), the
        task runner the settings choose

The pool is cut into chunks of `select.scoring.chunk` images; each chunk is a Prefect task run
(`score_chunk`) that loads the model version's predictor once per process and predicts the
chunk (cached on disk per model version + image hash, so a re-run predicts only new images).
Where the chunks run is a setting, not other code (prefect-dask's DaskTaskRunner on distributed):
- `select.scoring.workers: 1` (default): here, one chunk after another, torch using the cores;
- `select.scoring.workers: n` (> 1): a Dask LocalCluster of n worker processes on this machine,
  one torch thread each, started for the run and stopped after it: n chunks at a time;
- `CXR_DASK_SCHEDULER=tcp://host:8786` (a service address, so an environment variable): a
  running Dask cluster, e.g. workers on other machines. Each worker needs this checkout's
  environment, the workspace's models and images at the same paths, and the Prefect API.
A chunk is predicted the same way wherever it runs (the predictor batches within a chunk), so the
ranking does not depend on the runner.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from cxrkit.models.registry import Registry

SCHEDULER_ENV = "CXR_DASK_SCHEDULER"
DEFAULT_CHUNK = 256  # images per task run: a few seconds of inference against Prefect's per-task cost


def scoring_settings(section: dict) -> dict:
    """`select.scoring` with defaults: workers (1 = here), chunk (images per task run)."""
    settings = {"workers": 1, "chunk": DEFAULT_CHUNK, **((section or {}).get("scoring") or {})}
    if int(settings["workers"]) < 1 or int(settings["chunk"]) < 1:
        raise ValueError(f"select.scoring.workers and chunk must be >= 1, got {settings}")
    return settings


def scoring_runner(settings: dict):
    """The task runner score_pool runs on: a Dask cluster (CXR_DASK_SCHEDULER, or `workers` > 1
    local worker processes), else this process, a chunk at a time."""
    address = os.environ.get(SCHEDULER_ENV)
    workers = int(settings["workers"])
    if not address and workers == 1:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    # One torch thread per worker process (distributed's nanny.pre-spawn-environ sets OMP_NUM_THREADS=1
    # and the like for its workers): n workers x torch's default threads would oversubscribe.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "host": "127.0.0.1"})


def score_images(models_dir: str, version_id: str, paths: list[str], cache_dir: str, settings: dict) -> list:
    """score_pool on the runner `settings` choose. distributed's nanny writes its workers'
    environment (OMP_NUM_THREADS=1, ...) into this process's os.environ before spawning them; it is
    put back afterwards, or every process started from here later (the ML backend, training)
    would run torch on one thread."""
    saved = dict(os.environ)
    # The paths go to the subflow in a file: Prefect refuses a flow run whose parameters exceed
    # 512 KB when serialized, which a list of paths does from about 8,000 images on (measured: a
    # select round on 10,000 images failed with HTTP 422 before this).
    with tempfile.TemporaryDirectory(prefix="cxr-pool-") as folder:
        paths_file = Path(folder) / "paths.json"
        paths_file.write_text(json.dumps([str(p) for p in paths]))
        try:
            with worker_environment():
                return score_pool.with_options(task_runner=scoring_runner(settings))(
                    models_dir, version_id, str(paths_file), cache_dir, settings)
        finally:
            for key in set(os.environ) - set(saved):
                del os.environ[key]
            os.environ.update(saved)


@contextlib.contextmanager
def worker_environment():
    """The environment distributed's nannies give the local workers they spawn: one thread for
    torch and the BLAS libraries, as distributed sets it, but without its MALLOC_TRIM_THRESHOLD_
    of 64 KiB, which hands freed memory back to the system so eagerly that inference, allocating
    and freeing image-sized arrays all the time, ran about 25 % slower (two processes side by
    side on 2 cores: 97 and 112 ms an image with it, 77 and 84 ms without; BENCHMARKS.md, "Select
    flow scoring throughput")."""
    import dask
    import distributed  # noqa: F401 - its config defaults, which a change made before its import would hide

    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if key != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        yield


@functools.lru_cache(maxsize=2)
def predictor_for(models_dir: str, version_id: str, cache_dir: str):
    """The version's predictor, loaded once per process (loading the models costs seconds)."""
    return Registry(models_dir).get(version_id).predictor(cache_dir=cache_dir)


@task(name="score a chunk of images", persist_result=False, cache_policy=NO_CACHE)
def score_chunk(models_dir: str, version_id: str, paths: list[str], cache_dir: str) -> list:
    return predictor_for(models_dir, version_id, cache_dir).predict_paths(paths, cache_dir=cache_dir)


@flow(name="score unlabeled images", persist_result=False, log_prints=False)
def score_pool(models_dir: str, version_id: str, paths_file: str, cache_dir: str, settings: dict) -> list:
    """One Prediction per path of `paths_file` (a JSON list), in order (an image that cannot be
    predicted has `error` set)."""
    logger = get_run_logger()
    paths = json.loads(Path(paths_file).read_text())
    start = time.perf_counter()
    chunk = int(settings["chunk"])
    chunks = [paths[i: i + chunk] for i in range(0, len(paths), chunk)]
    futures = [score_chunk.submit(str(models_dir), version_id, c, str(cache_dir)) for c in chunks]
    predictions = [p for f in futures for p in f.result()]
    seconds = time.perf_counter() - start
    cached = sum(p.cached for p in predictions)
    failed = [p for p in predictions if not p.ok]
    logger.info("scored %d images with %s in %.1f s (%.1f images/s; %d chunks of up to %d; %d from the cache, "
                "%d predicted, %d failed)", len(paths), version_id, seconds, len(paths) / seconds if seconds else 0.0,
                len(chunks), chunk, cached, len(paths) - cached - len(failed), len(failed))
    for p in failed:
        logger.warning("image %s not scored: %s", Path(p.path or "?").name, p.error)
    return predictions
