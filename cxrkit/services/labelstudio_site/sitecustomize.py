"""What the workbench changes in the Label Studio server, and why.

Python imports `sitecustomize` at start-up from its path. `cxr labelstudio start`
(cxrkit/services/labelstudio_server.py) puts this folder, and only it, on the Label Studio
server's PYTHONPATH, so this runs in that process, inside Label Studio's own virtual
environment: it must import nothing of cxrkit.

- SQLite waits for a busy database instead of failing after 5 s (Python's default). Label Studio
  deletes a superseded queue of predictions (the select flow's prune) in one transaction. Measured
  before this: 5,000 predictions held the database for about 20 s, and a radiologist's submission
  in that time failed with HTTP 500 ("database is locked"), the annotation not saved. With a busy
  timeout longer than any prune (689 s at 100,000 tasks, BENCHMARKS.md) the submission waits and
  is saved. $CXR_LS_SQLITE_BUSY_SECONDS sets it (default 900).
"""
import os

from django.db.backends.signals import connection_created

BUSY_MS = int(float(os.environ.get("CXR_LS_SQLITE_BUSY_SECONDS", "900")) * 1000)


def _wait_when_busy(sender, connection, **kwargs):
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_MS}")


connection_created.connect(_wait_when_busy, weak=False)
