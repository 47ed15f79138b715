"""The finding detector: an ultralytics YOLO model trained on the manifest's boxes.

    train_detector(records, data_dir, out_dir, params)  -> best weights (.pt)
    trained_weights(out_dir)                            -> the weights train_detector(.., out_dir, ..) left
    load_detector(weights, schema, inference_format)    -> model (.pt, or its ONNX export)
    export_detector_onnx(weights, imgsz)                -> detector.onnx beside the weights
    predict_boxes(model, image_paths, imgsz)            -> boxes per image, in stored-image pixels
    evaluate_detector(model, records, data_dir, imgsz)  -> RSNA score, mAP@0.5, mAP@0.4, AP per class
    build_detector(params)                              -> the same architecture, untrained (a baseline)
    import_ultralytics()                                -> the ultralytics module, offline (see below)

Classes are `schema.findings` in label-config order, so class k means the same finding
in every dataset and every model version. `params` is the `detector:` section of
params.yaml (`load_params()["detector"]`).

Offline, and nothing written outside the folders we name:

- `cxrkit.core.offline.apply()` sets YOLO_OFFLINE before ultralytics is imported, so its
  `ONLINE` is False: no hub, no telemetry (`Events` needs ONLINE), no pip update check.
- ultralytics keeps settings.json (and fonts) in YOLO_CONFIG_DIR; unless the caller set
  it, we point it at a per-user folder in the temp dir (not ~/.config), and there
  switch off `sync` and every experiment-tracker integration, and move weights_dir,
  runs_dir and datasets_dir inside it, so nothing lands in the current directory.
- Fonts: `check_det_dataset` calls `check_font("Arial.ttf")` even with `plots=False`,
  and that does an HTTP HEAD (then a download) unless the font is in the config dir.
  We put matplotlib's bundled DejaVu Sans there under that name (plots are off anyway).
- AMP: ultralytics' `check_amp` (fp16 only) loads yolo26n.pt and downloads it when
  missing. We never ask for fp16: `amp: auto` is bf16 on a CUDA GPU with bf16 (ultralytics
  skips check_amp for bf16) and fp32 elsewhere; CPU is always fp32.
- Models come from a bundled yaml (built from scratch) or a local .pt; a missing file
  or a URL is an error, never a download.
- Training output goes to `out_dir/train` (project/name), never ./runs.
- pip: ultralytics' `check_requirements` pip-installs missing packages (ONNX export asks for
  onnx, onnxslim, onnxruntime). YOLO_AUTOINSTALL=false and `checks.AUTOINSTALL = False`
  turn that off: a missing package is a warning, then an ImportError.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml

from cxrkit.core import offline
from cxrkit.core.atomic import write_atomic
from cxrkit.core.labels import LabelSchema, load_schema
from cxrkit.core.manifest import Box, Record
from cxrkit.evaluation.metrics import (
    OPERATING_GRID,
    mean_average_precision,
    precision_recall_curve,
    rsna_operating_point,
    rsna_score,
    scored_at_least,
)

log = logging.getLogger(__name__)

RUN_NAME = "train"
DATASET_DIR = "dataset"
# ultralytics train arguments taken from params as they are (same names, same meaning).
TRAIN_KEYS = (
    "epochs", "patience", "batch", "nbs", "imgsz", "optimizer", "lr0", "lrf", "momentum", "weight_decay",
    "warmup_epochs", "cos_lr", "seed", "deterministic", "cache", "val",
    "fliplr", "flipud", "degrees", "translate", "scale", "shear", "perspective",
    "hsv_h", "hsv_s", "hsv_v", "mosaic", "close_mosaic", "mixup",
)
# Experiment trackers ultralytics would hook in when their package is installed.
_INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names check_font looks for


class DetectorError(ValueError):
    """A detector input (params, weights, records) that cannot work; the message says why."""


# --- ultralytics, offline ---------------------------------------------------


def default_config_dir() -> Path:
    """Where ultralytics keeps its settings when YOLO_CONFIG_DIR is unset: a per-user temp folder."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"cxrkit-ultralytics-{uid}"


