"""Prefect flow `select`: rank the unlabeled images by what the serving model would learn from them.

    python -m flows.select [--workspace DIR] [--project ID] [--params FILE] [--strategy NAME]
    cxr select ...                          (the same, from the CLI)

1. the serving model version (`current` in the workspace's registry); none yet: nothing to rank;
2. the unlabeled images: in the manifest, not labeled by their source, not in the last
   retrain's labels, and without a submitted annotation in Label Studio now;
3. score them with the version's predictor (`Predictor.predict_paths`, batched, cached on disk
   in cache/predictions/ by model version + image hash, so a re-run only predicts new images);
   an image that cannot be predicted is reported with its reason and left out;
4. rank with the strategy of params.yaml `select:` (cxrkit/selection/: random, least_confidence,
   entropy, margin, flip, uncertainty, coreset, hybrid); the diversity strategies also get
   image embeddings (the classifier's penultimate features);
5. write each task's score and rank to Label Studio (`uncertainty`, `uncertainty_rank`; only the
   tasks whose values change are written; scores are rounded to 6 decimals so a re-run with
   the same model writes nothing), keep the view "Most uncertain first", and push the model's
   boxes as pre-annotations to the unlabeled tasks that have none from this version yet.

Without Label Studio (none configured or running) steps 1-4 run and the ranking is returned.
"""
from __future__ import annotations

from cxrkit.core import offline

offline.apply()  # before prefect is imported: it reads its settings at import

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Completed  # noqa: E402

from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.params import load_params, params_file_for  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.labelstudio.client import LabelStudio  # noqa: E402
from cxrkit.labelstudio.tasks import has_prediction, is_annotated  # noqa: E402
from cxrkit.models.registry import Registry  # noqa: E402
from cxrkit.pipeline import LABELS_FILE  # noqa: E402
from cxrkit.pipeline.labels import labeled_ids, read_labels  # noqa: E402
from cxrkit.selection import (  # noqa: E402
    NEEDS_EMBEDDINGS,
    STRATEGIES,
    get_strategy,
    pool_from_predictions,
)
from cxrkit.selection.embeddings import image_embeddings  # noqa: E402
from flows.connect import context_for  # noqa: E402

PREDICTION_CACHE = "cache/predictions"
SCORE_DECIMALS = 6


