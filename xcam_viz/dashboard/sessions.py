"""What a dashboard server keeps across its sessions: one check for new model versions for all of them, and
what tests and tools read of it (`/xcam-viz/stats`: a session's probe sequence number, the server's latency).

Nothing here flips every session's page: a session hears of new versions only when its own choices are out
of date, through its own Runner (its loop, its document lock).
"""
from __future__ import annotations

import ctypes
import gc
import json
import weakref

import numpy as np
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.web import RequestHandler

from .tasks import LATENCY

VERSION_POLL_MS = 3000
RELEASE_CHECKS = 10    # checks (of VERSION_POLL_MS) after the last session went that release memory: Bokeh frees
                       # a closed session's document in its own cleanup, after its dashboard has gone


def release_memory(idle_workbenches=()) -> None:
    """Collect garbage and hand the heap's free pages back to the system (glibc's `malloc_trim`; elsewhere only
    the collection), first dropping the caches of `idle_workbenches` (no session uses them). CPython keeps freed
    memory for reuse, so without it a server's RSS stays at the peak of its busiest hour: 20 closed workshop
    sessions held ~200 MB, and the caches they filled ~300 MB more."""
    for workbench in idle_workbenches:
        workbench.drop_caches()
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class VersionWatch:
    """One periodic check, on the server's loop, for model versions other sessions (or processes) saved.
    Each Workbench's versions are listed once per check; only sessions whose version choices differ are told.
    When sessions have gone, their memory is released (`release_memory`); once none is left, at the next
    RELEASE_CHECKS checks too, with the caches."""

    def __init__(self):
        self.dashboards: weakref.WeakSet = weakref.WeakSet()
        self.workbenches: weakref.WeakSet = weakref.WeakSet()         # those sessions have worked in
        self._callback: PeriodicCallback | None = None
        self._loop: IOLoop | None = None
        self._alive = 0
        self._releases_due = 0

    def add(self, dashboard) -> None:
        """Watch for `dashboard` (call on the server's loop thread)."""
        self.dashboards.add(dashboard)
        self.workbenches.add(dashboard.workbench)
        loop = IOLoop.current()
        if self._loop is not loop:                       # a first session, or a new server in this process
            if self._callback is not None:
                self._callback.stop()
            self._loop, self._callback = loop, PeriodicCallback(self.check, VERSION_POLL_MS)
            self._callback.start()

    def check(self) -> None:
        if len(self.dashboards) < self._alive:          # a full collection pauses the loop: repeated only while
            self._releases_due = 1 if self.dashboards else RELEASE_CHECKS          # no session is left to wait
        if self._releases_due:
            self._releases_due -= 1
            release_memory(() if self.dashboards else list(self.workbenches))
        self._alive = len(self.dashboards)
        listed: dict[int, list[str]] = {}
        for dashboard in list(self.dashboards):
            workbench = dashboard.workbench
            if id(workbench) not in listed:
                listed[id(workbench)] = workbench.versions
            if listed[id(workbench)] != dashboard.selection.param.version.objects:
                dashboard.runner.soon(dashboard.selection.sync_version)


VERSIONS = VersionWatch()
PROBES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # session id -> its StateProbe


def stats(session: str | None = None) -> dict:
    """The server's latency (submit to patches written, every session's), how many sessions' dashboards are
    alive, and, for a session id, its probe's sequence number (None for an unknown or closed session)."""
    seconds = np.array(LATENCY)
    latency = ({"count": int(seconds.size), "p50": float(np.percentile(seconds, 50)),
                "p95": float(np.percentile(seconds, 95))} if seconds.size else {"count": 0})
    probe = PROBES.get(session) if session else None
    return {"latency_s": latency, "sessions": len(VERSIONS.dashboards), "seq": probe.seq if probe is not None else None}


class StatsHandler(RequestHandler):
    """GET /xcam-viz/stats[?session=ID]: `stats()` as JSON (a session's number only to who knows its id)."""

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(stats(self.get_argument("session", None))))


ROUTES = [(r"/xcam-viz/stats", StatsHandler)]