def import_ultralytics():
    """Import ultralytics with no network and no files outside its own config folder.

    Call it instead of `import ultralytics` anywhere in the workbench (ML backend, flows,
    tests): the first import fixes the config folder for the whole process.
    """
    offline.apply()
    if "ultralytics" not in sys.modules:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(default_config_dir()))
        os.environ["YOLO_AUTOINSTALL"] = "false"  # check_requirements would pip-install what is missing
    omp_threads = os.environ.get("OMP_NUM_THREADS")
    # torch first: it reads OMP_NUM_THREADS as it loads, and importing ultralytics sets it to 1
    # when unset, which would leave torch on one thread in a process that imports ultralytics first.
    import torch  # noqa: F401
    import ultralytics
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR, checks

    if omp_threads is None:
        # ...and that "1" would reach every process started from here (gunicorn, dvc repro's stages).
        os.environ.pop("OMP_NUM_THREADS", None)

    checks.AUTOINSTALL = False  # also when someone imported ultralytics before us
    # Its log lines ("Loading detector.onnx for ONNX Runtime inference...") go to stderr: stdout
    # carries what our commands print, e.g. `python -m flows.retrain`'s JSON result.
    for handler in logging.getLogger("ultralytics").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
            handler.setStream(sys.stderr)

    if not getattr(import_ultralytics, "configured", False):
        config_dir = Path(USER_CONFIG_DIR)
        wanted = os.environ.get("YOLO_CONFIG_DIR")
        if wanted and config_dir.resolve().is_relative_to(Path(wanted).expanduser().resolve()):
            changes = {key: False for key in (("sync",) + _INTEGRATIONS) if key in SETTINGS}
            changes |= {
                "weights_dir": str(config_dir / "weights"),
                "runs_dir": str(config_dir / "runs"),
                "datasets_dir": str(config_dir / "datasets"),
            }
            changes = {k: v for k, v in changes.items() if SETTINGS.get(k) != v}
            if changes:
                SETTINGS.update(changes)
            _install_fonts(config_dir)
        else:
            # Someone imported ultralytics before us with another config dir (~/.config): leave the
            # user's file alone. YOLO_OFFLINE still stops telemetry and the hub, but check_font may
            # then try an HTTP HEAD for Arial.ttf (it fails quickly offline; plots are off anyway).
            log.warning("ultralytics was imported before cxrkit set YOLO_CONFIG_DIR; its settings stay in %s", config_dir)
        import_ultralytics.configured = True
    return ultralytics


def _install_fonts(config_dir: Path) -> None:
    from matplotlib import font_manager

    source = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    for name in _FONTS:
        target = config_dir / name
        if not target.exists() and source.is_file():
            write_atomic(target, source.read_bytes())


def _device():
    import torch

    return 0 if torch.cuda.is_available() else "cpu"


def _amp(setting, device) -> bool | str:
    value = str(setting).lower()
    if value in {"false", "fp32", "none", "off"}:
        return False
    if value not in {"auto", "bf16"}:
        raise DetectorError(
            f"detector.amp={setting!r}: use auto, bf16 or fp32. fp16 is refused because ultralytics' "
            "fp16 check (check_amp) downloads yolo26n.pt"
        )
    if device == "cpu":
        return False
    import torch

    if torch.cuda.is_bf16_supported():
        return "bf16"  # ultralytics skips check_amp for bf16
    if value == "bf16":
        raise DetectorError("detector.amp=bf16 but this GPU has no bf16; use auto or fp32")
    return False


# detector.batch: auto on a CPU. The cores, not memory, bound the batch there; 16 is ultralytics'
# default and what the quality benchmark ran.
CPU_AUTO_BATCH = 16


def _batch(setting, device) -> int:
    """detector.batch as ultralytics takes it. auto: on a GPU -1, ultralytics' AutoBatch (it profiles
    the model at imgsz and takes the largest batch that fills about 60 % of the GPU's memory); on a
    CPU CPU_AUTO_BATCH."""
    if str(setting).lower() == "auto":
        return CPU_AUTO_BATCH if device == "cpu" else -1
    try:
        batch = int(setting)
    except (TypeError, ValueError):
        batch = 0
    if batch < 1:
        raise DetectorError(f"detector.batch={setting!r}: use a whole number of images (1 or more) or auto")
    return batch


