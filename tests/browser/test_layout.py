"""The layout at four screen sizes: no horizontal overflow, every control reachable, no clipped text; for the
3-D demo also every plane at least 256 px.

Each tab is screenshotted at each size into test-artifacts/browser/layout-<width>x<height>-<tab>.png
(volumes: volumes-layout-...).
"""
from pathlib import Path

import pytest

from xcam_viz.dashboard.concepts import TOP_IMAGES

from .harness import open_dashboard, shot, state, wait_state

pytestmark = pytest.mark.browser
SIZES = [(1280, 720), (1366, 768), (1600, 1000), (1920, 1080)]
TABS = ("Explain", "Feedback", "Fine-tune", "Concepts")
VOLUME_TABS = {"Explain": ".xv-plane-", "Feedback": ".xv-brush-", "Fine-tune": None,   # tab: its planes' class
               "Concepts": ".xv-concept-roi-"}
PLANES = ("axial", "coronal", "sagittal")
MIN_PLANE = 256
CONTAINERS = {"sidebar": "#sidebar", "images": ".xv-images", "tabs": ".xv-tabs"}
MEASURE = (Path(__file__).with_name("layout.js")).read_text()
FRAME = """(css) => {      // [width, height] of the frame (where the image lies) of the Bokeh figure with this class
  const view = Bokeh.index.query_one((v) => v.model.css_classes != null && v.frame != null
                                           && v.model.css_classes.includes(css.replace(/^[.]/, "")));
  return view ? [view.frame.bbox.width, view.frame.bbox.height] : [0, 0];
}"""


@pytest.mark.slow
def test_every_tab_fits_every_screen(server, page):
    console = open_dashboard(page, server.url)
    problems = {}
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        for tab in TABS:
            page.locator(".bk-tab", has_text=tab).click()
            wait_state(page, lambda s, t=tab: s["tabs"][t])
            if tab == "Concepts":
                wait_state(page, lambda s: s["concepts"]["phase"] == "ready", timeout=120)
            page.wait_for_timeout(700)
            overflow = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert overflow[0] <= overflow[1], f"{width}x{height} {tab}: the page scrolls sideways {overflow}"
            found = page.evaluate(MEASURE, CONTAINERS)
            if found:
                problems[f"{width}x{height} {tab}"] = found
            shot(page, f"layout-{width}x{height}-{tab}")
            if tab in ("Feedback", "Concepts"):              # a 64 px image is large enough to paint on
                css = ".xv-brush" if tab == "Feedback" else ".xv-concept-roi"
                box = page.locator(f"{css} .bk-Canvas").bounding_box()
                assert box["width"] >= 320 and box["height"] >= 320, (width, height, tab, box)
            if tab == "Concepts":                            # montage tiles of at least 96 px
                tile = page.locator(".xv-concept-montage .bk-Canvas").bounding_box()["width"] / TOP_IMAGES
                assert tile >= 96, (width, height, tile)
        assert state(page)["brush_frame"][0] >= 320
    assert problems == {}
    assert console.errors == [] and console.bokeh_warnings == []


@pytest.mark.slow
def test_volume_views_fit_every_screen(volume_server, page):
    """The 3-D demo's tabs at the four sizes: the same checks, and each plane's frame (the canvas below its
    title) at least 256 px on each side."""
    console = open_dashboard(page, volume_server.url)
    problems = {}
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        for tab, planes in VOLUME_TABS.items():
            page.locator(".bk-tab", has_text=tab).click()
            wait_state(page, lambda s, t=tab: s["tabs"][t])
            page.wait_for_timeout(700)
            overflow = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert overflow[0] <= overflow[1], f"{width}x{height} {tab}: the page scrolls sideways {overflow}"
            if found := page.evaluate(MEASURE, CONTAINERS):
                problems[f"{width}x{height} {tab}"] = found
            shot(page, f"volumes-layout-{width}x{height}-{tab}")
            for plane in PLANES if planes else ():
                frame = page.evaluate(FRAME, f"{planes}{plane}")
                assert min(frame) >= MIN_PLANE, (width, height, tab, plane, frame)
    assert problems == {}
    assert console.errors == [] and console.bokeh_warnings == []
