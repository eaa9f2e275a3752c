"""Progress reporting and cancellation for a fine-tuning run, blocking or in a background thread."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Cancelled(Exception):
    """Raised inside a run when its job was cancelled (caught by the run, never seen by users)."""


class Control:
    """What a run reports to and asks of its caller: progress in, cancellation out (thread-safe)."""

    def __init__(self, on_progress: Callable[[dict], None] | None = None):
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._progress: dict[str, Any] = {"phase": "starting", "epoch": 0, "epochs": 0, "step": 0,
                                          "total_steps": 0, "fraction": 0.0, "losses": {}, "seconds": 0.0}
        self._start = time.perf_counter()
        self._on_progress = on_progress

    @property
    def progress(self) -> dict:
        with self._lock:
            return {**self._progress, "losses": dict(self._progress["losses"])}

    def report(self, **changes) -> None:
        """Update the progress (and tell the `on_progress` callback)."""
        with self._lock:
            self._progress.update(changes, seconds=time.perf_counter() - self._start)
            total = self._progress["total_steps"]
            self._progress["fraction"] = self._progress["step"] / total if total else 0.0
        if self._on_progress is not None:
            self._on_progress(self.progress)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise `Cancelled` if the run should stop (called between optimisation steps)."""
        if self._cancel.is_set():
            raise Cancelled


class BackgroundJob:
    """What a fine-tuning run in the background offers, however it runs: `progress`, `cancel()`, `wait()`,
    `result()`, `done` and callbacks when it ends. A subclass runs it (`start()`) and calls `_finish`."""

    def __init__(self):
        self._result = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._callbacks: list[Callable] = []
        self._lock = threading.Lock()

    def _finish(self, result=None, error: BaseException | None = None) -> None:
        """Record how the run ended, wake up waiters, call the done callbacks."""
        self._result, self._error = result, error
        with self._lock:
            self._finished.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def add_done_callback(self, callback: Callable) -> None:
        """Call `callback(job)` once the run has finished (from the thread that sees it end; at once if it has)."""
        with self._lock:
            if not self._finished.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def __repr__(self) -> str:
        p = self.progress
        return f"{type(self).__name__}({p['phase']}, step {p['step']}/{p['total_steps']})"

    @property
    def progress(self) -> dict:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def error(self) -> BaseException | None:
        """The error the run failed with (None while it runs, or when it succeeded)."""
        return self._error

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds; True when the run has finished."""
        return self._finished.wait(timeout)

    def result(self, timeout: float | None = None):
        """The `FinetuneResult` (waits for the run); re-raises the run's error."""
        if not self.wait(timeout):
            raise TimeoutError(f"the fine-tuning job is still running after {timeout} s ({self.progress['phase']})")
        if self._error is not None:
            raise self._error
        return self._result


class FinetuneJob(BackgroundJob):
    """A fine-tuning run in a background thread.

    progress: dict with phase, epoch, epochs, step, total_steps, fraction (0..1), losses (the
    last step's total / ce / explanation) and seconds. cancel(): stop after the current step
    (the run then returns a result with `cancelled=True` and saves no version). result(): wait
    for and return the `FinetuneResult`, re-raising the run's error if it failed. A job made with
    start=False waits for `start()`.
    """

    def __init__(self, run: Callable[[Control], Any], on_progress: Callable[[dict], None] | None = None,
                 start: bool = True):
        super().__init__()
        self._control = Control(on_progress)
        self._thread = threading.Thread(target=self._main, args=(run,), name="xcam-viz-finetune", daemon=True)
        if start:
            self.start()

    def start(self) -> FinetuneJob:
        self._thread.start()
        return self

    def _main(self, run) -> None:
        try:
            result = run(self._control)
        except BaseException as err:            # handed to result()
            self._control.report(phase="failed")
            self._finish(error=err)
            return
        self._finish(result)

    @property
    def progress(self) -> dict:
        return self._control.progress

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def cancelled(self) -> bool:
        return self._control.cancel_requested

    def cancel(self) -> None:
        """Ask the run to stop; it does so after the step in flight (use `result()` to wait)."""
        self._control.cancel()
