"""Browser-test helpers: a dashboard server in a subprocess, console capture, state, screenshots, geometry."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(server, url: str, timeout: float, name: str) -> None:
    """Poll `url` until it answers; if `server.proc` exits or `timeout` passes, stop it and raise with its log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{name} did not start:\n{server.log.read_text()[-3000:]}") from None
            time.sleep(0.5)


class Server:
    """A dashboard server in a subprocess; `url`, its `pid`, and the feedback database it writes."""

    def __init__(self, args: list[str], feedback: Path, env: dict | None = None, timeout: float = 180):
        self.port, self.feedback = free_port(), feedback
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = feedback.with_suffix(".log")
        self._log = open(self.log, "w")
        cmd = [sys.executable, *[a.replace("{port}", str(self.port)) for a in args]]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.pid = self.proc.pid
        wait_until_up(self, self.url + "static/js/bokeh.min.js", timeout, f"server {cmd}")

    def rss_mb(self) -> float:
        """Resident memory of the server process."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


class Console:
    """Console errors, uncaught page errors and Bokeh's warnings of a page."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.bokeh_warnings: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def _message(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"console.{message.type}: {message.text}")
        elif message.type == "warning" and "[bokeh" in message.text:
            self.bokeh_warnings.append(message.text)


def demo_servers(folder: Path):
    """A generator fixture body: `xcam-viz serve` of the demo with an empty feedback database in `folder`."""
    feedback = folder / "feedback.db"
    srv = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--feedback", str(feedback)], feedback)
    yield srv
    srv.stop()


def open_dashboard(page, url: str) -> Console:
    """Load the dashboard and wait until its first overlay has been drawn."""
    console = Console(page)
    page.goto(url, timeout=120_000)
    wait_state(page, lambda s: s["left"] != "", timeout=90)
    page.wait_for_timeout(500)
    return console


def notification(page, text: str, timeout: float = 30) -> str:
    """The text of the newest notification (a Notyf toast) containing `text`; waits for it."""
    toast = page.locator(".notyf__toast", has_text=text).last
    toast.wait_for(timeout=timeout * 1000)
    return toast.text_content()


def state(page) -> dict:
    """The session state the dashboard publishes in its hidden .xv-state-json element."""
    return json.loads(page.locator(".xv-state-json").text_content())


def wait_state(page, predicate, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = state(page)
            if predicate(current):
                return current
        except Exception:                     # noqa: BLE001 - not rendered yet
            current = None
        if time.monotonic() > deadline:
            raise AssertionError(f"state did not reach the expected value within {timeout} s: {current}")
        page.wait_for_timeout(100)


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path)
    return path


def publish(path: Path) -> None:
    """Copy a screenshot to docs/img/dashboard.png (the README's picture) when XCAM_VIZ_PUBLISH=1 is set; a
    plain test run leaves the working tree as it was."""
    if os.environ.get("XCAM_VIZ_PUBLISH") != "1":
        return
    target = ROOT / "docs" / "img" / "dashboard.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)


def tile_point(page, state_: dict, index: int) -> tuple[float, float]:
    """Page coordinates of the centre of thumbnail `index` in the montage."""
    return tile_at(page.locator(".xv-montage .bk-Canvas").bounding_box(), state_, index)


def tile_at(box: dict, state_: dict, index: int) -> tuple[float, float]:
    """Page coordinates of the centre of thumbnail `index` in a montage canvas of bounding `box`."""
    grid = state_["grid"]
    h, w = grid["size"]
    tile = grid["tile"]
    row, col = divmod(index, grid["cols"])
    x, y = (col + 0.5) * tile, (row + 0.5) * (h / grid["rows"])
    return box["x"] + x / w * box["width"], box["y"] + y / h * box["height"]


def select_option(page, css_class: str, label: str) -> None:
    page.locator(f".{css_class} select").select_option(label=label)


def select_split(page, split: str) -> dict:
    """Choose the split in the image browser; returns the state once the browser shows it."""
    select_option(page, "xv-split", split)
    return wait_state(page, lambda s: s["split"] == split and all(i.startswith(f"{split}-") for i in s["page_ids"]))


