"""CxrModel: the label-studio-ml model class. Label Studio's tasks in, pre-annotations out.

It keeps label-studio-ml 1.0.9's model interface (`LabelStudioMLBase`: built per request from
the project's label config; `predict(tasks)`, `process_event(event, data, ...)`, `fit(...)`),
while everything that must outlive a request sits in one `Service` per worker process:
the serving model (current_model.py), the retrain trigger (retrain.py), the settings, and the
Label Studio URL and token from the last /setup.

What a task gets (one item per task, in order, as Label Studio 1.23 expects):
    {"result": [...], "score": s, "model_version": "<registry version id>"}
`result` is cxrkit.models.predictor.to_labelstudio with the tag names of the label config that
Label Studio sent (never constants); `score` is the mean confidence of the boxes shown, as in
LabelStudio.push_predictions (absent without boxes). A task that cannot be predicted (missing,
corrupt or oversized image, refused URL) gets {"task": id, "error": "<why>"} and no `result`:
Label Studio logs it and stores the other tasks' predictions.

What bounds a request. Label Studio 1.23 sends every task selected for "Retrieve predictions"
in one request and gives up after 100 s, while a radiologist who opens a task waits on one
prediction. So a request predicts at most `CXR_BACKEND_MAX_TASKS` (32) tasks, decodes and
predicts them a batch at a time (memory: one batch of images), each batch a turn of the
process's inference thread, in arrival order (current_model.InferenceThread: a task opened
meanwhile goes before the bulk request's next batch), and starts no batch after `CXR_BACKEND_PREDICT_SECONDS` (60 s). The tasks
it did not reach get an error item that says so; nothing is lost: a repeated "Retrieve
predictions" skips the tasks that have this version's prediction and goes on with the rest.

Each version is served with the params it was trained with (version.json, via
ModelVersion.predictor()), so pre-annotations match what the retrain evaluated and what the
select flow ranks; $CXR_PARAMS does not change a registered model.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from label_studio_ml.model import LabelStudioMLBase

from cxrkit.core.labels import LabelConfigError, LabelSchema, parse_label_config
from cxrkit.core.workspace import Workspace, refuse_placeholder
from cxrkit.models.explain import explain_settings
from cxrkit.models.predictor import Prediction, to_labelstudio
from cxrkit.models.registry import Registry
from cxrkit.services.backend import DEFAULT_RETRAIN_EVERY
from ml_backend.current_model import CurrentModel, Serving
from ml_backend.images import ImageError, load_image
from ml_backend.retrain import DEPLOYMENT as RETRAIN_DEPLOYMENT
from ml_backend.retrain import RetrainTrigger

log = logging.getLogger(__name__)

MiB = 1 << 20


class NoModelError(RuntimeError):
    """The registry has no current version yet: nothing to predict with."""


@dataclass
class Settings:
    """Service configuration, all from the environment (README, "ML backend")."""

    workspace: Workspace
    user: str | None
    password: str | None = field(repr=False)
    ls_url: str | None
    ls_token: str | None = field(repr=False)
    retrain_every: int
    retrain_deployment: str  # the deployment a retrain starts: retrain/retrain, or retrain/retrain-gpu (a GPU pool)
    max_body_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    max_tasks: int  # tasks predicted per request (module docstring)
    predict_seconds: float  # no batch of a request starts after this
    state_dir: Path  # the retrain trigger's counts (the workspace may be mounted read-only)

    @classmethod
    def from_env(cls, env=os.environ) -> "Settings":
        ws = Workspace.from_env(env.get("CXR_WORKSPACE"))
        return cls(
            workspace=ws,
            user=env.get("CXR_BACKEND_USER") or None,
            password=refuse_placeholder("CXR_BACKEND_PASSWORD", env["CXR_BACKEND_PASSWORD"])
            if env.get("CXR_BACKEND_PASSWORD") else None,
            ls_url=env.get("LABEL_STUDIO_URL") or None,
            ls_token=env.get("LABEL_STUDIO_API_KEY") or None,
            retrain_every=int(env.get("CXR_RETRAIN_EVERY") or DEFAULT_RETRAIN_EVERY),
            retrain_deployment=env.get("CXR_RETRAIN_DEPLOYMENT") or RETRAIN_DEPLOYMENT,
            max_body_bytes=int(env.get("CXR_BACKEND_MAX_BODY") or 16 * MiB),
            max_image_bytes=int(env.get("CXR_BACKEND_MAX_IMAGE_BYTES") or 64 * MiB),
            max_image_pixels=int(env.get("CXR_BACKEND_MAX_IMAGE_PIXELS") or 50_000_000),
            max_tasks=max(1, int(env.get("CXR_BACKEND_MAX_TASKS") or 32)),
            predict_seconds=float(env.get("CXR_BACKEND_PREDICT_SECONDS") or 60),
            state_dir=Path(env.get("CXR_BACKEND_STATE_DIR") or ws.root / "backend"),
        )


class Service:
    """What one worker process keeps between requests."""

    def __init__(self, settings: Settings):
        self.settings = settings
        ws = settings.workspace
        self.registry = Registry(ws.models_dir)
        self.model = CurrentModel.for_registry(self.registry)
        self.retrain = RetrainTrigger(settings.state_dir / "retrain_state.json", settings.retrain_every, ws.root,
                                      deployment=settings.retrain_deployment)
        # The token from /setup, used when the environment gives none. Never its hostname: the
        # backend fetches uploads only from the Label Studio it was started for
        # (LABEL_STUDIO_URL), so a caller cannot send it, with a configured token, elsewhere.
        self.setup_token: str | None = None

    @property
    def ls_url(self) -> str | None:
        return self.settings.ls_url

    @property
    def ls_token(self) -> str | None:
        return self.settings.ls_token or self.setup_token

    def remember_label_studio(self, hostname: str | None, token: str | None) -> None:
        if hostname and self.settings.ls_url and hostname.rstrip("/") != self.settings.ls_url.rstrip("/"):
            log.info("/setup names Label Studio at %s; uploads are fetched from %s (LABEL_STUDIO_URL) only",
                     hostname, self.settings.ls_url)
        self.setup_token = token or self.setup_token

    def no_model_message(self) -> str:
        why = f" (last load failed: {self.model.error})" if self.model.error else ""
        return (f"no model has been trained yet: the registry at {self.registry.root} has no current version{why}. "
                "Train and promote one (the retrain flow), then ask again; no predictions are made until then.")


class CxrModel(LabelStudioMLBase):
    def __init__(self, service: Service, label_config: str | None = None, **kwargs):
        try:
            super().__init__(label_config=label_config, **kwargs)  # parses the config (label_studio_tools)
        except Exception as exc:  # noqa: BLE001 - its XML errors have several types
            raise LabelConfigError(f"label config is not valid XML: {exc}") from None
        self.service = service

    # --- the label config ---------------------------------------------------------

    def schema(self) -> tuple[LabelSchema, str]:
        """The project's tags and the task data key of its image (e.g. `image` for value="$image")."""
        if not self.label_config:
            raise LabelConfigError("the request carries no label config")
        schema = parse_label_config(self.label_config)
        inputs = (self.parsed_label_config.get(schema.finding_tag) or {}).get("inputs") or []
        if not inputs or not inputs[0].get("value"):
            raise LabelConfigError(f"<RectangleLabels name={schema.finding_tag!r}> is not tied to an image "
                                   "(<Image value=\"$...\">)")
        return schema, inputs[0]["value"]

    # --- predictions --------------------------------------------------------------

    def predict(self, tasks: list[dict], **kwargs) -> list[dict]:
        serving = self.service.model.get()  # one version for the whole request
        if serving is None:
            raise NoModelError(self.service.no_model_message())
        schema, data_key = self.schema()
        s = self.service.settings
        deadline = time.monotonic() + s.predict_seconds
        batch = max(1, int(serving.predictor.settings["batch"]))
        out: list[dict | None] = [None] * len(tasks)
        taken = min(len(tasks), s.max_tasks)
        for start in range(0, taken, batch):
            if start and time.monotonic() > deadline:  # the first batch always runs: every request gets somewhere
                break
            self._predict_batch(tasks, range(start, min(start + batch, taken)), out, schema, data_key, serving)
        over_cap = (f"the request sent {len(tasks)} tasks and this backend predicts at most {s.max_tasks} per request "
                    "(CXR_BACKEND_MAX_TASKS)")
        late = f"the request ran past its {s.predict_seconds:g} s (CXR_BACKEND_PREDICT_SECONDS)"
        left = [i for i, item in enumerate(out) if item is None]
        if left:
            log.info("/predict: %d of %d tasks not reached (at most %d per request, %g s)", len(left), len(tasks),
                     s.max_tasks, s.predict_seconds)
        for i in left:
            out[i] = self._error(_task_id(tasks[i]), f"not predicted in this request: {over_cap if i >= taken else late}; "
                                 "ask again for it (Label Studio's Retrieve predictions skips the tasks already "
                                 "predicted by this version)", serving, quiet=True)
        return out  # type: ignore[return-value]

    def _predict_batch(self, tasks: list, slots: range, out: list, schema: LabelSchema, data_key: str,
                       serving: Serving) -> None:
        """Decode the images of tasks[slots] and predict them (one turn of the inference thread)."""
        s = self.service.settings
        images, decoded = [], []
        for i in slots:
            task = tasks[i]
            try:
                url = (task.get("data") or {}).get(data_key) if isinstance(task, dict) else None
                if not url:
                    raise ImageError(f"task has no image (data.{data_key} is missing or empty)")
                images.append(load_image(url, s.workspace.images_dir, self.service.ls_url, self.service.ls_token,
                                         s.max_image_bytes, s.max_image_pixels))
                decoded.append(i)
            except ImageError as exc:
                out[i] = self._error(_task_id(task), str(exc), serving)
        for i, pred in zip(decoded, self.service.model.inference.run(predict_images, serving, images)):
            task_id = _task_id(tasks[i])
            if not pred.ok:
                out[i] = self._error(task_id, pred.error, serving)
                continue
            try:
                out[i] = self._prediction(pred, schema, serving)
            except ValueError as exc:  # the model's names are not in this project's label config
                out[i] = self._error(task_id, f"cannot express the prediction in this label config: {exc}", serving)

    @staticmethod
    def _prediction(pred: Prediction, schema: LabelSchema, serving: Serving) -> dict:
        item = {"result": to_labelstudio(pred, schema=schema), "model_version": serving.version_id}
        scores = [b.score for b in pred.boxes if b.score is not None]
        if scores:
            item["score"] = sum(scores) / len(scores)
        return item

    @staticmethod
    def _error(task_id, message: str, serving: Serving, quiet: bool = False) -> dict:
        if not quiet:
            log.warning("task %s: %s", task_id, message)
        return {"task": task_id, "error": message, "model_version": serving.version_id}

    # --- explanations ---------------------------------------------------------------

    def explain(self, image_url: str, max_side: int | None = None) -> tuple[bytes, str]:
        """The overlay PNG of the task image at `image_url` (the serving version's class-activation map,
        cxrkit.models.explain), at most `max_side` pixels on its long side (None: the serving
        version's params.yaml `explain.max_side`, the size the select flow writes the queue's
        overlays at), and the version that made it. Raises ImageError for an image that cannot be
        used, NoModelError before the first model."""
        serving = self.service.model.get()
        if serving is None:
            raise NoModelError(self.service.no_model_message())
        if max_side is None:
            max_side = explain_settings(serving.predictor.params)["max_side"]
        s = self.service.settings
        image = load_image(image_url, s.workspace.images_dir, self.service.ls_url, self.service.ls_token,
                           s.max_image_bytes, s.max_image_pixels)
        return self.service.model.inference.run(explain_overlay, serving, image, max_side), serving.version_id

    # --- training: never here; the Prefect deployment does it ------------------------

    def process_event(self, event, data, job_id=None, additional_params=None) -> dict:
        """A webhook event: count new annotations, start the retrain deployment at N or on request."""
        return self.service.retrain.handle(event, data or {})

    def fit(self, tasks=(), workdir=None, project=None, **kwargs) -> dict:
        """An explicit "start training" (POST /train from older Label Studio): start the deployment."""
        if project is None:
            return {"started": False, "error": "no project id to retrain"}
        return self.service.retrain.start(project, reason="start training requested in Label Studio")


