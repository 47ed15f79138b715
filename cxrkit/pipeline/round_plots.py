"""The ML engineer's figures of a workspace: how the rounds went, and how good the serving model is.

    learning_curve.png   metrics of every retrain round against the labels it had (from the
                         round-<n> tags of the workspace repository: each round's round.json,
                         which holds the metrics `dvc metrics diff` compares)
    pr-<finding>.png     the serving model's precision-recall curves at IoU 0.5
    confusion.png        its subtype classifier's confusion matrix
    effort.png           the radiologists' seconds and edits per image for each model version
                         shown, rounds in order, against labeling with no pre-annotation
                         (metrics/effort.json of the last retrain, cxrkit.labelstudio.effort)

The PR curves and the confusion matrix are computed on the fixed validation set of the last
prepared round (pipeline/prepared/val.jsonl), the set the promotion gate judged it on.
`cxr plots` writes them to workspace/reports/plots/.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from cxrkit.core.workspace import Workspace
from cxrkit.evaluation.plots import (
    plot_confusion_matrix,
    plot_effort,
    plot_learning_curve,
    plot_pr_curves,
)
from cxrkit.labelstudio.effort import NO_PREANNOTATION
from cxrkit.models.registry import Registry
from cxrkit.pipeline import project_repo, read_effort

CURVE_METRICS = ("detector.rsna", "detector.map50", "classifier.macro_auroc")
ROUND_TAG = re.compile(r"^round-(\d+)$")


def plots_dir(ws: Workspace) -> Path:
    return ws.root / "reports" / "plots"


def round_rows(ws: Workspace) -> list[dict]:
    """One row per round tag: round, labeled, model_version, promoted and the curve metrics (flat)."""
    if not (ws.root / ".git").exists():
        return []
    tags = project_repo.git(ws.root, "tag", "--list", "round-*").stdout.split()
    rows = []
    for tag in sorted(tags, key=lambda t: int(ROUND_TAG.match(t).group(1)) if ROUND_TAG.match(t) else -1):
        if not ROUND_TAG.match(tag):
            continue
        shown = project_repo.git(ws.root, "show", f"{tag}:round.json", check=False)
        if shown.returncode != 0:
            continue
        info = json.loads(shown.stdout)
        row = {"round": info["round"], "labeled": info.get("labeled"), "model_version": info["model_version"],
               "promoted": info.get("promoted")}
        for name in CURVE_METRICS:
            section, key = name.split(".")
            row[name] = (info.get("metrics") or {}).get(section, {}).get(key)
        rows.append(row)
    return rows


def effort_by_round(ws: Workspace, rounds: list[dict]) -> tuple[list[dict], dict | None] | None:
    """metrics/effort.json's model versions in the order of the rounds that trained them (versions
    no round trained, e.g. pushed from elsewhere, first), and the no-pre-annotation entry; None
    before any retrain measured it."""
    effort = (read_effort(ws.root) or {}).get("by_model_version")
    if effort is None:
        return None
    order = {r["model_version"]: r["round"] for r in rounds}
    versions = sorted(((v, e) for v, e in effort.items() if v != NO_PREANNOTATION),
                      key=lambda item: (order.get(item[0], 0), item[0]))
    if not versions and NO_PREANNOTATION not in effort:
        return None
    return [{"model_version": v, **e} for v, e in versions], effort.get(NO_PREANNOTATION)


def write_plots(ws: Workspace) -> dict[str, list[Path]]:
    """Write every figure that has data; returns {"learning_curve": [...], "pr": [...], "confusion": [...],
    "effort": [...]}.
    A workspace with no round or no model yet gets the figures it can have (none at first)."""
    from cxrkit.models.classifier import evaluate_classifier, load_classifier
    from cxrkit.models.detector import evaluate_detector, load_detector
    from cxrkit.pipeline import read_prepared

    out = plots_dir(ws)
    written: dict[str, list[Path]] = {"learning_curve": [], "pr": [], "confusion": [], "effort": []}
    rounds = round_rows(ws)
    rows = [r for r in rounds if r["labeled"] is not None]
    if rows:
        written["learning_curve"].append(plot_learning_curve(
            rows, "labeled", list(CURVE_METRICS), out / "learning_curve.png",
            title=f"Retrain rounds 1-{rows[-1]['round']}: validation metrics against labels"))
    effort = effort_by_round(ws, rounds)
    if effort:
        versions, scratch = effort
        written["effort"].append(plot_effort(versions, out / "effort.png", scratch=scratch,
                                             title="Radiologists' correction effort by model version shown"))
    version = Registry(ws.models_dir).current()
    prepared = ws.root / "pipeline" / "prepared"
    if version is None or not (prepared / "val.jsonl").is_file():
        return written
    _, val = read_prepared(prepared)
    det = version.params["detector"]
    version.verify()  # the serving version's files, as registered (a .pt runs code when loaded)
    detector = evaluate_detector(load_detector(version.detector_weights), val, ws.data_dir, int(det["imgsz"]),
                                 conf=float(det.get("conf", 0.01)), rsna_conf=float(det.get("rsna_conf", 0.3)))
    written["pr"] = plot_pr_curves(detector["pr50"], out, ap=detector["ap50"])
    classifier = evaluate_classifier(load_classifier(version.classifier_checkpoint), val, ws.data_dir,
                                     version.params["classifier"])
    if "all" in classifier:
        written["confusion"].append(plot_confusion_matrix(
            classifier["all"]["confusion"], classifier["classes"], out / "confusion.png",
            title=f"Subtype classifier {version.version_id} (validation)"))
    return written
