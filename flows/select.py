"""Prefect flow `select`: rank the unlabeled images by what the serving model would learn from them.

    python -m flows.select [--workspace DIR] [--project ID] [--params FILE] [--strategy NAME]
    cxr select ...                          (the same, from the CLI)

1. the serving model version (`current` in the workspace's registry); none yet: the cold start
   below, or nothing to rank (state NoModel) when `select.cold_start` is null;
2. the unlabeled images: in the manifest, not labeled by their source, not in the last
   retrain's labels, and without a submitted annotation in Label Studio now (with several
   readers per image, `retrain.readers_per_image`: until all of them have read it);
3. score them with the version's predictor (`Predictor.predict_paths`, batched, cached on disk
   in cache/predictions/ by model version + image hash, so a re-run only predicts new images),
   in chunks that run here or on a Dask cluster (`select.scoring`, flows/scoring.py);
   an image that cannot be predicted is reported with its reason and left out;
4. rank with the strategy of params.yaml `select:` (cxrkit/selection/: random, least_confidence,
   entropy, margin, flip, uncertainty, coreset, hybrid, typiclust, class_balanced,
   likely_positive, detector_uncertainty, hybrid_random); the
   diversity strategies also get image embeddings (the classifier's penultimate features,
   which the scoring pass keeps with each prediction, so the pool is read once; the labeled
   images are scored for theirs, cached the same way), class_balanced the class counts of the
   labeled images;
5. publish the queue to Label Studio (cxrkit/labelstudio/publish.py): one prediction per queued
   task with the model's boxes and impression as its pre-annotation and its place in the queue
   as its score, imported in bulk, so the number of requests does not grow with the project;
   the view "Most uncertain first" sorts by that score. Scores are rounded to 6 decimals, so a
   re-run with the same model and pool finds its queue already published and writes nothing.
   Images some but not all of their readers have read come first; unread gold-standard tasks
   (`split.gold_share`, cxrkit/labelstudio/review.py) are spread through the queue and
   pre-annotated like the rest; with `select.readers` the queue is shared among those readers,
   each with a tab of their own (cxrkit/labelstudio/queue.py).

6. write the heatmap overlays (params.yaml `explain:`) of the first `explain.queue_top` tasks of
   the published queue, the tasks radiologists open next: each film with the subtype classifier's
   heatmap (HiResCAM) over it and the model's opacity boxes outlined (cxrkit/models/explain.py), at
   data/heatmaps/<image id>.png, the URL every task's `data.heatmap` names
   (cxrkit/labelstudio/tasks.py), shown in a collapsed panel beside the film and never part of an
   annotation. The serving model is loaded in this process for it (when the pool was scored on a
   Dask cluster, that is one more load, a few seconds) and explains each of those films once per
   model version (`Predictor.explain_paths`, cached beside the predictions); an overlay already
   written for this version and image is kept. Overlays of tasks that left the top set (labeled,
   or ranked lower) or of an older model are deleted, so a panel never shows what another model
   saw; a film that cannot be explained is reported with its reason and the rest go on. The
   folder is kept out of the data version (the workspace's .dvcignore), and the project gets a
   Local Files storage on it so that Label Studio serves it. A task imported before the panel
   existed lacks `data.heatmap` (its panel stays empty): a top task's is added then, once.

Cold start (no model serving yet): the first labels decide what the first model learns, so
they should not be the first films of the manifest. The unlabeled images are ranked by the
model-free strategy `select.cold_start` (default random: a random draw of the pool; typiclust,
the most typical image of each region of the pool, trained a weaker first detector in the
active-learning benchmark, BENCHMARKS.md) on thumbnail embeddings
(`cxrkit.selection.embeddings.thumbnail_embeddings`, the labeled images' too), and the ranking
is published as in step 5, without pre-annotations (there is no model), and no heatmap is
written (the panel stays empty until the first model serves). The run ends in state ColdStart,
with `model_version` None.

Without Label Studio (none configured or running) everything but the writing runs and the
ranking is returned.
"""
from __future__ import annotations

from cxrkit.core import offline

offline.apply()  # before prefect is imported: it reads its settings at import

import argparse  # noqa: E402
import contextlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Completed  # noqa: E402

