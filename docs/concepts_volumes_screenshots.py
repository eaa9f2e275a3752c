"""The screenshots of the Concepts tab on volumes in docs/dashboard.md, from the served 3-D demo at 1366×768.

Run from the repository root (needs Debian's chromium, as the browser tests do):

    .venv/bin/python docs/concepts_volumes_screenshots.py

Paints the skin marker of a marked training volume on its axial slice, spreads it to ±2 slices, names it
"skin marker", and writes docs/img/volumes-concepts.png (the planes, the ranking) and
docs/img/volumes-concepts-montage.png (scrolled to the montage of the best units' best slices).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser.harness import CHROMIUM, CHROMIUM_ARGS, Server, drag, open_dashboard, select_sample, wait_state  # noqa: E402

from xcam_viz.demo import demo_volumes  # noqa: E402

OUT = ROOT / "docs" / "img"
VIEWPORT = {"width": 1366, "height": 768}
MARKED = 1                       # train volume 1 carries the marker


def move_slider(page, plane: str, axis: int, target: int) -> dict:
    """Move a plane's slice slider of the Concepts tab to `target` by keyboard; the tab's state once there."""
    at = wait_state(page, lambda now: "brush_point" in now["concepts"])["concepts"]["brush_point"][axis]
    page.locator(f".xv-concept-roi-slice-{plane} .noUi-handle").first.focus()
    for _ in range(abs(target - at)):
        page.keyboard.press("ArrowRight" if at < target else "ArrowLeft")
    return wait_state(page, lambda now: now["concepts"]["brush_point"][axis] == target)["concepts"]


def main() -> None:
    train = demo_volumes("train", MARKED + 1)
    sample = train.ids[MARKED]
    z, y, x = (int(round(c.mean())) for c in np.nonzero(train.regions["confounder"][MARKED].numpy()))
    with tempfile.TemporaryDirectory() as tmp:
        feedback = Path(tmp) / "feedback.db"
        server = Server(["-m", "xcam_viz.cli", "demo", "--volumes", "--quiet", "--port", "{port}"], feedback,
                        env={"XCAM_VIZ_FEEDBACK": str(feedback)}, timeout=300)
        try:
            with sync_playwright() as play:
                browser = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport=VIEWPORT)
                open_dashboard(page, server.url)
                select_sample(page, sample)
                page.locator(".bk-tab", has_text="Concepts").click()
                wait_state(page, lambda now: now["concepts"]["phase"] == "ready", timeout=120)
                move_slider(page, "coronal", 1, y)              # the coronal and sagittal planes through the marker
                move_slider(page, "sagittal", 2, x)
                s = move_slider(page, "axial", 0, z)
                h, w = 48, 48
                drag(page, ".xv-concept-roi-axial", s["brush_frames"]["axial"], (h, w),
                     [(x - 1.5, h - y - 0.5), (x + 2.5, h - y - 0.5)])
                page.locator(".xv-concept-roi-extend .bk-btn").click()
                wait_state(page, lambda now: now["concepts"]["spreads"] and now["concepts"]["matches"], timeout=60)
                page.locator(".xv-concept-name input").fill("skin marker")
                page.locator(".xv-concept-name input").press("Enter")
                page.locator(".xv-concept-label button").click()
                wait_state(page, lambda now: now["concepts"]["labelled"].get("skin marker", 0) > 0, timeout=60)
                page.locator("#sidebar-toggle").click()                 # the sidebar folds away
                page.wait_for_timeout(4000)                      # the toast fades
                for name, css in (("volumes-concepts", ".xv-concept-roi-axial"),
                                  ("volumes-concepts-montage", ".xv-concept-montage")):
                    page.locator(css).first.evaluate("el => el.scrollIntoView({block: 'start'})")
                    page.mouse.move(1200, 400)
                    page.mouse.wheel(0, -40)                     # the plane's title below the header
                    page.wait_for_timeout(800)
                    page.screenshot(path=OUT / f"{name}.png")
                browser.close()
        finally:
            server.stop()
    print("wrote", OUT / "volumes-concepts.png", OUT / "volumes-concepts-montage.png")


if __name__ == "__main__":
    main()
