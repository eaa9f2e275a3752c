"""Load: 20 users in real Chromium pages (4 browsers x 5 contexts) on one served demo for two minutes.

Users arrive one every ARRIVAL seconds (their pages load one at a time); once all 20 are open they
keep acting for SECONDS. Each user works on the Feedback tab (the maps and the probe keep updating):
clicks thumbnails, picks layers and methods, paints a stroke and saves it under its own author name,
with a pause between actions. After every action its state probe must show its own
session and its own choices only. A selection's latency is the time from the click to the probe
showing the new image with a new map; its p95 over the full-load window must be at most P95_GOAL.
At the end: every saved row is in the SQLite store, the server log and the consoles are clean, and the
server's RSS returns to within RSS_MARGIN of the one-session baseline once the sessions have closed.
"""
from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections import Counter

import numpy as np
import pytest

from xcam_viz.dashboard.controls import METHOD_LABELS

from .harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    demo_servers,
    image_point,
    tile_at,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SESSIONS, BROWSERS = 20, 4
SECONDS = 120                # with all sessions open
ARRIVAL = 3                  # seconds between arrivals: opening a session costs the server ~3-5 s of CPU
PAUSE = (1.0, 3.0)           # a user's pause between actions, seconds
LOST = 60                    # a choice not shown after this long counts as lost
TIMEOUT = 180                # the longest wait for one action's result: while sessions open, actions queue
                             # behind them (one event loop on 2 shared cores)
P95_GOAL = 1.0               # seconds from a thumbnail click to its new map
RSS_MARGIN = 200             # MB over the one-session baseline allowed once every session has closed
METHODS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam"]    # the quick ones

STATE_JS = """() => {
  let host = window.__xvProbe;
  if (!host || !host.isConnected) {                     // the probe's element, inside Bokeh's shadow roots
    const find = (root) => {
      const hit = root.querySelector('.xv-state');
      if (hit) return hit;
      for (const el of root.querySelectorAll('*')) {
        const inner = el.shadowRoot && find(el.shadowRoot);
        if (inner) return inner;
      }
      return null;
    };
    host = window.__xvProbe = find(document);
  }
  const pre = host && (host.shadowRoot || host).querySelector('.xv-state-json');
  return pre ? JSON.parse(pre.textContent) : null;
}"""


