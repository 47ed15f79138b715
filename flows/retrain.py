"""Prefect flow `retrain`: new labels in Label Studio -> a new data version -> a new model.

    python -m flows.retrain [--workspace DIR] [--project ID] [--params FILE] [--reason TEXT]
    cxr retrain ...                         (the same, from the CLI)
    run_deployment("retrain/retrain", parameters={"workspace": ..., "project": ..., "reason": ...})

One round, in the workspace's own git + DVC repository (cxrkit/pipeline/project_repo.py):

1. open the repository (git + dvc init on first use), copy the code repo's dvc.yaml and the
   params file in (a code or knob change reaches the next round);
2. export the Label Studio project (retried): the raw export is kept content-hashed in
   exports/, its ground truth written to data/labels.jsonl (cxrkit/pipeline/labels.py) and
   the radiologists' correction effort per model version shown, and their agreement where
   several read an image, to metrics/effort.json (cxrkit/labelstudio/effort.py);
3. version the data: `dvc add data`, git commit of data.dvc; its md5 is the data version;
4. the same data version, knobs and code as the last committed round (the newest round-<n>
   tag), with that model registered: **no-op**, the run ends in state "NoNewLabels" and nothing
   is trained;
5. ask the serving model (the teacher) what pseudo-labels need (cxrkit/pipeline/pseudo.py:
   its predictions of the unlabeled images, mostly from the select flow's cache, and subtypes
   of subtype-less boxes) and version them, `dvc add pseudo`; asked once per data version (a
   re-run after a kill, a code or knob change keep the answers already asked for it: a model
   never teaches its own round, and two models of one data version differ only in what changed);
   `dvc repro` (code_version -> prepare -> train_detector -> train_classifier -> evaluate,
   dvc.yaml; a stage reruns when its inputs, its knobs or its code changed; `prepare` applies
   the pseudo-labels to the training records);
6. register the models (cxrkit/models/registry.py; version id = data version + knobs + code);
7. the candidate and the serving model predict this round's validation images (cxrkit/pipeline/
   compare.py: paired bootstrap intervals); the promotion gate moves `current` unless the
   candidate is worse beyond that noise, or refuses, with its reasons in the log;
8. tell the ML backend (POST $CXR_BACKEND_URL/reload; retried; a failure is logged, not fatal:
   the backend also polls `current`);
9. `dvc push` to the remote (retried);
10. git commit of data.dvc, pseudo.dvc, dvc.yaml, dvc.lock, params.yaml, metrics/, plots/ and round.json,
    tagged round-<n>;
11. then the select flow ranks the unlabeled images with the serving model.

Crashes and kills. Every step can be repeated: annotations live in Label Studio and exports are
content-hashed, `dvc add`/`dvc repro` redo only what is not done (a stage killed mid-way has
no dvc.lock entry and reruns), registering an existing version id returns it, the gate
answers "already current", commits and tags skip what is there, and round.json (replaced
atomically) counts only once its round is tagged. `current` only moves in step 7, atomically, so
a kill anywhere leaves the old model serving, and a re-run finishes the round. Git's index.lock
left by a kill is cleared under the workspace's writer lock.

Concurrency. One retrain per project: a Prefect global concurrency limit `retrain-<project>`
of 1 (a lease renewed while the run lives, so a killed run frees it after
retrain.lease_seconds), and the workspace's writer lock (Workspace.writer_lock: a git/DVC
repository and its data/ have one writer, ingest included; the kernel drops the lock of a
killed process at once, and it holds even where Prefect's API is a temporary one per process).
"""
from __future__ import annotations

from cxrkit.core import offline

offline.apply()  # before prefect is imported: it reads its settings at import

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

import requests  # noqa: E402
import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.concurrency.sync import concurrency  # noqa: E402
from prefect.states import Completed  # noqa: E402