def _workers(setting, device) -> int:
    if str(setting).lower() == "auto":
        return 0 if device == "cpu" else min(4, os.cpu_count() or 1)
    return int(setting)


def _need(params: dict, key: str):
    if key not in params:
        raise DetectorError(f"params lack detector.{key} (see params.yaml)")
    return params[key]


def _local_file(value: str | os.PathLike, what: str) -> Path:
    text = str(value)
    if "://" in text:
        raise DetectorError(f"{what} {text!r} is a URL: the workbench downloads nothing; give a local file")
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {path} not found. Give a local .pt file, or set detector.weights: null to train "
            "from scratch; nothing is downloaded"
        )
    return path.resolve()


def _yolo_source(params: dict) -> tuple[str, bool]:
    """What to hand to YOLO(): a local .pt (pretrained) or an architecture yaml (from scratch)."""
    weights = params.get("weights")
    if weights:
        return str(_local_file(weights, "detector weights")), True
    model = str(_need(params, "model"))
    if model.lower().endswith((".yaml", ".yml")):
        if "://" in model:
            raise DetectorError(f"detector.model {model!r} is a URL: give a bundled name (yolo11n.yaml) or a local yaml")
        return model, False
    # A .pt named as the model is weights too: local only.
    return str(_local_file(model, "detector model")), True


# --- records -> YOLO dataset ------------------------------------------------


def has_complete_boxes(record: Record) -> bool:
    """True when the record's box list is ground truth and complete (no box = nothing there).

    Importers say so with metadata["has_boxes"]. The synthetic importer writes no such flag:
    the generator's truth lists every opacity it drew, so a labeled synthetic record is complete.
    """
    if not record.labeled:
        return False
    flag = record.metadata.get("has_boxes")
    if flag is None:
        return record.source == "synthetic"
    return bool(flag)


def write_yolo_dataset(
    train: Sequence[Record], val: Sequence[Record], data_dir: Path, out_dir: Path, schema: LabelSchema
) -> Path:
    """An ultralytics dataset of `train` and `val` under `out_dir`; returns its data.yaml.

    Uses the Label Studio export's writer (`to_yolo`), so a model trained from the manifest
    and one trained from an export see the same files. Without val images, validation
    runs on the training images (it then only picks the best epoch).
    """
    from cxrkit.labelstudio.export import LabeledImage, to_yolo

    data_dir = Path(data_dir)
    items, split_of = [], {}
    for split, records in (("train", train), ("val", val)):
        for r in records:
            if r.path != f"images/{r.image_id}.png":
                raise DetectorError(f"record {r.image_id}: image at {r.path!r}, expected images/{r.image_id}.png")
            if r.image_id in split_of:
                raise DetectorError(f"image {r.image_id} is both in the training and the validation records")
            split_of[r.image_id] = split
            items.append(LabeledImage(r.image_id, list(r.boxes), r.impression, None, "manifest", ""))
    data_yaml = to_yolo(items, data_dir / "images", out_dir, schema, split_of)
    if not val:
        log.warning("no validation records: validating on the %d training images", len(train))
        data = yaml.safe_load(data_yaml.read_text())
        data["val"] = data["train"]
        data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return data_yaml


# --- training -----------------------------------------------------------------