class User:
    """One user: a page of its own browser context, what it has chosen, and what it measured."""

    def __init__(self, page, index: int):
        self.page, self.author, self.rng = page, f"load-user-{index:02d}", random.Random(index)
        self.expected: dict = {}
        self.errors: list[str] = []
        self.lost: list[str] = []                            # choices the probe never showed
        self.saved = self.actions = 0
        self.latency: list[float] = []                       # seconds from a click to its new map, at full load
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    async def state(self) -> dict:
        return await self.page.evaluate(f"({STATE_JS})()")

    async def wait(self, what: str, condition: str, arg=None, timeout: float = TIMEOUT) -> dict:
        """Wait until the probe satisfies the JS `condition` on `s` (and `a`), then check it shows this
        user's session and choices only."""
        try:
            await self.page.wait_for_function(f"(a) => {{ const s = ({STATE_JS})(); return !!s && ({condition}); }}",
                                              arg=arg, polling=50, timeout=timeout * 1000)
        except Exception as err:                        # say what was awaited
            raise AssertionError(f"{self.author}: {what} not shown within {TIMEOUT} s: {await self.state()}") from err
        current = await self.state()
        mine = {k: current[k] for k in self.expected}
        assert mine == self.expected, f"{self.author} sees another state: {mine} != {self.expected}"
        return current

    async def open(self, url: str) -> None:
        await self.page.goto(url, timeout=TIMEOUT * 1000)
        s = await self.wait("the first overlay", "s.left !== ''")
        self.expected = {k: s[k] for k in ("session", "sample", "layer", "method")}
        labels = await self.page.locator(".xv-layer select option").all_text_contents()
        self.layers = {label: label.split(" · ")[0] for label in labels}
        self.methods = {METHOD_LABELS.get(m, m): m for m in METHODS}
        await self.page.locator(".bk-tab", has_text="Feedback").click()   # users paint here; the maps and the
        author = self.page.locator(".bk-input-group", has_text="Author").locator("input")   # probe go on
        await author.fill(self.author)                     # updating. The first action waits for the probe, so
        await author.press("Enter")                        # the tab's redraw has arrived before any stroke

    async def select_image(self, full_load: bool) -> None:
        s = await self.state()
        i = self.rng.choice([i for i, sample in enumerate(s["page_ids"]) if sample != s["sample"]])
        self.expected["sample"] = s["page_ids"][i]
        box = await self.page.locator(".xv-montage .bk-Canvas").bounding_box()     # clicks elsewhere may scroll
        start = time.perf_counter()
        await self.page.mouse.click(*tile_at(box, s, i))
        await self.wait("the selected image", "s.sample === a.sample && s.left_sample === a.sample",
                        {"sample": self.expected["sample"]})
        if full_load:
            self.latency.append(time.perf_counter() - start)

    async def choose(self, key: str, options: dict[str, str]) -> None:
        label = self.rng.choice([label for label, value in options.items() if value != self.expected[key]])
        self.expected[key] = options[label]
        select = self.page.locator(f".xv-{key} select")
        await select.select_option(label=label)
        want = {"layer": self.expected["layer"], "method": self.expected["method"],
                "title": f"{self.expected['method']} · "}     # not the layer: block4 and block4.3 share one map
        shown = "s.layer === a.layer && s.method === a.method && s.left_title.startsWith(a.title)"
        try:
            await self.wait(f"{key} {label}", shown, want, timeout=LOST)
        except AssertionError as err:             # recorded (the test fails on it), then chosen again to go on
            self.lost.append(f"{self.author}: {key} {label!r} (the page's select shows "
                             f"{await select.input_value()!r}): {str(err)[:200]}")
            await select.select_option(label=label)
            await self.wait(f"{key} {label}", shown, want)

    async def annotate(self) -> None:
        page = self.page
        canvas = page.locator(".xv-brush .bk-Canvas")
        await canvas.wait_for(state="visible")
        box, s = await canvas.bounding_box(), await self.state()
        col, row = self.rng.uniform(12, 40), self.rng.uniform(12, 40)
        points = [(col, row), (col + 8, row + 6), (col + 14, row + 2)]
        to_page = [image_point(box, s["brush_frame"], s["image_shape"], c, r) for c, r in points]
        await page.mouse.move(*to_page[0])
        await page.mouse.down()
        for x, y in to_page[1:]:
            await page.mouse.move(x, y, steps=6)
        await page.mouse.up()
        await self.wait("the painted stroke", "s.strokes === 1")
        await page.locator(".xv-save button").click()
        await self.wait("the saved annotation", "s.strokes === 0 && s.revision > a", s["revision"])
        self.saved += 1

    async def run(self, clock: dict) -> None:
        """Act until the clock's deadline (set once every user has arrived), pausing between actions."""
        await self.choose("method", self.methods)
        while clock["until"] is None or time.monotonic() < clock["until"]:
            action = self.rng.choices(["image", "layer", "method", "annotate"], [4, 2, 2, 2])[0]
            if action == "image":
                await self.select_image(full_load=clock["until"] is not None)
            elif action == "annotate":
                await self.annotate()
            else:
                await self.choose(action, self.layers if action == "layer" else self.methods)
            self.actions += 1
            await asyncio.sleep(self.rng.uniform(*PAUSE))
        if not self.saved:
            await self.annotate()