from cxrkit.core.atomic import write_atomic  # noqa: E402
from cxrkit.core.checkout import CODE_ROOT  # noqa: E402
from cxrkit.core.labels import load_schema  # noqa: E402
from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.params import load_params, params_file_for  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.labelstudio.client import NEEDS_REVIEW_VIEW  # noqa: E402
from cxrkit.labelstudio.effort import (  # noqa: E402
    effort_metrics,
    needs_predictions,
    reader_agreement,
)
from cxrkit.labelstudio.export import prune_snapshots, save_snapshot  # noqa: E402
from cxrkit.labelstudio.ground_truth import ground_truth, readers_per_image  # noqa: E402
from cxrkit.labelstudio.review import (  # noqa: E402
    ReviewSettings,
    gold_images,
    gold_settings,
    reader_report,
    review_queue,
    split_gold,
)
from cxrkit.models.detector import onnx_path  # noqa: E402
from cxrkit.models.explain import DEFAULTS as EXPLAIN_DEFAULTS  # noqa: E402
from cxrkit.models.predictor import DEFAULTS as PREDICTOR_DEFAULTS  # noqa: E402
from cxrkit.models.registry import Registry, gate_settings, make_version_id, params_hash  # noqa: E402
from cxrkit.pipeline import (  # noqa: E402
    CLASSIFIER_CHECKPOINT,
    CODE_VERSION_DIR,
    DETECTOR_WEIGHTS,
    EFFORT_FILE,
    LABELS_FILE,
    METRICS_FILE,
    PREPARE_METRICS_FILE,
    PREPARED_DIR,
    SCRATCH_DIR,
    STAGES,
    project_repo,
    read_prepared,  # noqa: E402
    read_timing,
    write_json,
)
from cxrkit.pipeline.code_version import code_version  # noqa: E402
from cxrkit.pipeline.compare import compare_versions  # noqa: E402
from cxrkit.pipeline.labels import apply_labels, read_labels, write_labels  # noqa: E402
from cxrkit.pipeline.pseudo import PSEUDO_DIR, already_asked, write_teacher  # noqa: E402
from flows.connect import FlowContext, context_for, network_retries  # noqa: E402
from flows.select import PREDICTION_CACHE, select_flow  # noqa: E402

PIPELINE_FILE = CODE_ROOT / "dvc.yaml"
# The params.yaml sections whose keys dvc.yaml declares and an older params file may lack.
FILLED_SECTIONS = {"predictor": PREDICTOR_DEFAULTS, "explain": EXPLAIN_DEFAULTS}
ROUND_FILE = "round.json"
# The params sections a model version is made from (its version id hashes them): the select
# and retrain sections do not change a model, so changing them must not retrain.
MODEL_SECTIONS = ("split", "detector", "classifier", "predictor", "pseudo_labels")
ROUND_FILES = ["data.dvc", f"{PSEUDO_DIR}.dvc", "dvc.yaml", "dvc.lock", "params.yaml", "metrics", "plots", ROUND_FILE, ".gitignore",
               "pipeline/.gitignore", f"{CODE_VERSION_DIR}/.gitignore"]
TRAINING_STAGES = ("prepare", "train_detector", "train_classifier")


def model_params(params: dict) -> dict:
    return {k: params[k] for k in MODEL_SECTIONS if k in params}


# --- steps ----------------------------------------------------------------------


@task(name="open project repository", persist_result=False, cache_policy=NO_CACHE)
def open_repository(root: str, params_file: str) -> None:
    repo = project_repo.init(root)
    shutil.copyfile(PIPELINE_FILE, repo / "dvc.yaml")
    filled = copy_params(Path(params_file), repo / "params.yaml")
    if filled:
        get_run_logger().info("params file %s lacks %s: the workspace's copy gets the defaults",
                              params_file, filled)


