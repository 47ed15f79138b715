"""Retrain wall time, split into export, versioning (DVC + git), training, evaluation and overhead.

    .venv/bin/python benchmarks/bench_retrain.py [--n 60] [--size 256] [--workspace DIR]

A synthetic study is ingested without labels into a fresh workspace, every image is annotated
in Label Studio with the study's truth (through the API, as a radiologist's submit would), and
one retrain round runs (retrain flow, select off) with the params below. Then a second round
with no new labels (the no-op) is timed.

- export: Label Studio export + ground truth + labels file;
- versioning: `dvc add`, git commits, `dvc push`, and DVC's own time inside `dvc repro`
  (hashing, checking stages, caching outputs, starting each stage's Python process);
- training: the prepare and the two training stages' own work (measured inside the stages);
- evaluation: the evaluate stage's own work;
- overhead: the rest of the flow's wall time (Prefect task/flow runs, locks, registry, gate).

Label Studio: $LABEL_STUDIO_URL/$LABEL_STUDIO_API_KEY when set (the workspace must then be under
that server's data folder), else one is started for the benchmark's workspace. Prefect:
$PREFECT_API_URL when set, else Prefect's temporary local API.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import yaml  # noqa: E402

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema  # noqa: E402
from cxrkit.core.manifest import read_manifest, write_manifest  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.importers.synthetic import load_synthetic  # noqa: E402
from cxrkit.data.ingest import IngestOptions, ingest  # noqa: E402
from cxrkit.data.synthetic import generate_study  # noqa: E402
from cxrkit.labelstudio.client import LabelStudio  # noqa: E402
from cxrkit.labelstudio.results import boxes_to_results  # noqa: E402

DETECTOR = {"imgsz": 256, "epochs": 10, "batch": 8, "nbs": 8, "warmup_epochs": 1, "val": True}
CLASSIFIER = {"input_size": 128, "epochs": 10, "patience": 0, "batch": 16}


def setup_workspace(root: Path, n: int, size: int) -> tuple[Workspace, dict]:
    os.environ.setdefault("CXR_DEID_SALT", "bench-retrain-salt-0123456789abcdef")
    study = generate_study(root / "study", n=n, seed=5, size=size, positive_fraction=0.6, difficulty=0.2, workers=2)
    ws = Workspace(root / "ws")
    ingest(load_synthetic(study), ws, IngestOptions(workers=2))
    records = read_manifest(ws.manifest_path)
    write_manifest(ws.manifest_path, [replace(r, labeled=False, boxes=[], impression=None, subtype=None)
                                      for r in records])
    return ws, {r.image_id: r for r in records}


def labelstudio(ws: Workspace) -> LabelStudio:
    if os.environ.get("LABEL_STUDIO_URL"):
        return LabelStudio(os.environ["LABEL_STUDIO_URL"], os.environ["LABEL_STUDIO_API_KEY"])
    from cxrkit.services import labelstudio_server as server

    info = server.start(ws, timeout=1200)
    os.environ["LABEL_STUDIO_URL"], os.environ["LABEL_STUDIO_API_KEY"] = info.url, info.credentials.token
    return LabelStudio.for_server(info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60, help="images (all annotated)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--workspace", type=Path, default=None, help="parent folder (default: a temporary one)")
    args = parser.parse_args()
    parent = Path(args.workspace or tempfile.mkdtemp(prefix="bench-retrain-"))
    root = parent / f"bench-{int(time.time())}"
    ws, truth = setup_workspace(root, args.n, args.size)
    ls = labelstudio(ws)
    project = ls.ensure_project(f"bench retrain {root.name}", DEFAULT_CONFIG.read_text())
    ls.import_tasks(project, read_manifest(ws.manifest_path), ws.data_dir)
    schema = load_schema()
    for image_id, task in ls.tasks_by_image(project).items():
        r = truth[image_id]
        ls.create_annotation(task["id"], boxes_to_results(r.boxes, r.width, r.height, schema, r.impression))

    params = load_params()
    params["detector"] |= DETECTOR
    params["classifier"] |= CLASSIFIER
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    os.environ.setdefault("CXR_DVC_REMOTE_URL", str(root / "dvc-remote"))

    from flows.retrain import retrain_flow

    start = time.perf_counter()
    result = retrain_flow(workspace=str(ws.root), project=project, params=str(params_file), select=False)
    wall = time.perf_counter() - start
    noop_start = time.perf_counter()
    noop = retrain_flow(workspace=str(ws.root), project=project, params=str(params_file), select=False)
    noop_wall = time.perf_counter() - noop_start

    s = result["seconds"]
    overhead = wall - s["export"] - s["versioning"] - s["training"] - s["evaluation"]
    print(f"\nretrain of {args.n} annotated {args.size} px images (detector {DETECTOR['imgsz']} px x "
          f"{DETECTOR['epochs']} epochs, classifier {CLASSIFIER['input_size']} px x {CLASSIFIER['epochs']} epochs)")
    print(f"{'part':<34}{'seconds':>9}{'share':>8}")
    for name, value in (("export (Label Studio)", s["export"]), ("versioning (DVC + git)", s["versioning"]),
                        ("training (prepare + 2 models)", s["training"]), ("evaluation", s["evaluation"]),
                        ("overhead (Prefect, registry, gate)", overhead), ("total", wall)):
        print(f"{name:<34}{value:>9.1f}{value / wall:>8.0%}")
    print(f"overhead / training: {overhead / s['training']:.1%}; (overhead + versioning) / training: "
          f"{(overhead + s['versioning']) / s['training']:.1%}")
    stages = ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in result["stages"].items())
    print(f"stages: {stages}")
    print(f"no-op round (no new labels): {noop_wall:.1f} s, status {noop['status']!r}")
    print(f"metrics: {result['metrics']}")
    if args.workspace is None:
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
