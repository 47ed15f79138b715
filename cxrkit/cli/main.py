"""The `cxr` app: ingest, synth, summary, demo, status, plots and `cxr labelstudio ...`; the
other command groups are added from their modules (backend.py, flows.py, al.py)."""
from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from cxrkit.core import offline

offline.apply()

import typer  # noqa: E402  (after offline.apply: libraries read their settings at import)
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table  # noqa: E402

from cxrkit.cli.al import al_benchmark  # noqa: E402
from cxrkit.cli.backend import backend_app  # noqa: E402
from cxrkit.cli.common import (  # noqa: E402
    WorkspaceOpt,
    console,
    labelstudio_client,
    labelstudio_errors,
    print_report,
)
from cxrkit.cli.explain import explain  # noqa: E402
from cxrkit.cli.flows import register as register_flow_commands  # noqa: E402
from cxrkit.cli.pacs import listen, pacs_app  # noqa: E402
from cxrkit.cli.pretrain import pretrain_detector_cmd  # noqa: E402
from cxrkit.cli.stack import stack_app  # noqa: E402
from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.params import configure_workspace_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.importers import IMPORTERS, get_importer  # noqa: E402
from cxrkit.data.ingest import IngestOptions, IngestReport, ingest, sources_from_folder  # noqa: E402
from cxrkit.labelstudio.client import DEFAULT_PROJECT  # noqa: E402

app = typer.Typer(help="Chest X-ray active-learning workbench.", no_args_is_help=True, add_completion=False)


@contextmanager
def progress_bar(description: str, total: int):
    """A progress bar; yields a callable advancing it by n."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # One INFO line per HTTP request (Prefect's lease renewals every few seconds, Label Studio
        # calls) would bury what the command says it did; -v shows them.
        logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the synthetic DICOM study into."),
    n: int = typer.Option(200, help="Number of images."),
    seed: int = typer.Option(0, help="Random seed (same seed, same study)."),
    size: int = typer.Option(1024, help="Image side in pixels."),
    workers: int = typer.Option(0, help="Processes (0: one per core)."),
) -> None:
    """Generate synthetic chest X-ray DICOMs with ground-truth boxes and subtypes (truth.jsonl).

    The films follow published shares (RSNA: 22.5 % pneumonia, 44.3 % other abnormality;
    subtypes from Kermany and the COVID-19 Radiography Database), difficulty drawn per film,
    3 % label noise in the training split: cxrkit/data/synthetic.py, `Population`."""
    from cxrkit.data.synthetic import generate_study

    with progress_bar("generating", n) as advance:
        generate_study(out, n=n, seed=seed, size=size, workers=workers, progress=advance)
    console.print(f"wrote {n} DICOM files and truth.jsonl to {out}")


@app.command("ingest")
def ingest_cmd(
    path: Path = typer.Argument(..., help="A folder of DICOM, PNG or JPEG films, or a dataset's or label "
                                          "format's root folder with --dataset."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", help=f"Dataset layout or label format: {', '.join(IMPORTERS)}. Omit for a plain "
                                      "folder of films (unlabeled)."
    ),
    workspace: Optional[Path] = WorkspaceOpt,
    max_side: int = typer.Option(1024, help="Longer side of the stored PNGs."),
    clahe: bool = typer.Option(False, help="Apply CLAHE contrast equalisation."),
    workers: int = typer.Option(0, help="Processes (0: one per core)."),
) -> None:
    """De-identify and convert images to PNG + manifest. Exit status 1 if any file failed."""
    ws = Workspace.from_env(workspace)
    report = run_ingest(path, dataset, ws, IngestOptions(max_side=max_side, clahe=clahe, workers=workers))
    print_report(report, ws)
    raise typer.Exit(0 if report.ok else 1)


def run_ingest(path: Path, dataset: str | None, ws: Workspace, options: IngestOptions) -> IngestReport:
    try:
        sources = get_importer(dataset)(path) if dataset else sources_from_folder(path)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    with progress_bar("ingesting", len(sources)) as advance:
        return ingest(sources, ws, options, progress=advance, report_root=path)


@app.command("export")
def export_cmd(
    out: Path = typer.Argument(..., help="The folder to write (created; files of an earlier export are replaced)."),
    format: str = typer.Option(..., "--format", "-f", help="coco or yolo."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Write the labeled set (the radiologists' labels of the last retrain and the labels ingest
    knew; never pseudo-labels) as COCO or YOLO, with labels.csv for impressions and subtypes."""
    from cxrkit.pipeline import label_export

    if format not in label_export.FORMATS:
        console.print(f"[red]error:[/red] unknown format {format!r}; known: {', '.join(label_export.FORMATS)}")
        raise typer.Exit(2)
    ws = Workspace.from_env(workspace)
    records = label_export.labeled_set(ws.data_dir)
    writer = label_export.write_coco if format == "coco" else label_export.write_yolo
    counts = writer(records, ws.data_dir, out)
    console.print(f"{format}: {counts['images']} films with {counts['boxes']} boxes, "
                  f"{counts['image_level_only']} labeled at the image level only (labels.csv), in {out}")


