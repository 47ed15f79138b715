"""The test process's environment as the user gave it, captured when conftest loads, before any
test imports ultralytics (which sets OMP_NUM_THREADS=1 in the process when it is unset)."""
from __future__ import annotations

import os

USER_OMP_NUM_THREADS = os.environ.get("OMP_NUM_THREADS")


def torch_default_threads() -> int:
    """How many threads torch takes in a fresh process started with the user's environment."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if USER_OMP_NUM_THREADS is not None:
        env["OMP_NUM_THREADS"] = USER_OMP_NUM_THREADS
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout)
