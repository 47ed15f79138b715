"""Figures of the evaluation and of learning: PNG files a person looks at.

    plot_pr_curves(pr50, out_dir, ap=None)                -> one PR-curve PNG per finding
    plot_confusion_matrix(confusion, classes, out_png)    -> the classifier's confusion matrix
    plot_learning_curve(rows, x, ys, out_png, title)      -> metric(s) against labels or rounds
    plot_effort(versions, out_png, title, scratch)        -> radiologists' seconds and edits per model version

Inputs are the plain outputs of the evaluation functions: `evaluate_detector(...)["pr50"]`
and `["ap50"]`, `evaluate_classifier(...)["all"]["confusion"]` and `["classes"]`, and for
learning curves a list of dict rows (one per round of the flows or the active-learning
benchmark). Offline and headless: figures are drawn on matplotlib's Agg canvas without
pyplot (no display, no global figure state), in DejaVu Sans, the font matplotlib bundles,
so nothing looks for or downloads a font. Files are written atomically (temp, rename).
"""
from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxrkit.core.atomic import write_atomic

FONT = {"font.family": "DejaVu Sans", "font.size": 9}


def _figure(width: float, height: float) -> Figure:
    import matplotlib

    matplotlib.rcParams.update(FONT)
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return write_atomic(out_png, png.getvalue())


def slug(name: str) -> str:
    """A file-name-safe form of a finding name: "Nodule/Mass" -> "nodule-mass"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "finding"


def plot_pr_curves(pr50: Mapping[str, Mapping], out_dir: str | os.PathLike, ap: Mapping[str, float] | None = None,
                   prefix: str = "pr") -> list[Path]:
    """One PNG per finding with ground truth: precision against recall at IoU 0.5, the
    precision envelope (what AP integrates) dashed, and the AP in the title when `ap` has it.
    Files: out_dir/<prefix>-<finding slug>.png. Returns their paths."""
    paths = []
    for finding, curve in pr50.items():
        recall, precision = np.asarray(curve["recall"], float), np.asarray(curve["precision"], float)
        fig = _figure(4.2, 3.6)
        axes = fig.add_subplot()
        if len(recall):
            axes.plot(recall, precision, color="#1f77b4", lw=1.5, label="precision")
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            axes.plot(recall, envelope, color="#d62728", lw=1, ls="--", label="envelope (AP)")
            axes.legend(loc="lower left")
        else:
            axes.text(0.5, 0.5, "no predictions", ha="center", va="center")
        score = (ap or {}).get(finding)
        title = f"{finding}: AP@0.5 {score:.3f}" if score is not None and not math.isnan(score) else finding
        axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
                 title=f"{title} ({curve.get('n_gt', '?')} boxes)")
        axes.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(_save(fig, Path(out_dir) / f"{prefix}-{slug(finding)}.png"))
    return paths


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], classes: Sequence[str], out_png: str | os.PathLike,
                          title: str = "Subtype classifier") -> Path:
    """Counts (rows true, columns predicted), coloured by the share of each true class (row),
    so rare classes are as readable as common ones; every cell shows its count."""
    counts = np.asarray(confusion, dtype=float)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not fit {len(classes)} classes")
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 1.6 + 0.75 * len(classes)
    fig = _figure(size + 1.2, size)
    axes = fig.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of true class")
    for i in range(len(classes)):
        for j in range(len(classes)):
            axes.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                      color="white" if shares[i, j] > 0.6 else "black")
    axes.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set(xlabel="predicted", ylabel="true", title=f"{title} (n={int(counts.sum())})")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_learning_curve(rows: Sequence[Mapping], x: str, ys: Sequence[str] | str, out_png: str | os.PathLike,
                        title: str, group: str | None = None) -> Path:
    """Metric(s) `ys` against `x` (labels so far, or the round) from a list of dict rows.

    group: a row key (e.g. "strategy") whose values get one line each, per metric; rows
    missing a metric or with nan are skipped for that line. Points are joined in x order."""
    ys = [ys] if isinstance(ys, str) else list(ys)
    if not rows:
        raise ValueError("plot_learning_curve: no rows to plot")
    missing = [key for key in (x, *ys) if not any(key in r for r in rows)]
    if missing:
        raise ValueError(f"plot_learning_curve: no row has {', '.join(missing)} (keys: {sorted(rows[0])})")
    groups = sorted({str(r.get(group)) for r in rows}) if group else [None]
    fig = _figure(5.6, 3.8)
    axes = fig.add_subplot()
    for g in groups:
        mine = [r for r in rows if group is None or str(r.get(group)) == g]
        for y in ys:
            points = sorted((float(r[x]), float(r[y])) for r in mine
                            if r.get(x) is not None and r.get(y) is not None and not math.isnan(float(r[y])))
            if not points:
                continue
            label = " · ".join(part for part in (g, y if len(ys) > 1 or g is None else None) if part)
            axes.plot(*zip(*points), marker="o", ms=3, lw=1.4, label=label)
    axes.set(xlabel=x, ylabel=ys[0] if len(ys) == 1 else "metric", title=title)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_effort(versions: Sequence[Mapping], out_png: str | os.PathLike, title: str,
                scratch: Mapping | None = None) -> Path:
    """Seconds per image (median lead time) and edits per image for each model version shown, in
    the order given (the rounds' order), from `versions`: rows with "model_version",
    "seconds_median" (None: not recorded) and "edits_per_image". `scratch`, the same for tasks
    labeled with no pre-annotation, is drawn as a dashed line across both panels."""
    if not versions and not scratch:
        raise ValueError("plot_effort: no model version and no unassisted labels to plot")
    fig = _figure(8.0, 3.4)
    names = [str(v["model_version"]) for v in versions]
    for k, (key, label) in enumerate((("seconds_median", "seconds per image (median)"),
                                      ("edits_per_image", "edits per image"))):
        axes = fig.add_subplot(1, 2, k + 1)
        points = [(i, float(v[key])) for i, v in enumerate(versions) if v.get(key) is not None]
        if points:
            axes.plot(*zip(*points), marker="o", ms=4, lw=1.4, label="with the model's pre-annotations")
        if scratch and scratch.get(key) is not None:
            axes.axhline(float(scratch[key]), color="grey", ls="--", lw=1.2, label="no pre-annotation")
        axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        axes.set(xlabel="model version shown (rounds in order)", ylabel=label)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(loc="best", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)
