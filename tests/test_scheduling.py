"""The scheduling rule of model work in the dashboard (`tasks.Runner`), driven step by step and by real threads.

A state machine submits, completes jobs in any order, fails them and drains, through an executor and a loop
that only record what they are given; a thread test races real workers against a loop that holds and
releases the document.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter

from bokeh.document import Document
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xcam_viz.dashboard import tasks
from xcam_viz.dashboard.tasks import Runner

CHANNELS = ["left", "right", "metric"]


class Recorder:
    """An executor and an event loop that keep what they are given: the test decides what runs when."""

    def __init__(self):
        self.jobs: list[tuple] = []                  # (fn, args) for workers
        self.callbacks: list[tuple] = []             # (fn, args) for the loop, run first in, first out
        self.timers: list[tuple] = []

    def submit(self, fn, *args):
        self.jobs.append((fn, args))

    def add_callback(self, fn, *args):
        self.callbacks.append((fn, args))

    def call_later(self, delay, fn, *args):
        self.timers.append((delay, fn, args))

    def run_job(self, index: int) -> None:
        fn, args = self.jobs.pop(index)
        fn(*args)

    def tick(self) -> None:
        fn, args = self.callbacks.pop(0)
        fn(*args)


class Scheduling(RuleBasedStateMachine):
    """Submit on any channel; run any waiting job (work or failing work); run the loop's next callback; drain."""

    def __init__(self):
        super().__init__()
        self.world = Recorder()
        self.runner = Runner(background=True, executor=self.world, loop=self.world)
        self.asked = Counter()                       # the test's own count of submits per channel
        self.failing: set[tuple[str, int]] = set()
        self.applied: list[tuple[str, int]] = []

    def work(self, channel: str, token: int):
        if (channel, token) in self.failing:
            raise RuntimeError(f"{channel} {token} failed")
        return token

    def apply(self, channel: str, token: int) -> None:
        self.applied.append((channel, token, self.runner.channels[channel].latest))   # checked below: an
                                                                                     # apply's errors are caught

    @rule(channel=st.sampled_from(CHANNELS), fails=st.booleans())
    def submit(self, channel, fails):
        self.asked[channel] += 1
        token = self.asked[channel]
        if fails:
            self.failing.add((channel, token))
        self.runner.submit(channel, lambda: self.work(channel, token), lambda result: self.apply(channel, result))

    @precondition(lambda self: self.world.jobs)
    @rule(data=st.data())
    def complete_any_job(self, data):
        self.world.run_job(data.draw(st.integers(0, len(self.world.jobs) - 1)))

    @precondition(lambda self: self.world.callbacks)
    @rule()
    def tick(self):
        self.world.tick()

    @rule()
    def drain(self):
        while self.world.jobs or self.world.callbacks:
            if self.world.callbacks:
                self.world.tick()
            else:
                self.world.run_job(0)
        for name, state in self.runner.channels.items():
            assert state.inflight is None and state.waiting is None
            assert state.shown == state.latest or state.failed == state.latest, (name, state)
            assert state.latest == self.asked[name]
            last = [token for channel, token, _ in self.applied if channel == name]
            assert (last and last[-1] == state.latest) or (name, state.latest) in self.failing

    @invariant()
    def results_are_applied_only_while_latest(self):
        assert all(token == latest for _, token, latest in self.applied), self.applied

    @invariant()
    def at_most_one_job_in_flight_per_channel(self):
        in_flight = Counter(args[0].name for _, args in self.world.jobs)         # _compute(state, ...)
        in_flight.update(args[1].name for _, args in self.world.callbacks)       # _locked(_finish, state, ...)
        assert all(n <= 1 for n in in_flight.values()), in_flight
        for name, state in self.runner.channels.items():
            assert (state.inflight is None) == (in_flight[name] == 0)


Scheduling.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_scheduling_rule = Scheduling.TestCase


def test_a_burst_computes_the_first_and_the_newest_only():
    world, computed, applied = Recorder(), [], []
    runner = Runner(background=True, executor=world, loop=world)
    runner.submit("c", lambda: computed.append(0) or 0, applied.append)
    world.run_job(0)                              # 0 computed; its result is on its way to the loop
    for i in (1, 2, 3):
        runner.submit("c", lambda i=i: computed.append(i) or i, applied.append)
    assert not world.jobs                         # one job in flight at a time; the newest request waits
    world.tick()                                  # 0 arrives superseded: not applied; 3 starts
    world.run_job(0)
    world.tick()
    assert computed == [0, 3] and applied == [3] and not runner.busy("c")


def test_a_job_superseded_while_it_waits_for_a_worker_is_skipped():
    world, computed, applied = Recorder(), [], []
    runner = Runner(background=True, executor=world, loop=world)
    runner.submit("c", lambda: computed.append(1) or 1, applied.append)
    runner.submit("c", lambda: computed.append(2) or 2, applied.append)
    runner.channels["c"].latest += 1              # as if a newer submit were on its way from another thread
    world.run_job(0)
    world.tick()
    assert computed == [] and applied == []


