"""Switch off every phone-home of the libraries we use (the workbench runs offline), and set
the two library defaults our processes need, which those libraries read when they load.

Called once by the CLI, the ML backend and the flows before the libraries are
imported; the servers, runners and workers they start inherit the environment. Explicit
settings from the user's environment are kept (setdefault).
"""
from __future__ import annotations

import os

OFFLINE_ENV = {
    # ultralytics: is_online() answers False, so no hub, asset or update traffic
    "YOLO_OFFLINE": "1",
    # Prefect: no anonymous usage stats (server side, and the DO_NOT_TRACK standard client side)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # DVC: no analytics (its update check is off per repo: core.check_update false)
    "DVC_NO_ANALYTICS": "1",
    # Hugging Face (pulled in transitively by some tools): never reach the hub
    "HF_HUB_OFFLINE": "1",
    # plots render without a display and without downloading fonts
    "MPLBACKEND": "Agg",
    # Not a phone-home, a local default: with no PREFECT_API_URL a flow starts Prefect's temporary
    # local server, whose 20 s start-up limit a busy 2-core machine exceeds (measured: timeouts).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # Not a phone-home either: Prefect's clients retry a 500 too (with their back-off, about a
    # minute in all), not only 429/502/503. While the Postgres under a Prefect server restarts,
    # the server answers 500 (asyncpg's ConnectionRefusedError is not among the errors it maps to
    # 503; measured: one or two 500s per restart), and a flow run whose task or state update gets
    # that answer fails mid-retrain. Such a request did not reach the database, so sending it
    # again is safe.
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
}


def apply() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
