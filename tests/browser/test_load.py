"""Load: 20 concurrent sessions against one served dashboard for two minutes (Bokeh client sessions).

Each simulated user pulls its own session with bokeh.client (what a browser tab gets, minus the
rendering) and, in a bounded loop, clicks a thumbnail (a Tap event on the montage), picks a layer and
a method (widget values), paints a stroke and saves it under its own author name (a ButtonClick).
After every action it waits until its session's state probe shows the result, and checks that the
probe shows its own session and its own choices only.
"""
from __future__ import annotations

import html
import json
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from bokeh.client import pull_session
from bokeh.events import ButtonClick, DocumentReady, Tap
from tornado.ioloop import IOLoop

from .harness import Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SESSIONS = 20
SECONDS = 120
METHODS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam"]    # the quick ones
ARRIVAL = 2                  # seconds between arrivals: opening a session costs the server ~3-5 s of CPU
ACTION_TIMEOUT = 90          # while sessions open, an action waits behind them (one event loop, 2 cores)
RSS_MARGIN = 150             # MB over the one-session baseline allowed once every session has closed


class TapAt(Tap):
    """A tap at a data point: Bokeh's Python Tap event serialises only its model (a browser also sends
    the coordinates)."""

    def event_values(self) -> dict:
        return {**super().event_values(), "sx": self.sx, "sy": self.sy, "x": self.x, "y": self.y}


class User:
    """One simulated user: its own Bokeh client session of the dashboard, and what it has chosen.

    The session's IO loop runs in a thread of its own (so the server's patches are applied as they
    come: `force_roundtrip` would drop them); every change to the document is made on that loop.
    """

    def __init__(self, url: str, index: int, seed: int):
        self.loop = IOLoop(make_current=False)
        self.session = pull_session(url=url, io_loop=self.loop)
        self.thread = threading.Thread(target=self.session._loop_until_closed, daemon=True)   # "for testing"
        self.thread.start()
        self.author, self.rng = f"load-user-{index:02d}", random.Random(seed)
        self.doc, self.saved, self.actions = self.session.document, 0, 0
        self.probe = self._model(css="xv-state")
        self.montage, self.save_button = self._model(css="xv-montage"), self._model(css="xv-save")
        self.layer, self.method = self._model(css="xv-layer"), self._model(css="xv-method")
        self.author_input = self._model(title="Author")
        brush = self._model(css="xv-brush")
        self.strokes = next(t for t in brush.toolbar.tools if type(t).__name__ == "FreehandDrawTool").renderers[0]
        self.expected = {"session": self.session.id}
        self.send(DocumentReady())                    # what BokehJS sends once a page has rendered

    def _model(self, css: str | None = None, title: str | None = None):
        found = [m for m in self.doc.models if (css and css in (getattr(m, "css_classes", None) or []))
                 or (title and getattr(m, "title", None) == title)]
        assert len(found) == 1, f"expected one model with css {css!r} / title {title!r}, found {found}"
        return found[0]

    def on_loop(self, change) -> None:
        """Make a change to the document on the session's loop (which sends it to the server)."""
        self.loop.add_callback(change)

    def state(self) -> dict:
        text = html.unescape(self.probe.text)
        return json.loads(re.search(r"<pre[^>]*>(.*)</pre>", text, re.S).group(1))

    def wait(self, what: str, predicate=lambda st: True, changing: str | None = None) -> dict:
        """Wait until the probe shows what this user expects and satisfies `predicate`. Meanwhile it must
        show this user's session, and keep every choice but the one being changed: others' actions never leak in."""
        deadline = time.monotonic() + ACTION_TIMEOUT
        while True:
            current = self.state()
            mine = {k: current.get(k) for k in self.expected}
            stable = {k: v for k, v in self.expected.items() if k != changing}
            assert {k: mine[k] for k in stable} == stable, f"{self.author} sees another state: {mine} != {stable}"
            if mine == self.expected and predicate(current) and self.shown(current):
                return current
            assert time.monotonic() < deadline, (f"{self.author}: {what} not shown within {ACTION_TIMEOUT} s "
                                                 f"(expected {self.expected}): {current}")
            time.sleep(0.1)

    def shown(self, state: dict) -> bool:
        """Whether the left map is the one of this user's method and layer."""
        method, layer = self.expected.get("method"), self.expected.get("layer")
        return state["left"] != "" and (method is None or layer is None
                                        or state["left_title"].startswith(f"{method} · {layer} · "))

    def send(self, event) -> None:
        self.on_loop(lambda: self.doc.callbacks.send_event(event))

    def select_image(self) -> None:
        s = self.state()
        i = self.rng.randrange(len(s["page_ids"]))
        grid = s["grid"]
        height, cell = grid["size"][0], grid["size"][0] / grid["rows"]
        row, col = divmod(i, grid["cols"])
        x, y = (col + 0.5) * grid["tile"], height - (row + 0.5) * cell
        self.expected["sample"] = s["page_ids"][i]
        self.send(TapAt(self.montage, sx=0, sy=0, x=x, y=y))
        self.wait("the selected image", changing="sample")

    def choose(self, widget, key: str, values: list[str]) -> None:
        value = self.rng.choice(values)
        self.expected[key] = value
        self.on_loop(lambda: setattr(widget, "value", value))
        self.wait(f"{key} {value}", changing=key)

    def annotate(self) -> None:
        x0, y0 = self.rng.uniform(10, 30), self.rng.uniform(10, 30)
        source = self.strokes.data_source
        self.on_loop(lambda: setattr(self.author_input, "value", self.author))
        self.on_loop(lambda: setattr(source, "data", {**{k: [] for k in source.data},
                                                      "xs": [[x0, x0 + 10, x0 + 20]], "ys": [[y0, y0 + 15, y0 + 5]]}))
        self.wait("the painted stroke", lambda st: st["strokes"] == 1)
        revision = self.state()["revision"]
        self.send(ButtonClick(model=self.save_button))
        self.wait("the saved annotation", lambda st: st["strokes"] == 0 and st["revision"] > revision)
        self.saved += 1

    def run(self, until: float) -> None:
        """Act until the deadline: select, change layer / method, annotate (bounded by the clock)."""
        layers = [value for value, _label in self.layer.options]          # options are (value, label) pairs
        height, width = self.wait("the first overlay")["grid"]["size"]
        self.on_loop(lambda: self.montage.x_range.update(start=0, end=width))   # a browser syncs the ranges it
        self.on_loop(lambda: self.montage.y_range.update(start=0, end=height))  # draws; taps are checked against them
        self.choose(self.method, "method", METHODS)            # from now on the probe checks both
        self.choose(self.layer, "layer", layers)
        while time.monotonic() < until:
            action = self.rng.choices([self.select_image, lambda: self.choose(self.layer, "layer", layers),
                                       lambda: self.choose(self.method, "method", METHODS), self.annotate],
                                      [3, 2, 2, 2])[0]
            action()
            self.actions += 1
            time.sleep(self.rng.uniform(0.2, 1.0))
        if not self.saved:
            self.annotate()

    def close(self) -> None:
        self.on_loop(self.session.close)
        self.thread.join(10)


