"""Load: a 20-participant workshop in real Chromium pages (4 browsers x 5 contexts) on one served demo, with a
workspace per participant (`--workspaces per-user`: each browser context is an anonymous participant).

Participants arrive one after another (their pages load one at a time) and act until SECONDS after the last
one arrived, thinking THINK seconds (8 s on average) between actions: they select images, switch layer and
method, paint a stroke and save it under their own author name; LAUNCHERS of them launch a one-epoch
fine-tuning run after their first annotation (and cancel it at the end if it has not finished, so no run
outlives the test). The browsers run niced below the server. Every action must show in the participant's own
state probe (no action lost, no other session's state), and after its final action every page must show its
last choice, with the probe's sequence number equal to the server's, within FINAL seconds. At the end: every
participant's workspace holds exactly their saved rows (none lost, none of another's), the server log and the
consoles are clean, and once the pages have closed every session's dashboard is freed and the server's RSS
returns to within RSS_MARGIN of the one-session baseline. The server-side latency (a request's submit to its
patches written, from the server's `/xcam-viz/stats`) and the CPU time of the server and of the browsers go to
load.md (benchmarks/results/ with XCAM_VIZ_PUBLISH=1, else the test's tmp_path); no latency goal is asserted:
20 browsers share the 2 cores.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import stat
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xcam_viz.dashboard.controls import METHOD_LABELS
from xcam_viz.dashboard.workspaces import folder_name

from .harness import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, VIEWPORT, Server, image_point, tile_at

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SESSIONS, BROWSERS = 20, 4
SECONDS = 30                 # of acting once every participant has arrived (each has done every kind of action)
THINK = (4.0, 12.0)          # seconds between a participant's actions (uniform: 8 s on average)
BROWSER_NICE = 5             # the browsers' niceness above the server's
TIMEOUT = 90                 # the longest wait for one action's result (while pages open, actions queue)
FINAL = 10                   # seconds from a participant's final action to its page showing the server's state
LAUNCHERS = 5                # participants who launch a fine-tuning run (one epoch)
STROKE_TRIES = 5             # strokes a participant paints before one is drawn on the page (see annotate)
RSS_MARGIN = 200             # MB over the one-session baseline allowed once every session has closed
METHODS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam"]    # the quick ones
ACTIONS = ["image", "layer", "method", "annotate"]

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

STROKES_JS = """() => Array.from(window.Bokeh ? Bokeh.documents[0].all_models : [])
  .filter((m) => m.data && m.data.xs !== undefined).map((m) => m.data.xs.length)"""


@pytest.fixture
def workshop(tmp_path):
    """`xcam-viz serve --workspaces per-user` of the demo; `server.workspaces` is the workspaces' folder."""
    feedback = tmp_path / "feedback.db"
    server = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--feedback", str(feedback),
                     "--workspaces", "per-user", "--workspace-dir", str(tmp_path / "workspaces")], feedback)
    server.workspaces = tmp_path / "workspaces"
    yield server
    server.stop()


def server_stats(server, session: str | None = None) -> dict:
    query = f"?session={session}" if session else ""
    with urllib.request.urlopen(f"{server.url}xcam-viz/stats{query}", timeout=10) as answer:
        return json.load(answer)


def cpu_seconds(pids) -> float:
    """User + system CPU seconds of the processes (those gone meanwhile count nothing)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every process of the machine has spent (all cores) since boot."""
    user, nice, system, idle, iowait, *rest = map(int, Path("/proc/stat").read_text().split("\n")[0].split()[1:])
    return (user + nice + system + sum(rest[:3])) / os.sysconf("SC_CLK_TCK")