from cxrkit.core.atomic import write_atomic  # noqa: E402
from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.params import load_params, params_file_for  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.labelstudio.client import UNCERTAIN_VIEW, LabelStudio  # noqa: E402
from cxrkit.labelstudio.ground_truth import readers_per_image  # noqa: E402
from cxrkit.labelstudio.publish import Publication, prune_publications, publish_queue  # noqa: E402
from cxrkit.labelstudio.queue import mix_gold, share_queue, unfinished_first  # noqa: E402
from cxrkit.labelstudio.review import gold_images, gold_settings  # noqa: E402
from cxrkit.labelstudio.tasks import (  # noqa: E402
    HEATMAP_DIR,
    HEATMAP_FIELD,
    heatmap_path,
    image_url,
    submitted_annotations,
)
from cxrkit.models.explain import explain_settings  # noqa: E402
from cxrkit.models.predictor import prune_prediction_cache  # noqa: E402
from cxrkit.models.registry import Registry  # noqa: E402
from cxrkit.pipeline import LABELS_FILE, project_repo  # noqa: E402
from cxrkit.pipeline.labels import apply_labels, labeled_ids, read_labels  # noqa: E402
from cxrkit.selection import (  # noqa: E402
    MODEL_FREE,
    NEEDS_EMBEDDINGS,
    STRATEGIES,
    Pool,
    get_strategy,
    labeled_class_counts,
    pool_from_predictions,
)
from cxrkit.selection.embeddings import thumbnail_embeddings  # noqa: E402
from flows.connect import context_for, network_retries  # noqa: E402
from flows.scoring import score_images, scoring_settings  # noqa: E402

PREDICTION_CACHE = "cache/predictions"
SCORE_DECIMALS = 6
HEATMAP_INDEX = "cache/heatmaps.json"  # image id -> the model version, image and size its overlay was written for


@task(name="embed thumbnails", persist_result=False, cache_policy=NO_CACHE)
def thumbnail_pool(image_ids: list[str], paths: list[Path], labeled_paths: list[Path]) -> Pool:
    """The cold start's pool: thumbnail embeddings of the unlabeled images and, in the same PCA,
    of the labeled ones. An unreadable unlabeled image is reported and left out (`excluded`)."""
    logger = get_run_logger()
    start = time.perf_counter()
    emb, failed = thumbnail_embeddings([*paths, *labeled_paths])
    n = len(image_ids)
    keep = [i for i in range(n) if i not in failed]
    labeled = [i for i in range(n, len(emb)) if i not in failed]
    logger.info("embedded %d thumbnails in %.1f s (%d unreadable)", len(emb), time.perf_counter() - start, len(failed))
    excluded = {image_ids[i]: why for i, why in failed.items() if i < n}
    for image_id, why in excluded.items():
        logger.warning("image %s not ranked: %s", image_id, why)
    return Pool([image_ids[i] for i in keep], signals={}, embeddings=emb[keep],
                labeled_embeddings=emb[labeled] if labeled else None, excluded=excluded)


@task(name="rank with the strategy", persist_result=False, cache_policy=NO_CACHE)
def rank(pool, strategy_name: str, settings: dict, batch_size: int) -> tuple[list[float], list[int]]:
    logger = get_run_logger()
    strategy = get_strategy(strategy_name, settings)
    scores = strategy.scores(pool)
    batch = strategy.select(pool, min(batch_size, len(pool)), np.random.default_rng(0)) if len(pool) else []
    logger.info("strategy %s ranked %d images; next batch of %d: %s%s", strategy_name, len(pool), len(batch),
                ", ".join(pool.image_ids[i] for i in batch[:5]), " ..." if len(batch) > 5 else "")
    return [float(s) for s in scores], batch


