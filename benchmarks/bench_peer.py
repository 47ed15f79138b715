"""Our ML backend beside its peer, the label-studio-ml-backend YOLO example, in one run (issue 18).

    python benchmarks/bench_peer.py --peer-source /tmp/label-studio-ml-backend \\
        [--n 40] [--warmup 3] [--size 1024] [--peer-site DIR ...] [--stub-torchmetrics]

Nothing is downloaded at run time. The peer must be a checkout of HumanSignal's
label-studio-ml-backend repository, made beforehand, e.g. from a local mirror (the bare repository
the search tool's `fetch github:HumanSignal/label-studio-ml-backend` leaves, which lacks some large
blobs elsewhere in the tree, so only the package and the example are checked out):

    M=/work/.mirror/HumanSignal+label-studio-ml-backend/repo P=/tmp/label-studio-ml-backend
    git clone --quiet --no-checkout "$M" "$P"
    git -C "$P" checkout HEAD -- ':(glob)label_studio_ml/*.py' label_studio_ml/examples/yolo

(anywhere with network, `git clone https://github.com/HumanSignal/label-studio-ml-backend`).
Written against commit d02cedf35d0e5d21f2f437c120174c62f66bf57a; the commit measured is printed and recorded.
`--peer-source` is the checkout's root, or its label_studio_ml/examples/yolo folder inside one.

What the peer needs that our venv does not have (nothing is installed by this script):
- its own `label_studio_ml` (2.x: label_studio_ml.response, LabelStudioMLBase.label_interface);
  our venv's label-studio-ml 1.0.9 is too old, so the checkout's root goes on the peer's path
  ahead of it;
- `label_studio_sdk` (and its pyjwt, xmljson, ...): by default taken from Label Studio's own venv
  (.venv-labelstudio, label-studio-sdk 2.1.2 there), whose site-packages go at the END of the peer's
  sys.path, so torch, ultralytics, numpy and flask stay ours (the same as our backend's);
  `--peer-site DIR` names other folders (repeatable; replaces that default);
- `torchmetrics`, in neither venv: the example's model.py imports every control model, among
  them the video TimelineLabels one, whose utils/neural_nets.py imports torchmetrics at import
  time (it is only used when that control trains). Either install it beside, without touching
  torch: `python -m pip install --no-deps --target /tmp/peer-site torchmetrics lightning-utilities`
  and pass `--peer-site /tmp/peer-site --peer-site .venv-labelstudio/lib/python3.11/site-packages`,
  or pass `--stub-torchmetrics`: a stand-in module whose classes raise when built, never on this
  path (RectangleLabels); the output says when the stand-in was used.
A preflight lists what is still missing before anything is built.

Measured, image by image, alternating which server goes first so machine load hits both alike:
median and p95 of POST /predict with one Label Studio task (local-files URL) per request, over
HTTP with basic auth, after `--warmup` requests each, on `--n` synthetic chest X-rays of `--size`
px written as PNGs into a fresh workspace (each image is new to both: our backend's result cache
never hits):
- ours: the backend started as `cxr backend start` starts it (cxrkit.services.backend: gunicorn,
  ml_backend, $CXR_BACKEND_WORKERS/THREADS, 1 and 4 by default): what it shows, computed on its
  inference thread: one detector pass (ONNX Runtime, as a retrained version is served on a CPU;
  the mirrored pass only with predictor.tta), the subtype classifier on each shown opacity box
  (and on the whole image only with predictor.impression rule);
- peer: label_studio_ml/examples/yolo started as its start.sh starts it (`gunicorn _wsgi:app`,
  `--timeout 0`), bound to 127.0.0.1, with the same workers and threads as ours: one detector pass.
Ratio = ours median / peer median; target <= 1.5 (issue 18 measured 46.5 / 34.8 ms = 1.34).

Models: the architectures of params.yaml, untrained (latency does not depend on the weights), saved
as a registry version and promoted by bench_backend.untrained_version (as the retrain registers
one: detector.pt, its ONNX export, classifier.pt), with the peer's score floor (0.25,
ultralytics' default, which the peer cannot change) as ours: both show the boxes the same
detector finds above it (with untrained weights, few or none), ours with their subtypes. The
cost of classifying many boxes is bench_backend.py's. Both servers run the same detector,
the registered files, at the same input size:
- our backend runs the registered detector.onnx (detector.inference_format auto on a CPU) at
  params' detector.imgsz, the size it was exported at;
- the peer calls `model.predict(path)` with no imgsz, so ultralytics uses the size stored in the
  checkpoint's train_args (640 when there is none). A detector trained here carries its training
  imgsz there (ultralytics' trainer saves its args), so the untrained stand-in is saved with it too.
  The input sizes the peer logged ("image 1/1 ...: 256x256 ...") are read back and printed.
- The peer's label config is its own: one RectangleLabels with our findings as labels,
  model_path = the registered detector.pt (ALLOW_CUSTOM_MODEL_PATH; it loads .pt files) and model_score_threshold 0.
  Ours gets label_config.xml, as Label Studio sends it.
- The peer's control modules preload their stock COCO weights (yolov8m.pt, yolov8n-*.pt) from
  MODEL_ROOT at import; offline they are missing and ultralytics would try to download them, so
  MODEL_ROOT holds our detector.pt under those names (symlinks): loaded once at start, never used.
- Images: both get the same local-files URL. Ours resolves it in the workspace; the peer's SDK
  (get_local_path) reads it from disk with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT = the workspace's
  data folder. The peer gets no Label Studio URL or key: its per-request SDK client then fails
  at once (logged as a warning), which is what it does offline.
Not the same work, by design of each: ours classifies each shown box's subtype and sets the
impression; the peer runs one detector pass. The boxes/response column shows what each returned.

Prints a Markdown table with the machine, the date, the load average, the peer's commit and the
command, and writes the rows (and every time) to benchmarks/results/peer/peer.json (`--out`).
Exits 1 when the ratio is over `--max-ratio`, 2 when the peer cannot be found or started.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cxrkit.core import offline  # noqa: E402

offline.apply()

import numpy as np  # noqa: E402
import requests  # noqa: E402
from bench_backend import (  # noqa: E402
    LABEL_CONFIG,
    machine,
    untrained_version,
    write_films,
)

from cxrkit.core.checkout import CODE_ROOT  # noqa: E402
from cxrkit.core.labels import load_schema  # noqa: E402
from cxrkit.core.params import load_params  # noqa: E402
from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.labelstudio.tasks import image_url  # noqa: E402
from cxrkit.services import backend, process  # noqa: E402
from cxrkit.services.process import free_port  # noqa: E402

YOLO_EXAMPLE = Path("label_studio_ml") / "examples" / "yolo"
# The stock weights the example's control modules preload at import (model_path class attributes);
# read from the checkout too, in case a newer one names others.
STOCK_WEIGHTS = ("yolov8m.pt", "yolov8n.pt", "yolov8n-cls.pt", "yolov8n-seg.pt", "yolov8n-pose.pt", "yolov8n-obb.pt")
# Top-level modules the example and its label_studio_ml import; checked without importing them.
PEER_MODULES = ("flask", "gunicorn", "ultralytics", "pydantic", "semver", "colorama", "joblib", "yaml",
                "label_studio_sdk", "jwt", "xmljson", "torchmetrics")
PEER_START_TIMEOUT_S = 300.0  # imports torch and ultralytics, then loads the stock-named weights
AUTH = ("bench", "bench-password")
PEER_CONF = 0.25  # ultralytics' default confidence, the peer's floor
OUT = ROOT / "benchmarks" / "results" / "peer" / "peer.json"


def find_peer(source: Path) -> tuple[Path, Path | None]:
    """(the YOLO example's folder, the checkout root holding its label_studio_ml 2.x, or None)."""
    source = source.resolve()
    example = source / YOLO_EXAMPLE if (source / YOLO_EXAMPLE / "_wsgi.py").is_file() else source
    if not (example / "_wsgi.py").is_file() or not (example / "model.py").is_file():
        raise FileNotFoundError(f"no label-studio-ml-backend YOLO example at {source} (want {YOLO_EXAMPLE}/_wsgi.py "
                                "under a checkout of the repository; see the module docstring)")
    checkout = next((p for p in example.parents if (p / "label_studio_ml" / "response.py").is_file()), None)
    return example, checkout


def git_commit(folder: Path | None) -> str | None:
    if folder is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def labelstudio_site() -> list[Path]:
    """Label Studio's venv's site-packages (label_studio_sdk), when it exists for this Python:
    its compiled modules (ujson, ...) are built for one Python version."""
    site = (CODE_ROOT / ".venv-labelstudio" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
            / "site-packages")
    return [site] if site.is_dir() else []


def stock_weight_names(example: Path) -> list[str]:
    names = set(STOCK_WEIGHTS)
    for py in (example / "control_models").glob("*.py"):
        names.update(re.findall(r'model_path\s*=\s*\(?\s*"([^"/]+\.pt)"', py.read_text(errors="replace")))
    return sorted(names)


def write_torchmetrics_stub(folder: Path) -> Path:
    """A stand-in torchmetrics package: the names the example imports, which raise when built."""
    pkg = folder / "torchmetrics"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Stand-in written by benchmarks/bench_peer.py --stub-torchmetrics."""\n')
    (pkg / "classification.py").write_text(
        '"""Stand-in: the YOLO example imports these for its video TimelineLabels training only."""\n\n\n'
        "class _StandIn:\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        raise ImportError('torchmetrics is a stand-in (benchmarks/bench_peer.py --stub-torchmetrics)')\n\n\n"
        "class MultilabelPrecision(_StandIn): pass\n"
        "class MultilabelRecall(_StandIn): pass\n"
        "class MultilabelF1Score(_StandIn): pass\n"
        "class MultilabelAccuracy(_StandIn): pass\n")
    return folder


def peer_label_config(findings: tuple[str, ...], detector: Path) -> str:
    """One RectangleLabels over the image: our findings (the detector's class names, so the
    example's label map is the identity), our detector, every box it returns kept."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in findings)
    return ('<View>\n  <Image name="image" value="$image"/>\n'
            f'  <RectangleLabels name="finding" toName="image" model_path={quoteattr(str(detector))} '
            f'model_score_threshold="0">\n{labels}\n  </RectangleLabels>\n</View>\n')


def peer_model_root(folder: Path, detector: Path, names: list[str]) -> Path:
    """MODEL_ROOT with our detector under each stock name the example preloads (see docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(detector)
    return folder


def peer_prelude(example: Path, checkout: Path | None, site: list[Path]) -> str:
    """Python lines that set up the peer's sys.path: the example and its label_studio_ml first
    (as its Dockerfile's PYTHONPATH=/app and its requirements' label-studio-ml do), the extra
    sites last, so that every package both have (torch, ultralytics, numpy, flask) is ours."""
    first = [str(example)] + ([str(checkout)] if checkout else [])
    return f"import sys\nsys.path[:0] = {first!r}\nsys.path += {[str(p) for p in site]!r}\n"


def peer_missing(prelude: str, checkout: Path | None) -> list[str]:
    """What the peer's interpreter cannot find, checked without importing the heavy packages."""
    own = str(checkout) + os.sep if checkout else "//no checkout"  # its label_studio_ml must be the checkout's
    check = (
        "import importlib.util, json\n"
        f"missing = [m for m in {PEER_MODULES!r} if importlib.util.find_spec(m) is None]\n"
        "try:\n"
        "    spec = importlib.util.find_spec('label_studio_ml.response')\n"
        "except ImportError:\n"
        "    spec = None\n"
        f"if spec is None or not str(spec.origin).startswith({own!r}):\n"
        "    missing.append('label_studio_ml.response (the checkout\\'s label_studio_ml 2.x)')\n"
        "print(json.dumps(missing))\n")
    out = subprocess.run([sys.executable, "-c", prelude + check], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return [f"(preflight failed: {out.stderr.strip()[-500:]})"]
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_peer(example: Path, prelude: str, folder: Path, model_root: Path, data_dir: Path, port: int) -> str:
    """Start the example as its start.sh does (gunicorn _wsgi:app), on 127.0.0.1; its URL once /health answers."""
    workers = os.environ.get("CXR_BACKEND_WORKERS", "1")  # the same as ours (ml_backend/gunicorn.conf.py)
    threads = os.environ.get("CXR_BACKEND_THREADS", "4")
    argv = ["gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", workers, "--threads", threads,
            "--timeout", "0",
            # gunicorn 25+ would open a control socket at a fixed path per user, as for our backend
            "--no-control-socket", "_wsgi:app"]
    boot = prelude + f"sys.argv = {argv!r}\nfrom gunicorn.app.wsgiapp import run\nrun()\n"
    env = dict(os.environ)
    # No Label Studio to reach: without a key the example's SDK client is not built, and no
    # download is tried for a local-files URL the document root resolves.
    for key in ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN",
                "PYTHONPATH"):
        env.pop(key, None)
    env.update({
        "MODEL_ROOT": str(model_root),  # control_models/base.py: where model_path names are looked up
        "MODEL_DIR": str(folder),  # label_studio_ml: its sqlite cache of label configs and versions
        "ALLOW_CUSTOM_MODEL_PATH": "true",  # model_path from the label config (the example's default)
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data_dir),  # /data/local-files/?d= read from disk
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],  # as ours: Label Studio sends a login
        "PYTHONUNBUFFERED": "1",  # its Dockerfile's
    })
    url = f"http://127.0.0.1:{port}"
    # cwd: the example writes ./cache_dir (joblib) where it runs; not in our repository.
    process.launch([sys.executable, "-c", boot], env=env, cwd=folder, log=folder / "peer.log",
                   pid_file=folder / "peer.json", address=("127.0.0.1", port, url),
                   ready=lambda: _peer_health(url), timeout=PEER_START_TIMEOUT_S, what="the peer YOLO backend")
    return url


