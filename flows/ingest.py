"""Prefect flow: ingest a folder of DICOM, PNG or JPEG films (or a dataset's or label format's root) into a workspace.

    python -m flows.ingest PATH [--dataset rsna] [--workspace DIR] [--max-side 1024] [--clahe] [--workers 0]

The flow is a thin, observable wrapper over `cxrkit.data.ingest.ingest` (the same call
as `cxr ingest`): one task lists the sources (an importer, or every file of a
plain folder), one task ingests them. `ingest` already spreads the work over
processes, so Prefect runs the two tasks one after the other, in-process.

Outcome when some files fail
----------------------------
Bad input never stops the batch and loses nothing: every good image is written
and recorded before the flow decides its outcome, and every bad file is listed
(path relative to PATH, one-line reason) in the report,
`workspace/reports/ingest_report.json`, and on this machine's console; the run's logs
in Prefect count the failures by reason.
The flow then raises `IngestFailures` (which carries the report dict in
`.report`), so the flow run ends **Failed** in Prefect, the same way `cxr ingest`
exits 1: whoever looks at the run (UI, automations, exit status of
`python -m flows.ingest`) sees at once that something needs attention. The
ingest task itself ends Completed: it did its job. A run without failures ends
Completed and returns the report dict. Re-running is safe and cheap: what is in
the manifest is skipped.
Exit status of `python -m flows.ingest`: 0 all good, 1 some files failed (the
rest is ingested), 2 the run could not start (no such folder, unknown dataset).

Then Label Studio
-----------------
When Label Studio is configured ($LABEL_STUDIO_URL) or running for the workspace
(`cxr labelstudio start`) and `labelstudio` is on (the default), the manifest's images that
are not tasks yet are imported into the project (`project`, default the one `cxr labelstudio
setup-project` makes), and the select flow runs: with a model serving (the registry's
`current`), the new images get the model's boxes as pre-annotations and their place in the
"Most uncertain first" queue; before any model, its cold start ranks them (`select.cold_start`:
random by default, or typiclust / coreset on thumbnails) without pre-annotations. Both happen before the outcome is decided, so good images
reach Label Studio even when some files failed. Without Label Studio the flow is ingest only.

Privacy
-------
File names and folders may carry PHI (a folder per patient, named after them). No path of
a source file reaches Prefect: the run's logs, which Prefect's API stores and shows to whoever
can see the server, carry counts, timings and the failures' reasons with their paths cut out.
The failed files' paths, which the operator needs to find them, go to the workspace's report
and to this process's own log (the console: a plain logger, not the run logger). Task results are never persisted (`persist_result=False`,
no cache), so the source list never lands in Prefect's result storage, even
where result persistence is switched on globally. Flow run parameters (the
input folder and the workspace) are folders, not files.
"""
from __future__ import annotations

from cxrkit.core import offline

offline.apply()  # before prefect is imported: it reads its settings at import

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from cxrkit.core.manifest import read_manifest  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.importers import IMPORTERS, get_importer  # noqa: E402
from cxrkit.data.ingest import IngestOptions, ingest, sources_from_folder  # noqa: E402
from cxrkit.data.sources import SourceImage  # noqa: E402
from cxrkit.labelstudio.client import LabelStudio  # noqa: E402
from cxrkit.models.registry import Registry  # noqa: E402
from flows.connect import context_for  # noqa: E402
from flows.select import select_flow  # noqa: E402

# This process's console only: Prefect sends its run loggers' lines (get_run_logger) to its API.
console_log = logging.getLogger("cxrkit.data.ingest.failures")


class IngestFailures(Exception):
    """Some files failed; everything else was ingested. `.report`: the report dict."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # keep .report through pickling
        return type(self), (str(self), self.report)


@task(name="list sources", persist_result=False, cache_policy=NO_CACHE)
def list_sources(path: str, dataset: str | None = None) -> list[SourceImage]:
    """The images to ingest: a dataset importer's list, or every file under a plain folder."""
    logger = get_run_logger()
    root = Path(path)
    sources = get_importer(dataset)(root) if dataset else sources_from_folder(root)
    logger.info("found %d source files (%s)", len(sources), f"dataset {dataset}" if dataset else "plain folder")
    return sources


