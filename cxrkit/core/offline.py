"""Switch off every phone-home of the libraries we use; the workbench runs offline.

Called once by the CLI, the ML backend and the flows before the libraries are
imported. Explicit settings from the user's environment are kept (setdefault).
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
}


def apply() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