@task(name="score unlabeled images", persist_result=False, cache_policy=NO_CACHE)
def score_images(predictor, image_ids: list[str], paths: list[Path], cache_dir: Path) -> list:
    logger = get_run_logger()
    start = time.perf_counter()
    predictions = predictor.predict_paths(paths, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    failed = [(i, p.error) for i, p in zip(image_ids, predictions) if not p.ok]
    cached = sum(p.cached for p in predictions)
    logger.info("scored %d images with %s in %.1f s (%.1f images/s; %d from the cache, %d predicted, %d failed)",
                len(paths), predictor.model_version, seconds, len(paths) / seconds if seconds else 0.0, cached,
                len(paths) - cached - len(failed), len(failed))
    for image_id, error in failed:
        logger.warning("image %s not scored: %s", image_id, error)
    return predictions


@task(name="rank with the strategy", persist_result=False, cache_policy=NO_CACHE)
def rank(pool, strategy_name: str, settings: dict, batch_size: int) -> tuple[list[float], list[int]]:
    logger = get_run_logger()
    strategy = get_strategy(strategy_name, settings)
    scores = strategy.scores(pool)
    batch = strategy.select(pool, min(batch_size, len(pool)), np.random.default_rng(0)) if len(pool) else []
    logger.info("strategy %s ranked %d images; next batch of %d: %s%s", strategy_name, len(pool), len(batch),
                ", ".join(pool.image_ids[i] for i in batch[:5]), " ..." if len(batch) > 5 else "")
    return [float(s) for s in scores], batch


@task(name="write scores to Label Studio", persist_result=False, cache_policy=NO_CACHE)
def write_scores(ls: LabelStudio, project: int, scores: dict[str, float]) -> int:
    logger = get_run_logger()
    changed = ls.set_uncertainty(project, scores)
    view = ls.ensure_view(project)
    logger.info("Label Studio project %d: %d of %d tasks got a new score/rank; view \"Most uncertain first\" is tab %d",
                project, changed, len(scores), view)
    return changed


@task(name="push pre-annotations", persist_result=False, cache_policy=NO_CACHE)
def push_preannotations(ls: LabelStudio, project: int, predictions: dict, model_version: str) -> int:
    logger = get_run_logger()
    if not predictions:
        logger.info("every unlabeled task already shows %s's prediction", model_version)
        return 0
    created = ls.push_predictions(project, predictions, model_version)
    logger.info("pushed %d pre-annotations of %s", created, model_version)
    return created


@flow(name="select", log_prints=False, persist_result=False)
def select_flow(workspace: str | None = None, project: int | None = None, params: str | None = None,
                strategy: str | None = None):
    """Score the unlabeled images with the serving model and write the ranking to Label Studio.

    workspace: the workspace folder (default $CXR_WORKSPACE or ./workspace); project: the Label
    Studio project id (default: the project titled "Chest X-ray pneumonia"); params: the params
    file (default $CXR_PARAMS, else the workspace's configured params file, else params.yaml);
    strategy: overrides select.strategy.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    ws = Workspace.from_env(workspace)
    knobs = load_params(params_file_for(ws.root, params))
    section = knobs.get("select") or {}
    name = strategy or section.get("strategy", "uncertainty")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    batch_size = int(section.get("batch_size", 20))
    settings = dict((section.get("strategies") or {}).get(name) or {})
    if "batch_size" in inspect.signature(STRATEGIES[name]).parameters:
        settings.setdefault("batch_size", batch_size)

    version = Registry(ws.models_dir).current()
    if version is None:
        logger.info("no model is serving yet (no `current` in %s): nothing to rank; retrain first", ws.models_dir)
        return Completed(name="NoModel", message="no current model", data={"model_version": None, "scored": 0})

    # Label Studio only once a model serves (without one there is nothing to write).
    ctx = context_for(ws, project)
    ls, project = ctx.labelstudio, ctx.project
    tasks: dict[str, dict] = {}
    if ls is not None:
        tasks = ls.tasks_by_image(project)
    else:
        logger.info("no Label Studio configured or running: ranking only, nothing written")
    records = read_manifest(ws.manifest_path)
    labeled = labeled_ids(records, read_labels(ws.root / LABELS_FILE))
    labeled |= {image_id for image_id, t in tasks.items() if is_annotated(t)}
    pool_records = [r for r in records if r.image_id not in labeled]
    logger.info("%d images, %d labeled, %d to score; model %s, strategy %s", len(records), len(labeled),
                len(pool_records), version.version_id, name)

    predictor = version.predictor(cache_dir=ws.root / PREDICTION_CACHE)
    ids = [r.image_id for r in pool_records]
    paths = [ws.data_dir / r.path for r in pool_records]
    score_start = time.perf_counter()
    predictions = score_images(predictor, ids, paths, ws.root / PREDICTION_CACHE)
    score_seconds = time.perf_counter() - score_start

    embeddings = labeled_embeddings = None
    if name in NEEDS_EMBEDDINGS:
        by_id = {r.image_id: r for r in records}
        batch = int(section.get("embedding_batch", 32))
        ok = [i for i, p in enumerate(predictions) if p.ok]  # an image that failed cannot be read either
        found = image_embeddings(predictor.classifier, [str(paths[i]) for i in ok], batch) if ok else None
        if found is not None:
            embeddings = np.zeros((len(ids), found.shape[1]), dtype=found.dtype)
            embeddings[ok] = found
        done = [ws.data_dir / by_id[i].path for i in sorted(labeled) if i in by_id]
        labeled_embeddings = image_embeddings(predictor.classifier, [str(p) for p in done], batch) if done else None
    pool = pool_from_predictions(ids, predictions, embeddings, labeled_embeddings)
    scores, batch = rank(pool, name, settings, batch_size)
    score_of = {image_id: round(s, SCORE_DECIMALS) for image_id, s in zip(pool.image_ids, scores)}
    ranking = sorted(score_of, key=lambda i: -score_of[i])

    summary = {"model_version": version.version_id, "strategy": name, "scored": len(ids), "pool": len(pool),
               "failed": dict(pool.excluded), "cached": sum(p.cached for p in predictions), "ranking": ranking,
               "scores": score_of, "next_batch": [pool.image_ids[i] for i in batch], "changed_tasks": 0,
               "predictions_pushed": 0, "images_per_second": len(ids) / score_seconds if score_seconds else 0.0}
    if ls is not None:
        missing = [i for i in score_of if i not in tasks]
        if missing:
            logger.warning("%d scored images are not tasks of project %d (import them: `cxr labelstudio import-tasks`), "
                           "e.g. %s", len(missing), project, missing[:3])
        summary["changed_tasks"] = write_scores(ls, project, {i: s for i, s in score_of.items() if i in tasks})
        by_id = dict(zip(ids, predictions))
        todo = {i: (by_id[i].boxes, by_id[i].impression) for i in score_of
                if i in tasks and not has_prediction(tasks[i], version.version_id)}
        summary["predictions_pushed"] = push_preannotations(ls, project, todo, version.version_id)
    summary["seconds"] = time.perf_counter() - started
    logger.info("select done in %.1f s: %d ranked, top %s", summary["seconds"], len(ranking), ranking[:3])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.select", description=select_flow.__doc__.split("\n")[0])
    parser.add_argument("--workspace", "-w", default=None, help="workspace folder (default $CXR_WORKSPACE or ./workspace)")
    parser.add_argument("--project", type=int, default=None, help="Label Studio project id")
    parser.add_argument("--params", default=None, help="params file (default $CXR_PARAMS or params.yaml)")
    parser.add_argument("--strategy", default=None, help=f"one of {', '.join(STRATEGIES)} (default: params.yaml)")
    args = parser.parse_args(argv)
    state = select_flow(workspace=args.workspace, project=args.project, params=args.params, strategy=args.strategy,
                        return_state=True)
    result = state.result(raise_on_failure=False)
    if not state.is_completed():
        print(f"select failed: {result}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k not in ("ranking", "scores")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