async def drive(server) -> dict:
    """The warm-up session, the baseline RSS, then the 20 users; returns what was measured."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browsers = [await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS) for _ in range(BROWSERS)]
        warm_context = await browsers[0].new_context(viewport=VIEWPORT)
        warm = User(await warm_context.new_page(), 99)             # caches and lazy imports of a first session
        await warm.open(server.url)
        await warm.choose("method", warm.methods)
        await warm.annotate()
        await warm_context.close()
        await asyncio.sleep(2)
        baseline, clock, users, opening = server.rss_mb(), {"until": None}, [], asyncio.Lock()
        began = time.monotonic()

        async def arrive(i: int) -> User:
            await asyncio.sleep(i * ARRIVAL)
            context = await browsers[i % BROWSERS].new_context(viewport=VIEWPORT)
            user = User(await context.new_page(), i)
            async with opening:                 # one page load at a time: the server builds a session's page
                await user.open(server.url)     # in its request, so a pile of them would time out
            users.append(user)
            print(f"load: {len(users)} sessions open after {time.monotonic() - began:.0f} s", flush=True)
            if len(users) == SESSIONS:
                clock["until"] = time.monotonic() + SECONDS
            await user.run(clock)
            return user

        done = await asyncio.gather(*(arrive(i) for i in range(SESSIONS)))
        for user in done:                                   # every session still shows its own choices
            await user.wait("its own state at the end", "true")
        peak = server.rss_mb()
        for user in done:
            await user.page.context.close()
        for b in browsers:
            await b.close()
    after, deadline = server.rss_mb(), time.monotonic() + 60
    while after > baseline + RSS_MARGIN and time.monotonic() < deadline:   # Bokeh drops a closed session's
        await asyncio.sleep(2)                                           # document 15-32 s after it closed
        after = server.rss_mb()
    return {"users": [warm, *done], "baseline": baseline, "peak": peak, "after": after}


@pytest.mark.xfail(reason="one of the 20 users' maps stops updating: in the last run (2026-12-01, quiet machine, all "
                   "20 sessions open after 111 s) one user's left map kept the previous method for 240 s while its "
                   "selection and right map had moved on, and the other users went on; the full-load window was never "
                   "completed; see docs/STATUS.md issue 14 item 5", strict=False)
def test_twenty_concurrent_sessions(tmp_path):
    from xcam_viz.feedback import FeedbackStore

    servers = demo_servers(tmp_path)
    server = next(servers)
    result: dict = {}

    def run():                                   # its own thread: no event loop of pytest-playwright's in the way
        try:
            result.update(asyncio.run(drive(server)))
        except BaseException as err:             # noqa: BLE001 - re-raised in the test's thread
            result["error"] = err
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if "error" in result:
            raise AssertionError(f"server log:\n{server.log.read_text()[-3000:]}") from result["error"]
        users = result["users"]
        latency = np.array([seconds for u in users for seconds in u.latency])
        p50, p95 = np.percentile(latency, [50, 95])
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        print(f"load: {SESSIONS} sessions, {sum(u.actions for u in users)} actions, {sum(u.saved for u in users)} "
              f"annotations; {latency.size} selections at full load: p50 {p50:.2f} s, p95 {p95:.2f} s, "
              f"max {latency.max():.2f} s; server RSS {result['baseline']:.0f} MB before, {result['peak']:.0f} MB "
              f"with the sessions open, {result['after']:.0f} MB after they closed; load average {' '.join(load)}")
        print("lost choices:", [lost for u in users for lost in u.lost], flush=True)
        saved = Counter(a.author for a in FeedbackStore(server.feedback).annotations())
        assert saved == {u.author: u.saved for u in users}          # every session's rows, none lost
        log = server.log.read_text()
        assert not re.search(r"Traceback|Error|Exception", log), log[-3000:]
        assert [e for u in users for e in u.errors] == []
        assert [lost for u in users for lost in u.lost] == []
        assert latency.size >= SESSIONS and p95 <= P95_GOAL, f"selection p95 {p95:.2f} s at full load"
        assert result["after"] < result["baseline"] + RSS_MARGIN, (
            f"server RSS {result['after']:.0f} MB after the sessions closed, {result['baseline']:.0f} MB before")
    finally:
        next(servers, None)                      # stops the server