@task(name="ingest images", persist_result=False, cache_policy=NO_CACHE)
def ingest_images(sources: list[SourceImage], path: str, ws: Workspace, options: IngestOptions) -> dict:
    """De-identify, convert and record `sources` (in parallel processes); returns the report dict."""
    logger = get_run_logger()
    total = len(sources)
    logger.info("ingesting %d files into workspace %s (max side %d, CLAHE %s, workers %s)",
                total, ws.root, options.max_side, options.clahe, options.workers or "one per core")

    done, next_mark = 0, 1

    def progress(n: int) -> None:  # one log line per 10 %, for long runs
        nonlocal done, next_mark
        done += n
        if total >= 20 and done * 10 >= next_mark * total and done < total:
            logger.info("progress: %d/%d files (%d %%)", done, total, done * 100 // total)
            next_mark = done * 10 // total + 1

    report = ingest(sources, ws, options, progress=progress, report_root=Path(path))
    rate = total / report.seconds if report.seconds else 0.0
    logger.info("ingested %d, skipped %d (already in the workspace), failed %d: %d files in %.1f s, %.1f files/s",
                report.ingested, report.skipped, len(report.failed), total, report.seconds, rate)
    for failure in report.failed:
        console_log.warning("failed: %s: %s", failure.path, failure.reason)
    if report.failed:
        reasons = Counter(_without_path(failure.reason, failure.path, Path(path)) for failure in report.failed)
        logger.warning("%d files failed: %s. Their paths (which may name patients) are in %s and this "
                       "machine's console, not in this log", len(report.failed),
                       "; ".join(f"{reason} ({count})" for reason, count in reasons.most_common()), ws.report_path)
    return report.to_dict()


def _without_path(reason: str, shown: str, root: Path) -> str:
    """A failure's reason with its file's path and name cut out (an OS error quotes them)."""
    for text in (str(root / shown), shown, Path(shown).name):
        reason = reason.replace(text, "<file>")
    return reason


@task(name="import tasks into Label Studio", persist_result=False, cache_policy=NO_CACHE)
def import_tasks(ls: LabelStudio, project: int, ws: Workspace) -> dict:
    """One task per manifest image not yet in the project; returns the counts."""
    logger = get_run_logger()
    report = ls.import_tasks(project, read_manifest(ws.manifest_path), ws.data_dir)
    logger.info("Label Studio project %d: imported %d tasks, %d already there, %d failed",
                project, len(report.imported), len(report.skipped), len(report.failed))
    for image_id, reason in report.failed:
        logger.warning("task for image %s not imported: %s", image_id, reason)
    return {"project": project, "imported": len(report.imported), "skipped": len(report.skipped),
            "failed": len(report.failed)}


def to_labelstudio(ws: Workspace, project: int | None, params: str | None) -> dict | None:
    """Import the tasks, then rank them (and pre-annotate, with a model serving): module docstring."""
    logger = get_run_logger()
    ctx = context_for(ws, project)  # after ingest: good images land even when Label Studio fails
    ls, project = ctx.labelstudio, ctx.project
    if ls is None:
        logger.info("no Label Studio configured or running for %s: no tasks imported", ws.root)
        return None
    out = {"tasks": import_tasks(ls, project, ws)}
    if Registry(ws.models_dir).current_id() is None:
        logger.info("no model serving yet: no pre-annotations; the select flow's cold start ranks the tasks")
    out["select"] = select_flow(workspace=str(ws.root), project=project, params=params)
    return out


@flow(name="ingest", log_prints=False, persist_result=False)
def ingest_flow(
    path: str,
    dataset: str | None = None,
    workspace: str | None = None,
    max_side: int = 1024,
    clahe: bool = False,
    workers: int = 0,
    labelstudio: bool = True,
    project: int | None = None,
    params: str | None = None,
) -> dict:
    """Ingest PATH (a folder of films, or a dataset or label format root with `dataset`) into the workspace,
    then import the tasks into Label Studio and pre-annotate them (when available).

    Returns the report dict (with "labelstudio": what was imported and pushed, when it ran);
    raises IngestFailures (run Failed) after ingesting all good files if any file failed.
    """
    options = IngestOptions(max_side=max_side, clahe=clahe, workers=workers)
    ws = Workspace.from_env(workspace)
    sources = list_sources(path, dataset)
    report = ingest_images(sources, path, ws, options)
    if labelstudio:
        followed = to_labelstudio(ws, project, params)
        if followed is not None:
            report["labelstudio"] = followed
    if report["failed"]:
        n_failed = len(report["failed"])
        raise IngestFailures(
            f"{n_failed} of {n_failed + report['ingested'] + report['skipped']} files failed "
            f"(ingested {report['ingested']}, skipped {report['skipped']}: these are kept); "
            f"reasons in {ws.report_path}",
            report,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ingest", description=ingest_flow.__doc__)
    parser.add_argument("path", help="a folder of DICOM, PNG or JPEG films, or a dataset's or label format's root with --dataset")
    parser.add_argument("--dataset", "-d", default=None,
                        help=f"dataset layout: {', '.join(IMPORTERS)} (omit for a plain folder of films)")
    parser.add_argument("--workspace", "-w", default=None,
                        help="workspace folder (default $CXR_WORKSPACE or ./workspace)")
    parser.add_argument("--max-side", type=int, default=1024, help="longer side of the stored PNGs")
    parser.add_argument("--clahe", action="store_true", help="apply CLAHE contrast equalisation")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    parser.add_argument("--no-labelstudio", action="store_true", help="do not import tasks into Label Studio")
    parser.add_argument("--project", type=int, default=None, help="Label Studio project id")
    args = parser.parse_args(argv)
    state = ingest_flow(
        path=args.path, dataset=args.dataset, workspace=args.workspace,
        max_side=args.max_side, clahe=args.clahe, workers=args.workers,
        labelstudio=not args.no_labelstudio, project=args.project, return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if state.is_completed():
        return 0
    if isinstance(result, IngestFailures):
        print(f"ingest: {result}", file=sys.stderr)
        return 1
    print(f"ingest: could not run: {result}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