def copy_params(params_file: Path, out: Path) -> dict:
    """The params file as the workspace's copy that `dvc repro` reads. DVC refuses to run a stage
    whose declared param is missing, and the evaluate stage declares predictor and explain keys:
    a params file written before such a key existed (an older params-demo.yaml, a user's own
    file) gets the default for it; otherwise the file is copied byte for byte. Returns the keys
    filled in (`section.key`), with their values."""
    stages = yaml.safe_load(PIPELINE_FILE.read_text())["stages"]
    params = load_params(params_file)
    missing = {}
    for stage in stages.values():
        for name in stage.get("params", []):
            section, _, key = name.partition(".") if isinstance(name, str) else ("", "", "")
            if section in FILLED_SECTIONS and key not in (params.get(section) or {}):
                missing[name] = FILLED_SECTIONS[section][key]
    if not missing:
        shutil.copyfile(params_file, out)
        return {}
    for name, value in missing.items():
        section, _, key = name.partition(".")
        params[section] = {**(params.get(section) or {}), key: value}
    write_atomic(out, yaml.safe_dump(params, sort_keys=False))
    return missing


@task(name="export labels from Label Studio", persist_result=False, cache_policy=NO_CACHE)
def export_labels(ctx: FlowContext, knobs: dict) -> dict:
    """Ground truth of the project's export -> data/labels.jsonl; the correction effort and the
    readers' report -> metrics/effort.json; the "Needs review" flags -> the tasks. Returns the counts."""
    logger = get_run_logger()
    ws, ls, pid = ctx.ws, ctx.labelstudio, ctx.project
    if ls is None:
        logger.warning("no Label Studio configured (LABEL_STUDIO_URL) or running for %s: "
                       "training on the labels the workspace already has", ws.root)
        return {"tasks": 0, "labeled": None}
    start = time.perf_counter()
    export = ls.export_snapshot(pid)
    snapshot = save_snapshot(export, ws.root / "exports")
    prune_snapshots(ws.root / "exports", int((knobs.get("retrain") or {}).get("keep_exports", 20)), snapshot)
    schema = load_schema()
    review, k = ReviewSettings.from_params(knobs), readers_per_image(knobs)
    records = {r.image_id: r for r in read_manifest(ws.manifest_path)}
    labels = ground_truth(export, schema, k, review.reviewers)
    # What readers said of gold images is the report's, never training data (prepare holds them out).
    labels, gold = split_gold(labels, gold_images(records.values(), *gold_settings(knobs)))
    write_labels(labels, ws.root / LABELS_FILE)
    # Annotations that name their prediction only by id need the project's predictions (rare).
    predictions = {p["id"]: p for p in ls.predictions(pid)} if needs_predictions(export) else None
    effort, problems = effort_metrics(export, schema, predictions)
    queue = review_queue(labels, review, k)
    effort["readers"] = {**reader_agreement(labels, schema.impressions), "needs_review": len(queue),
                         "by_reader": reader_report(labels, gold, records)}
    for problem in problems:
        logger.warning("correction effort: %s; left out", problem)
    write_json(ws.root / EFFORT_FILE, effort)
    flagged = ls.flag_for_review(export, queue)
    if queue or k > 1:
        view = ls.ensure_review_view(pid)
        logger.info("%d image(s) need review (%d task(s) changed): Data Manager tab \"%s\" (%d)",
                    len(queue), flagged, NEEDS_REVIEW_VIEW, view)
    seconds = time.perf_counter() - start
    logger.info("exported project %d: %d tasks, %d with a submitted annotation (%d gold), snapshot %s (%.1f s)",
                pid, len(export), len(labels) + len(gold), len(gold), snapshot.name, seconds)
    return {"project": pid, "tasks": len(export), "labeled": len(labels), "gold": len(gold),
            "needs_review": len(queue), "snapshot": snapshot.name, "seconds": seconds}


@task(name="version data (dvc add)", persist_result=False, cache_policy=NO_CACHE)
def version_data(root: str) -> dict:
    logger = get_run_logger()
    start = time.perf_counter()
    repo = Path(root)
    project_repo.dvc(repo, "add", "--quiet", "data")
    version = project_repo.data_version(repo)
    sha = project_repo.commit(repo, f"data {version[:8]}", ["data.dvc", ".gitignore"])
    seconds = time.perf_counter() - start
    logger.info("data version %s (%s, %.1f s)", version, "new commit" if sha else "unchanged", seconds)
    return {"data_version": version, "seconds": seconds}


