"""Where a workspace stands: what is labeled, which model serves, when it last retrained, what is next.

`workspace_status` gathers it as a plain dict (the `cxr status` command prints it, `--json`
emits it). Each part is read from its owner, and a part that is not available (Label
Studio stopped, no model trained yet, the workspace not yet a git repo) is reported as
such instead of failing the whole status.
"""
from __future__ import annotations

import json
import math
import subprocess
import time

from cxrkit.core.manifest import read_manifest
from cxrkit.core.workspace import Workspace
from cxrkit.models.registry import Registry
from cxrkit.pipeline import read_effort

QUEUE_TOP = 5


HEADLINE_METRICS = ("detector.rsna", "detector.rsna_operating", "detector.operating_conf", "detector.effort_conf",
                    "detector.edits_per_image", "detector.map50", "detector.map40",
                    "classifier.macro_auroc", "classifier.accuracy")


def _summary_metrics(metrics: dict) -> dict:
    """The headline numbers of a version's metrics, flat: {"detector.rsna": 0.31, ...}."""
    out = {}
    for name in HEADLINE_METRICS:
        section, key = name.split(".")
        value = (metrics or {}).get(section, {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


# A drop in the heatmaps' pointing game is flagged when larger than this (absolute) and than the
# sampling noise of the two measurements (`pointing_drop`). 0.1: one positive film in ten whose
# heatmap no longer peaks on its opacity, the least change worth a look; below it, a version's
# heatmaps point about as well as the last one's.
POINTING_DROP_MARGIN = 0.1


def explain_summary(metrics: dict | None) -> dict | None:
    """A version's heatmap pointing game (metrics.json `explain`, cxrkit.pipeline.evaluate): {"n",
    "hit_rate", "uniform_hit_rate", "centre_hit_rate"}, {"error": ...} when evaluate could not
    measure it, None when the version has none (trained before it was measured, or no film with a box)."""
    block = (metrics or {}).get("explain")
    if not isinstance(block, dict):
        return None
    if block.get("error"):
        return {"error": str(block["error"])}
    if not block.get("n") or not isinstance(block.get("hit_rate"), (int, float)):
        return None
    return {k: block.get(k) for k in ("n", "hit_rate", "uniform_hit_rate", "centre_hit_rate")}


def pointing_drop(previous: dict | None, current: dict | None, margin: float = POINTING_DROP_MARGIN) -> dict | None:
    """{"from", "to", "margin"} when the pointing game fell from `previous` to `current` (explain
    summaries) by more than both `margin` and the 95 % sampling noise of the two hit rates
    (1.96 x the standard error of a difference of two proportions: each round measures on its own
    validation films, so a small set moves by chance); None otherwise or when either is missing."""
    if not previous or not current or "error" in previous or "error" in current:
        return None
    p0, n0, p1, n1 = float(previous["hit_rate"]), int(previous["n"]), float(current["hit_rate"]), int(current["n"])
    noise = 1.96 * math.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)
    needed = max(margin, noise)
    if p0 - p1 <= needed:
        return None
    return {"from": p0, "to": p1, "margin": round(needed, 3)}


def previous_serving(promotions: list[dict], current: str) -> str | None:
    """The version that served before `current` (the gate decision that promoted it names it)."""
    for decision in reversed(promotions):
        previous = decision.get("previous")
        if decision.get("promoted") and decision.get("candidate") == current and previous and previous != current:
            return previous
    return None


def manifest_counts(ws: Workspace) -> dict:
    if not ws.manifest_path.exists():
        return {"images": 0, "labeled": 0, "unlabeled": 0, "note": "nothing ingested yet (`cxr ingest` or `cxr demo`)"}
    records = read_manifest(ws.manifest_path)
    labeled = sum(1 for r in records if r.labeled)
    return {"images": len(records), "labeled": labeled, "unlabeled": len(records) - labeled}


def model_status(ws: Workspace) -> dict:
    registry = Registry(ws.models_dir)
    current = registry.current()
    promotions = registry.promotions()
    out: dict = {"versions": len(registry.versions()), "current": None, "last_gate": promotions[-1] if promotions else None}
    if current is not None:
        explain = explain_summary(current.metrics)
        previous_id = previous_serving(promotions, current.version_id)
        previous = {"version": previous_id, "explain": explain_summary(registry.get(previous_id).metrics)} \
            if previous_id and registry.has(previous_id) else None
        out["current"] = {"version": current.version_id, "data_version": current.data_version,
                          "trained": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(current.created)),
                          "metrics": _summary_metrics(current.metrics), "explain": explain, "previous": previous,
                          "explain_drop": pointing_drop(previous and previous["explain"], explain)}
    return out