def train_detector(
    records: list[Record],
    data_dir: Path,
    out_dir: Path,
    params: dict,
    val_records: list[Record] | None = None,
    schema: LabelSchema | None = None,
    callbacks: dict | None = None,
) -> Path:
    """Train a detector on `records` with complete boxes; returns the best weights' path.

    data_dir: the workspace's data folder (record paths are relative to it).
    out_dir: gets `dataset/` (the YOLO set) and `train/` (ultralytics' run: weights/best.pt,
        last.pt, results.csv, args.yaml); an earlier run there is replaced.
    val_records: validation images; default: the records whose split is "val" (the rest train).
    Records without complete boxes (see `has_complete_boxes`) are left out.
    callbacks: extra ultralytics callbacks, {event: fn(trainer)} (e.g. "on_train_epoch_end").
    Training uses as many torch threads as the caller had (ultralytics would take one core away).
    """
    schema = schema or load_schema()
    out_dir = Path(out_dir).resolve()
    usable = [r for r in records if has_complete_boxes(r)]
    if val_records is None:
        train = [r for r in usable if r.split != "val"]
        val = [r for r in usable if r.split == "val"]
    else:
        train, val = usable, [r for r in val_records if has_complete_boxes(r)]
    if not train:
        raise DetectorError(f"none of the {len(records)} records is labeled with complete boxes: nothing to train on")
    log.info("detector: %d training and %d validation images (%d records without complete boxes left out)",
             len(train), len(val), len(records) - len(usable))

    source, pretrained = _yolo_source(params)
    device = _device()
    train_args = {key: _need(params, key) for key in TRAIN_KEYS}
    train_args |= {
        "device": device,
        "batch": _batch(_need(params, "batch"), device),
        "amp": _amp(_need(params, "amp"), device),
        "workers": _workers(_need(params, "workers"), device),
        "pretrained": pretrained,
        "plots": False,  # plots need fonts (downloaded) and matplotlib time
        "project": str(out_dir),
        "name": RUN_NAME,
        "exist_ok": True,
        "verbose": False,
    }

    ultralytics = import_ultralytics()
    data_yaml = write_yolo_dataset(train, val, Path(data_dir), out_dir / DATASET_DIR, schema)
    run_dir = out_dir / RUN_NAME
    shutil.rmtree(run_dir, ignore_errors=True)  # no stale best.pt from an earlier run

    import torch

    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()

    def keep_threads(_trainer) -> None:
        # The trainer's select_device sets torch to cpu_count - 1 threads for the run (1 of 2
        # cores here): put the count back as training and each epoch start.
        torch.set_num_threads(threads)

    try:
        with torch_threads_kept():
            model = ultralytics.YOLO(source, task="detect")
            for event in ("on_pretrain_routine_start", "on_train_epoch_start"):
                model.add_callback(event, keep_threads)
            for event, callback in (callbacks or {}).items():
                model.add_callback(event, callback)
            model.train(data=str(data_yaml), **train_args)
    finally:
        # ultralytics switches deterministic algorithms on for the whole process; put it back.
        torch.use_deterministic_algorithms(deterministic_before)
    return trained_weights(out_dir)


def trained_weights(out_dir: Path) -> Path:
    """The weights train_detector(out_dir=...) left: its run's best.pt, else last.pt."""
    weights = Path(out_dir) / RUN_NAME / "weights"
    best = weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"
    if not best.is_file():
        raise RuntimeError(f"training finished without weights in {weights}")
    return best


# --- inference ------------------------------------------------------------------


def load_detector(weights: Path, schema: LabelSchema | None = None, inference_format: str = "pt",
                  imgsz: int | None = None):
    """A trained detector from a local .pt; its classes must be the label config's findings.

    inference_format (params detector.inference_format): "pt" runs the PyTorch weights;
    "onnx" runs the ONNX export beside them (`onnx_path(weights)`, ONNX Runtime) and fails
    when there is none; "auto" runs whichever format BENCHMARKS.md measured faster on the CPU
    (`MEASURED_FASTER`) when that file exists, else the .pt; on a GPU, auto runs the .pt. An
    ONNX model has the input size it was exported at: when `imgsz` is given and differs, "auto"
    falls back to the .pt and "onnx" is an error.
    """
    schema = schema or load_schema()
    path = _local_file(weights, "detector weights")
    fmt = resolve_inference_format(path, inference_format, imgsz)
    if fmt == "onnx":
        path = onnx_path(path)
    # For an ONNX file, reading `names` sets up ultralytics' predictor, which runs select_device.
    with torch_threads_kept():
        model = import_ultralytics().YOLO(str(path), task="detect")
        # Read once: for an ONNX file each read of `names` before the first prediction sets up a
        # throwaway predictor, i.e. a new ONNX Runtime session (15 reads made loading take 1.2 s).
        by_index = model.names
        names = [by_index[k] for k in sorted(by_index)]
    if names != list(schema.findings):
        raise DetectorError(
            f"{path} predicts {names[:5]}{'...' if len(names) > 5 else ''}, not the label config's findings "
            f"{list(schema.findings)[:5]}...: it was trained with another vocabulary"
        )
    if fmt == "onnx":
        _stop_spinning(model, path)
    return model


