"""Heavy work off the event loop, and errors shown as notifications.

In a served session a `Runner` computes on a shared thread pool and applies the result on the
session's event loop (Bokeh's thread-safe `add_next_tick_callback`), so the page never blocks.
Per channel only one job runs at a time and only the newest request waits behind it: a burst of
clicks computes the first and the last selection, not every one in between. Outside a server
(tests, scripts, the benchmark) work runs inline.
"""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import panel as pn
from panel.io.document import unlocked
from panel.io.state import set_curdoc

log = logging.getLogger("xcam_viz.dashboard")
EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="xcam-viz")


def notify(message: str, level: str = "error", duration: int = 6000) -> None:
    """Show a notification in the page (when the session has a notification area) and log it."""
    getattr(log, "warning" if level == "error" else "info")(message)
    area = pn.state.notifications
    if area is not None:
        getattr(area, level)(message, duration=duration)


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]


def bokeh_update(method: Callable) -> Callable:
    """Decorate a method that changes Bokeh models directly (data sources, mappers, glyphs).

    Panel runs some callbacks as event-loop tasks without the document lock (e.g. a button click that
    arrives while a widget change is pending); a Bokeh change there fails ("_pending_writes should be
    non-None"). Panel's `unlocked` holds the changes and sends them itself.
    """
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with unlocked():
            return method(*args, **kwargs)
    return wrapper


def next_tick(doc, fn: Callable[[], None]) -> None:
    """Run `fn` on the session's event loop, with the document lock and `pn.state.curdoc` set (thread-safe)."""
    def run():
        with set_curdoc(doc):
            fn()
    doc.add_next_tick_callback(run)


class Runner:
    """Runs `work()` in the background and `apply(result)` on the event loop; one job per channel."""

    def __init__(self, background: bool | None = None):
        self.doc = pn.state.curdoc
        self.background = bool(self.doc and self.doc.session_context) if background is None else background
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._waiting: dict[str, tuple[Callable, Callable]] = {}

    def submit(self, channel: str, work: Callable[[], Any], apply: Callable[[Any], None]) -> None:
        if not self.background:
            try:
                result = work()
            except Exception as err:               # noqa: BLE001 - shown to the user, the app stays usable
                notify(describe(err))
                return
            apply(result)
            return
        with self._lock:
            if channel in self._running:
                self._waiting[channel] = (work, apply)
                return
            self._running.add(channel)
        self._start(channel, work, apply)

    def busy(self, channel: str) -> bool:
        return channel in self._running

    def _start(self, channel: str, work: Callable, apply: Callable) -> None:
        future = EXECUTOR.submit(work)
        future.add_done_callback(lambda f: self._schedule(channel, f, apply))

    def _schedule(self, channel: str, future: Future, apply: Callable) -> None:
        try:
            next_tick(self.doc, lambda: self._finish(channel, future, apply))
        except Exception:                          # noqa: BLE001 - the session has closed
            with self._lock:
                self._running.discard(channel)
                self._waiting.pop(channel, None)

    def _finish(self, channel: str, future: Future, apply: Callable) -> None:
        with self._lock:
            waiting = self._waiting.pop(channel, None)
            if waiting is None:
                self._running.discard(channel)
        if waiting is not None:                    # a newer request supersedes this result
            self._start(channel, *waiting)
            return
        err = future.exception()
        if err is not None:
            notify(describe(err))
            return
        try:
            apply(future.result())
        except Exception as err:                   # noqa: BLE001
            notify(describe(err))
