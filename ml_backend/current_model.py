"""The serving model: the registry's `current` version, swapped without a restart.

Every request calls `CurrentModel.get()`, which stats the registry's small `current` file
(microseconds). When it changed, a background thread reads the id and loads that version
*aside* while every request goes on with the old predictor; then one reference assignment
swaps them. A request takes the reference once and uses that `Serving` for all its tasks, so
each response comes from exactly one version, and no request waits for or fails on a load.

A load that fails (a half-copied version, a corrupt checkpoint) keeps the old model serving and
is reported by /health and /setup; the next change of `current` is tried again.

One `Serving` runs one batch of inference at a time (its lock): ultralytics' predictor is not
thread-safe, and on a CPU one inference already uses every core. The lock is granted in arrival
order (FairLock), so a request that takes it batch by batch cannot hold back one that arrived
in between.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

from cxrkit.models.registry import CURRENT_FILE, Registry

log = logging.getLogger(__name__)


class FairLock:
    """A lock handed out in the order it was asked for (a ticket lock). threading.Lock promises
    no order: a thread that releases it and asks again at once usually gets it back, so a bulk
    request taking it per batch would keep a radiologist's single task waiting to the end."""

    def __init__(self):
        self._changed = threading.Condition()
        self._next_ticket = 0
        self._now_serving = 0

    def __enter__(self) -> "FairLock":
        with self._changed:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._changed.wait_for(lambda: self._now_serving == ticket)
        return self

    def __exit__(self, *exc) -> None:
        with self._changed:
            self._now_serving += 1
            self._changed.notify_all()


@dataclass
class Serving:
    version_id: str
    predictor: object  # cxrkit.models.predictor.Predictor
    lock: FairLock = field(default_factory=FairLock)


class CurrentModel:
    def __init__(self, registry: Registry, load: Callable[[str], object]):
        """`load(version_id)` returns a predictor for that version (the registry's by default)."""
        self.registry = registry
        self._load = load
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

        Per request (wait=False) the load runs in a background thread and this request, like
        the others meanwhile, is served by the old version; with nothing serving yet, or for
        /reload (wait=True), it loads before returning."""
        if self._stamp() == self._seen and not wait:
            return self._serving
        if wait or self._serving is None:
            with self._load_lock:
                self._load_if_changed()
        elif self._load_lock.acquire(blocking=False):  # else: another thread is already loading
            threading.Thread(target=self._load_then_release, name="model-load", daemon=True).start()
        return self._serving

    def _load_then_release(self) -> None:
        try:
            self._load_if_changed()
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