def _stop_spinning(model, path: Path) -> None:
    """Have ultralytics' ONNX Runtime session keep its threads asleep between runs.

    ONNX Runtime's intra-op threads spin after each run by default, waiting for the next; on a
    CPU that takes the cores from torch, which runs the subtype classifier right after the
    detector. Measured on 2 cores (yolo11n at 256 px, then resnet18 at 224 px, alternating): 79.7
    ms a pair with spinning, 40.9 ms without (the detector alone: 8.2 against 10.4 ms).
    ultralytics makes the session when a prediction sets up its predictor and has no setting for
    the session's options, so at that moment (its on_predict_start callback) the session is
    replaced by one of the same file on the same providers, without spinning and with torch's
    thread count."""

    def replace_session(predictor) -> None:
        backend = getattr(predictor.model, "backend", None)
        session = getattr(backend, "session", None)
        if session is None or getattr(backend, "cxr_no_spinning", False):
            return
        import onnxruntime
        import torch

        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # As many threads as torch has: one in a Dask worker (flows/scoring.py), not one per core
        # in every worker process.
        options.intra_op_num_threads = torch.get_num_threads()
        backend.session = onnxruntime.InferenceSession(str(path), options, providers=session.get_providers())
        backend.cxr_no_spinning = True

    model.add_callback("on_predict_start", replace_session)


# --- ONNX -----------------------------------------------------------------------

INFERENCE_FORMATS = ("auto", "pt", "onnx")
# The format `inference_format: auto` picks: the faster one on the CPU in benchmarks/bench_onnx.py
# (BENCHMARKS.md "Detector: PyTorch vs ONNX").
MEASURED_FASTER = "onnx"


def onnx_path(weights: Path) -> Path:
    """Where the ONNX export of `weights` lives: beside it, same stem (detector.pt -> detector.onnx),
    the name a registry version stores it under."""
    return Path(weights).with_suffix(".onnx")


def onnx_imgsz(path: Path) -> int | None:
    """The square input size an ONNX export was made for (ultralytics writes it into the metadata)."""
    import ast

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    size = ast.literal_eval(meta["imgsz"]) if "imgsz" in meta else None
    return int(size[0]) if isinstance(size, (list, tuple)) else size


def resolve_inference_format(weights: Path, inference_format: str, imgsz: int | None = None) -> str:
    """"pt" or "onnx": what `load_detector` runs for `weights` (rules in its docstring)."""
    fmt = str(inference_format).lower()
    if fmt not in INFERENCE_FORMATS:
        raise DetectorError(f"detector.inference_format={inference_format!r}: use one of {', '.join(INFERENCE_FORMATS)}")
    if fmt == "pt" or (fmt == "auto" and (MEASURED_FASTER == "pt" or _device() != "cpu")):
        return "pt"  # on a GPU the .pt runs there; the export runs on ONNX Runtime's CPU provider
    exported = onnx_path(weights)
    if not exported.is_file():
        if fmt == "onnx":
            raise DetectorError(f"detector.inference_format=onnx but {exported} does not exist: "
                                "export it first (export_detector_onnx)")
        return "pt"
    size = onnx_imgsz(exported)
    if imgsz is not None and size is not None and int(imgsz) != size:
        if fmt == "onnx":
            raise DetectorError(f"{exported} was exported for {size} px input, detector.imgsz is {imgsz}: export it again")
        log.warning("%s was exported for %d px, detector.imgsz is %d: running the .pt", exported, size, imgsz)
        return "pt"
    return "onnx"