def test_errors_are_shown_marked_and_scheduling_goes_on(caplog):
    world, applied = Recorder(), []
    runner = Runner(background=True, executor=world, loop=world)
    runner.submit("c", lambda: 1 / 0, applied.append)
    world.run_job(0)
    world.tick()
    assert runner.channels["c"].failed == 1 and "ZeroDivisionError" in caplog.text
    runner.submit("c", lambda: 7, lambda r: (applied.append(r), 1 / 0))   # an apply that fails, too
    world.run_job(0)
    world.tick()
    runner.submit("c", lambda: 8, applied.append)
    world.run_job(0)
    world.tick()
    assert applied == [7, 8] and runner.channels["c"].shown == 3 and runner.channels["c"].failed == 2


def test_inline_runs_at_once_and_errors_stay_usable(caplog):
    runner, applied = Runner(background=False), []
    runner.submit("c", lambda: 1 / 0, applied.append)
    runner.submit("c", lambda: 7, applied.append)
    assert applied == [7] and "ZeroDivisionError" in caplog.text
    runner.submit("c", lambda: 8, lambda r: runner.submit("c", lambda: r + 1, applied.append))   # nested
    assert applied == [7, 9] and runner.channels["c"].shown == 4


def test_only_closing_the_session_stops_the_channels():
    world, applied = Recorder(), []
    runner = Runner(background=True, executor=world, loop=world)
    runner.submit("c", lambda: 1, applied.append)
    runner.submit("c", lambda: 2, applied.append)
    runner.close()
    world.run_job(0)
    world.tick()
    runner.submit("c", lambda: 3, applied.append)
    assert applied == [] and not world.jobs and not world.callbacks


def test_the_watchdog_logs_a_job_in_flight_too_long(caplog):
    world = Recorder()
    runner = Runner(background=True, executor=world, loop=world)
    runner.submit("slow", lambda: 1, lambda r: None)
    (delay, watch, args), = world.timers
    assert delay == tasks.WATCHDOG_S
    with caplog.at_level(logging.WARNING, "xcam_viz.dashboard"):
        watch(*args)
        assert "'slow' (request 1) in flight" in caplog.text
        caplog.clear()
        world.run_job(0)
        world.tick()
        watch(*args)                              # done by then: nothing to say
        assert caplog.text == ""


class Loop:
    """An event loop on its own thread (like tornado's `add_callback`, thread-safe), whose callbacks may
    hold and release a Bokeh document; it records the threads that touch the document's callbacks."""

    def __init__(self):
        self.queue: list[tuple] = []
        self.cv = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def add_callback(self, fn, *args):
        with self.cv:
            self.queue.append((fn, args))
            self.cv.notify()

    def call_later(self, delay, fn, *args):
        pass

    def run(self):
        while True:
            with self.cv:
                while not self.queue and not self.stopped:
                    self.cv.wait()
                if self.stopped:
                    return
                fn, args = self.queue.pop(0)
            fn(*args)

    def call(self, fn):
        """Run `fn()` on the loop thread and return its result."""
        done, out = threading.Event(), []
        self.add_callback(lambda: (out.append(fn()), done.set()))
        assert done.wait(10)
        return out[0]


def test_real_workers_racing_a_thread_that_holds_the_document_lose_nothing():
    loop, doc = Loop(), Document()
    touched: set[int] = set()
    original = doc.add_next_tick_callback
    doc.add_next_tick_callback = lambda fn: (touched.add(threading.get_ident()), original(fn))[1]
    loop.thread.start()
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(4)
    runner = loop.call(lambda: Runner(background=True, executor=pool, loop=loop))
    runner.doc = doc
    applied: dict[str, list[int]] = {c: [] for c in CHANNELS}
    holding = threading.Event()

    def hold_and_release():                      # the loop thread holds the document while workers finish
        while not holding.is_set():
            loop.call(lambda: (doc.hold("combine"), time.sleep(0.0005), doc.unhold()))
    holder = threading.Thread(target=hold_and_release)
    holder.start()
    rng = random.Random(0)
    try:
        for i in range(300):
            channel = rng.choice(CHANNELS)
            pause = rng.uniform(0, 0.002)
            loop.add_callback(runner.submit, channel, lambda i=i, p=pause: time.sleep(p) or i,
                              lambda r, c=channel: applied[c].append((r, threading.get_ident())))
            time.sleep(rng.uniform(0, 0.001))
        deadline = time.monotonic() + 20
        while any(runner.busy(c) for c in runner.channels) and time.monotonic() < deadline:
            time.sleep(0.01)
        states = loop.call(lambda: {name: (s.latest, s.shown, s.inflight) for name, s in runner.channels.items()})
    finally:
        holding.set()
        holder.join()
        pool.shutdown()
        loop.stopped = True
        loop.add_callback(lambda: None)
    assert all(shown == latest and inflight is None for latest, shown, inflight in states.values()), states
    assert all(applied[c] and applied[c] == sorted(applied[c]) for c in runner.channels), applied
    assert {thread for c in CHANNELS for _, thread in applied[c]} == {loop.thread.ident}
    assert touched <= {loop.thread.ident}, "a worker thread touched the document"