@task(name="ask the teacher (pseudo-labels)", persist_result=False, cache_policy=NO_CACHE)
def ask_teacher(ws: Workspace, params: dict, data_version: str) -> dict:
    """pseudo/ from the serving model (none in the first round), versioned with `dvc add`; kept
    when it already answers this data version (asked once per data version, pseudo.py)."""
    logger = get_run_logger()
    start = time.perf_counter()
    counts = already_asked(ws.root / PSEUDO_DIR, data_version, params)
    if counts is not None:
        logger.info("data version %s's pseudo-labels were already asked of teacher %s: kept (asked once per "
                    "data version, so a model never teaches its own round)", data_version[:8], counts["model_version"])
    else:
        records, _ = apply_labels(read_manifest(ws.manifest_path), read_labels(ws.root / LABELS_FILE))
        counts = write_teacher(ws.root / PSEUDO_DIR, Registry(ws.models_dir).current(), records, ws.data_dir, params,
                               cache_dir=ws.root / PREDICTION_CACHE, data_version=data_version)
    project_repo.dvc(ws.root, "add", "--quiet", PSEUDO_DIR)
    seconds = time.perf_counter() - start
    logger.info("teacher %s: %d unlabeled images and %d images' subtype-less boxes for pseudo-labels, "
                "%d failed (%.1f s)", counts["model_version"] or "(none: no model serves yet)", counts["pool"],
                counts["box_subtypes"], counts["errors"], seconds)
    return {**counts, "seconds": seconds}