@pytest.mark.xfail(reason="client-side limit (2026-11-22): Bokeh changes the dashboard makes outside the document "
                   "lock go through Panel's `unlocked`, which writes its own patch messages; the Python Bokeh client "
                   "then fails in ClientConnection._next and stops seeing updates (real browsers are fine: the "
                   "browser soak passes). Drive the sessions with Playwright pages or BokehJS instead, then drop "
                   "this mark", strict=False)
def test_twenty_concurrent_sessions(tmp_path):
    import panel.models  # noqa: F401 - registers Panel's Bokeh models, so client sessions can decode the page
    import panel.models.layout
    import panel.models.location  # noqa: E401,F401

    from xcam_viz.feedback import FeedbackStore

    feedback = tmp_path / "feedback.db"
    server = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--feedback", str(feedback)], feedback)
    users: list[User] = []
    try:
        warm = User(server.url, 99, 0)                    # a first session: caches and lazy imports
        warm.run(time.monotonic())
        warm.close()
        time.sleep(2)
        baseline = server.rss_mb()
        until, opening = time.monotonic() + SECONDS, threading.Lock()

        def simulate(i: int) -> User:
            time.sleep(i * ARRIVAL)
            with opening:                                 # one at a time, as the server builds them: a pile of
                user = User(server.url, i, seed=i)        # waiting connections would hit the 20 s connect timeout
            users.append(user)
            user.run(until)
            return user

        with ThreadPoolExecutor(SESSIONS) as pool:
            done = list(pool.map(simulate, range(SESSIONS)))
        for user in done:                                 # every session still shows its own choices
            user.wait("its own state at the end")
        peak = server.rss_mb()
        for user in done:
            user.close()
        users.clear()
        deadline, after = time.monotonic() + 45, server.rss_mb()
        while after > baseline + RSS_MARGIN and time.monotonic() < deadline:    # Bokeh drops a closed
            time.sleep(2)                                 # session's document 15-32 s after it closed
            after = server.rss_mb()
        print(f"load: {SESSIONS} sessions, {sum(u.actions for u in done)} actions, "
              f"{sum(u.saved for u in done)} annotations; server RSS {baseline:.0f} MB before, {peak:.0f} MB "
              f"with the sessions open, {after:.0f} MB after they closed")
        saved = Counter(a.author for a in FeedbackStore(feedback).annotations())
        assert saved == {u.author: u.saved for u in [warm, *done]}         # every session's rows, none lost
        log = server.log.read_text()
        assert not re.search(r"Traceback|Error|Exception", log), log[-3000:]
        assert after < baseline + RSS_MARGIN, (
            f"server RSS {after:.0f} MB after the sessions closed, {baseline:.0f} before")
    finally:
        for user in users:
            user.close()
        server.stop()
