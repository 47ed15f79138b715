"""`cxr al-benchmark`: simulate the labeling loop with an oracle and compare acquisition strategies.

On the synthetic generator's data by default (generated and ingested under --out), or on any
ingested workspace whose records carry ground truth (`--workspace`, e.g. after
`cxr ingest --dataset rsna ...`). Writes rows.csv, summary.csv, result.json, table.txt and
learning_curve.png to --out and prints the table (cxrkit.selection.al_benchmark has the method).
Repeats can run side by side (`--first-repeat 0 --repeats 1`, `--first-repeat 1 --repeats 1`,
each with its own --out) and be combined afterwards with `--merge OUT0 --merge OUT1 --out ALL`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer


def al_benchmark(
    out: Path = typer.Option(Path("al-benchmark"), "--out", "-o", help="Folder for the results (and the synthetic study)."),
    workspace: Optional[Path] = typer.Option(
        None, "--workspace", "-w", help="An ingested workspace with ground truth; default: a synthetic study."),
    strategies: str = typer.Option(
        "random,uncertainty,coreset,hybrid",
        help="Comma-separated strategy names; \"<name>+st\" runs that one with self-training only."),
    seed_size: int = typer.Option(20, help="Images labeled at random before the first round."),
    rounds: int = typer.Option(5, help="Selection rounds."),
    batch: int = typer.Option(20, help="Images labeled per round."),
    repeats: int = typer.Option(2, help="Repeats (different seed sets); mean and spread over them."),
    first_repeat: int = typer.Option(0, help="Number of the first repeat (split the repeats over processes)."),
    merge: Optional[list[Path]] = typer.Option(
        None, help="Instead of running: combine the results of these --out folders (runs of other repeats)."),
    seed: int = typer.Option(0, help="Random seed of the seed sets and strategies."),
    n: int = typer.Option(300, help="Synthetic images (without --workspace)."),
    size: int = typer.Option(256, help="Synthetic image side in pixels."),
    difficulty: Optional[float] = typer.Option(
        None, help="One synthetic difficulty for every film (0 easy .. 1 hard); default: drawn per film."),
    positive_fraction: Optional[float] = typer.Option(
        None, help="A two-class synthetic study with this share of pneumonia; default: the published population "
                   "(cxrkit/data/synthetic.py)."),
    cold_start: str = typer.Option(
        "random", help="The seed of every strategy but random: random, or a model-free strategy (typiclust) "
                       "on thumbnail embeddings."),
    semi_supervised: bool = typer.Option(
        False, "--semi-supervised/--supervised",
        help="Also run every strategy with self-training on the unlabeled pool (\"<name>+st\")."),
    st_precision: Optional[float] = typer.Option(
        None, help="Self-training's precision target (params.yaml pseudo_labels.self_training.precision); "
                   "default: the benchmark's (cxrkit/selection/al_benchmark.py DEFAULTS)."),
    st_normal_ratio: Optional[float] = typer.Option(
        None, help="Self-training: at most this many Normal pseudo-labels per labeled image (0: Pneumonia ones "
                   "only; params.yaml pseudo_labels.self_training.normal_ratio); default: no cap of its own."),
    pretrain_epochs: int = typer.Option(
        0, help="Pretrain the detector this many epochs on the pool's films without labels (masked image "
                "modelling, cxrkit.models.detector_pretrain) and start every arm's seed detector from it; "
                "the arms are named \"<arm>+pt\". 0: from scratch."),
    bootstrap: int = typer.Option(1000, help="Resamples of the repeats for the savings' 95 % intervals."),
    effort: bool = typer.Option(
        False, "--effort/--no-effort",
        help="Also count each batch's edits over the workbench's pre-annotations and from scratch, and report "
             "radiologist time to reach random's final quality (cxrkit.evaluation.effort.EffortModel)."),
    detector_epochs: int = typer.Option(
        40, help="Detector epochs from its starting weights (none, or --pretrain-epochs' ones): the seed "
                 "model, and every round with --from-scratch."),
    warm_start: bool = typer.Option(
        True, "--warm-start/--from-scratch",
        help="Rounds fine-tune the previous round's detector (--finetune-epochs), or retrain it afresh from the "
             "seed's starting weights."),
    finetune_epochs: int = typer.Option(10, help="Detector epochs per round when warm-starting."),
    detector_imgsz: int = typer.Option(128, help="Detector input size."),
    classifier_epochs: int = typer.Option(6, help="Classifier epochs per round (from scratch)."),
    classifier_size: int = typer.Option(64, help="Classifier input size."),
    strategy_setting: Optional[list[str]] = typer.Option(
        None, help="One strategy's setting over params.yaml select.strategies, as NAME.KEY=VALUE "
                   "(e.g. hybrid_random.candidates_factor=8); repeat the option for more."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default). 1 is faster on a machine "
                                        "whose cores are already busy with other work."),
    title: str = typer.Option("Active learning, synthetic study", help="Plot title."),
) -> None:
    """Compare acquisition strategies with random sampling: learning curves and label savings."""
    os.environ.setdefault("YOLO_VERBOSE", "False")  # ultralytics' per-epoch bars would drown the table
    from cxrkit.cli.common import console
    from cxrkit.core.manifest import read_manifest
    from cxrkit.core.params import load_params
    from cxrkit.core.workspace import Workspace
    from cxrkit.selection.al_benchmark import (
        BenchmarkError,
        merge_outputs,
        run_benchmark,
        synthetic_records,
        table_lines,
        write_outputs,
    )

    logging.getLogger("ultralytics").setLevel(logging.WARNING)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    settings = {
        "seed_size": seed_size, "rounds": rounds, "batch": batch, "repeats": repeats, "first_repeat": first_repeat,
        "seed": seed, "warm_start": warm_start, "finetune_epochs": finetune_epochs,
        "detector": {"epochs": detector_epochs, "imgsz": detector_imgsz},
        "classifier": {"epochs": classifier_epochs, "input_size": classifier_size},
        "cold_start": cold_start, "semi_supervised": semi_supervised, "bootstrap": bootstrap, "effort": effort,
    }
    if pretrain_epochs > 0:
        settings["pretrain"] = {"epochs": pretrain_epochs}
    if st_precision is not None:
        settings.setdefault("self_training", {})["precision"] = st_precision
    if st_normal_ratio is not None:
        settings.setdefault("self_training", {})["normal_ratio"] = st_normal_ratio
    params = load_params()
    if strategy_setting:
        settings["strategies"] = strategy_overrides(params, strategy_setting)

    def report(row: dict) -> None:
        console.print(f"{row['strategy']:<16} repeat {row['repeat']} round {row['round']}: {row['labels']} labels, "
                      f"RSNA {row['rsna']:.3f}, mAP@0.5 {row['map50']:.3f}, subtype AUROC {row['subtype_auroc']:.3f}"
                      + (f", {row['pseudo']} pseudo-labeled ({row['pseudo_right']} right)" if row.get("pseudo") else "")
                      + f" ({row['seconds']:.0f} s)", highlight=False)

    try:
        if merge:
            result = merge_outputs(merge)
        elif workspace is not None:
            ws = Workspace.from_env(workspace)
            records = read_manifest(ws.manifest_path)
            if not records:
                raise BenchmarkError(f"{ws.manifest_path}: no records (ingest a labeled dataset first)")
            data_dir = ws.data_dir
        else:
            data_dir, records = synthetic_records(out / "synthetic", n=n, size=size, seed=seed, difficulty=difficulty,
                                                  positive_fraction=positive_fraction)
        if not merge:
            result = run_benchmark(records, data_dir, out, params, settings, names, report=report,
                                   on_repeat=lambda partial: write_outputs(partial, out, title))
    except (BenchmarkError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    paths = write_outputs(result, out, title)
    for line in table_lines(result):
        print(line)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def strategy_overrides(params: dict, settings: list[str]) -> dict:
    """params.yaml's select.strategies entries of the strategies named in `settings` ("NAME.KEY=VALUE",
    VALUE read as YAML: 8 is a number), with those settings over them."""
    import yaml

    from cxrkit.selection import STRATEGIES

    base = (params.get("select") or {}).get("strategies") or {}
    out: dict = {}
    for text in settings:
        name, dot, rest = text.partition(".")
        key, eq, value = rest.partition("=")
        if not (dot and eq and name and key):
            raise typer.BadParameter(f"{text!r}: give NAME.KEY=VALUE, e.g. hybrid_random.candidates_factor=8",
                                     param_hint="--strategy-setting")
        if name not in STRATEGIES:
            raise typer.BadParameter(f"{text!r}: no strategy {name!r}; choose one of {', '.join(STRATEGIES)}",
                                     param_hint="--strategy-setting")
        out.setdefault(name, dict(base.get(name) or {}))[key] = yaml.safe_load(value)
    return out