def predict_images(serving: Serving, images: list) -> list[Prediction]:
    """The serving predictor on one batch of decoded images (run on the inference thread); a
    batch that fails is retried image by image, so one image that breaks the model fails alone.
    Only what is shown is computed (uncertainty=False): the answer carries no uncertainty, so
    the mirrored detector pass and the whole-image classification (for uncertainty signals
    only, with the default predictor settings) would be work thrown away."""
    predictor = serving.predictor
    if not images:
        return []
    try:
        return list(predictor.predict_arrays(images, uncertainty=False))
    except Exception:  # noqa: BLE001 - attributed image by image below
        pass
    out: list[Prediction] = []
    for img in images:
        try:
            out.extend(predictor.predict_arrays([img], uncertainty=False))
        except Exception as exc:  # noqa: BLE001
            out.append(Prediction(error=f"prediction failed: {type(exc).__name__}: {exc}",
                                  model_version=serving.version_id))
    return out


def explain_overlay(serving: Serving, image, max_side: int) -> bytes:
    """The overlay PNG of one decoded image (run on the inference thread)."""
    import cv2

    from cxrkit.models.explain import overlay

    ok, data = cv2.imencode(".png", overlay(image, serving.predictor.explain(image), max_side))
    if not ok:
        raise RuntimeError("the overlay could not be encoded as PNG")
    return data.tobytes()


def _task_id(task):
    return task.get("id") if isinstance(task, dict) else None


def project_from_uid(value) -> int | None:
    """Label Studio's project uid in /setup and /predict is "<id>.<created timestamp>"."""
    try:
        return int(str(value).split(".")[0])
    except (TypeError, ValueError):
        return None

