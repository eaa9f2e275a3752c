"""Model work off the event loop, by one scheduling rule; errors shown as notifications.

The rule, for every piece of model work a session asks for (`Runner.submit`):
- Workers only compute. Their only way back to the session is its event loop's `add_callback` (thread-safe);
  every decision (start, skip, apply, next) is taken on the loop thread, applies with the document locked.
- Each channel of a session keeps three request keys: `latest` (set by `submit`), `inflight` and `shown`. A
  job starts only if its key is `latest` and nothing is in flight; a worker skips a job whose key is no longer
  `latest`; a result is applied only while its key is still `latest`, then `shown` is set and the next job
  starts. A burst of clicks computes the first and the last request, not every one in between.
- An error is logged, shown as a notification and marked (`failed`); scheduling goes on.
- Only the session's destruction closes its channels. A watchdog logs a job in flight for over `WATCHDOG_S`.

Outside a server (tests, scripts, the benchmark) the same rule runs inline: `INLINE` is an executor and a
loop that call at once. Tests inject their own executor and loop to drive the rule step by step.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import panel as pn
from panel.io.document import unlocked
from panel.io.state import set_curdoc
from tornado.ioloop import IOLoop

from . import transport

log = logging.getLogger("xcam_viz.dashboard")
EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="xcam-viz")
WATCHDOG_S = 30.0
LATENCY: deque[float] = deque(maxlen=20_000)    # seconds from a served request's submit to its patches written
SKIPPED = object()                              # a worker's outcome for a job superseded before it began


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


class Inline:
    """An executor and an event loop in one that run what they are given at once (no server)."""

    def submit(self, fn: Callable, *args) -> None:
        fn(*args)

    def add_callback(self, fn: Callable, *args) -> None:
        fn(*args)

    def call_later(self, delay: float, fn: Callable, *args) -> None:
        """Nothing is left in flight inline, so the watchdog has nothing to watch."""


INLINE = Inline()


@dataclass(eq=False)
class Channel:
    """One channel's requests: keys count the channel's submits (0: none yet)."""

    name: str
    latest: int = 0
    inflight: int | None = None
    shown: int = 0
    failed: int | None = None                           # the newest key whose work or apply failed
    waiting: tuple | None = None                        # the latest request (key, work, apply, asked at), unstarted
    started: float = 0.0


class Runner:
    """One session's model work: `submit(channel, work, apply)` runs `work()` on a worker and `apply(result)`
    on the session's event loop, by the module's rule.

    Args:
        background: compute on workers (default: in a served session); False runs everything inline.
        executor: what runs the work (`submit(fn, *args)`; default: the process's thread pool).
        loop: the session's event loop (`add_callback`, `call_later`; default: the loop of the thread that
            builds the session).
    """

    def __init__(self, background: bool | None = None, *, executor=None, loop=None):
        self.doc = pn.state.curdoc
        served = bool(self.doc and self.doc.session_context)
        self.background = served if background is None else background
        if self.background:
            self.executor, self.loop = executor or EXECUTOR, loop or IOLoop.current()
        else:
            self.executor, self.loop = executor or INLINE, loop or INLINE
        self.thread = threading.get_ident()             # the loop's thread: decisions are taken there
        self.channels: dict[str, Channel] = {}
        self.closed = False
        self._applied: list[float] = []                 # submit times of results applied, until written
        if served:
            self.doc.on_session_destroyed(lambda session_context: self.close())

    # --- on the loop thread ---------------------------------------------------------------------
    def submit(self, channel: str, work: Callable[[], Any], apply: Callable[[Any], None]) -> None:
        """Ask for `work()` and then `apply(result)`, superseding the channel's earlier requests (from any thread)."""
        if self.background and threading.get_ident() != self.thread:
            self.soon(self.submit, channel, work, apply)
            return
        if self.closed:
            return
        state = self.channels.setdefault(channel, Channel(channel))
        state.latest += 1
        asked = time.monotonic() if self._session() is not None else None     # (a session's first requests,
        state.waiting = (state.latest, work, apply, asked)                     # made as its page is built, wait
                                                                               # for the page: not timed)
        self._next(state)

    def busy(self, channel: str) -> bool:
        """Whether the channel has a job in flight or waiting."""
        state = self.channels.get(channel)
        return state is not None and (state.inflight is not None or state.waiting is not None)

    def soon(self, fn: Callable, *args) -> None:
        """Run `fn(*args)` on the session's loop thread with the document locked and current (from any thread)."""
        if not self.closed:
            self.loop.add_callback(self._locked, fn, *args)

    def close(self) -> None:
        """Close every channel (the session is gone): nothing starts or is applied any more."""
        self.closed = True
        for state in self.channels.values():
            state.waiting = None

    def _next(self, state: Channel) -> None:
        if self.closed or state.inflight is not None or state.waiting is None:
            return
        key, work, apply, asked = state.waiting
        state.waiting, state.inflight, state.started = None, key, time.monotonic()
        self.loop.call_later(WATCHDOG_S, self._watch, state, key)
        self.executor.submit(self._compute, state, key, work, apply, asked)

    def _finish(self, state: Channel, key: int, outcome, apply: Callable, asked: float | None) -> None:
        state.inflight = None
        if self.closed:
            return
        if outcome is not SKIPPED and key == state.latest:
            result, err = outcome
            if err is None:
                try:
                    apply(result)
                    state.shown = max(state.shown, key)     # (an apply may have submitted and shown a newer one)
                    if asked is not None:
                        self._applied.append(asked)
                except Exception as apply_err:          # noqa: BLE001 - shown to the user, the app stays usable
                    err = apply_err
            if err is not None:
                state.failed = key
                log.debug("%s failed", state.name, exc_info=err)
                notify(describe(err))
        self._next(state)

    def _watch(self, state: Channel, key: int) -> None:
        if state.inflight == key and not self.closed:
            log.warning("model work %r (request %d) in flight for %.0f s", state.name, key,
                        time.monotonic() - state.started)

    def _locked(self, fn: Callable, *args):
        """Call `fn(*args)` with the session's document locked and current; a served session's call is a
        coroutine the loop runs, which also records when the patches of the results it applied are written."""
        if self._session() is None:
            with set_curdoc(self.doc) if self.background and self.doc is not None else contextlib.nullcontext():
                fn(*args)
            return None

        async def locked(doc):
            with set_curdoc(doc):
                fn(*args)

        async def run():
            await self.doc.session_context.with_locked_document(locked)
            if self._applied:
                applied, self._applied = self._applied, []
                await transport.written(self.doc)
                now = time.monotonic()
                LATENCY.extend(now - t for t in applied)
        return run()

    def _session(self):
        """The served session whose document lock applies take (None inline or before the session connects)."""
        return getattr(getattr(self.doc, "session_context", None), "session", None) if self.background else None

    # --- on a worker ----------------------------------------------------------------------------
    def _compute(self, state: Channel, key: int, work: Callable, apply: Callable, asked: float | None) -> None:
        outcome = SKIPPED
        try:
            if key == state.latest and not self.closed:     # else superseded while it waited for a worker
                outcome = (work(), None)
        except Exception as err:                       # noqa: BLE001 - handed to the loop, which shows it
            outcome = (None, err)
        finally:
            self.loop.add_callback(self._locked, self._finish, state, key, outcome, apply, asked)
