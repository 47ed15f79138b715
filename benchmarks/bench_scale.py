"""Label Studio's part of a select round against the project's size: requests, seconds, memory.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000,10000] [--baseline-sample 300] [--out DIR]
        [--simulate 100000] [--list-full-up-to 10000]

Run it alone on a quiet machine. A real Label Studio (SQLite, started as `cxr labelstudio start`
starts it) serves a scratch workspace; for each size N a project gets N tasks (tiny PNGs: the
image size does not matter to these costs) and a reader's annotation on 1 % of them, then each
step below is timed, its HTTP requests counted, and the peak memory of this process and of
Label Studio's processes sampled:

- import:          the N tasks (LabelStudio.import_tasks, 1,000 per request)
- list:            the select flow's listing (id, data, annotation counts; pages of 5,000)
- list full:       every field, predictions and annotations included (pages of 500), as before
                   (only up to `--list-full-up-to` tasks, if given: it is the slow old way)
- publish new:     the queue of N tasks under a new model version, a quarter with a predicted
                   box (cxrkit.labelstudio.publish.publish_queue)
- publish rerank:  the same version, the queue in a new order (the previous queue is kept)
- publish same:    the same queue again: recognised, nothing written
- prune:           the first queue, now superseded twice, deleted (prune_publications), while a
                   reader submits an annotation every half second: how many failed, the longest wait
- readers:         the queue shared among 3 readers (the `queue` field, bulk action per reader)
- per-task PATCH:  the way rankings were written before (a PATCH of each task's data), timed on
                   `--baseline-sample` tasks and scaled to N (it is one request per task)
- export:          the project's JSON export, as the retrain flow takes it

`--simulate N` (where a real project of N tasks does not fit, e.g. 100,000): the select flow's
own in-memory work on N synthetic predictions, in a fresh process whose peak resident memory is
the figure: the listing's task dicts, N predictions (0-2 boxes, signals, class probabilities,
and the classifier's 512-d embedding as the scoring pass keeps it), N / 10 labeled images'
predictions (their embeddings), both embeddings as matrices (flows.select.embedding_rows), the
pool, hybrid's ranking (depth 2,000), gold mixed in, and the publication's items (boxes to Label
Studio results, the JSON of the import requests). Torch and the flow's module (Prefect) are
imported, as the flow's process holds them.

Results: benchmarks/results/scale/label_studio.json and a table (printed and table.txt); the
plot cost_vs_size.png (seconds per step against N, log-log); simulate.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrkit.core import offline  # noqa: E402

offline.apply()

from cxrkit.core.labels import DEFAULT_CONFIG, load_schema  # noqa: E402
from cxrkit.core.manifest import Box, Record  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.labelstudio.client import LabelStudio  # noqa: E402
from cxrkit.labelstudio.publish import prune_publications, publish_queue  # noqa: E402
from cxrkit.labelstudio.queue import share_queue  # noqa: E402
from cxrkit.labelstudio.results import boxes_to_results  # noqa: E402
from cxrkit.services import labelstudio_server as server  # noqa: E402
from cxrkit.services.process import free_port  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "scale"
SIDE = 16  # px: every task's image


class Meter:
    """Counts the client's requests and samples Label Studio's resident memory while a step runs."""

    def __init__(self, ls: LabelStudio, pid: int):
        self.requests = 0
        ls.session.hooks["response"].append(self._count)
        self.server = psutil.Process(pid)
        self.peak_server = 0
        self._running = False

    def _count(self, resp, *args, **kwargs):
        self.requests += 1

    def _server_rss(self) -> int:
        procs = [self.server, *self.server.children(recursive=True)]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self):
        while self._running:
            self.peak_server = max(self.peak_server, self._server_rss())
            time.sleep(0.1)

    def run(self, name: str, n: int, fn, scale: float = 1.0) -> dict:
        self.requests, self.peak_server, self._running = 0, self._server_rss(), True
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        self._running = False
        sampler.join()
        row = {"step": name, "tasks": n, "seconds": seconds * scale, "requests": round(self.requests * scale),
               "client_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "server_peak_mb": self.peak_server / 2**20, "scaled_from": None if scale == 1.0 else seconds}
        print(f"N={n:>6}  {name:<15} {row['seconds']:8.2f} s  {row['requests']:>6} requests  "
              f"server {row['server_peak_mb']:.0f} MB", flush=True)
        return row


class Reader:
    """A radiologist submitting an annotation every half second (a client of its own, so its
    requests are not counted): does a submission wait on, or fail during, the step it runs beside?"""

    def __init__(self, ls: LabelStudio, task_ids: list[int], result: list[dict]):
        self.ls, self.task_ids, self.result = ls, task_ids, result
        self.seconds: list[float] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._submit, daemon=True)

    def _submit(self):
        for task_id in self.task_ids:
            if self._stop.is_set():
                return
            start = time.perf_counter()
            try:
                self.ls.create_annotation(task_id, self.result)
            except Exception as error:  # noqa: BLE001 - what a radiologist would see, recorded
                self.failed.append(str(error)[:120])
            self.seconds.append(time.perf_counter() - start)
            time.sleep(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"submissions": len(self.seconds), "submissions_failed": len(self.failed),
                "submission_max_s": max(self.seconds, default=0.0), "submission_errors": self.failed[:3]}


def make_records(ws: Workspace, n: int, prefix: str) -> list[Record]:
    folder = ws.images_dir / prefix
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    records = []
    for i in range(n):
        image_id = f"{prefix}{i:06d}"
        cv2.imwrite(str(folder / f"{image_id}.png"), rng.integers(0, 255, (SIDE, SIDE), dtype=np.uint8))
        records.append(Record(image_id=image_id, path=f"images/{prefix}/{image_id}.png", source="synthetic",
                              width=SIDE, height=SIDE, metadata={"age": 50, "sex": "F", "view": "PA"}))
    return records


def measure(ls: LabelStudio, meter: Meter, ws: Workspace, n: int, baseline_sample: int,
            list_full: bool = True) -> list[dict]:
    schema = load_schema()
    records = make_records(ws, n, f"s{n}-")
    project = ls.ensure_project(f"scale {n} {int(time.time())}", DEFAULT_CONFIG.read_text())
    rows = [meter.run("import", n, lambda: ls.import_tasks(project, records, ws.data_dir))]
    tasks = ls.tasks_by_image(project)
    for image_id in sorted(tasks)[:: 100]:  # a reader's label on 1 % of the tasks, for the export
        ls.create_annotation(tasks[image_id]["id"], boxes_to_results([], SIDE, SIDE, schema, schema.normal))

    rng = random.Random(n)
    order = rng.sample(sorted(tasks), n)
    box = Box(2, 2, 8, 8, schema.opacity, score=0.6)
    shown = {i: ([box] if k % 4 == 0 else [], schema.normal) for k, i in enumerate(order)}
    rows.append(meter.run("publish new", n, lambda: publish_queue(ls, project, tasks, order, shown, "v1")))
    rows.append(meter.run("list", n, lambda: ls.list_tasks(project)))
    if list_full:
        rows.append(meter.run("list full", n, lambda: ls.list_tasks(project, full=True)))
    reranked = rng.sample(order, n)
    rows.append(meter.run("publish rerank", n, lambda: publish_queue(ls, project, tasks, reranked, shown, "v1")))
    same = []
    rows.append(meter.run("publish same", n, lambda: same.append(publish_queue(ls, project, tasks, reranked, shown, "v1"))))
    reader = Reader(LabelStudio(ls.url, ls.token), [tasks[i]["id"] for i in reranked[1::100]],
                    boxes_to_results([], SIDE, SIDE, schema, schema.normal))
    with reader:
        rows.append(meter.run("prune", n, lambda: prune_publications(ls, project, same[0])))
    rows[-1].update(reader.summary())
    print(f"           a reader's submissions during the prune: {rows[-1]['submissions']}, failed "
          f"{rows[-1]['submissions_failed']}, longest {rows[-1]['submission_max_s']:.1f} s", flush=True)
    readers = share_queue(reranked, ["reader-1", "reader-2", "reader-3"], 1)
    rows.append(meter.run("readers", n, lambda: publish_queue(ls, project, tasks, reranked, shown, "v1", readers)))

    sample = reranked[:baseline_sample]

    def patch_each():  # the old LabelStudio.set_uncertainty: the whole data, with score and rank
        for rank, image_id in enumerate(sample, 1):
            task = tasks[image_id]
            data = {**task["data"], "uncertainty": 1 - rank / n, "uncertainty_rank": rank}
            ls.request("PATCH", f"/api/tasks/{task['id']}", json={"data": data})

    rows.append(meter.run("per-task PATCH", n, patch_each, scale=n / len(sample)))
    rows.append(meter.run("export", n, lambda: ls.export_snapshot(project)))
    return rows


def simulate(n: int) -> dict:
    """The select flow's in-memory work for a pool of n (see the module docstring), timed per step."""
    import torch  # noqa: F401  (the flow's process holds it: part of the baseline)

    from cxrkit.labelstudio.queue import mix_gold, unfinished_first
    from cxrkit.labelstudio.tasks import task_data
    from cxrkit.models.classifier import encode_embedding
    from cxrkit.models.predictor import Prediction
    from cxrkit.selection import get_strategy, pool_from_predictions
    from flows.select import embedding_rows

    schema = load_schema()
    rng = np.random.default_rng(0)
    steps, start = {}, time.perf_counter()

    def step(name):
        nonlocal start
        steps[name] = {"seconds": time.perf_counter() - start,
                       "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        start = time.perf_counter()

    def unit_vector() -> np.ndarray:
        v = rng.normal(size=512).astype(np.float32)
        return v / np.linalg.norm(v)

    step("start (python, torch, cxrkit, prefect)")
    ids = [f"img{i:06d}" for i in range(n)]
    tasks = {i: {"id": k, "data": task_data(Record(image_id=i, path=f"images/{i}.png", source="dicom", width=1024,
                                                   height=1024, metadata={"age": 60, "sex": "F", "view": "PA"})),
                 "total_annotations": 0, "cancelled_annotations": 0} for k, i in enumerate(ids)}
    step("tasks listed")
    classes = [*schema.subtypes, schema.normal]
    predictions = []
    for i in range(n):
        boxes = [Box(100.0 + b, 200.0, 150.0, 180.0, schema.opacity, score=float(rng.random()))
                 for b in range(int(rng.integers(0, 3)))]
        probs = rng.dirichlet(np.ones(len(classes)))
        predictions.append(Prediction(width=1024, height=1024, boxes=boxes, impression=schema.normal,
                                      image_probs={c: float(p) for c, p in zip(classes, probs)},
                                      signals={"detection": float(rng.random()), "box": float(rng.random())},
                                      uncertainty=float(rng.random()), model_version="v1",
                                      embedding=encode_embedding(unit_vector())))
    labeled_predictions = [Prediction(model_version="v1", embedding=encode_embedding(unit_vector()))
                           for _ in range(n // 10)]
    step("predictions (with embeddings)")
    emb, labeled = embedding_rows(predictions), embedding_rows(labeled_predictions)
    step("embeddings as matrices")
    pool = pool_from_predictions(ids, predictions, emb, labeled)
    scores = get_strategy("hybrid", {"depth": 2000}).scores(pool)
    step("hybrid ranking")
    score_of = {i: round(float(s), 6) for i, s in zip(pool.image_ids, scores)}
    queue = mix_gold(unfinished_first(score_of, []), ids[: n // 100], 0.01)
    order = list(queue)
    step("queue (gold mixed in)")
    items = [{"task": tasks[i]["id"], "score": k / n, "model_version": "v1@00000000",
              "result": boxes_to_results(predictions[int(i[3:])].boxes, 1024, 1024, schema, schema.normal)}
             for k, i in enumerate(order)]
    body = sum(len(json.dumps(items[s: s + 5000])) for s in range(0, n, 5000))
    step("publication items")
    return {"n": n, "steps": steps, "import_body_mb": body / 2**20,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def table(rows: list[dict]) -> str:
    sizes = sorted({r["tasks"] for r in rows})
    steps = list(dict.fromkeys(r["step"] for r in rows))
    cell = {(r["step"], r["tasks"]): r for r in rows}
    head = "| step | " + " | ".join(f"N={n:,}: s / requests / LS MB" for n in sizes) + " |"
    lines = [head, "|" + "---|" * (len(sizes) + 1)]
    for step in steps:
        parts = []
        for n in sizes:
            r = cell.get((step, n))
            parts.append("" if r is None else f"{r['seconds']:.2f} / {r['requests']} / {r['server_peak_mb']:.0f}")
        lines.append(f"| {step} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for step in dict.fromkeys(r["step"] for r in rows):
        pts = sorted((r["tasks"], max(r["seconds"], 1e-3)) for r in rows if r["step"] == step)
        ax.plot(*zip(*pts), marker="o", label=step)
    ax.set(xscale="log", yscale="log", xlabel="tasks in the project", ylabel="seconds",
           title="Label Studio's part of a select round")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="project sizes, comma-separated ('' = none)")
    parser.add_argument("--baseline-sample", type=int, default=300, help="tasks the per-task PATCH is timed on")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--simulate", type=int, default=0, help="also simulate the flow's memory at this pool size")
    parser.add_argument("--list-full-up-to", type=int, default=0,
                        help="time the old full listing only for projects of at most this many tasks (0: all)")
    parser.add_argument("--simulate-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate_child:  # the fresh process whose peak memory is measured
        print(json.dumps(simulate(args.simulate_child)))
        return 0
    if args.simulate:
        child = subprocess.run([sys.executable, __file__, "--simulate-child", str(args.simulate)],
                               capture_output=True, text=True, check=True)
        simulated = json.loads(child.stdout.strip().splitlines()[-1])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "simulate.json").write_text(json.dumps(simulated, indent=2) + "\n")
        print(f"simulated select flow, {args.simulate:,} images: peak {simulated['peak_mb']:.0f} MB, "
              f"import bodies {simulated['import_body_mb']:.0f} MB")
        for name, s in simulated["steps"].items():
            print(f"  {name:<32} {s['seconds']:7.1f} s   peak so far {s['peak_mb']:6.0f} MB")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes:
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    ws = Workspace(scratch / "ws").create()
    info = server.start(ws, port=free_port())
    try:
        ls = LabelStudio.for_server(info)
        meter = Meter(ls, info.pid)
        rows = []
        for n in sizes:
            rows += measure(ls, meter, ws, n, args.baseline_sample,
                            list_full=not args.list_full_up_to or n <= args.list_full_up_to)
    finally:
        server.stop(ws)
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
              "cpus": psutil.cpu_count(), "rows": rows}
    (args.out / "label_studio.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(rows)
    (args.out / "table.txt").write_text(text + "\n")
    plot(rows, args.out / "cost_vs_size.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
