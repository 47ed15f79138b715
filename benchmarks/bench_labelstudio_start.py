"""Label Studio's first start in a new workspace: migrating its database, or copying the install's migrated one.

    .venv/bin/python benchmarks/bench_labelstudio_start.py [--repeats 3]

Each start is `cxr labelstudio start`'s (cxrkit.services.labelstudio_server.start) in a new temporary
workspace on a free port, timed until Label Studio answers /health, then stopped. Two ways, alternating:
- "migrates": the database file is named by $LABEL_STUDIO_DATABASE_NAME (the same path as the default),
  so no copy is made and Label Studio applies its migrations, as every first start did before;
- "copies": the default database, copied from the install's migrated empty one
  (cxrkit.services.labelstudio_database), which an untimed start first makes when it is missing.
Run it alone: nothing else training or testing on the machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrkit.core.workspace import Workspace  # noqa: E402
from cxrkit.services import labelstudio_database  # noqa: E402
from cxrkit.services import labelstudio_server as server  # noqa: E402
from cxrkit.services.process import free_port  # noqa: E402

NAMED_DATABASE = "LABEL_STUDIO_DATABASE_NAME"


def timed_start(root: Path, migrates: bool) -> float:
    """Seconds from start() to a server answering /health, in a new workspace under root."""
    ws = Workspace(Path(tempfile.mkdtemp(dir=root))).create()
    if migrates:
        os.environ[NAMED_DATABASE] = str(server.data_dir(ws) / labelstudio_database.DATABASE_FILE)
    try:
        started = time.perf_counter()
        server.start(ws, port=free_port())
        return time.perf_counter() - started
    finally:
        os.environ.pop(NAMED_DATABASE, None)
        server.stop(ws)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="starts of each way")
    args = parser.parse_args()
    if os.environ.get(NAMED_DATABASE) or os.environ.get("DJANGO_DB"):
        print(f"unset {NAMED_DATABASE} and DJANGO_DB: this measures the default SQLite database", file=sys.stderr)
        return 2
    seconds: dict[str, list[float]] = {"migrates": [], "copies": []}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-ls-start-") as scratch:
        timed_start(Path(scratch), migrates=False)  # untimed: makes the migrated copy when missing
        for _ in range(args.repeats):
            for way in seconds:
                seconds[way].append(timed_start(Path(scratch), migrates=way == "migrates"))
    print(f"Label Studio's first start in a new workspace, {args.repeats} starts each (seconds)")
    print(f"{'way':<10} {'median':>7} {'min':>7} {'max':>7}")
    for way, values in seconds.items():
        print(f"{way:<10} {statistics.median(values):>7.1f} {min(values):>7.1f} {max(values):>7.1f}")
    print(f"ratio migrates / copies (medians): "
          f"{statistics.median(seconds['migrates']) / statistics.median(seconds['copies']):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