@app.command()
def summary(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """What the workspace holds: images per source, labeled, with boxes, subtypes, views."""
    ws = Workspace.from_env(workspace)
    console.print(summary_table(ws))


def summary_table(ws: Workspace) -> Table:
    records = read_manifest(ws.manifest_path)
    table = Table(title=f"workspace {ws.root} — {len(records)} images")
    for col in ("source", "images", "labeled", "with boxes", "boxes", "images by subtype", "views"):
        table.add_column(col)
    by_source: dict[str, list] = {}
    for rec in records:
        by_source.setdefault(rec.source, []).append(rec)
    for source, recs in sorted(by_source.items()):
        subtypes = Counter(rec.subtype for rec in recs if rec.subtype)
        views = Counter(rec.metadata.get("view", "?") for rec in recs)
        table.add_row(
            source,
            str(len(recs)),
            str(sum(r.labeled for r in recs)),
            str(sum(bool(r.boxes) for r in recs)),
            str(sum(len(r.boxes) for r in recs)),
            ", ".join(f"{k} {v}" for k, v in subtypes.most_common()),
            ", ".join(f"{k} {v}" for k, v in views.most_common()),
        )
    return table


@app.command()
def demo(
    workspace: Optional[Path] = WorkspaceOpt,
    n: int = typer.Option(300, help="Synthetic images to generate."),
    size: int = typer.Option(1024, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed."),
    params: Optional[Path] = typer.Option(None, "--params", help="Params file (default $CXR_PARAMS or params.yaml); "
                                          "its `demo:` section sets the seed labels and the first model's knobs."),
    labelstudio: bool = typer.Option(True, help="Start Label Studio and fill its project."),
    train: bool = typer.Option(True, help="Train the first model, pre-annotate, rank, start the ML backend."),
) -> None:
    """The main job on the embedded defaults, on a CPU: synthetic study -> ingest -> Label Studio ->
    first model on the seed labels -> pre-annotations and the uncertainty ranking -> ML backend.

    Safe to re-run: generation is skipped when the study exists, ingest skips what it has,
    servers are found running, tasks are never imported twice, and the retrain is a no-op
    while the labels are unchanged (the steps: cxrkit/cli/demo_steps.py).
    """
    from cxrkit.cli import demo_steps as steps
    from cxrkit.core.params import load_params
    from cxrkit.data.synthetic import generate_study

    ws = Workspace.from_env(workspace).create()
    settings = steps.demo_section(load_params(params))
    study = steps.study_folder(ws, n, size, seed, settings["seed_fraction"])
    if not (study / "truth.jsonl").exists():
        with progress_bar("generating synthetic DICOMs", n) as advance:
            generate_study(study, n=n, seed=seed, size=size, workers=0, progress=advance,
                           labeled_fraction=settings["seed_fraction"], split_fractions=settings["split_fractions"],
                           positive_fraction=settings["positive_fraction"], difficulty=settings["difficulty"])
    else:
        console.print(f"synthetic study already generated: {study}")
    report = run_ingest(study, "synthetic", ws, IngestOptions())
    print_report(report, ws)
    console.print(summary_table(ws))
    if not labelstudio:
        raise typer.Exit(0 if report.ok else 1)
    info, ls, project, view = serve_in_labelstudio(ws)
    login = (f"  login {info.credentials.username}, password: LABEL_STUDIO_PASSWORD in {ws.env_path}\n")
    if not train:
        console.print(f"\nOpen {info.url}/projects/{project}/data?tab={view}\n{login}")
        raise typer.Exit(0 if report.ok else 1)

    params_file = steps.write_demo_params(ws, params)
    configure_workspace_params(ws.root, params_file)  # every round of this workspace uses it, however started
    prefect = start_prefect_for_demo(ws)
    console.print(f"training the first model on the seed labels ({params_file.name}; a few minutes on a CPU)")
    try:
        first = steps.first_model(ws, project, params_file)
    except Exception as exc:  # the flow logged the details; the user gets one line and the way back in
        console.print(f"[red]error:[/red] the first model could not be trained: {exc}\n"
                      f"  Label Studio is running with every task; fix the cause and re-run `cxr demo`.")
        raise typer.Exit(1)
    if first["state"] == "NoNewLabels":
        console.print(f"labels unchanged since round {first.get('round')}: model {first['model_version']} kept")
    else:
        metrics = first.get("metrics") or {}
        shown = ", ".join(f"{s}.{k} {v:.3f}" for s in ("detector", "classifier")
                          for k, v in (metrics.get(s) or {}).items() if isinstance(v, float))
        console.print(f"model {first['model_version']} trained on {first.get('labeled')} labeled images "
                      f"({'promoted' if first.get('promoted') else 'not promoted'}): {shown}")
    selected = first.get("select") or {}
    console.print(f"ranked {selected.get('pool', 0)} unlabeled images; queue published as {selected.get('queue_label')} "
                  f"({selected.get('predictions_pushed', 0)} pre-annotations written)")
    from cxrkit.cli.backend import backend_errors

    with backend_errors():
        backend_info = steps.start_backend(ws, ls, project)
    console.print(f"ML backend: {backend_info.url} serving {backend_info.model_version or first['model_version']}, "
                  "connected to the project")
    from cxrkit.services.backend import retrain_every

    every = retrain_every()
    where = f"Prefect {prefect.url}" if prefect else f"the Prefect server at {os.environ['PREFECT_API_URL']}"
    console.print(
        f"\nOpen {info.url}/projects/{project}/data?tab={view}  (the view \"Most uncertain first\")\n{login}"
        "  Open the top task, correct the pre-drawn boxes and each box's subtype, submit; repeat.\n"
        f"Every {every} images you label start the next round by itself (CXR_RETRAIN_EVERY): the backend's\n"
        f"  webhook starts retrain/retrain on {where}, which trains on your labels with {params_file.name},\n"
        "  promotes the new model if it passes the gate, pre-annotates and re-ranks the view.\n"
        f"Start a round now:             cxr retrain -w {ws.root}\n"
        f"Where things stand:            cxr status -w {ws.root}\n"
        f"Stop the servers:              cxr backend stop -w {ws.root}; cxr flows stop -w {ws.root}; "
        f"cxr labelstudio stop -w {ws.root}"
    )
    raise typer.Exit(0 if report.ok else 1)


def start_prefect_for_demo(ws: Workspace):
    """The demo's Prefect server and runner (None when $PREFECT_API_URL names the user's own)."""
    from cxrkit.cli import demo_steps as steps
    from cxrkit.services.prefect_server import DEPLOYMENTS, PrefectServerError

    console.print("starting Prefect (a local server and the runner of the retrain/select/ingest deployments)")
    try:
        prefect = steps.start_prefect(ws)
    except PrefectServerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    if prefect is None:
        console.print(f"Prefect: using $PREFECT_API_URL {os.environ['PREFECT_API_URL']} (it must serve the deployments)")
    else:
        console.print(f"Prefect: {prefect.url} ({'already running' if prefect.reused else 'started'}), "
                      f"serving {', '.join(DEPLOYMENTS)}")
    return prefect


def serve_in_labelstudio(ws: Workspace):
    """Start Label Studio, create the project and its uncertainty view, import every image.
    Returns (server info, client, project id, view id)."""
    from cxrkit.labelstudio.client import LabelStudio
    from cxrkit.services import labelstudio_server as server

    console.print("starting Label Studio (the first start sets up its database: about a minute)")
    with labelstudio_errors():
        info = server.start(ws)
        ls = LabelStudio.for_server(info)
        project = ls.ensure_project(DEFAULT_PROJECT, label_config_text(None), readers_per_image(ws))
        view = ls.ensure_view(project)
        imported = ls.import_tasks(project, read_manifest(ws.manifest_path), ws.data_dir)
    console.print(f"Label Studio: imported {len(imported.imported)} tasks, {len(imported.skipped)} already there, "
                  f"{len(imported.failed)} failed")
    return info, ls, project, view


labelstudio_app = typer.Typer(help="Run Label Studio for the workspace and fill its project.", no_args_is_help=True)
app.add_typer(labelstudio_app, name="labelstudio")
app.add_typer(backend_app, name="backend")
app.add_typer(stack_app, name="stack")
app.add_typer(pacs_app, name="pacs")
app.command("listen")(listen)
app.command("explain")(explain)
app.command("al-benchmark")(al_benchmark)
app.command("pretrain-detector")(pretrain_detector_cmd)
register_flow_commands(app)  # cxr retrain, cxr select, cxr flows serve
TitleOpt = typer.Option(DEFAULT_PROJECT, "--title", help="Label Studio project title.")
ConfigOpt = typer.Option(None, "--config", help="Label config XML (default $CXR_LABEL_CONFIG or label_config.xml).")


def labelstudio_project(workspace: Path | None, title: str, config: Path | None):
    """The workspace, a client of its running Label Studio, and the project `title` (created or updated)."""
    ws = Workspace.from_env(workspace)
    ls = labelstudio_client(ws)
    with labelstudio_errors():
        project = ls.ensure_project(title, label_config_text(config), readers_per_image(ws))
    return ws, ls, project


def readers_per_image(ws: Workspace) -> int:
    """retrain.readers_per_image of the workspace's params file (the ground truth follows it too)."""
    from cxrkit.core.params import load_params, params_file_for
    from cxrkit.labelstudio.ground_truth import readers_per_image as configured

    return configured(load_params(params_file_for(ws.root)))


def label_config_text(config: Path | None) -> str:
    from cxrkit.core.labels import DEFAULT_CONFIG

    return Path(config or os.environ.get("CXR_LABEL_CONFIG") or DEFAULT_CONFIG).read_text()


@labelstudio_app.command("start")
def labelstudio_start(
    workspace: Optional[Path] = WorkspaceOpt,
    port: Optional[int] = typer.Option(None, help="Port (default $CXR_LS_PORT or 8080)."),
) -> None:
    """Start Label Studio on 127.0.0.1 (or find the one already running for this workspace)."""
    from cxrkit.services import labelstudio_server as server

    with labelstudio_errors():
        info = server.start(Workspace.from_env(workspace).create(), port=port)
    state = "already running" if info.reused else "started"
    console.print(f"Label Studio {state}: {info.url} (pid {info.pid}, log {info.log_path})")
    console.print(f"login: {info.credentials.username}; password and API token in the workspace .env")


@labelstudio_app.command("stop")
def labelstudio_stop(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Stop the Label Studio this workspace started."""
    from cxrkit.services import labelstudio_server as server

    stopped = server.stop(Workspace.from_env(workspace))
    console.print("Label Studio stopped" if stopped else "Label Studio was not running for this workspace")


@labelstudio_app.command("status")
def labelstudio_status(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Say whether this workspace's Label Studio runs and answers. Exit status 1 if not."""
    from cxrkit.services import labelstudio_server as server

    info = server.status(Workspace.from_env(workspace))
    if info is None:
        console.print("Label Studio is not running for this workspace")
        raise typer.Exit(1)
    console.print(f"Label Studio running: {info.url} (pid {info.pid}, log {info.log_path})")


@labelstudio_app.command("setup-project")
def labelstudio_setup_project(
    workspace: Optional[Path] = WorkspaceOpt, title: str = TitleOpt, config: Optional[Path] = ConfigOpt
) -> None:
    """Create the project (or update its label config) and its "Most uncertain first" tab."""
    ws, ls, project = labelstudio_project(workspace, title, config)
    with labelstudio_errors():
        ls.ensure_view(project)
        if readers_per_image(ws) > 1:
            ls.ensure_review_view(project)
    console.print(f"project {title!r}: {ls.url}/projects/{project}")


@labelstudio_app.command("readers")
def labelstudio_readers(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """List Label Studio's users with the reader id the workbench knows them by (review.reviewers,
    the per-reader report in `cxr status`). Names and e-mails are printed here, never stored."""
    ws = Workspace.from_env(workspace)
    ls = labelstudio_client(ws)
    with labelstudio_errors():
        users = ls.users()
    for user in sorted(users, key=lambda u: u["id"]):
        name = " ".join(x for x in (user.get("first_name"), user.get("last_name")) if x)
        console.print(f"reader-{user['id']}\t{user.get('email') or ''}\t{name}")


@labelstudio_app.command("import-tasks")
def labelstudio_import_tasks(
    workspace: Optional[Path] = WorkspaceOpt, title: str = TitleOpt, config: Optional[Path] = ConfigOpt
) -> None:
    """Add a task per manifest image not yet in the project. Exit status 1 if any image failed."""
    ws, ls, project = labelstudio_project(workspace, title, config)
    with labelstudio_errors():
        report = ls.import_tasks(project, read_manifest(ws.manifest_path), ws.data_dir)
    console.print(f"imported {len(report.imported)}, already there {len(report.skipped)}, failed {len(report.failed)}")
    for image_id, reason in report.failed:
        console.print(f"  [red]failed[/red] {image_id}: {reason}")
    raise typer.Exit(1 if report.failed else 0)


@app.command("status")
def status_cmd(
    workspace: Optional[Path] = WorkspaceOpt,
    title: str = TitleOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Labeled/unlabeled counts, the serving model and its metrics, the last retrain, the queue's top."""
    import json

    from cxrkit.services.status import render_lines, workspace_status

    status = workspace_status(Workspace.from_env(workspace), title)
    if as_json:
        print(json.dumps(status, indent=2, default=str))
    else:
        for line in render_lines(status):
            console.print(line, highlight=False, markup=False)


@app.command("plots")
def plots_cmd(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Learning curve over the retrain rounds, the serving model's PR curves and confusion matrix, the
    radiologists' correction effort per model version (PNGs)."""
    from cxrkit.pipeline.round_plots import write_plots

    ws = Workspace.from_env(workspace)
    written = write_plots(ws)
    for kind, paths in written.items():
        console.print(f"{kind}: " + (", ".join(str(p.relative_to(ws.root)) for p in paths) if paths else "no data yet"))
    if not any(written.values()):
        console.print(f"nothing to plot in {ws.root} yet: retrain first (`cxr demo` or `cxr retrain`)")
