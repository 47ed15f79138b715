"""The steps of `cxr demo`, the README's main job: the whole loop on the embedded defaults.

generate a synthetic study -> ingest -> Label Studio (project, uncertainty view, tasks)
-> the workspace's Prefect server and the runner of the retrain/select/ingest deployments
-> first model on the seed labels (the retrain flow: DVC version, train, gate, registry)
-> pre-annotations and ranking (the select flow) -> the ML backend, connected to the project
   and told where Prefect is: every CXR_RETRAIN_EVERY annotations its webhook starts the next
   round (retrain/retrain on the runner, with the workspace's params-demo.yaml), by itself.

Every step is idempotent, so a re-run is safe and fast: the study is generated once, ingest
skips what it has, servers are found running, tasks are never imported twice, the retrain
is a no-op when the labels have not changed (then only the select flow runs, from its cache).
The CLI (cxrkit/cli/main.py `demo`) prints what each step did.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from cxrkit.core.params import load_params
from cxrkit.core.workspace import Workspace

DEMO_PARAMS_FILE = "params-demo.yaml"


def demo_section(params: dict) -> dict:
    section = params.get("demo") or {}
    return {"seed_fraction": float(section.get("seed_fraction", 0.15)),
            "split_fractions": tuple(section.get("split_fractions", (0.8, 0.1, 0.1))),
            # null: the published population (cxrkit.data.synthetic.PUBLISHED)
            "positive_fraction": section.get("positive_fraction"),
            "difficulty": section.get("difficulty"),
            "overrides": section.get("overrides") or {}}


def merged_params(params: dict) -> dict:
    """`params` with the demo's overrides merged into their sections (one level deep)."""
    out = copy.deepcopy(params)
    for section, values in demo_section(params)["overrides"].items():
        out[section] = {**(out.get(section) or {}), **values}
    return out


def write_demo_params(ws: Workspace, base_params: str | Path | None) -> Path:
    """<workspace>/params-demo.yaml: the base params file with the demo overrides applied.
    Rewritten every run, so an edit of params.yaml's demo section reaches the next retrain."""
    path = ws.root / DEMO_PARAMS_FILE
    text = ("# Written by `cxr demo` from params.yaml and its `demo.overrides`; edit those, not this.\n"
            + yaml.safe_dump(merged_params(load_params(base_params)), sort_keys=False))
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def start_prefect(ws: Workspace):
    """The workspace's Prefect server and deployments' runner, started or found running; this
    process's flows (the first model) run against it too. None when $PREFECT_API_URL names a
    server of the user's own, which is then expected to serve the deployments (prefect.yaml)."""
    from cxrkit.services import prefect_server

    if os.environ.get("PREFECT_API_URL"):
        return None
    info = prefect_server.start(ws)
    os.environ["PREFECT_API_URL"] = info.api_url  # before prefect is imported here: it reads it once
    return info


def study_folder(ws: Workspace, n: int, size: int, seed: int, seed_fraction: float) -> Path:
    return ws.root / "incoming" / f"synthetic-n{n}-s{size}-seed{seed}-labeled{round(seed_fraction * 100)}"


def first_model(ws: Workspace, project: int, params_file: Path) -> dict:
    """Train (or find) the model of the current labels and rank the pool with it.

    Runs the retrain flow, which versions the labels, trains, gates and then runs the select
    flow; when the labels are unchanged it is a no-op, and the select flow runs alone (its
    predictions are cached by model version and image)."""
    from flows.retrain import retrain_flow
    from flows.select import select_flow

    state = retrain_flow(workspace=str(ws.root), project=project, reason="demo: first model on the seed labels",
                         params=str(params_file), return_state=True)
    summary = state.result(raise_on_failure=True)
    if state.name == "NoNewLabels":
        summary = dict(summary)
        summary["select"] = select_flow(workspace=str(ws.root), project=project, params=str(params_file))
    return {"state": state.name, **summary}


def start_backend(ws: Workspace, ls, project: int):
    """Start the ML backend (or find it running) and connect it to the project."""
    from cxrkit.services import backend

    info = backend.start(ws)
    backend.connect(ls, project, info.url, info.user, info.password, predict=True)
    return info
