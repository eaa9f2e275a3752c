"""A fair queue for fine-tuning runs on a shared server: at most `max_runs` at once, the others wait in
the order they came, one run per participant.

Runs are processes of their own (`process_job`: `ProcessJob`) started at a lower CPU priority (`NICE`)
on few torch threads, so the model work that draws the participants' maps keeps its share of the
cores. Each participant sees their place in line and an estimate of the wait (`RunQueue.estimate`),
and may cancel a queued run (it never starts) or a running one (it stops after the step in flight).
"""
from __future__ import annotations

import heapq
import os
import statistics
import threading
import time
from collections import deque

from .job import BackgroundJob
from .process import ProcessJob

NICE = 10                   # priority steps below the map workers
FINISHED = ("done", "failed", "cancelled")


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_max_runs() -> int:
    """Runs at once by default: one core fewer than there are (one stays for the maps), at least one."""
    return max(1, usable_cores() - 1)


class Ticket:
    """One participant's place in the queue: `state` queued, running, done, failed or cancelled.

    It reads like the job it holds (`progress`, `done`, `cancel()`, `wait()`, `result()`), and adds
    `position` (1 for the next run to start, 0 once started) and `estimate` (seconds until it starts).
    """

    def __init__(self, queue: RunQueue, job: BackgroundJob, owner: str, workspace: str, number: int):
        self.queue, self.job, self.owner, self.workspace, self.number = queue, job, owner, workspace, number
        self.state = "queued"
        self.submitted = queue.clock()
        self.started: float | None = None
        self.finished: float | None = None
        self._over = threading.Event()

    def __repr__(self) -> str:
        return f"Ticket({self.owner!r} #{self.number}, {self.state}" + (
            f", position {self.position})" if self.state == "queued" else ")")

    @property
    def position(self) -> int:
        return self.queue.position(self)

    @property
    def estimate(self) -> float | None:
        return self.queue.estimate(self)

    @property
    def progress(self) -> dict:
        """The job's progress; while waiting, its phase is "queued"."""
        return {**self.job.progress, "phase": "queued"} if self.state == "queued" else self.job.progress

    @property
    def done(self) -> bool:
        return self._over.is_set()

    def cancel(self) -> None:
        self.queue.cancel(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds; True once the run has finished or was cancelled."""
        return self._over.wait(timeout)

    def result(self, timeout: float | None = None):
        """The run's `FinetuneResult` (waits for it; re-raises its error); None if cancelled before it started."""
        if not self.wait(timeout):
            raise TimeoutError(f"the fine-tuning run is still {self.state} after {timeout} s")
        return self.job.result() if self.job.started else None


class RunQueue:
    """At most `max_runs` fine-tuning jobs at once; the others wait first come, first served.

    Args:
        max_runs: runs at once (default: `default_max_runs()`, one per core but one).
        nice: how many priority steps below the server a run's process works (`process_job`).
        threads: torch threads per run (default: the cores left for runs, shared among `max_runs`).

    Example:
        >>> queue = RunQueue(max_runs=1)
        >>> queue.max_runs, queue.snapshot()
        (1, {'running': 0, 'waiting': 0, 'max_runs': 1})
    """

    def __init__(self, max_runs: int | None = None, nice: int = NICE, threads: int | None = None, clock=time.monotonic):
        self.max_runs = default_max_runs() if max_runs is None else int(max_runs)
        if self.max_runs < 1:
            raise ValueError(f"max_runs must be at least 1 (runs at once), got {max_runs}")
        self.nice = nice
        self.threads = threads or max(1, (usable_cores() - 1) // self.max_runs)
        self.clock = clock
        self._lock = threading.RLock()
        self._waiting: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._latest: dict[str, Ticket] = {}          # per workspace, its newest ticket
        self._durations: deque[float] = deque(maxlen=10)
        self._numbers = 0

    def process_job(self, arguments: dict) -> ProcessJob:
        """A run of `xv.finetune(**arguments)` in a process of its own, at this queue's priority and threads."""
        return ProcessJob(arguments, self.nice, self.threads)

    def submit(self, job: BackgroundJob, owner: str, workspace: str | None = None) -> Ticket:
        """Queue a job not started yet (`process_job`, or a `FinetuneJob` made with start=False) for `owner` (one
        active run each); it starts when a slot is free."""
        with self._lock:
            active = next((t for t in (*self._running, *self._waiting) if t.owner == owner), None)
            if active is not None:
                where = f"waiting (position {self.position(active)})" if active.state == "queued" else "running"
                raise ValueError(f"you have a fine-tuning run {where} already: wait for it, or cancel it first")
            self._numbers += 1
            ticket = Ticket(self, job, owner, workspace or owner, self._numbers)
            self._waiting.append(ticket)
            self._latest[ticket.workspace] = ticket
            self._start_next()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """A queued run leaves the line and never starts; a running one stops after its current step."""
        with self._lock:
            if ticket.state == "queued":
                self._waiting.remove(ticket)
                ticket.job.cancel()                     # (never started: it lets go of what it would have run on)
                self._close(ticket, "cancelled")
                return
        if ticket.state == "running":
            ticket.job.cancel()

    def position(self, ticket: Ticket) -> int:
        """1 for the next run to start, 2 for the one after...; 0 once it has started (or left the line)."""
        with self._lock:
            return self._waiting.index(ticket) + 1 if ticket in self._waiting else 0

    def estimate(self, ticket: Ticket) -> float | None:
        """Seconds until a queued run starts (0 once started): the running runs' remaining time, then a typical
        run for each one ahead; None until one run has finished or shown how fast it goes."""
        with self._lock:
            if ticket not in self._waiting:
                return 0.0
            now = self.clock()
            projected = [self._projected_total(t, now) for t in self._running]
            typical = statistics.median(self._durations) if self._durations else (
                max(projected) if projected and None not in projected else None)
            if typical is None:
                return None
            slots = [max(0.0, (total or typical) - (now - t.started)) for t, total in zip(self._running, projected)]
            slots += [0.0] * (self.max_runs - len(slots))
            heapq.heapify(slots)
            for waiting in self._waiting:
                start = heapq.heappop(slots)
                if waiting is ticket:
                    return start
                heapq.heappush(slots, start + typical)
        return None

    @staticmethod
    def _projected_total(ticket: Ticket, now: float) -> float | None:
        """A running run's whole duration, from how far its training steps have come (None: too early to tell)."""
        fraction = ticket.job.progress["fraction"]
        return (now - ticket.started) / fraction if fraction >= 0.1 else None

    def latest(self, workspace: str) -> Ticket | None:
        """The newest run a workspace launched since the server started."""
        with self._lock:
            return self._latest.get(workspace)

    def snapshot(self) -> dict:
        with self._lock:
            return {"running": len(self._running), "waiting": len(self._waiting), "max_runs": self.max_runs}

    def _start_next(self) -> None:
        with self._lock:
            while self._waiting and len(self._running) < self.max_runs:
                ticket = self._waiting.popleft()
                ticket.state, ticket.started = "running", self.clock()
                self._running.append(ticket)
                ticket.job.add_done_callback(lambda job, ticket=ticket: self._finished(ticket))
                ticket.job.start()

    def _finished(self, ticket: Ticket) -> None:
        """A job's thread ends: record how long it ran, close its ticket, start the next one."""
        state = "failed" if ticket.job.error is not None else "cancelled" if ticket.job.result().cancelled else "done"
        with self._lock:
            self._running.remove(ticket)
            if state == "done":
                self._durations.append(self.clock() - ticket.started)
            self._close(ticket, state)
            self._start_next()

    def _close(self, ticket: Ticket, state: str) -> None:
        ticket.state, ticket.finished = state, self.clock()
        ticket._over.set()
