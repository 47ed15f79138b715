"""The serving model: the registry's `current` version, swapped without a restart.

Every request calls `CurrentModel.get()`, which stats the registry's small `current` file
(microseconds). When it changed, the new version is loaded *aside*, as a job of the inference
thread (below), while the old predictor stays in place; then one reference assignment swaps
them. A request takes the reference once and uses that `Serving` for all its tasks, so each
response comes from exactly one version, and no request fails on a load. A batch queued behind
the load waits for it (well under a second for the default models; the load must run on the
inference thread for the reason InferenceThread gives).

A load that fails (a half-copied version, a corrupt checkpoint) keeps the old model serving and
is reported by /health and /setup; the next change of `current` is tried again.

Every model load and every inference of the worker process run on one thread
(`InferenceThread`), one job at a time, first come first served, whichever version they use.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from cxrkit.models.registry import CURRENT_FILE, Registry

log = logging.getLogger(__name__)


class InferenceThread:
    """The one thread that runs this process's model loads and inference, a job at a time, in
    the order asked for.

    One at a time: ultralytics' predictor is not thread-safe, and on a CPU one inference already
    uses every core. One thread: torch runs its CPU kernels on an OpenMP thread team that belongs
    to the calling OS thread, so when gunicorn's request threads took turns calling torch each
    built a team of its own, and the teams then slowed each other down: a 1,024-px film took 141 ms
    through the backend against 89 ms with every call on one thread, and loading the model on
    another thread (gunicorn's main thread) was enough to cost most of that (BENCHMARKS.md,
    "Beside the peer"). In order: the queue is first in, first out, so a bulk request that submits batch by
    batch cannot hold back a radiologist's single task that asked in between."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    def run(self, fn: Callable, *args):
        """fn(*args) on the inference thread, after every job asked for before; its result or its exception."""
        return self._executor.submit(fn, *args).result()


@dataclass
class Serving:
    version_id: str
    predictor: object  # cxrkit.models.predictor.Predictor


class CurrentModel:
    def __init__(self, registry: Registry, load: Callable[[str], object]):
        """`load(version_id)` returns a predictor for that version (the registry's by default).
        Loads run on `self.inference`, the thread that every inference with them must run on."""
        self.registry = registry
        self._load = load
        self.inference = InferenceThread()
        self._serving: Serving | None = None
        self._seen: tuple | None = None  # (inode, mtime_ns, size) of `current` when last read
        self._load_lock = threading.Lock()
        self.error: str | None = None  # the last failed load, with its reason: the log and /setup (logged in)
        self.failed_version: str | None = None  # the version of that load: all /health shows (no login)

    @classmethod
    def for_registry(cls, registry: Registry) -> "CurrentModel":
        return cls(registry, lambda version_id: registry.get(version_id).predictor())

    def get(self) -> Serving | None:
        """The version to serve this request with (None before the first model exists)."""
        return self.check()

    def check(self, wait: bool = False) -> Serving | None:
        """Notice a change of the registry's `current` and load that version.

        Per request (wait=False) the load is queued on the inference thread and this request
        goes on with the old version; with nothing serving yet, or for /reload (wait=True), it
        loads before returning."""
        if self._stamp() == self._seen and not wait:
            return self._serving
        if wait or self._serving is None:
            with self._load_lock:
                self.inference.run(self._load_if_changed)
        elif self._load_lock.acquire(blocking=False):  # else: a load is already queued or running
            threading.Thread(target=self._load_then_release, name="model-load", daemon=True).start()
        return self._serving

    def _load_then_release(self) -> None:
        try:
            self.inference.run(self._load_if_changed)
        finally:
            self._load_lock.release()  # taken by the request thread that noticed the change

    def _load_if_changed(self) -> None:
        stamp = self._stamp()
        version_id = self.registry.current_id()
        if version_id and (self._serving is None or self._serving.version_id != version_id):
            self._swap_to(version_id)
        elif version_id is None and self._serving is not None:
            log.warning("the registry has no current version any more; still serving %s", self._serving.version_id)
        self._seen = stamp

    def _swap_to(self, version_id: str) -> None:
        old = self._serving.version_id if self._serving else None
        log.info("loading model version %s (serving: %s)", version_id, old)
        try:
            predictor = self._load(version_id)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
            self.error = f"cannot load model version {version_id}: {type(exc).__name__}: {exc}"
            self.failed_version = version_id
            log.error("%s; still serving %s", self.error, old)
            return
        self._serving = Serving(version_id, predictor)  # the swap: one reference assignment
        self.error = self.failed_version = None
        log.info("serving model version %s (was %s)", version_id, old)

    def _stamp(self) -> tuple | None:
        try:
            st = os.stat(self.registry.root / CURRENT_FILE)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)