@task(name="publish the queue to Label Studio", persist_result=False, cache_policy=NO_CACHE)
def publish(ls: LabelStudio, project: int, tasks: dict[str, dict], order: list[str], shown: dict,
            model_version: str | None, queues: dict[str, list[str]] | None) -> Publication:
    logger = get_run_logger()
    start = time.perf_counter()
    published = publish_queue(ls, project, tasks, order, shown, model_version, queues)
    view = ls.ensure_view(project)
    logger.info("Label Studio project %d: queue of %d tasks published as %s (%s) in %.1f s; view \"%s\" is tab %d",
                project, published.tasks, published.label,
                f"{published.created} predictions" if published.created else "already there, nothing written",
                time.perf_counter() - start, UNCERTAIN_VIEW, view)
    if queues:
        views = ls.ensure_reader_views(project, sorted({r for rs in queues.values() for r in rs}))
        logger.info("the queue is shared among %d readers, each with a tab \"Queue of <reader>\" (%s); %d tasks "
                    "changed queue", len(views), ", ".join(f"{r}: tab {v}" for r, v in views.items()),
                    published.queue_changed)
    if published.stale:
        # After the queue is live: Label Studio deletes a prediction at a time (about 9 ms each).
        start = time.perf_counter()
        logger.info("deleted the superseded publications %s in %.1f s",
                    ", ".join(prune_publications(ls, project, published)), time.perf_counter() - start)
    return published


@task(name="write the heatmap overlays", persist_result=False, cache_policy=NO_CACHE)
def write_heatmaps(ws: Workspace, ls: LabelStudio, project: int, tasks: dict[str, dict], top: list[str],
                   paths: dict[str, Path], models_dir: str, version_id: str, cache_dir: str, max_side: int) -> dict:
    """The overlays of the `top` images (the queue's first) under data/heatmaps/, written for
    `version_id`; every other overlay there deleted. Returns the counts (see write_overlays)."""
    from flows.scoring import predictor_for

    logger = get_run_logger()
    start = time.perf_counter()
    folder = ws.data_dir / HEATMAP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    project_repo.keep_out_of_data_version(ws.root)  # a workspace no retrain has opened since the panel came
    ls.ensure_local_storage(project, folder)
    loaded = time.perf_counter()
    predictor = predictor_for(models_dir, version_id, cache_dir)
    loaded = time.perf_counter() - loaded
    result = write_overlays(ws, predictor, top, paths, cache_dir, max_side)
    # A task imported before label_config.xml had the panel lacks data.heatmap: Label Studio would
    # show its panel empty. One request per such task, once (the field stays).
    old = [i for i in top if i in tasks and HEATMAP_FIELD not in (tasks[i].get("data") or {})]
    for image_id in old:
        ls.set_data_field(project, [tasks[image_id]["id"]], HEATMAP_FIELD, image_url(heatmap_path(image_id)))
    result.update(backfilled=len(old), model_seconds=round(loaded, 3), seconds=time.perf_counter() - start)
    for image_id, why in result["failed"].items():
        logger.warning("no heatmap for image %s: %s", image_id, why)
    logger.info("heatmaps of the queue's first %d tasks, model %s, in %.1f s: %d written (%d explained, %d from the "
                "cache), %d already there, %d failed, %d stale deleted%s", len(top), version_id, result["seconds"],
                result["written"], result["explained"], result["cached"], result["unchanged"], len(result["failed"]),
                result["deleted"], f"; data.heatmap added to {len(old)} older tasks" if old else "")
    return result


def write_overlays(ws: Workspace, predictor, top: list[str], paths: dict[str, Path], cache_dir: str,
                   max_side: int) -> dict:
    """Make data/heatmaps/ hold exactly the overlays of `top` by `predictor`'s model version: each
    written unless the index (HEATMAP_INDEX) says it was for this version, image and size; every
    other file there deleted (another model's, a task that left the top, a killed write's
    temporary file). A film that cannot be explained is in `failed` (image id -> reason) and has
    no overlay. Returns written, unchanged, deleted, explained, cached, failed."""
    from cxrkit.models.explain import write_overlay

    folder = ws.data_dir / HEATMAP_DIR
    index_path = ws.root / HEATMAP_INDEX
    index = read_heatmap_index(index_path)
    ids = [i for i in top if i in paths]
    failed = {i: "not in the manifest" for i in top if i not in paths}
    explanations = predictor.explain_paths([paths[i] for i in ids], cache_dir=cache_dir) if ids else []
    now: dict[str, dict] = {}
    written = unchanged = 0
    for image_id, found in zip(ids, explanations):
        target = folder / f"{image_id}.png"
        if not found.ok:
            failed[image_id] = found.error
            continue
        made = {"model_version": predictor.model_version, "image_sha256": found.image_sha256, "max_side": max_side}
        if index.get(image_id) == made and target.is_file():
            now[image_id] = made
            unchanged += 1
            continue
        try:
            grey = cv2.imread(str(paths[image_id]), cv2.IMREAD_GRAYSCALE)
            if grey is None:
                raise ValueError(f"{paths[image_id]}: cannot decode image")
            write_overlay(target, grey, found, max_side)
        except Exception as exc:  # noqa: BLE001 - reported by name; the other films go on
            failed[image_id] = f"{type(exc).__name__}: {exc}"
            continue
        now[image_id] = made
        written += 1
    deleted = 0
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and not (path.suffix == ".png" and path.stem in now):
            path.unlink(missing_ok=True)
            deleted += 1
    write_atomic(index_path, json.dumps(now, indent=0, sort_keys=True))
    return {"top": len(top), "written": written, "unchanged": unchanged, "deleted": deleted,
            "explained": sum(1 for e in explanations if e.ok and not e.cached),
            "cached": sum(1 for e in explanations if e.ok and e.cached), "failed": failed}