@task(name="dvc repro", persist_result=False, cache_policy=NO_CACHE)
def reproduce(root: str) -> dict:
    """Run the pipeline; per stage, whether it ran and how long its own work took."""
    logger = get_run_logger()
    repo = Path(root)
    log_path = repo / SCRATCH_DIR / "repro.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start_wall, start = time.time(), time.perf_counter()
    # Output to a file, not the Prefect log: ultralytics prints a progress bar per batch.
    with log_path.open("w") as out:
        code = subprocess.call([project_repo.dvc_executable(), "repro"], cwd=repo, env=project_repo.tool_env(),
                               stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code != 0:
        tail = " | ".join(line for line in log_path.read_text().splitlines()[-15:] if line.strip())
        raise RuntimeError(f"dvc repro failed (exit {code}); log {log_path}: {tail}")
    stages = {}
    for stage in STAGES:
        timing = read_timing(stage, repo)
        ran = timing is not None and timing["finished"] >= start_wall
        stages[stage] = {"ran": ran, "seconds": timing["seconds"] if ran else 0.0}
    work = sum(s["seconds"] for s in stages.values())
    logger.info("dvc repro in %.1f s: %s; DVC's own time %.1f s", seconds,
                ", ".join(f"{k} {v['seconds']:.1f} s" if v["ran"] else f"{k} up to date" for k, v in stages.items()),
                seconds - work)
    return {"seconds": seconds, "stages": stages}


@task(name="register model version", persist_result=False, cache_policy=NO_CACHE)
def register(ws: Workspace, data_version: str, params: dict, code: str) -> dict:
    logger = get_run_logger()
    repo = ws.root
    metrics = json.loads((repo / METRICS_FILE).read_text())
    prepared = json.loads((repo / PREPARE_METRICS_FILE).read_text())
    exported = onnx_path(repo / DETECTOR_WEIGHTS)  # absent when the export failed: the .pt serves
    version = Registry(ws.models_dir).register(
        repo / DETECTOR_WEIGHTS, repo / CLASSIFIER_CHECKPOINT, data_version=data_version, params=model_params(params),
        code_version=code, metrics=metrics, extra={"prepare": prepared},
        files={exported.name: exported} if exported.is_file() else None,
    )
    logger.info("model version %s: detector RSNA %s, mAP50 %s; classifier macro AUROC %s (%d train, %d val images)",
                version.version_id, metrics["detector"].get("rsna"), metrics["detector"].get("map50"),
                metrics["classifier"].get("macro_auroc"), prepared["train"], prepared["val"])
    return {"version_id": version.version_id, "metrics": metrics, "prepare": prepared}


@task(name="compare with the serving model", persist_result=False, cache_policy=NO_CACHE)
def compare_with_serving(ws: Workspace, version_id: str, params: dict) -> dict | None:
    """Both models on this round's validation images, with bootstrap intervals (cxrkit.pipeline.compare);
    None when there is nothing to compare with, or the comparison fails (the gate then reads the
    stored metrics, and says so)."""
    logger = get_run_logger()
    registry = Registry(ws.models_dir)
    current = registry.current()
    if current is None or current.version_id == version_id:
        return None
    _, val = read_prepared(ws.root / PREPARED_DIR)
    start = time.perf_counter()
    try:
        comparison = compare_versions(registry.get(version_id), current, val, ws.data_dir, params,
                                      resamples=int((params.get("registry") or {}).get("resamples", 1000)))
    except Exception as exc:  # noqa: BLE001 - a model that cannot be compared must not stop the round
        logger.warning("could not compare %s with the serving %s on the same images (%s: %s); the gate reads "
                       "their stored metrics", version_id, current.version_id, type(exc).__name__, exc)
        return None
    logger.info("compared %s with the serving %s on %d validation images in %.1f s", version_id, current.version_id,
                len(val), time.perf_counter() - start)
    return comparison


@task(name="promotion gate", persist_result=False, cache_policy=NO_CACHE)
def promotion_gate(ws: Workspace, version_id: str, params: dict, comparison: dict | None) -> dict:
    logger = get_run_logger()
    decision = Registry(ws.models_dir).promote(version_id, *gate_settings(params), comparison=comparison)
    logger.info("gate: %s %s (previous %s): %s", version_id, "promoted" if decision.promoted else "REFUSED",
                decision.previous, "; ".join(decision.reasons))
    return decision.to_dict()


@task(name="tell the ML backend", persist_result=False, cache_policy=NO_CACHE)
def notify_backend(ws: Workspace, version_id: str) -> bool:
    """POST <backend>/reload: $CXR_BACKEND_URL with basic auth from CXR_BACKEND_USER/CXR_BACKEND_PASSWORD,
    else the backend `cxr backend start` runs for this workspace (its login is in the workspace .env).
    False when neither is there: the backend then picks the version up when it next polls `current`."""
    from cxrkit.services import backend

    logger = get_run_logger()
    url = os.environ.get("CXR_BACKEND_URL")
    user = os.environ.get("CXR_BACKEND_USER")
    auth = (user, os.environ.get("CXR_BACKEND_PASSWORD", "")) if user else None
    if not url:
        running = backend.status(ws)
        if running is None:
            logger.info("no ML backend configured or running: it picks up %s when it next polls `current`", version_id)
            return False
        url, auth = running.url, (running.user, running.password)
    resp = requests.post(url.rstrip("/") + "/reload", auth=auth, json={"model_version": version_id}, timeout=30)
    resp.raise_for_status()
    logger.info("ML backend at %s reloaded (HTTP %d)", url, resp.status_code)
    return True


@task(name="dvc push", persist_result=False, cache_policy=NO_CACHE)
def push(root: str) -> float:
    logger = get_run_logger()
    start = time.perf_counter()
    out = project_repo.dvc(Path(root), "push").stdout.strip().splitlines()
    seconds = time.perf_counter() - start
    logger.info("dvc push to %s: %s (%.1f s)", project_repo.remote_settings(Path(root))[0],
                out[-1] if out else "done", seconds)
    return seconds


@task(name="commit round", persist_result=False, cache_policy=NO_CACHE)
def commit_round(root: str, round_info: dict) -> dict:
    """round.json + the pipeline's files in one commit, tagged round-<n>; nothing new: no commit."""
    logger = get_run_logger()
    repo = Path(root)
    start = time.perf_counter()
    previous = last_committed_round(repo)
    same = previous and all(previous.get(k) == round_info[k]
                            for k in ("data_version", "params_hash", "code_version", "model_version"))
    number = previous["round"] if same else (previous or {}).get("round", 0) + 1
    info = {**round_info, "round": number}
    write_atomic(repo / ROUND_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
    sha = project_repo.commit(
        repo, f"round {number}: data {info['data_version'][:8]}, model {info['model_version']} "
              f"({'promoted' if info['promoted'] else 'not promoted'}; {info['reason']})", ROUND_FILES)
    project_repo.tag(repo, f"round-{number}", f"model {info['model_version']}")
    logger.info("round %d committed as %s, tag round-%d (%.1f s)", number, (sha or project_repo.head(repo))[:10],
                number, time.perf_counter() - start)
    return {**info, "commit": sha or project_repo.head(repo), "seconds": time.perf_counter() - start}


def last_committed_round(repo: Path) -> dict | None:
    """round.json as the newest `round-<n>` tag committed it. Not the file in the folder: a run
    killed between writing it and its commit leaves one that names a round never committed, and
    trusting it would make every later run a no-op with that round unfinished."""
    tags = project_repo.git(Path(repo), "tag", "--list", "round-*", "--sort=-v:refname").stdout.split()
    if not tags:
        return None
    shown = project_repo.git(Path(repo), "show", f"{tags[0]}:{ROUND_FILE}", check=False)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


# --- locking ----------------------------------------------------------------------


def ensure_limit(name: str) -> None:
    """The global concurrency limit `name` with one slot (created on first use)."""
    from prefect import get_client
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, 1)
        except ObjectAlreadyExists:  # a concurrent run created it first
            pass


# --- the flow -------------------------------------------------------------------------


@flow(name="retrain", log_prints=False, persist_result=False)
def retrain_flow(workspace: str | None = None, project: int | None = None, reason: str = "manual",
                 params: str | None = None, select: bool = True):
    """Retrain on the labels in Label Studio, gate, serve, and rank what to label next.

    workspace: the workspace folder (default $CXR_WORKSPACE or ./workspace); project: the Label
    Studio project id (default: the project titled "Chest X-ray pneumonia"); reason: why (logged
    and in the round's commit); params: the params file (default $CXR_PARAMS, else the workspace's
    configured params file (cxrkit.core.params.params_file_for), else params.yaml);
    select: run the select flow after a new model.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    ctx = context_for(workspace, project)
    ws, project = ctx.ws, ctx.project
    params_file = str(params_file_for(ws.root, params))
    knobs = load_params(params_file)
    settings = knobs.get("retrain") or {}
    retry = network_retries(knobs)
    limit = f"retrain-{project if project is not None else ws.root.name}"
    logger.info("retrain of %s (project %s), reason: %s", ws.root, project, reason)
    ensure_limit(limit)
    with ExitStack() as held:
        lease = float(settings.get("lease_seconds", 60))
        wait = float(settings.get("slot_wait_seconds", 2 * lease))
        try:
            held.enter_context(concurrency(limit, occupy=1, lease_duration=lease, timeout_seconds=wait))
        except TimeoutError:
            # A killed run's lease is only reclaimed by a Prefect server's lease service; Prefect's
            # temporary local API (the embedded default) runs none, so its slot would stay taken
            # forever. The workspace lock below is what keeps one writer per project repository.
            logger.warning("concurrency slot %s not granted within %.0f s (a killed run's lease that this "
                           "Prefect API does not reclaim?); going on under the workspace lock alone", limit, wait)
        held.enter_context(ws.writer_lock("the retrain"))
        summary = run_round(ctx, reason, params_file, knobs, retry)
    summary["seconds"]["total"] = time.perf_counter() - started
    if summary["status"] == "no new labels":
        return Completed(name="NoNewLabels", message=f"data version {summary['data_version'][:8]} already trained",
                         data=summary)
    if select and ctx.labelstudio is not None:
        select_start = time.perf_counter()
        summary["select"] = select_flow(workspace=str(ws.root), project=project, params=params_file)
        summary["seconds"]["select"] = time.perf_counter() - select_start
    return Completed(name="Retrained", message=f"model {summary['model_version']}, "
                     f"{'promoted' if summary['promoted'] else 'not promoted'}", data=summary)


def run_round(ctx: FlowContext, reason: str, params_file: str, knobs: dict, retry: dict) -> dict:
    """Steps 1-10 of the module docstring, under the locks; returns what happened with timings."""
    logger = get_run_logger()
    ws = ctx.ws
    repo, root = ws.root, str(ws.root)
    open_repository(root, params_file)
    exported = export_labels.with_options(**retry)(ctx, knobs)
    data = version_data(root)
    code = code_version()  # the code on disk now: what `dvc repro`'s stages will run
    version_id = make_version_id(data["data_version"], model_params(knobs), code)
    seconds = {"export": exported.get("seconds", 0.0), "versioning": data["seconds"]}
    last = last_committed_round(repo)
    trained = {"data_version": data["data_version"], "params_hash": params_hash(model_params(knobs)), "code_version": code}
    if last and all(last.get(k) == v for k, v in trained.items()) and Registry(ws.models_dir).has(version_id):
        logger.info("no new labels: data version %s with these knobs and this code is round %d's model %s; "
                    "nothing to train", data["data_version"][:8], last["round"], last["model_version"])
        return {"status": "no new labels", "data_version": data["data_version"], "model_version": version_id,
                "round": last["round"], "labeled": exported.get("labeled"), "seconds": seconds}

    teacher = ask_teacher(ws, knobs, data["data_version"])
    seconds["versioning"] += teacher["seconds"]
    repro = reproduce(root)
    stages = repro["stages"]
    seconds["training"] = sum(stages[s]["seconds"] for s in TRAINING_STAGES)
    seconds["evaluation"] = stages["evaluate"]["seconds"]
    seconds["versioning"] += repro["seconds"] - seconds["training"] - seconds["evaluation"]
    registered = register(ws, data["data_version"], knobs, code)
    if registered["version_id"] != version_id:
        raise RuntimeError(f"registered {registered['version_id']}, expected {version_id}")
    comparison = compare_with_serving(ws, version_id, knobs)
    decision = promotion_gate(ws, version_id, knobs, comparison)
    if decision["promoted"]:
        told = notify_backend.with_options(**retry)(ws, version_id, return_state=True)
        if told.is_failed():
            logger.warning("the ML backend was not told (%s); it picks up %s when it polls `current`",
                           told.message, version_id)
    seconds["versioning"] += push.with_options(**retry)(root)
    committed = commit_round(root, {
        **trained, "model_version": version_id, "promoted": decision["promoted"], "gate": decision["reasons"],
        "metrics": registered["metrics"], "labeled": registered["prepare"]["labeled"], "reason": reason,
        "teacher": teacher["model_version"], "pseudo": registered["prepare"].get("pseudo"),
    })
    seconds["versioning"] += committed["seconds"]
    return {"status": "retrained", "data_version": data["data_version"], "model_version": version_id,
            "promoted": decision["promoted"], "current": Registry(ws.models_dir).current_id(),
            "metrics": registered["metrics"], "round": committed["round"], "commit": committed["commit"],
            "labeled": registered["prepare"]["labeled"], "stages": stages, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=retrain_flow.__doc__.split("\n")[0])
    parser.add_argument("--workspace", "-w", default=None, help="workspace folder (default $CXR_WORKSPACE or ./workspace)")
    parser.add_argument("--project", type=int, default=None, help="Label Studio project id")
    parser.add_argument("--params", default=None, help="params file (default $CXR_PARAMS or params.yaml)")
    parser.add_argument("--reason", default="manual", help="why this retrain (logged, in the commit message)")
    parser.add_argument("--no-select", action="store_true", help="do not run the select flow afterwards")
    args = parser.parse_args(argv)
    # stdout carries the result as JSON alone: what the libraries print while the flow runs (e.g.
    # ultralytics announcing a model it loads) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        state = retrain_flow(workspace=args.workspace, project=args.project, reason=args.reason, params=args.params,
                             select=not args.no_select, return_state=True)
    result = state.result(raise_on_failure=False)
    if not state.is_completed():
        print(f"retrain failed: {result}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
