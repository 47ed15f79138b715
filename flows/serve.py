"""Serve the flows as Prefect deployments: `cxr flows serve` or `python -m flows.serve`.

    retrain/retrain   parameters workspace, project, reason (+ params, select)
    select/select     parameters workspace, project (+ params, strategy)
    ingest/ingest     parameters path (+ dataset, workspace, project, ...)

One long-running process polls the Prefect API ($PREFECT_API_URL; a local `prefect server
start` for the embedded setup) and runs each flow run it is handed in a subprocess, so the
Prefect UI, `prefect deployment run retrain/retrain` and the ML backend's webhook
(`run_deployment("retrain/retrain", parameters=...)`) all start the same code. One retrain per
project runs at a time by the flow's own limit and the workspace lock, not a deployment
concurrency limit (prefect.yaml says why). docker-compose and `cxr stack` run the same
deployments on a process work pool instead (prefect.yaml).
"""
from __future__ import annotations

from cxrkit.core import offline

offline.apply()

from prefect import serve  # noqa: E402

from flows.ingest import ingest_flow  # noqa: E402
from flows.retrain import retrain_flow  # noqa: E402
from flows.select import select_flow  # noqa: E402


def deployments() -> list:
    return [
        retrain_flow.to_deployment(name="retrain",
                                   description="Retrain on Label Studio's labels, gate, serve, select."),
        select_flow.to_deployment(name="select", description="Rank the unlabeled images for labeling."),
        ingest_flow.to_deployment(name="ingest", description="Ingest DICOMs, import tasks, pre-annotate."),
    ]


def serve_deployments() -> None:
    serve(*deployments())


if __name__ == "__main__":
    serve_deployments()