def export_detector_onnx(weights: Path, imgsz: int) -> Path:
    """Export trained weights to ONNX (static `imgsz` x `imgsz` input, graph slimmed by onnxslim),
    written beside them (`onnx_path`); returns its path. Offline: onnx, onnxslim and onnxruntime
    are installed with the workbench, and ultralytics' pip auto-install is off
    (YOLO_AUTOINSTALL, see import_ultralytics), so a missing package is an error, not a download."""
    path = _local_file(weights, "detector weights")
    ultralytics = import_ultralytics()
    with torch_threads_kept():
        out = ultralytics.YOLO(str(path), task="detect").export(
            format="onnx", imgsz=int(imgsz), dynamic=False, simplify=True, half=False, device="cpu", verbose=False)
    out = Path(out)
    if out.resolve() != onnx_path(path):
        os.replace(out, onnx_path(path))
    return onnx_path(path)


def build_detector(params: dict, schema: LabelSchema | None = None):
    """The architecture of `params` with one class per finding and no training (seeded):
    what training starts from. A baseline, and a stand-in before the first model exists."""
    schema = schema or load_schema()
    ultralytics = import_ultralytics()
    import torch
    from ultralytics.nn.tasks import DetectionModel

    source, pretrained = _yolo_source(params)
    model = ultralytics.YOLO(source, task="detect")
    torch.manual_seed(int(params.get("seed", 0)))
    net = DetectionModel(model.model.yaml, nc=len(schema.findings), verbose=False)
    if pretrained:
        net.load(model.model)  # the weights whose shapes fit (not the class head when nc differs)
    net.names = dict(enumerate(schema.findings))
    net.args, net.task = model.model.args, "detect"
    model.model = net
    return model


def predict_boxes(
    model,
    image_paths: list[Path],
    imgsz: int,
    conf: float = 0.01,
    batch: int = 8,
    iou: float = 0.5,
    max_det: int = 100,
    schema: LabelSchema | None = None,
) -> list[list[Box]]:
    """Boxes for each image, in pixels of the image as stored (not of the network input),
    highest score first; `finding` = schema.findings[class], `score` = confidence."""
    schema = schema or load_schema()
    device = _device()
    out: list[list[Box]] = []
    with torch_threads_kept():
        for start in range(0, len(image_paths), batch):
            chunk = [str(p) for p in image_paths[start : start + batch]]
            for path in chunk:
                if not Path(path).is_file():
                    raise FileNotFoundError(f"{path} not found")
            results = model.predict(
                chunk, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, batch=batch, device=device,
                verbose=False, save=False,
            )
            out.extend(result_boxes(result, schema) for result in results)
    return out