def remove_heatmaps(ws: Workspace) -> int:
    """Delete every overlay (no model serves, or explain.enabled is false): none may outlive its
    model. Returns how many files went."""
    folder = ws.data_dir / HEATMAP_DIR
    gone = 0
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.is_file():
            path.unlink(missing_ok=True)
            gone += 1
    (ws.root / HEATMAP_INDEX).unlink(missing_ok=True)
    return gone


def read_heatmap_index(path: Path) -> dict:
    """HEATMAP_INDEX ({} when absent or unreadable: every overlay is written again)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@flow(name="select", log_prints=False, persist_result=False)
def select_flow(workspace: str | None = None, project: int | None = None, params: str | None = None,
                strategy: str | None = None):
    """Score the unlabeled images with the serving model and write the ranking to Label Studio.

    workspace: the workspace folder (default $CXR_WORKSPACE or ./workspace); project: the Label
    Studio project id (default: the project titled "Chest X-ray pneumonia"); params: the params
    file (default $CXR_PARAMS, else the workspace's configured params file, else params.yaml);
    strategy: overrides select.strategy (the cold start, before any model, uses select.cold_start).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    ws = Workspace.from_env(workspace)
    knobs = load_params(params_file_for(ws.root, params))
    section = knobs.get("select") or {}
    batch_size = int(section.get("batch_size", 20))
    explain = explain_settings(knobs)
    version = Registry(ws.models_dir).current()
    if version is None:
        name = cold_start_strategy(section)
        if name is None:
            logger.info("no model is serving yet (no `current` in %s) and select.cold_start is null: nothing to rank; "
                        "retrain first", ws.models_dir)
            return Completed(name="NoModel", message="no current model", data={"model_version": None, "scored": 0})
    else:
        name = strategy or section.get("strategy", "hybrid")
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")

    ctx = context_for(ws, project)
    ls, project = ctx.labelstudio, ctx.project
    tasks: dict[str, dict] = {}
    steps = {}  # seconds of each step of the round, in the summary: where a round's time goes
    if ls is not None:
        start = time.perf_counter()
        tasks = ls.tasks_by_image(project)
        steps["list tasks"] = time.perf_counter() - start
    else:
        logger.info("no Label Studio configured or running: ranking only, nothing written")
    records = read_manifest(ws.manifest_path)
    labels = read_labels(ws.root / LABELS_FILE)
    # An image is labeled once all its readers (retrain.readers_per_image) have read it: until then
    # it stays in the queue, at its top (queue.unfinished_first), and in its readers' tabs.
    k = readers_per_image(knobs)
    by_source = {r.image_id for r in records if r.labeled}  # never in the pool (gold is mixed in below)
    waiting = {image_id for image_id, t in tasks.items() if 0 < submitted_annotations(t) < k} - by_source
    labeled = ((labeled_ids(records, labels) - waiting)
               | {image_id for image_id, t in tasks.items() if submitted_annotations(t) >= k})
    share, salt = gold_settings(knobs)
    gold_order = gold_images(records, share, salt)  # the order gold enters the queue
    gold_set = set(gold_order)  # never trained on: not labeled for coverage or class counts
    trained = labeled - gold_set
    pool_records = [r for r in records if r.image_id not in labeled]
    ids = [r.image_id for r in pool_records]
    paths = [ws.data_dir / r.path for r in pool_records]
    by_id = {r.image_id: r for r in records}
    labeled_paths = [ws.data_dir / by_id[i].path for i in sorted(trained) if i in by_id]
    logger.info("%d images, %d labeled, %d to rank; model %s, strategy %s", len(records), len(labeled),
                len(pool_records), version.version_id if version else "none (cold start)", name)

    embedded: list[Path] = []  # labeled images scored with the pool, for their embeddings
    if version is None:
        start = time.perf_counter()
        pool, predictions = thumbnail_pool(ids, paths, labeled_paths), []
        seconds = time.perf_counter() - start
        steps["embed thumbnails"] = seconds
    else:
        scoring = scoring_settings(section)
        cache_dir = ws.root / PREDICTION_CACHE
        # The diversity strategies keep away from the labeled images: those are scored with the
        # pool, in the same run (the scoring pass gives each image's embedding), cached per
        # model version like the pool's.
        if name in NEEDS_EMBEDDINGS:
            embedded = labeled_paths
        start = time.perf_counter()
        scored = score_images(str(ws.models_dir), version.version_id, [str(p) for p in [*paths, *embedded]],
                              str(cache_dir), scoring)
        seconds = time.perf_counter() - start
        steps["score"] = seconds
        predictions, labeled_predictions = scored[: len(paths)], scored[len(paths):]
        retired = prune_prediction_cache(cache_dir, {version.version_id})
        if retired:
            logger.info("deleted the cached predictions of retired model versions %s", ", ".join(retired))
        embeddings = labeled_embeddings = None
        if name in NEEDS_EMBEDDINGS:
            embeddings = embedding_rows(predictions)
            labeled_embeddings = embedding_rows([p for p in labeled_predictions if p.ok]) if embedded else None
        # Images annotated in Label Studio since the last retrain are not in the labels file yet:
        # their classes count from the next round on.
        counts = labeled_class_counts([r for r in apply_labels(records, labels)[0] if r.image_id not in gold_set])
        pool = pool_from_predictions(ids, predictions, embeddings, labeled_embeddings, counts)
    start = time.perf_counter()
    scores, batch = rank(pool, name, strategy_settings(section, name, batch_size), batch_size)
    steps["rank"] = time.perf_counter() - start
    score_of = {image_id: round(s, SCORE_DECIMALS) for image_id, s in zip(pool.image_ids, scores)}
    ranking = sorted(score_of, key=lambda i: -score_of[i])

    summary = {"model_version": version.version_id if version else None,
               "strategy": name if version else f"{name} (cold start)", "scored": len(ids), "pool": len(pool),
               "failed": dict(pool.excluded), "cached": sum(p.cached for p in predictions), "ranking": ranking,
               "scores": score_of, "next_batch": [pool.image_ids[i] for i in batch], "queue_label": None,
               "predictions_pushed": 0, "queue_changed": 0,
               "images_per_second": (len(ids) + len(embedded)) / seconds if seconds else 0.0}
    if ls is not None:
        unread = [i for i in gold_order if i in tasks and submitted_annotations(tasks[i]) < k]
        queue = {i: s for i, s in mix_gold(unfinished_first(score_of, waiting), unread, share).items() if i in tasks}
        gold = [i for i in unread if i in queue]  # the ones placed: as many as the queue's length allows
        summary["gold_in_queue"] = len(gold)
        readers = queue_readers(section)
        shared = share_queue(list(queue), readers, k) if readers else None
        report_missing(score_of, tasks, project)
        shown = {}
        if version is not None:
            # Gold tasks show the model's boxes like every other task, or their lack would give them away.
            prediction_of = dict(zip(ids, predictions))
            if gold:
                gold_paths = [str(ws.data_dir / by_id[i].path) for i in gold]
                prediction_of.update(zip(gold, score_images(str(ws.models_dir), version.version_id, gold_paths,
                                                            str(cache_dir), scoring)))
            shown = {i: (prediction_of[i].boxes, prediction_of[i].impression) for i in queue if prediction_of[i].ok}
        start = time.perf_counter()
        # Tried again whole on a failure (a Label Studio 500 while its Postgres restarts): publish_queue
        # recognises a publication already complete and redoes one a failed import left short.
        published = publish.with_options(**network_retries(knobs))(
            ls, project, tasks, list(queue), shown, version.version_id if version else None, shared)
        steps["publish and prune"] = time.perf_counter() - start
        summary.update(queue_label=published.label, predictions_pushed=published.created,
                       queue_changed=published.queue_changed)
        if version is None:
            gone = remove_heatmaps(ws)
            summary["heatmaps"] = {"written": 0, "deleted": gone, "skipped": "no model serves yet"}
        elif not explain["enabled"] or not explain["queue_top"]:
            gone = remove_heatmaps(ws)
            summary["heatmaps"] = {"written": 0, "deleted": gone,
                                   "skipped": "explain is off (enabled false or queue_top 0)"}
            logger.info("explain is off: no heatmaps written, %d deleted", gone)
        else:
            top = list(queue)[: explain["queue_top"]]
            summary["heatmaps"] = write_heatmaps(
                ws, ls, project, tasks, top, {i: ws.data_dir / by_id[i].path for i in top if i in by_id},
                str(ws.models_dir), version.version_id, str(cache_dir), explain["max_side"])
            steps["heatmaps"] = summary["heatmaps"]["seconds"]
    else:
        summary["heatmaps"] = {"written": 0, "deleted": 0, "skipped": "no Label Studio"}
    summary["seconds"] = time.perf_counter() - started
    summary["step_seconds"] = {step: round(t, 3) for step, t in steps.items()}
    logger.info("select done in %.1f s: %d ranked, top %s", summary["seconds"], len(ranking), ranking[:3])
    if version is None:
        return Completed(name="ColdStart", message=f"{len(ranking)} images ranked by {name}, no model yet",
                         data=summary)
    return summary


def cold_start_strategy(section: dict) -> str | None:
    """`select.cold_start`: the model-free strategy that ranks before any model serves (None: off)."""
    name = section.get("cold_start", "random")
    if name is not None and name not in MODEL_FREE:
        raise ValueError(f"select.cold_start is {name!r}, which needs a model's predictions; choose one of "
                         f"{', '.join(sorted(MODEL_FREE))}, or null to rank nothing until the first model serves")
    return name


def strategy_settings(section: dict, name: str, batch_size: int) -> dict:
    """`select.strategies.<name>`; a strategy that ranks in batches gets `select.batch_size` unless set there."""
    settings = dict((section.get("strategies") or {}).get(name) or {})
    if "batch_size" in inspect.signature(STRATEGIES[name]).parameters:
        settings.setdefault("batch_size", batch_size)
    return settings


def embedding_rows(predictions: list) -> np.ndarray | None:
    """The predictions' embeddings (Prediction.embedding, from the scoring pass) as rows, zeros
    where a prediction failed (such an image leaves the pool anyway); None if none has one."""
    rows = None
    for i, p in enumerate(predictions):
        vector = p.embedding_vector() if p.ok else None
        if vector is None:
            continue
        if rows is None:
            rows = np.zeros((len(predictions), len(vector)), dtype=np.float32)
        rows[i] = vector
    return rows


def report_missing(score_of: dict[str, float], tasks: dict[str, dict], project: int) -> None:
    """Ranked images that are no task of the project cannot be queued: reported, with the fix."""
    missing = [i for i in score_of if i not in tasks]
    if missing:
        get_run_logger().warning("%d ranked images are not tasks of project %d (import them: "
                                 "`cxr labelstudio import-tasks`), e.g. %s", len(missing), project, missing[:3])


def queue_readers(section: dict) -> list[str]:
    """`select.readers`: the reader ids who share the queue ([] = one queue for everyone)."""
    readers = [str(r) for r in section.get("readers") or []]
    bad = [r for r in readers if not r.startswith("reader-")]
    if bad or len(set(readers)) != len(readers):
        raise ValueError(f"select.readers takes distinct reader ids (reader-<Label Studio user id>, listed by "
                         f"`cxr labelstudio readers`): got {readers}")
    return readers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.select", description=select_flow.__doc__.split("\n")[0])
    parser.add_argument("--workspace", "-w", default=None, help="workspace folder (default $CXR_WORKSPACE or ./workspace)")
    parser.add_argument("--project", type=int, default=None, help="Label Studio project id")
    parser.add_argument("--params", default=None, help="params file (default $CXR_PARAMS or params.yaml)")
    parser.add_argument("--strategy", default=None, help=f"one of {', '.join(STRATEGIES)} (default: params.yaml)")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the result as JSON alone
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
