"""The screenshots of docs/workshop.md: a four-participant workshop on the demo, at 1366×768.

Run from the repository root (needs Debian's chromium, as the browser tests do); it takes a few minutes:

    .venv/bin/python docs/workshop_screenshots.py

Serves `xcam-viz serve --workspaces per-user --basic-auth users.json --max-runs 1` on the demo in a
temporary folder. Ana logs in, paints one training image and fine-tunes (one epoch); then Ben, Chen and
Dana paint and launch at once: Ben's run starts, Chen and Dana wait. Writes docs/img/workshop/*.png.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser.harness import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    Server,
    paint_and_save,
    set_epochs,
    state,
    tile_point,
    wait_state,
)

OUT = ROOT / "docs" / "img" / "workshop"
VIEWPORT = {"width": 1366, "height": 768}
USERS = {"ana": "apple-7", "ben": "birch-3", "chen": "cedar-5", "dana": "daisy-2", "instructor": "oak-tree-9"}


def log_in(browser, url: str, user: str, shot: str | None = None):
    """A participant's own browser: Panel's login page, then the dashboard on their workspace."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(url, timeout=120_000)
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(USERS[user])
    if shot:
        page.screenshot(path=OUT / shot)
    page.locator("button[type=submit]").click()
    wait_state(page, lambda s: s["left"] != "", timeout=120)
    return page


def paint_and_launch(page, tile: int) -> None:
    """Select thumbnail `tile`, paint a stroke (the brush's default: relevant), save, and launch one epoch."""
    first = state(page)
    page.mouse.click(*tile_point(page, first, tile))
    wait_state(page, lambda s: s["sample"] == first["page_ids"][tile])
    paint_and_save(page, [(8, 40), (12, 48), (16, 56)])
    set_epochs(page, 1)
    page.locator(".xv-launch button").click()
    wait_state(page, lambda s: s["finetune"]["phase"] != "idle")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users.json"
        users.write_text(json.dumps(USERS))
        server = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--feedback", f"{tmp}/feedback.db",
                         "--workspaces", "per-user", "--workspace-dir", f"{tmp}/workshop", "--basic-auth",
                         str(users), "--max-runs", "1"], Path(tmp) / "server.db", timeout=300)
        try:
            link = re.search(r"instructor's page: http://[^/]+/(instructor\?key=\w+)", server.log.read_text()).group(1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                ana = log_in(browser, server.url, "ana", "1-login.png")
                paint_and_launch(ana, 3)
                wait_state(ana, lambda s: s["finetune"]["phase"] == "done", timeout=600)
                ana.locator(".bk-tab", has_text="Explain").click()
                ana.wait_for_timeout(1500)
                ana.screenshot(path=OUT / "2-participant.png")
                others = [log_in(browser, server.url, name) for name in ("ben", "chen", "dana")]
                for page, tile in zip(others, (5, 8, 11)):
                    paint_and_launch(page, tile)
                dana = others[-1]
                wait_state(dana, lambda s: s["finetune"]["queue"].get("position") == 2)
                dana.locator(".xv-finetune-advanced .card-header").first.click()     # fold the settings away
                dana.locator(".bk-tab", has_text="Fine-tune").scroll_into_view_if_needed()
                dana.wait_for_timeout(1000)
                dana.screenshot(path=OUT / "3-queued.png")
                teacher = log_in_instructor(browser, server.url + link)
                teacher.screenshot(path=OUT / "4-instructor.png")
                browser.close()
        finally:
            server.stop()
    print(f"screenshots in {OUT}")


def log_in_instructor(browser, url: str):
    """The instructor's page through its link, once it shows every participant."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(url, timeout=120_000)
    page.locator("input[name=username]").fill("instructor")
    page.locator("input[name=password]").fill(USERS["instructor"])
    page.locator("button[type=submit]").click()
    page.locator(".xv-participants tbody tr").nth(3).wait_for(timeout=120_000)
    page.wait_for_timeout(2500)                  # one more refresh: the running run's progress
    return page


if __name__ == "__main__":
    main()
