"""`panel serve` of the app module and of the notebook; a two-minute soak with random use."""
import random
import time

import pytest

from .harness import Server, open_dashboard, select_option, shot, state, tile_point, wait_state

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("target", ["xcam_viz/dashboard/app.py", "notebooks/dashboard.ipynb"])
def test_panel_serve_runs_the_dashboard(target, tmp_path, page):
    feedback = tmp_path / "feedback.db"
    srv = Server(["-m", "panel", "serve", target, "--port", "{port}", "--address", "127.0.0.1",
                  "--allow-websocket-origin", "127.0.0.1:{port}"], feedback, env={"XCAM_VIZ_FEEDBACK": str(feedback)})
    try:
        name = target.rsplit("/", 1)[1].split(".")[0]
        console = open_dashboard(page, f"{srv.url}{name}")
        s0 = state(page)
        page.mouse.click(*tile_point(page, s0, 5))
        wait_state(page, lambda s: s["sample"] == s0["page_ids"][5] and s["left"] != s0["left"])
        shot(page, f"09-panel-serve-{name}")
        assert console.errors == []
    finally:
        srv.stop()


@pytest.mark.slow
def test_two_minute_soak(server, page):
    """Random selections, page turns, method / layer changes and strokes for two minutes: no error,
    the server keeps answering and its memory stays bounded."""
    rng = random.Random(0)
    console = open_dashboard(page, server.url)
    layers = ["block1 · 16×64×64", "block2 · 32×32×32", "block3 · 64×16×16", "block4 · 128×8×8"]
    methods = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam", "scorecam"]

    def click_tile():
        s = state(page)
        page.mouse.click(*tile_point(page, s, rng.randrange(len(s["page_ids"]))))

    def stroke():
        page.locator(".bk-tab", has_text="Feedback").click()
        box = page.locator(".xv-brush .bk-Canvas").bounding_box()
        fw, fh = state(page)["brush_frame"]
        page.mouse.move(box["x"] + rng.uniform(20, fw - 20), box["y"] + rng.uniform(20, fh - 20))
        page.mouse.down()
        page.mouse.move(box["x"] + rng.uniform(20, fw - 20), box["y"] + rng.uniform(20, fh - 20), steps=5)
        page.mouse.up()
        if rng.random() < 0.3:
            page.locator(".xv-save button").click()
        page.locator(".bk-tab", has_text="Explain").click()

    actions = [(click_tile, 4), (lambda: select_option(page, "xv-layer", rng.choice(layers)), 2),
               (lambda: select_option(page, "xv-method", rng.choice(methods)), 2),
               (lambda: page.locator(".bk-btn", has_text="▶").click(), 1), (stroke, 1)]
    for _ in range(10):                                   # warm up: caches and first allocations
        click_tile()
        page.wait_for_timeout(200)
    wait_state(page, lambda s: True)
    rss_start = server.rss_mb()
    deadline, count = time.monotonic() + 120, 0
    while time.monotonic() < deadline:
        rng.choices([a for a, _ in actions], [w for _, w in actions])[0]()
        page.wait_for_timeout(rng.randint(50, 400))
        count += 1
    before = state(page)
    page.mouse.click(*tile_point(page, before, (before["page_ids"].index(before["sample"]) + 1) % 20
                                 if before["sample"] in before["page_ids"] else 0))
    wait_state(page, lambda s: s["sample"] != before["sample"], timeout=60)          # still answering
    shot(page, "10-after-soak")
    rss_end = server.rss_mb()
    print(f"soak: {count} actions in 120 s, server RSS {rss_start:.0f} -> {rss_end:.0f} MB")
    assert console.errors == []
    assert rss_end - rss_start < 300, f"server memory grew from {rss_start:.0f} to {rss_end:.0f} MB"