@contextmanager
def torch_threads_kept():
    """Undo ultralytics' side effect on the process: setting up its predictor (select_device)
    sets torch's CPU threads to cpu_count - 1, i.e. 1 of 2 cores here, which halves the speed
    of everything that runs afterwards, the classifier included."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def result_boxes(result, schema: LabelSchema) -> list[Box]:
    """An ultralytics result -> Boxes in its original image's pixels (clipped to it; boxes left
    without area dropped), highest score first; `finding` = schema.findings[class]."""
    data = result.boxes
    xyxy = data.xyxy.cpu().numpy().astype(np.float64)
    scores = data.conf.cpu().numpy().astype(np.float64)
    classes = data.cls.cpu().numpy().astype(int)
    h, w = result.orig_shape
    boxes = []
    for k in np.argsort(-scores, kind="stable"):
        x0, y0 = max(0.0, xyxy[k, 0]), max(0.0, xyxy[k, 1])
        x1, y1 = min(float(w), xyxy[k, 2]), min(float(h), xyxy[k, 3])
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            continue
        boxes.append(Box(x=round(x0, 2), y=round(y0, 2), w=round(x1 - x0, 2), h=round(y1 - y0, 2),
                         finding=schema.findings[classes[k]], score=round(float(scores[k]), 5)))
    return boxes


def evaluate_detector(
    model,
    records: list[Record],
    data_dir: Path,
    imgsz: int,
    conf: float = 0.01,
    rsna_conf: float = 0.3,
    batch: int = 8,
    schema: LabelSchema | None = None,
    keep_images: bool = False,
) -> dict:
    """Score `model` on the records with complete boxes.

    rsna: the RSNA challenge score of the opacity class (schema.opacity), counting the boxes
        with score >= rsna_conf (every box counts there, so a threshold is part of the metric);
    map50 / map40: mean AP over the findings with ground truth, IoU 0.5 / 0.4 (VinBigData);
    ap50 / ap40: those findings' APs; pr50: those findings' PR curves at IoU 0.5 ({"scores",
        "precision", "recall": lists, "n_gt"}; cxrkit.evaluation.plots.plot_pr_curves draws them);
    operating_conf / rsna_operating: the box score threshold in OPERATING_GRID with the best
        RSNA score on these images, and that score (ties: the higher threshold, fewer boxes
        to delete). A young model's scores are low and rise with training, so a fixed
        threshold shows a radiologist no boxes at first and too many later; the predictor
        can show boxes from the serving version's operating_conf (predictor.conf: auto);
    n_images: images scored;
    images (keep_images): what the scores are made of, per image, in image_ids order:
        "image_ids" and "by_class" (finding -> (gt, boxes, scores)), which a paired comparison
        resamples (cxrkit.pipeline.compare); "rsna", the opacity's (gt, boxes >= rsna_conf,
        scores), the boxes the RSNA metric counted; and
        "records" and "boxes" (every detected Box, score >= conf), the records scored and what
        the detector found on each (cxrkit.models.preannotation.effort_conf measures from them).
    """
    schema = schema or load_schema()
    usable = [r for r in records if has_complete_boxes(r)]
    predictions = predict_boxes(model, [Path(data_dir) / r.path for r in usable], imgsz, conf=conf, batch=batch, schema=schema)

    def xywh(boxes: list[Box]) -> np.ndarray:
        return np.array([[b.x, b.y, b.w, b.h] for b in boxes], dtype=np.float64).reshape(-1, 4)

    def per_image(finding: str) -> list[tuple]:
        out = []
        for record, predicted in zip(usable, predictions):
            gt = [b for b in record.boxes if b.finding == finding]
            mine = [b for b in predicted if b.finding == finding]
            out.append((xywh(gt), xywh(mine), np.array([b.score for b in mine], dtype=np.float64)))
        return out

    by_class = {finding: per_image(finding) for finding in schema.findings}
    map50, ap50 = mean_average_precision(by_class, 0.5)
    map40, ap40 = mean_average_precision(by_class, 0.4)
    curves = {finding: precision_recall_curve(images, 0.5) for finding, images in by_class.items()}
    grid = [t for t in OPERATING_GRID if t >= conf]
    operating_conf, rsna_operating = rsna_operating_point(by_class[schema.opacity], grid)(np.arange(len(usable)))
    rsna_images = scored_at_least(by_class[schema.opacity], rsna_conf)
    kept = {"images": {"image_ids": [r.image_id for r in usable], "rsna": rsna_images, "by_class": by_class,
                       "records": usable, "boxes": predictions}}
    return (kept if keep_images else {}) | {
        "rsna": rsna_score(rsna_images),
        "rsna_conf": rsna_conf,
        "operating_conf": operating_conf,
        "rsna_operating": rsna_operating,
        "map50": map50,
        "map40": map40,
        "ap50": {k: v for k, v in ap50.items() if not np.isnan(v)},
        "ap40": {k: v for k, v in ap40.items() if not np.isnan(v)},
        "pr50": {k: _thinned(c) for k, c in curves.items() if c is not None},
        "n_images": len(usable),
    }


def _thinned(curve: dict, points: int = 200) -> dict:
    """A PR curve as JSON-able lists of at most `points` points (evenly spaced along the ranking,
    the last kept), so it fits in a version's metrics."""
    n = len(curve["scores"])
    keep = np.unique(np.linspace(0, n - 1, min(n, points)).round().astype(int)) if n else np.zeros(0, dtype=int)
    return {key: [round(float(v), 5) for v in curve[key][keep]] for key in ("scores", "precision", "recall")} | {
        "n_gt": int(curve["n_gt"])}
