"""A fine-tuning run in a process of its own, at a lower CPU priority: how a server runs them.

The threads of one Python process take turns holding one interpreter lock. A run training in a
server's thread takes turns with the event loop and the map workers, and a run given a lower priority
would stall them all whenever the scheduler passes it over while it holds the lock. In a process of its
own a run competes only for CPU time, which the operating system shares out by priority (`nice`);
`benchmarks/workshop_priority.py` measures map times beside a run of either kind.

The child is forked from a fork server (started once, with torch and xcam_viz loaded; a fresh
interpreter where there is none), gets `xv.finetune`'s arguments by pickle and runs it there. It
sends its progress through a pipe, stops after the current step when asked to cancel or when the
server has gone (so nothing half-done is saved), and sends back the `FinetuneResult`. Messages are plain
pickles (tensors copied): torch's own multiprocessing pickler would pass them through shared memory,
which a container may have little of, and which needs the sender alive until they are read.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import threading

from .job import BackgroundJob

POLL_S = 0.2                 # how often the child reports progress and looks for a cancel request
_context = None


def context():
    """The multiprocessing context runs start from: a fork server with torch loaded, else spawn."""
    global _context
    if _context is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(["xcam_viz.finetune"])
        else:
            _context = multiprocessing.get_context("spawn")
    return _context


class ProcessJob(BackgroundJob):
    """`xv.finetune(**arguments)` in a child process once `start()`ed, `nice` steps below this process's CPU
    priority on `threads` torch threads; read and cancelled like a `FinetuneJob`.

    Example:
        >>> job = ProcessJob(dict(model=None, ds=None, feedback=None), nice=10, threads=1)
        >>> job.started, job.progress["phase"]
        (False, 'starting')
    """

    def __init__(self, arguments: dict, nice: int = 0, threads: int | None = None):
        super().__init__()
        self.arguments, self.nice, self.threads = arguments, nice, threads
        self._progress = {"phase": "starting", "epoch": 0, "epochs": 0, "step": 0, "total_steps": 0,
                          "fraction": 0.0, "losses": {}, "seconds": 0.0}
        self._cancel = self._started = False
        self._process = None
        self._conn = None

    def start(self) -> ProcessJob:
        """Start the child; a thread of this process sends it the arguments (pickling them takes a moment for
        large in-memory data, so not on the caller's thread) and follows it."""
        self._started = True
        threading.Thread(target=self._run, name="xcam-viz-finetune-listener", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            # the child gets its own copy; the queue keeps each workspace's newest job, which held on to the
            # run's training images (~100 MB on the demo) for the server's lifetime
            arguments, self.arguments = pickle.dumps(self.arguments), None
            ctx = context()
            mine, theirs = ctx.Pipe()
            self._process = ctx.Process(target=_child, args=(theirs, self.nice, self.threads),
                                        name="xcam-viz-finetune", daemon=True)
            self._process.start()
            mine.send_bytes(arguments)           # through the pipe, so the child can let go of the bytes
            del arguments
        except Exception as err:                 # noqa: BLE001 - e.g. a model that cannot be pickled
            if "bootstrapping phase" in str(err):   # a script's top level launched it while being imported
                err = RuntimeError("a fine-tuning run starts a process of its own, which imports the script that "
                                   "launched it: launch it under `if __name__ == \"__main__\":`")
            self._finish(error=err)
            return
        theirs.close()
        self._conn = mine
        if self._cancel:
            self._send("cancel")
        self._listen()

    def _send(self, message) -> None:
        try:
            _send(self._conn, message)
        except OSError:                          # the child has ended
            pass

    def _listen(self) -> None:
        """Follow the child's messages until its result or error (or its death) ends the run."""
        result, error = None, None
        try:
            while True:
                kind, value = _receive(self._conn)
                if kind == "progress":
                    self._progress = value
                    continue
                result, error = (value, None) if kind == "result" else (None, value)
                break
        except (EOFError, OSError):
            self._process.join(5)
            error = RuntimeError(f"the fine-tuning process ended without a result (exit code "
                                 f"{self._process.exitcode}): was it killed, or out of memory?")
        self._process.join(30)
        self._conn.close()
        self._finish(result, error)

    @property
    def progress(self) -> dict:
        return self._progress

    @property
    def started(self) -> bool:
        return self._started

    @property
    def pid(self) -> int | None:
        """The child process's id (None until it has started)."""
        return None if self._process is None else self._process.pid

    @property
    def cancelled(self) -> bool:
        return self._cancel

    def cancel(self) -> None:
        """Ask the run to stop; it does so after the step in flight (use `result()` to wait)."""
        self._cancel = True
        if not self._started:
            self.arguments = None                # it never starts: let go of its data
        if self._conn is not None:
            self._send("cancel")


def _send(conn, message) -> None:
    conn.send_bytes(pickle.dumps(message))


def _receive(conn):
    return pickle.loads(conn.recv_bytes())


def _child(conn, nice: int, threads: int | None) -> None:
    """The child's main: run xv.finetune in a thread, relay its progress, pass on a cancel request."""
    import torch

    from .core import finetune

    if nice:
        os.nice(nice)
    if threads:
        torch.set_num_threads(threads)
    try:
        job = finetune(**_receive(conn), background=True)
    except Exception as err:                     # noqa: BLE001 - e.g. settings the core refuses: sent back
        _reply(conn, "error", err)
        return
    sent = None
    while not job.wait(POLL_S):
        try:
            if conn.poll() and _receive(conn) == "cancel":
                job.cancel()
            if job.progress != sent:
                sent = job.progress
                _send(conn, ("progress", sent))
        except (EOFError, OSError):              # the server has gone: stop, and save nothing
            job.cancel()
    try:
        _reply(conn, "progress", job.progress)
        _reply(conn, "result", job.result())
    except Exception as err:                     # noqa: BLE001 - the run's own error, sent back
        _reply(conn, "error", err)


def _reply(conn, kind: str, value) -> None:
    """Send a message to the server if it is still there; an error that cannot be pickled goes as text."""
    try:
        message = pickle.dumps((kind, value))
    except Exception:                            # noqa: BLE001 - unpicklable
        message = pickle.dumps((kind, RuntimeError(f"{type(value).__name__}: {value}")))
    try:
        conn.send_bytes(message)
    except (EOFError, OSError):
        pass
