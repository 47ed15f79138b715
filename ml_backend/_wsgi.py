"""The WSGI app gunicorn serves: `gunicorn -c ml_backend/gunicorn.conf.py 'ml_backend._wsgi:create_app()'`.

The routes speak label-studio-ml's protocol, which Label Studio 1.23 calls:

    GET  /health, /       liveness, the serving version and torch's thread count (no auth: for health checks)
    POST /setup           {project, schema, hostname, access_token} -> {"model_version": ...}
    POST /predict         {tasks, project, label_config} -> {"results": [one item per task], "model_version"}
    POST /webhook         Label Studio's webhook events (annotation created/updated, START_TRAINING)
    POST /train           "start training" from Label Studio servers older than 1.4.1
    GET  /versions        the registry's versions (Label Studio's version picker)
    POST /reload          check the registry's `current` now; the retrain flow calls it after a promotion
    POST /explain         {task} or {image: url} -> the film with the classifier's heatmap over it (image/png)

Why not label-studio-ml 1.0.9's own Flask app (label_studio_ml.api): its /setup builds a new model
object and reports a timestamp or "INITIAL" as the version, its /predict fails until some /setup
reached the same worker, its /webhook forks a training process per event, and it has no auth.
We keep its model class and its HTTP protocol and serve this app instead.

Auth: HTTP basic, $CXR_BACKEND_USER / $CXR_BACKEND_PASSWORD. Without both, every route but
/health answers 503 "no credentials configured": an unprotected backend would hand anyone the
workspace's images' predictions and a retrain trigger. Body size: Flask's MAX_CONTENT_LENGTH
($CXR_BACKEND_MAX_BODY, 16 MiB) answers 413 to larger requests, chunked ones included.
"""
from __future__ import annotations

import hmac
import importlib
import logging
import threading

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from cxrkit.core import offline

offline.apply()  # before ultralytics or prefect are imported by the first request

from cxrkit.core.labels import LabelConfigError  # noqa: E402
from ml_backend.images import ImageError  # noqa: E402
from ml_backend.model import CxrModel, NoModelError, Service, Settings, project_from_uid  # noqa: E402

log = logging.getLogger("ml_backend")
OPEN_PATHS = ("/", "/health")


def create_app(settings: Settings | None = None) -> Flask:
    """The app for `settings` (default: from the environment); each worker process calls it once."""
    settings = settings or Settings.from_env()
    service = Service(settings)
    app = Flask("ml_backend")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    service.model.check(wait=True)  # load the current version now, not on the first request
    # Prefect takes seconds to import: do it now, beside the requests, not in the first webhook.
    threading.Thread(target=importlib.import_module, args=("prefect.deployments",), daemon=True).start()

    @app.before_request
    def require_auth():
        if request.path in OPEN_PATHS:
            return None
        if not (settings.user and settings.password):
            return error(503, "the ML backend has no credentials configured: set CXR_BACKEND_USER and "
                              "CXR_BACKEND_PASSWORD (`cxr backend start` does); every request is refused until then")
        auth = request.authorization
        if (auth is None or auth.type != "basic"
                or not hmac.compare_digest((auth.username or "").encode(), settings.user.encode())
                or not hmac.compare_digest((auth.password or "").encode(), settings.password.encode())):
            resp = error(401, "HTTP basic authentication required (wrong or missing credentials)")
            resp.headers["WWW-Authenticate"] = 'Basic realm="cxr-ml-backend"'
            return resp
        return None

    @app.get("/")
    @app.get("/health")
    def health():
        import torch  # loaded with the model already

        serving = service.model.get()
        # threads: torch's CPU threads in this worker, so an operator sees it uses every core.
        # No login here, so a failed load is named, never explained: its reason holds paths.
        failed = service.model.failed_version
        return jsonify({"status": "UP", "model_version": serving.version_id if serving else None,
                        "model_error": f"model version {failed} could not be loaded: the backend log says why"
                        if failed else None, "threads": torch.get_num_threads()})

    @app.post("/setup")
    def setup():
        data = body()
        service.remember_label_studio(data.get("hostname"), data.get("access_token"))
        serving = service.model.get()
        if serving is None:
            return error(503, service.no_model_message())
        model = CxrModel(service, label_config=data.get("schema"))
        model.schema()  # a config without the tags we predict into: LabelConfigError -> 400
        return jsonify({"model_version": serving.version_id})

    @app.post("/predict")
    def predict():
        data = body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            return error(400, "the request has no task list (`tasks`)")
        model = CxrModel(service, label_config=data.get("label_config"))
        results = model.predict(tasks)
        version = next((r["model_version"] for r in results if r), None)
        failed = sum(1 for r in results if "error" in r)
        return jsonify({"results": results, "model_version": version, "failed": failed})

    @app.post("/explain")
    def explain():
        data = body()
        task = data.get("task")
        url = data.get("image") or ((task.get("data") or {}).get("image") if isinstance(task, dict) else None)
        if not isinstance(url, str) or not url:
            return error(400, "say which film to explain: {\"task\": {\"data\": {\"image\": URL}}} or "
                              "{\"image\": URL}, the URL as the task's data.image holds it")
        max_side = data.get("max_side")  # None: the serving version's explain.max_side
        if max_side is not None:
            try:
                max_side = int(max_side)
            except (TypeError, ValueError):
                return error(400, "max_side must be a number of pixels")
            if not 64 <= max_side <= 4096:
                return error(400, "max_side must be between 64 and 4096 pixels")
        try:
            png, version = CxrModel(service).explain(url, max_side)
        except ImageError as exc:
            return error(422, str(exc))
        return Response(png, mimetype="image/png", headers={"X-Model-Version": version})

    @app.post("/webhook")
    def webhook():
        data = body()
        event = data.pop("action", None)
        if not event:
            return error(400, "a webhook without an `action`")
        return jsonify(CxrModel(service).process_event(event, data)), 201

    @app.post("/train")
    def train():
        data = body()
        project = project_from_uid(data.get("project"))
        return jsonify(CxrModel(service).fit(project=project)), 201

    @app.post("/reload")
    def reload():
        serving = service.model.check(wait=True)
        return jsonify({"model_version": serving.version_id if serving else None, "model_error": service.model.error})

    @app.route("/versions", methods=["GET", "POST"])
    def versions():
        return jsonify({"versions": [v.version_id for v in service.registry.versions()]})

    @app.errorhandler(NoModelError)
    def no_model(exc):
        return error(503, str(exc), results=[])

    @app.errorhandler(LabelConfigError)
    def bad_config(exc):
        return error(400, f"label config refused: {exc}", results=[])

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if exc.code == 413:
            return error(413, f"request body over the limit of {settings.max_body_bytes} bytes (CXR_BACKEND_MAX_BODY)")
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc):
        # The log has the traceback; the answer names no path and quotes no exception text
        # (an OS error quotes the workspace's paths).
        log.exception("request %s failed", request.path)
        return error(500, f"internal error while answering {request.path}: the ML backend's log says why")

    return app


def body() -> dict:
    data = request.get_json(silent=False)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def error(status: int, message: str, **extra):
    resp = jsonify({"error": message, **extra})
    resp.status_code = status
    return resp