def select_sample(page, sample: str, max_pages: int = 20) -> dict:
    """Select `sample` by clicking its thumbnail, turning the browser's pages (▶) until it shows."""
    for _ in range(max_pages):
        s = state(page)
        if sample in s["page_ids"]:
            page.mouse.click(*tile_point(page, s, s["page_ids"].index(sample)))
            return wait_state(page, lambda now: now["sample"] == sample)
        page.locator(".bk-btn", has_text="▶").click()
        wait_state(page, lambda now, before=s["page"]: now["page"] != before)
    raise AssertionError(f"{sample} is not on the first {max_pages} pages of the browser")


def drag(page, canvas_css: str, frame: tuple[float, float], image_shape: tuple[int, int],
         points: list[tuple[float, float]], steps: int = 6) -> None:
    """One stroke with the mouse over a drawing canvas through image (col, row) points; the image fills
    the canvas's `frame` (width, height in page pixels) from its top left corner."""
    box = page.locator(f"{canvas_css} .bk-Canvas").bounding_box()

    def to_page(col, row):
        return image_point(box, frame, image_shape, col, row)
    page.mouse.move(*to_page(*points[0]))
    page.mouse.down()
    for col, row in points[1:]:
        page.mouse.move(*to_page(col, row), steps=steps)
    page.mouse.up()


def image_point(box: dict, frame: tuple[float, float], image_shape: tuple[int, int], col: float, row: float):
    """Page coordinates of image pixel (col, row) on a canvas of bounding `box` whose image fills `frame`."""
    (h, w), (fw, fh) = image_shape, frame
    return box["x"] + col / w * fw, box["y"] + row / h * fh


def open_card(page, css_class: str, shows: str) -> None:
    """Expand a collapsed Panel card (click its header) and wait until the element `shows` is visible."""
    page.locator(f".{css_class} .card-header").first.click()
    page.locator(shows).first.wait_for(state="visible")


PAGE_TEXT = """(css) => {
  const parts = [];
  const walk = (root) => {
    for (const node of root.childNodes) {
      if (node.nodeType === Node.TEXT_NODE) parts.push(node.textContent);
      else if (node.nodeType === Node.ELEMENT_NODE && !["SCRIPT", "STYLE"].includes(node.tagName)) {
        if (node.shadowRoot) walk(node.shadowRoot);
        walk(node);
      }
    }
  };
  const find = (root) => {                       // the first element matching css, through shadow roots
    for (const el of root.querySelectorAll("*")) {
      if (el.matches(css)) return el;
      const inner = el.shadowRoot && find(el.shadowRoot);
      if (inner) return inner;
    }
    return null;
  };
  const top = css ? find(document) : document.body;
  if (!top) return "";
  if (top.shadowRoot) walk(top.shadowRoot);
  walk(top);
  return parts.join(" ");
}"""


def page_text(page, css: str | None = None) -> str:
    """Every text of the page (or of the first element matching `css`), through Bokeh's shadow roots
    (innerText stops at them), scripts and styles left out."""
    return " ".join(page.evaluate(PAGE_TEXT, css).split())


def paint_and_save(page, points: list[tuple[float, float]] = ((20, 22), (34, 28), (44, 36))) -> None:
    """On the Feedback tab, one stroke through image (col, row) `points` with the brush as it is, then Save."""
    page.locator(".bk-tab", has_text="Feedback").click()
    before = wait_state(page, lambda s: s["tabs"]["Feedback"])
    drag(page, ".xv-brush", before["brush_frame"], before["image_shape"], list(points))
    wait_state(page, lambda s: s["strokes"] == 1)
    page.locator(".xv-save button").click()
    wait_state(page, lambda s: s["strokes"] == 0 and s["revision"] > before["revision"])


def set_epochs(page, epochs: int) -> None:
    """On the Fine-tune tab, the advanced setting "Epochs" (sent before a later click on Launch)."""
    page.locator(".bk-tab", has_text="Fine-tune").click()
    field = page.locator(".xv-finetune-epochs input")
    if not field.is_visible():
        open_card(page, "xv-finetune-advanced", ".xv-finetune-epochs input")
    field.fill(str(epochs))
    field.press("Enter")
