"""ML backend overhead: end-to-end /predict against the bare predictor, and requests/s under load.

    python benchmarks/bench_backend.py [--n 30] [--warmup 3] [--size 640] [--requests 48] [--clients 8]

Models: the architectures of params.yaml, untrained (latency does not depend on the weights),
saved as a registry version and promoted, so the backend serves them exactly as it serves a
retrained model. As in bench_inference.py, the detector's and the predictor's score floors are
0, so every image shows the 10 best boxes and the classifier runs on their crops: the work a
trained model that finds something does.

Data: `--n` synthetic chest X-rays of `--size` px written as PNGs into the workspace image folder.

Measured in one run, image by image, alternating so machine load hits all alike:
- bare: what the backend does with one task's image, in this process: `ml_backend.images.load_image`
  (read + decode) and `Predictor.predict_arrays([img], uncertainty=False)` (what is shown), every
  torch call on one thread, as the backend's inference thread runs them;
- backend: POST /predict with one Label Studio task (local-files URL) to the backend started as
  `cxr backend start` starts it (gunicorn, 1 worker, 4 threads), over HTTP with basic auth.
Overhead = backend median / bare median - 1 (target < 15 %). Then `--clients` threads send
`--requests` one-task requests in all: requests/s, against the bare predictor's images/s.
Prints a Markdown table with the machine, the date and the load average.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402

from cxrkit.core.labels import load_schema  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.data.synthetic import generate_case  # noqa: E402
from cxrkit.labelstudio.tasks import image_url  # noqa: E402
from cxrkit.models.classifier import build_classifier, classifier_classes  # noqa: E402
from cxrkit.models.detector import build_detector, export_detector_onnx  # noqa: E402
from cxrkit.models.registry import ModelVersion, Registry  # noqa: E402
from cxrkit.services import backend  # noqa: E402
from cxrkit.services.process import free_port  # noqa: E402
from ml_backend.images import load_image  # noqa: E402

LABEL_CONFIG = (Path(__file__).resolve().parent.parent / "label_config.xml").read_text()


def untrained_version(ws: Workspace, params: dict, folder: Path, conf: float = 0.0) -> ModelVersion:
    """Register and promote the params' architectures, untrained, as the retrain registers a
    version: detector.pt (with its imgsz in train_args, where a trained one has it and where
    ultralytics reads its input size from), its ONNX export beside it (which the backend serves
    on a CPU, detector.inference_format auto) and classifier.pt. `conf` is the score floor of
    the detector and of the boxes shown (0: every box, so the classifier runs on 10 crops)."""
    schema = load_schema()
    folder.mkdir(parents=True, exist_ok=True)
    det = build_detector(params["detector"], schema)
    det.ckpt = {**(det.ckpt or {}), "train_args": {"imgsz": int(params["detector"]["imgsz"]), "task": "detect"}}
    det.save(folder / "detector.pt")
    exported = export_detector_onnx(folder / "detector.pt", int(params["detector"]["imgsz"]))
    clf, classes = params["classifier"], classifier_classes(schema)
    net = build_classifier(clf["arch"], len(classes))
    torch.save({"state_dict": net.state_dict(), "classes": classes, "arch": clf["arch"],
                "input_size": int(clf["input_size"]), "temperature": 1.0}, folder / "classifier.pt")
    serve = dict(params)
    serve["detector"] = {**params["detector"], "conf": conf}
    serve["predictor"] = {**params["predictor"], "conf": conf}
    reg = Registry(ws.models_dir)
    version = reg.register(folder / "detector.pt", folder / "classifier.pt", data_version="benchmark",
                           params=serve, metrics={}, files={exported.name: exported})
    reg.set_current(version.version_id)
    return version


def machine() -> str:
    cores = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {cores} cores, {gpu}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=640, help="image side in pixels")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-backend-"))
    ws = Workspace(root / "ws").create()
    params = load_params()
    # Every torch call of this process on one thread, as the backend runs them on its inference
    # thread: torch work on two threads slows both (ml_backend/current_model.InferenceThread).
    torch_thread = ThreadPoolExecutor(1)
    version_id = torch_thread.submit(untrained_version, ws, params, root / "models-src").result().version_id
    names = write_films(ws, args.n + args.warmup, args.size, first_seed=20_000, prefix="bench")
    bare = torch_thread.submit(lambda: Registry(ws.models_dir).current().predictor()).result()

    os.environ["CXR_BACKEND_USER"], os.environ["CXR_BACKEND_PASSWORD"] = "bench", "bench-password"
    info = backend.start(ws, port=free_port())
    session = requests.Session()
    session.auth = (info.user, info.password)

    def via_backend(name: str) -> None:
        task = {"id": 1, "data": {"image": image_url(name)}}
        resp = session.post(info.url + "/predict", json={"tasks": [task], "label_config": LABEL_CONFIG}, timeout=120)
        body = resp.json()
        assert resp.status_code == 200 and "result" in body["results"][0], resp.text[:300]
        assert body["model_version"] == version_id

    def via_predictor(name: str) -> None:
        """What the backend does with a task's image: read and decode it, predict what is shown."""
        img = load_image(image_url(name), ws.images_dir, None, None, 1 << 30, 50_000_000)
        (p,) = torch_thread.submit(bare.predict_arrays, [img], uncertainty=False).result()
        assert p.ok, p.error

    try:
        for name in names[: args.warmup]:
            via_predictor(name)
            via_backend(name)
        t_bare, t_backend = [], []
        for k, name in enumerate(names[args.warmup:]):
            order = [(via_predictor, t_bare), (via_backend, t_backend)]
            for fn, times in order[k % 2:] + order[: k % 2]:
                t0 = time.perf_counter()
                fn(name)
                times.append(time.perf_counter() - t0)

        # Throughput: --clients threads share --requests one-task requests.
        work = [names[args.warmup + i % args.n] for i in range(args.requests)]
        lock, failures = threading.Lock(), []

        def client():
            s = requests.Session()
            s.auth = (info.user, info.password)
            while True:
                with lock:
                    if not work:
                        return
                    name = work.pop()
                task = {"id": 1, "data": {"image": image_url(name)}}
                resp = s.post(info.url + "/predict", json={"tasks": [task], "label_config": LABEL_CONFIG}, timeout=300)
                if resp.status_code != 200 or "result" not in resp.json()["results"][0]:
                    failures.append(resp.text[:200])

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rps = args.requests / (time.perf_counter() - t0)
    finally:
        backend.stop(ws)

    med_bare, med_backend = statistics.median(t_bare), statistics.median(t_backend)
    p95 = lambda xs: float(np.percentile(xs, 95))  # noqa: E731
    print(f"\nMachine: {machine()}, load average {os.getloadavg()[0]:.1f}, {datetime.date.today()}")
    print(f"Images: {args.n} synthetic {args.size}x{args.size} PNGs, {args.warmup} warm-up; "
          f"detector {params['detector']['model']} at imgsz {params['detector']['imgsz']}, "
          f"classifier {params['classifier']['arch']}, flip {params['predictor'].get('flip')}\n")
    print("| path | median ms | p95 ms | vs bare |")
    print("|---|---:|---:|---:|")
    print(f"| bare: load_image + Predictor.predict_arrays(uncertainty=False), 1 image | {med_bare * 1000:.0f} | "
          f"{p95(t_bare) * 1000:.0f} | 1.00 |")
    print(f"| backend POST /predict, 1 task (HTTP) | {med_backend * 1000:.0f} | {p95(t_backend) * 1000:.0f} | "
          f"{med_backend / med_bare:.2f} |")
    print(f"\noverhead: {(med_backend / med_bare - 1) * 100:+.1f} % (target < 15 %)")
    print("\n| load | requests/s | vs bare sequential images/s |")
    print("|---|---:|---:|")
    print(f"| {args.clients} concurrent clients, {args.requests} requests | {rps:.2f} | {rps * med_bare:.2f} |")
    if failures:
        print(f"\n{len(failures)} failed requests, e.g. {failures[0]}")
        sys.exit(1)


def write_films(ws: Workspace, n: int, size: int, first_seed: int, prefix: str) -> list[str]:
    """n synthetic films with an opacity as PNGs in the workspace's images folder; their paths there."""
    names = []
    for i in range(n):
        img = np.clip(generate_case(first_seed + i, size, positive=True, difficulty=0.3).image, 0, 1) * 255
        name = f"images/{prefix}{i:03d}.png"
        cv2.imwrite(str(ws.data_dir / name), img.round().astype(np.uint8))
        names.append(name)
    return names


if __name__ == "__main__":
    main()