def _peer_health(url: str) -> dict | None:
    try:
        resp = requests.get(url + "/health", auth=AUTH, timeout=5)
        body = resp.json() if resp.status_code == 200 else {}
    except (requests.RequestException, ValueError):
        return None
    return body if body.get("status") == "UP" else None


def peer_input_sizes(log: Path, offset: int) -> list[str]:
    """The network input sizes in the peer's ultralytics lines ("image 1/1 /x.png: 256x256 ...") since `offset`."""
    try:
        with open(log, errors="replace") as fh:
            fh.seek(offset)
            text = fh.read()
    except OSError:
        return []
    return sorted({f"{h}x{w}" for h, w in re.findall(r"image \d+/\d+ \S+: (\d+)x(\d+) ", text)})


def post_predict(session: requests.Session, url: str, payload: dict) -> tuple[float, dict]:
    """(seconds, response body) of one POST /predict; the request and the body read are timed."""
    t0 = time.perf_counter()
    resp = session.post(url + "/predict", json=payload, timeout=300)
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        raise RuntimeError(f"POST {url}/predict: {resp.status_code} {resp.text[:300]}")
    return elapsed, resp.json()


def rectangles(prediction: dict) -> int:
    return sum(1 for r in prediction.get("result", []) if r.get("type") == "rectanglelabels")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-source", type=Path, required=True,
                    help="a checkout of HumanSignal/label-studio-ml-backend (or its examples/yolo folder in one)")
    ap.add_argument("--peer-site", type=Path, action="append", default=None,
                    help="a folder appended to the peer's sys.path (repeatable); "
                         "default: .venv-labelstudio's site-packages")
    ap.add_argument("--stub-torchmetrics", action="store_true",
                    help="give the peer a stand-in torchmetrics (imported, never used on this path)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--max-ratio", type=float, default=1.5, help="target: ours median / peer median")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    try:
        example, checkout = find_peer(args.peer_source)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    commit = git_commit(checkout or example)
    root = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    peer_dir = root / "peer"
    peer_dir.mkdir()
    site = list(args.peer_site) if args.peer_site else labelstudio_site()
    site = [p.resolve() for p in site]
    if args.stub_torchmetrics:
        site.append(write_torchmetrics_stub(root / "stubs"))  # last: a real torchmetrics wins
    prelude = peer_prelude(example, checkout, site)
    missing = peer_missing(prelude, checkout)
    if missing:
        print(f"the peer cannot start, missing: {', '.join(missing)}\n"
              f"its path: {example}, {checkout}, then {[str(p) for p in site]}\n"
              "label_studio_sdk, jwt, xmljson: Label Studio's venv (.venv-labelstudio) or --peer-site DIR; "
              "torchmetrics: `python -m pip install --no-deps --target DIR torchmetrics lightning-utilities` "
              "and --peer-site DIR, or --stub-torchmetrics; label_studio_ml.response: --peer-source must be "
              "(inside) a checkout of the repository (module docstring)", file=sys.stderr)
        return 2

    ws = Workspace(root / "ws").create()
    params = load_params()
    version = untrained_version(ws, params, root / "models-src", conf=PEER_CONF)
    detector = version.detector_weights  # the one file both servers load
    schema = load_schema()
    config = peer_label_config(schema.findings, detector)
    model_root = peer_model_root(peer_dir / "models", detector, stock_weight_names(example))
    names = write_films(ws, args.n + args.warmup, args.size, first_seed=30_000, prefix="peer")

    times: dict[str, list[float]] = {"ours": [], "peer": []}
    boxes: dict[str, list[int]] = {"ours": [], "peer": []}
    os.environ["CXR_BACKEND_USER"], os.environ["CXR_BACKEND_PASSWORD"] = AUTH
    peer_log, log_offset = peer_dir / "peer.log", 0
    try:
        info = backend.start(ws, port=free_port())
        try:
            peer_url = start_peer(example, prelude, peer_dir, model_root, ws.data_dir, free_port())
        except process.ServiceError as exc:
            print(f"the peer did not start: {exc}", file=sys.stderr)
            return 2
        ours, peer = requests.Session(), requests.Session()
        ours.auth = (info.user, info.password)
        peer.auth = AUTH

        def via_ours(task: dict) -> tuple[float, int]:
            elapsed, body = post_predict(ours, info.url, {"tasks": [task], "label_config": LABEL_CONFIG})
            assert "result" in body["results"][0], json.dumps(body)[:300]
            assert body["model_version"] == version.version_id, body.get("model_version")
            return elapsed, rectangles(body["results"][0])

        def via_peer(task: dict) -> tuple[float, int]:
            elapsed, body = post_predict(peer, peer_url, {"tasks": [task], "label_config": config})
            assert "result" in body["results"][0], json.dumps(body)[:300]
            return elapsed, rectangles(body["results"][0])

        for k, name in enumerate(names):
            if k == args.warmup:
                log_offset = peer_log.stat().st_size  # the timed requests' lines only
            task = {"id": k + 1, "data": {"image": image_url(name)}}
            order = [("ours", via_ours), ("peer", via_peer)]
            for key, fn in order if k % 2 == 0 else order[::-1]:
                elapsed, n_boxes = fn(task)
                if k >= args.warmup:
                    times[key].append(elapsed)
                    boxes[key].append(n_boxes)
    finally:
        process.stop(peer_dir / "peer.json", 30)
        backend.stop(ws)

    sizes = peer_input_sizes(peer_log, log_offset)
    imgsz = int(params["detector"]["imgsz"])
    p95 = lambda xs: float(np.percentile(xs, 95))  # noqa: E731
    med = {key: statistics.median(xs) for key, xs in times.items()}
    ratio, ratio_p95 = med["ours"] / med["peer"], p95(times["ours"]) / p95(times["peer"])
    command = shlex.join(["python", *sys.argv])
    load = os.getloadavg()[0]
    tta, rule = bool(params["predictor"].get("tta")), params["predictor"].get("impression") == "rule"
    work = {"ours": f"detector x{2 if tta else 1} (ONNX{', tta' if tta else ''}), subtype classifier on each shown box"
                    f"{' and the image' if rule else ''}, impression",
            "peer": "detector x1 (.pt)"}
    label = {"ours": "ours: ml_backend (`cxr backend start`)", "peer": "peer: label-studio-ml-backend examples/yolo"}

    print(f"\nMachine: {machine()}, load average {load:.1f}, {datetime.date.today()}")
    print(f"Images: {args.n} synthetic {args.size}x{args.size} PNGs, {args.warmup} warm-up each, one task per request, "
          f"alternating; detector {params['detector']['model']} (untrained, the same detector.pt for both) at imgsz "
          f"{imgsz}; classifier {params['classifier']['arch']}")
    print(f"Peer: HumanSignal/label-studio-ml-backend {commit or '(commit unknown)'}, {YOLO_EXAMPLE}; "
          f"input sizes it logged: {', '.join(sizes) or 'none found'}"
          f"{'; torchmetrics: stand-in' if args.stub_torchmetrics else ''}")
    if sizes and sizes != [f"{imgsz}x{imgsz}"]:
        print(f"WARNING: the peer ran at {', '.join(sizes)}, not {imgsz}x{imgsz}")
    print(f"Command: `{command}`; logs: {peer_log}, {backend.log_path(ws)}\n")
    print("| server | work per request | median ms | p95 ms | boxes/response |")
    print("|---|---|---:|---:|---:|")
    for key in ("ours", "peer"):
        print(f"| {label[key]} | {work[key]} | {med[key] * 1000:.1f} | {p95(times[key]) * 1000:.1f} | "
              f"{statistics.mean(boxes[key]):.1f} |")
    verdict = "ok" if ratio <= args.max_ratio else "OVER TARGET"
    print(f"\nratio ours/peer: {ratio:.2f} median, {ratio_p95:.2f} p95 (target <= {args.max_ratio}: {verdict})")

    rows = [{"server": key, "work": work[key], "median_ms": round(med[key] * 1000, 2),
             "p95_ms": round(p95(times[key]) * 1000, 2), "boxes_mean": statistics.mean(boxes[key]),
             "times_ms": [round(t * 1000, 2) for t in times[key]]} for key in ("ours", "peer")]
    result = {"date": str(datetime.date.today()), "machine": machine(), "load_average": round(load, 2),
              "command": command, "n": args.n, "warmup": args.warmup, "size": args.size, "imgsz": imgsz,
              "detector": params["detector"]["model"], "classifier": params["classifier"]["arch"], "tta": tta,
              "peer": {"repository": "HumanSignal/label-studio-ml-backend", "commit": commit,
                       "example": str(YOLO_EXAMPLE), "input_sizes": sizes, "site": [str(p) for p in site],
                       "torchmetrics_stand_in": args.stub_torchmetrics},
              "rows": rows, "ratio_median": round(ratio, 3), "ratio_p95": round(ratio_p95, 3),
              "max_ratio": args.max_ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"rows written to {args.out}")
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