def browser_pids() -> list[int]:
    """This test's Chromium processes (descendants of this process named chromium or chrome)."""
    parents, names = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            parents[int(entry.name)], names[int(entry.name)] = int(tail.split()[1]), head.split("(", 1)[1]

    def mine(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False
    return [pid for pid, name in names.items() if "chrom" in name and mine(pid)]


def niced_chromium(folder: Path) -> str:
    """A launcher that runs Chromium BROWSER_NICE steps nicer than the server (its renderers inherit it)."""
    script = folder / "chromium-niced"
    script.write_text(f'#!/bin/sh\nexec nice -n {BROWSER_NICE} {CHROMIUM} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


class Participant:
    """One participant: a page of its own browser context, what it has chosen, and what it measured."""

    def __init__(self, page, index: int, server):
        self.page, self.server, self.author, self.rng = page, server, f"load-user-{index:02d}", random.Random(index)
        self.expected: dict = {}
        self.errors: list[str] = []
        self.saved = self.actions = self.presses = 0
        self.workspace, self.launches = "", int(index < LAUNCHERS)    # (the warm-up participant, 99, launches one)
        self.run_ended = ""                       # how this participant's run ended: done, cancelled (at the end)
        self.latency: list[float] = []            # seconds from a thumbnail click to its new map, in the browser
        self.last_input = 0.0                     # when the participant last clicked, chose or saved
        self.settled = float("nan")               # seconds from the final action to the page showing it all
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    async def state(self) -> dict:
        return await self.page.evaluate(f"({STATE_JS})()")

    async def wait(self, what: str, condition: str, arg=None, timeout: float = TIMEOUT) -> dict:
        """Wait until the probe satisfies the JS `condition` on `s` (and `a`), then check that it shows this
        participant's session and choices only."""
        try:
            await self.page.wait_for_function(f"(a) => {{ const s = ({STATE_JS})(); return !!s && ({condition}); }}",
                                              arg=arg, polling=50, timeout=timeout * 1000)
        except Exception as err:                        # say what was awaited, and where it was lost
            s = await self.state() or {}
            server = await asyncio.to_thread(server_stats, self.server, s.get("session"))
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=ARTIFACTS / f"load-{self.author}.png")
            raise AssertionError(f"{self.author}: {what} not shown within {timeout} s (probe seq {s.get('seq')}, "
                                 f"server's {server['seq']}; the page's stroke sources hold "
                                 f"{await self.page.evaluate(STROKES_JS)} strokes; console {self.errors}): {s}"
                                 ) from err
        current = await self.state()
        mine = {k: current[k] for k in self.expected}
        assert mine == self.expected, f"{self.author} sees another state: {mine} != {self.expected}"
        return current

    async def open(self, url: str) -> None:
        await self.page.goto(url, timeout=TIMEOUT * 1000)
        s = await self.wait("the first overlay", "s.left !== ''")
        self.expected = {k: s[k] for k in ("session", "sample", "layer", "method")}
        self.workspace = s["finetune"]["workspace"]
        labels = await self.page.locator(".xv-layer select option").all_text_contents()
        self.layers = {label: label.split(" · ")[0] for label in labels}
        self.methods = {METHOD_LABELS.get(m, m): m for m in METHODS}
        await self.tab("Feedback")                         # participants paint here; the maps and the probe go on
        author = self.page.locator(".bk-input-group", has_text="Author").locator("input")   # updating
        await author.fill(self.author)
        await author.press("Enter")

    async def tab(self, title: str) -> None:
        """Bring a tab on screen (once the probe says so, the tab's redraw has arrived)."""
        await self.page.locator(".bk-tab", has_text=title).click()
        await self.wait(f"the {title} tab", "s.tabs[a]", title)

    async def select_image(self) -> None:
        s = await self.state()
        i = self.rng.choice([i for i, sample in enumerate(s["page_ids"]) if sample != s["sample"]])
        self.expected["sample"] = s["page_ids"][i]
        box = await self.page.locator(".xv-montage .bk-Canvas").bounding_box()     # clicks elsewhere may scroll
        self.last_input = time.monotonic()
        await self.page.mouse.click(*tile_at(box, s, i))
        await self.wait("the selected image", "s.sample === a.sample && s.left_sample === a.sample",
                        {"sample": self.expected["sample"]})
        self.latency.append(time.monotonic() - self.last_input)

    async def choose(self, key: str, options: dict[str, str]) -> None:
        label = self.rng.choice([label for label, value in options.items() if value != self.expected[key]])
        self.expected[key] = options[label]
        self.last_input = time.monotonic()
        await self.page.locator(f".xv-{key} select").select_option(label=label)
        await self.wait(f"{key} {label}", self.SHOWN, self.shown_arg())

    SHOWN = ("s.layer === a.layer && s.method === a.method && s.left_title.startsWith(a.title) && "
             "s.left_sample === a.sample")

    def shown_arg(self) -> dict:            # not the layer in the title: block4 and block4.3 share one map
        return {"layer": self.expected["layer"], "method": self.expected["method"],
                "title": f"{self.expected['method']} · ", "sample": self.expected["sample"]}

    async def annotate(self) -> None:
        page = self.page
        if not (await self.state())["tabs"]["Feedback"]:
            await self.tab("Feedback")
        canvas = page.locator(".xv-brush .bk-Canvas")
        await canvas.wait_for(state="visible")
        box, s = await canvas.bounding_box(), await self.state()
        col, row = self.rng.uniform(12, 40), self.rng.uniform(12, 40)
        points = [(col, row), (col + 8, row + 6), (col + 14, row + 2)]
        to_page = [image_point(box, s["brush_frame"], s["image_shape"], c, r) for c, r in points]
        for _ in range(STROKE_TRIES):
            await page.mouse.move(*to_page[0])
            await page.mouse.down()
            for x, y in to_page[1:]:
                await page.mouse.move(x, y, steps=6)
            await page.mouse.up()
            if sum(await page.evaluate(STROKES_JS)):        # the page drew it: it is on its way to the server
                break
            self.presses += 1             # Bokeh took it as a press: the first move came over 300 ms after the
        else:                             # button went down (the browser starved of CPU); a user paints again
            raise AssertionError(f"{self.author}: {STROKE_TRIES} strokes in a row were taken as presses")
        await self.wait("the painted stroke", "s.strokes === 1")
        self.last_input = time.monotonic()
        await page.locator(".xv-save button").click()
        await self.wait("the saved annotation", "s.strokes === 0 && s.revision > a", s["revision"])
        self.saved += 1

    async def launch(self) -> None:
        """Fine-tune (one epoch) on the feedback saved so far; the page says the run is queued or running."""
        page = self.page
        await self.tab("Fine-tune")
        epochs = page.locator(".xv-finetune-epochs input")
        if not await epochs.is_visible():
            await page.locator(".xv-finetune-advanced .card-header").first.click()
            await epochs.wait_for(state="visible")
        await epochs.fill("1")
        await epochs.press("Enter")                        # sent before the click below, on the same socket
        self.last_input = time.monotonic()
        await page.locator(".xv-launch button").click()
        await self.wait("the launched run", "s.finetune.phase !== 'idle' && s.finetune.queue.state !== undefined")
        self.launches -= 1

    async def end_run(self) -> None:
        """Cancel this participant's run unless it has ended (after the final check: no run outlives the test)."""
        phase = (await self.state())["finetune"]["phase"]
        if phase not in ("idle", "done", "cancelled", "failed"):
            await self.tab("Fine-tune")
            await self.page.locator(".xv-cancel button").click()
            s = await self.wait("the run ended", "['done', 'cancelled', 'failed'].includes(s.finetune.phase)")
            phase = s["finetune"]["phase"]
        self.run_ended = "" if phase == "idle" else phase

    async def act(self, action: str) -> None:
        if action == "image":
            await self.select_image()
        elif action == "annotate":
            await self.annotate()
            if self.launches:
                await self.launch()
        else:
            await self.choose(action, self.layers if action == "layer" else self.methods)
        self.actions += 1

    async def run(self, clock: dict) -> None:
        """Every kind of action once (in an order of its own), then more until the clock's deadline (set once
        everyone has arrived), thinking between actions; then wait until the page shows the server's state."""
        first = self.rng.sample(ACTIONS, len(ACTIONS))
        while True:
            await self.act(first.pop(0) if first else self.rng.choices(ACTIONS, [4, 2, 2, 2])[0])
            if not first and clock["until"] is not None and time.monotonic() >= clock["until"]:
                break
            await asyncio.sleep(self.rng.uniform(*THINK))
        await self.settle()
        await self.end_run()

    async def settle(self) -> None:
        """Wait until the page shows this participant's choices with the server's sequence number."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            s = await self.wait("its own state at the end", self.SHOWN, self.shown_arg())
            server = await asyncio.to_thread(server_stats, self.server, s["session"])
            if s["seq"] == server["seq"]:
                self.settled = time.monotonic() - self.last_input
                return
            assert time.monotonic() < deadline, f"{self.author}: probe seq {s['seq']}, server's {server['seq']}"
            await asyncio.sleep(0.1)


async def drive(server, folder: Path) -> dict:
    """The warm-up session, the baseline RSS, then the participants; returns what was measured."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launcher = niced_chromium(folder)
        browsers = [await pw.chromium.launch(executable_path=launcher, args=CHROMIUM_ARGS) for _ in range(BROWSERS)]
        warm_context = await browsers[0].new_context(viewport=VIEWPORT)
        warm = Participant(await warm_context.new_page(), 99, server)   # caches and lazy imports of a first session
        await warm.open(server.url)
        await warm.choose("method", warm.methods)
        await warm.annotate()
        await warm.launch()                     # a server's first run costs ~50 MB once (measured in-process:
        await warm.end_run()                    # +52 MB after the first, +2 MB after each next): the baseline's
        await warm_context.close()
        await asyncio.sleep(2)
        baseline, clock, participants, opening = server.rss_mb(), {"until": None}, [], asyncio.Lock()
        began = time.monotonic()
        cpu = {"server": -cpu_seconds([server.pid]), "browsers": -cpu_seconds(browser_pids()),
               "machine": -machine_busy_seconds()}

        async def arrive(i: int) -> Participant:
            context = await browsers[i % BROWSERS].new_context(viewport=VIEWPORT)
            participant = Participant(await context.new_page(), i, server)
            async with opening:                 # one page load at a time: the server builds a session's page
                await participant.open(server.url)     # in its request, so a pile of them would time out
            participants.append(participant)
            print(f"load: {len(participants)} sessions open after {time.monotonic() - began:.0f} s", flush=True)
            if len(participants) == SESSIONS:
                clock["until"] = time.monotonic() + SECONDS
            await participant.run(clock)
            return participant

        done = await asyncio.gather(*(arrive(i) for i in range(SESSIONS)))
        cpu = {"server": cpu["server"] + cpu_seconds([server.pid]),
               "browsers": cpu["browsers"] + cpu_seconds(browser_pids()),
               "machine": cpu["machine"] + machine_busy_seconds(), "wall": time.monotonic() - began}
        peak = server.rss_mb()
        for participant in done:
            await participant.page.context.close()
        for browser in browsers:
            await browser.close()
    closed, deadline = time.monotonic(), time.monotonic() + 90   # Bokeh drops a closed session 15-32 s after
    while time.monotonic() < deadline:                          # it closed; the server then frees its memory
        alive, after = server_stats(server)["sessions"], server.rss_mb()
        if not alive and after < baseline + RSS_MARGIN:
            break
        await asyncio.sleep(2)
    return {"participants": [warm, *done], "baseline": baseline, "peak": peak, "after": after, "cpu": cpu,
            "alive": alive, "freed_s": time.monotonic() - closed}


def report(result: dict, stats: dict) -> str:
    """The run as a markdown table (load.md)."""
    participants, cpu = result["participants"], result["cpu"]
    clicks = np.array([s for p in participants for s in p.latency])
    settled = np.array([p.settled for p in participants[1:]])
    latency = stats["latency_s"]
    with open("/proc/loadavg") as f:
        load = ", ".join(f.read().split()[:3])
    rows = [("participants (pages)", f"{SESSIONS} ({BROWSERS} Chromium browsers niced +{BROWSER_NICE})"),
            ("actions / annotations saved", f"{sum(p.actions for p in participants)} / "
                                            f"{sum(p.saved for p in participants)}"),
            ("strokes the page took as a press, painted again", str(sum(p.presses for p in participants))),
            ("fine-tuning runs launched (one epoch, one at a time; the warm-up run aside)", ", ".join(
                f"{n} {phase}" for phase, n in Counter(p.run_ended for p in participants[1:] if p.run_ended).items())),
            ("server latency, submit → patches written (n)", f"p50 {latency['p50'] * 1000:.0f} ms · "
             f"p95 {latency['p95'] * 1000:.0f} ms ({latency['count']})"),
            ("browser: thumbnail click → new map on the page", f"p50 {np.percentile(clicks, 50):.2f} s · "
             f"p95 {np.percentile(clicks, 95):.2f} s"),
            ("final action → page shows the server's state", f"max {settled.max():.2f} s (limit {FINAL} s)"),
            ("CPU seconds over the run", f"server {cpu['server']:.0f} · browsers {cpu['browsers']:.0f} · "
             f"the rest (Playwright, other work) {cpu['machine'] - cpu['server'] - cpu['browsers']:.0f} · "
             f"{cpu['wall']:.0f} s × {os.cpu_count()} cores"),
            ("server RSS (MB)", f"{result['baseline']:.0f} before · {result['peak']:.0f} open · "
                                f"{result['after']:.0f} {result['freed_s']:.0f} s after closing"),
            ("load average at the end", load)]
    return ("# Load: a 20-participant workshop on one served demo, a workspace each (`tests/browser/test_load.py`)\n\n"
            f"{len(os.sched_getaffinity(0))} CPUs; think time {THINK[0]:.0f}-{THINK[1]:.0f} s; acting until "
            f"{SECONDS} s after the last arrival.\n\n| measure | value |\n|---|---|\n"
            + "".join(f"| {name} | {value} |\n" for name, value in rows))


def test_twenty_participants(workshop, tmp_path):
    from xcam_viz.feedback import FeedbackStore

    result: dict = {}

    def run():                                   # its own thread: no event loop of pytest-playwright's in the way
        try:
            result.update(asyncio.run(drive(workshop, tmp_path)))
        except BaseException as err:             # noqa: BLE001 - re-raised in the test's thread
            result["error"] = err
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise AssertionError(f"server log:\n{workshop.log.read_text()[-3000:]}") from result["error"]
    text = report(result, server_stats(workshop))
    publish = os.environ.get("XCAM_VIZ_PUBLISH") == "1"
    (ROOT / "benchmarks" / "results" if publish else tmp_path).joinpath("load.md").write_text(text)
    print(text, flush=True)
    participants = result["participants"]
    assert len({p.workspace for p in participants}) == len(participants)      # one workspace each
    for p in participants:                     # each workspace: its participant's rows, none lost, none of another's
        store = FeedbackStore(workshop.workspaces / folder_name(p.workspace) / "feedback.db")
        assert Counter(a.author for a in store.annotations()) == {p.author: p.saved}, p.workspace
    runs = {p.author: p.run_ended for p in participants[1:] if p.run_ended}  # participants 0-4 launched one each
    assert len(runs) == LAUNCHERS and set(runs.values()) <= {"done", "cancelled"}, runs
    log = workshop.log.read_text()
    assert not re.search(r"Traceback|Error|Exception|in flight for", log), log[-3000:]
    assert [e for p in participants for e in p.errors] == []
    assert max(p.settled for p in participants[1:]) <= FINAL
    assert result["alive"] == 0, f"{result['alive']} closed sessions' dashboards are still alive"
    assert result["after"] < result["baseline"] + RSS_MARGIN, (
        f"server RSS {result['after']:.0f} MB after the sessions closed, {result['baseline']:.0f} MB before")
