"""gunicorn settings for the ML backend; each from the environment, with the reason for its default.

    gunicorn -c ml_backend/gunicorn.conf.py 'ml_backend._wsgi:create_app()'   (from the repository root)
"""
import os

# 127.0.0.1 unless told otherwise: the backend returns predictions about the workspace's images
# and can start a retrain. The container sets CXR_BACKEND_HOST=0.0.0.0 (compose publishes it
# on 127.0.0.1 only).
bind = f"{os.environ.get('CXR_BACKEND_HOST', '127.0.0.1')}:{os.environ.get('CXR_BACKEND_PORT', '9090')}"

# One worker process with several threads by default: every worker holds its own copy of the
# models (hundreds of MB) and one inference already uses every CPU core (torch), so more
# processes on a small machine only compete; the threads overlap image reading, JSON and
# Label Studio's other calls with the inference (see BENCHMARKS.md). On a big machine raise
# CXR_BACKEND_WORKERS; each worker hot-swaps on its own.
workers = int(os.environ.get("CXR_BACKEND_WORKERS", "1"))
threads = int(os.environ.get("CXR_BACKEND_THREADS", "4"))
worker_class = "gthread"

# A worker that does not report alive for this long is restarted. With gthread workers the
# worker's main loop reports, not the request threads, so this does not end a slow request:
# the app bounds /predict itself (CXR_BACKEND_MAX_TASKS, CXR_BACKEND_PREDICT_SECONDS;
# ml_backend/model.py).
timeout = int(os.environ.get("CXR_BACKEND_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5

# Request line and headers: gunicorn's limits, stated (the body limit is the app's MAX_CONTENT_LENGTH).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# gunicorn 25+ opens a control socket at one fixed path per user ($HOME/.gunicorn/gunicorn.ctl):
# a second backend (another workspace, the tests) would take it over. We stop it with a signal.
control_socket_disable = True

# No preload: torch must not be initialised before the fork; each worker loads its model itself.
preload_app = False
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("CXR_BACKEND_LOG_LEVEL", "info")
# The app's own lines (model swaps, refused tasks, retrain starts) go to the log beside gunicorn's;
# gunicorn's own loggers stop propagating so their lines are not written twice.
logconfig_dict = {
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}