def explain_lines(current: dict | None) -> list[str]:
    """The serving model's heatmap pointing game, and a warning when it dropped since the version before."""
    explain = (current or {}).get("explain")
    if not explain:
        return []
    if "error" in explain:
        return [f"heatmaps: not measured at evaluation ({explain['error']})"]

    def rate(value):
        return "n/a" if value is None else f"{value:.2f}"

    lines = [f"heatmaps: pointing game {rate(explain['hit_rate'])} (uniform {rate(explain['uniform_hit_rate'])}, "
             f"centre {rate(explain['centre_hit_rate'])}) on {explain['n']} films"]
    drop = current.get("explain_drop")
    if drop:
        lines.append(f"WARNING: heatmap pointing game dropped from {drop['from']:.2f} to {drop['to']:.2f} since "
                     f"{current['previous']['version']} (more than {drop['margin']:.2f}: the classifier may look "
                     "elsewhere than at the opacities, e.g. at markers or tubes; check its heatmaps)")
    return lines


def last_commit(ws: Workspace) -> dict | None:
    """The workspace repository's last commit (each retrain leaves one), or None if it is not a repo."""
    if not (ws.root / ".git").exists():
        return None
    done = subprocess.run(["git", "-C", str(ws.root), "log", "-1", "--format=%h%x00%cI%x00%s"],
                          capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    sha, date, subject = done.stdout.strip().split("\x00", 2)
    return {"commit": sha, "date": date, "subject": subject}


def labelstudio_status(info, project_title: str, current_version: str | None) -> dict:
    """Tasks, annotations, predictions of the current version and the queue's top, from the running
    server `info` (a cxrkit.services.labelstudio_server.ServerInfo; None: not running)."""
    from cxrkit.labelstudio.client import UNCERTAIN_VIEW, LabelStudio, LabelStudioError
    from cxrkit.labelstudio.tasks import is_annotated, model_version_of

    if info is None:
        return {"running": False}
    try:
        ls = LabelStudio.for_server(info)
        project = next((p["id"] for p in ls.projects() if p["title"] == project_title), None)
        if project is None:
            return {"running": True, "url": info.url, "project": None}
        tasks = ls.list_tasks(project)
        predicted = sum(n for label, n in ls.model_versions(project).items()
                        if current_version is not None and model_version_of(label) == current_version)
        view = ls.find_view(project, UNCERTAIN_VIEW)
        # The view lists labeled tasks too (until the next select run): the top QUEUE_TOP unlabeled.
        top = [] if view is None else ls.list_tasks(project, view=view, limit=QUEUE_TOP * 10)
    except LabelStudioError as exc:
        return {"running": True, "url": info.url, "error": str(exc)}
    queue = [t for t in top if not is_annotated(t)][:QUEUE_TOP]
    return {
        "running": True, "url": info.url, "project": project, "tasks": len(tasks),
        "annotated": sum(is_annotated(t) for t in tasks), "predicted_current": predicted,
        "queue": [{"task": t["id"], "image_id": t["data"].get("image_id")} for t in queue],
    }


def live_loop_status(ws: Workspace) -> dict:
    """What turns the loop by itself: the workspace's Prefect server and runner, the ML backend, and
    the annotations its webhook has counted toward the next round, per project."""
    from cxrkit.services import backend, prefect_server

    prefect = prefect_server.status(ws)
    serving = backend.status(ws)
    try:
        state = json.loads((backend.backend_dir(ws) / "retrain_state.json").read_text())
    except (OSError, ValueError):
        state = {}
    return {"prefect": prefect.url if prefect else None, "runner": bool(prefect and prefect.runner_pid),
            "backend": serving.url if serving else None,
            "pending": {p: len(ids) for p, ids in (state.get("pending") or {}).items()},
            "last_trigger": state.get("last_trigger")}


def effort_status(ws: Workspace) -> dict | None:
    """The radiologists' correction effort per model version shown, as the last retrain's export
    measured it (metrics/effort.json); None before any retrain exported."""
    return read_effort(ws.root)


def effort_lines(effort: dict | None) -> list[str]:
    """One line per model version shown (by name); "none" is labeling from scratch."""
    if not effort or not effort.get("by_model_version"):
        return []
    lines = [f"correction effort at the last retrain's export ({effort['annotations']} annotations; "
             "per model version shown, none = no pre-annotation):"]
    for version, e in effort["by_model_version"].items():
        seconds = "no time recorded" if e["seconds_median"] is None else f"median {e['seconds_median']:.1f} s/image"
        lines.append(f"  {version}: {e['images']} images, {e['edits_per_image']:.2f} edits/image (adjusted {e['adjusted']}, "
                     f"deleted {e['deleted']}, added {e['added']}, subtype {e['subtype_changed']}, impression "
                     f"{e['impression_changed']}; kept {e['kept']}), {e['unchanged']:.0%} unchanged, {seconds}")
    readers = effort.get("readers") or {}
    if readers.get("images"):
        kappa = readers["impression_kappa"]
        lines.append(f"  several readers on {readers['images']} images: impression unanimous on "
                     f"{readers['impression_unanimous']:.0%}, box agreement {readers['box_agreement']:.2f}, impression "
                     f"kappa {'n/a' if kappa is None else f'{kappa:.2f}'}")
    if readers.get("needs_review"):
        lines.append(f"  {readers['needs_review']} image(s) need review (readers disagree): Label Studio tab \"Needs review\"")
    return lines + reader_lines(readers.get("by_reader") or {})


def _agreement(part: dict, share_key: str, label: str) -> str:
    if not part["images"]:
        return ""
    return (f"; {label} on {part['images']}: impression {part[share_key]:.0%}, "
            f"boxes {part['box_agreement']:.2f}")


def reader_lines(by_reader: dict) -> list[str]:
    """One line per reader (pseudonymous id): images read, agreement with the final label where
    others read the image too or a reviewer decided, accuracy on gold-standard images."""
    lines = []
    for reader, r in by_reader.items():
        lines.append(f"  {reader}: {r['images']} images" + _agreement(r["with_final"], "impression_agrees", "with the final label")
                     + _agreement(r["gold"], "impression_correct", "gold"))
    return lines


def workspace_status(ws: Workspace, project_title: str, labelstudio_info=None) -> dict:
    """The whole status; Label Studio is the workspace's own server unless `labelstudio_info` names another."""
    from cxrkit.services import labelstudio_server as server

    models = model_status(ws)
    current = models["current"]["version"] if models["current"] else None
    return {
        "workspace": str(ws.root),
        "data": manifest_counts(ws),
        "models": models,
        "last_commit": last_commit(ws),
        "effort": effort_status(ws),
        "labelstudio": labelstudio_status(labelstudio_info or server.status(ws), project_title, current),
        "loop": live_loop_status(ws),
    }


def render_lines(status: dict) -> list[str]:
    """The status as short human lines (what `cxr status` prints)."""
    data, models, ls = status["data"], status["models"], status["labelstudio"]
    lines = [f"workspace {status['workspace']}",
             f"images: {data['images']} ({data['labeled']} labeled at ingest, {data['unlabeled']} not)"
             + (f"; {data['note']}" if data.get("note") else "")]
    current = models["current"]
    if current:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in current["metrics"].items())
        lines.append(f"model: {current['version']} (trained {current['trained']}; {models['versions']} versions) {metrics}")
        lines += explain_lines(current)
    else:
        lines.append(f"model: none promoted yet ({models['versions']} versions registered)")
    gate = models["last_gate"]
    if gate:
        verdict = "promoted" if gate["promoted"] else "refused"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(gate["time"]))
        lines.append(f"last gate: {gate['candidate']} {verdict} at {when}: {'; '.join(gate['reasons'])}")
    if status["last_commit"]:
        c = status["last_commit"]
        lines.append(f"last retrain commit: {c['commit']} {c['date']} {c['subject']}")
    lines += effort_lines(status.get("effort"))
    loop = status["loop"]
    if loop["prefect"] is None:
        lines.append("Prefect: not running (`cxr flows start`): annotations start no retrain by themselves")
    else:
        runner = "runner serving the deployments" if loop["runner"] else "NO runner (`cxr flows start`)"
        lines.append(f"Prefect: {loop['prefect']}, {runner}")
    backend_line = f"ML backend: {loop['backend']}" if loop["backend"] else "ML backend: not running (`cxr backend start`)"
    if loop["pending"]:
        backend_line += "; annotations counted toward the next round: " + ", ".join(
            f"project {p}: {n}" for p, n in sorted(loop["pending"].items()))
    lines.append(backend_line)
    if loop["last_trigger"]:
        t = loop["last_trigger"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t["time"]))
        outcome = f"flow run {t['flow_run_id']}" if t.get("started") else f"not started: {t.get('error')}"
        lines.append(f"last retrain trigger: {when}, project {t['project']} ({t['reason']}): {outcome}")
    if not ls.get("running"):
        lines.append("Label Studio: not running (`cxr labelstudio start`)")
    elif ls.get("error"):
        lines.append(f"Label Studio: {ls['url']} answered with an error: {ls['error']}")
    elif ls.get("project") is None:
        lines.append(f"Label Studio: {ls['url']}, project not created yet")
    else:
        lines.append(f"Label Studio: {ls['url']}/projects/{ls['project']}: {ls['tasks']} tasks, {ls['annotated']} annotated, "
                     f"{ls['predicted_current']} pre-annotated by the current model")
        if ls["queue"]:
            lines.append("next up (the select flow's queue, first to label first):")
            lines += [f"  {n}. task {q['task']}  {q['image_id']}" for n, q in enumerate(ls["queue"], 1)]
    return lines
