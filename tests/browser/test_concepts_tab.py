"""The Concepts tab in headless chromium: paint a region over a lesion, see the units, name the concept."""
from pathlib import Path

import numpy as np
import pytest

from xcam_viz.concepts import LabelStore
from xcam_viz.demo import demo_data

from .harness import notification, open_dashboard, select_split, shot, tile_point, wait_state

pytestmark = pytest.mark.browser
SAMPLE_INDEX = 9                           # test-0-00009: many block4 units fire on its lesion


def scribble(mask: np.ndarray, step: int = 4) -> list[tuple[float, float]]:
    """(col, row) points of a zigzag over the mask's bounding box."""
    rows, cols = np.nonzero(mask)
    points = []
    for i, r in enumerate(range(rows.min() + 2, rows.max() - 1, step)):
        ends = (cols.min() + 1.5, cols.max() - 0.5)
        points += [(ends[i % 2], r + 0.5), (ends[1 - i % 2], r + 0.5)]
    return points


def test_paint_a_region_name_it_and_see_the_label(server, page):
    console = open_dashboard(page, server.url)
    s0 = select_split(page, "test")                                  # sessions open on train
    page.mouse.click(*tile_point(page, s0, SAMPLE_INDEX))
    sample = wait_state(page, lambda s: s["sample"] == s0["page_ids"][SAMPLE_INDEX])["sample"]
    page.locator(".bk-tab", has_text="Concepts").click()
    ready = wait_state(page, lambda s: s["concepts"]["phase"] == "ready", timeout=120)["concepts"]
    layer = ready["layer"]

    data = demo_data("test")
    lesion = data.masks[data.index_of(sample)].numpy()
    canvas = page.locator(".xv-concept-roi .bk-Canvas")
    box = canvas.bounding_box()
    h, w = s0["image_shape"]
    fw, fh = ready["frame"]                                          # the image fills the frame at the top left
    to_page = lambda c, r: (box["x"] + c / w * fw, box["y"] + r / h * fh)  # noqa: E731
    points = scribble(lesion)
    page.mouse.move(*to_page(*points[0]))
    page.mouse.down()
    for c, r in points[1:]:
        page.mouse.move(*to_page(c, r), steps=6)
    page.mouse.up()
    matched = wait_state(page, lambda s: s["concepts"]["strokes"] == 1 and s["concepts"]["matches"]
                         and s["concepts"]["matches"][0][1] > 0.2, timeout=60)["concepts"]
    rows = page.locator(".xv-concept-units tbody tr")
    assert rows.count() == 10 and rows.first.locator("td").first.text_content() == str(matched["matches"][0][0])
    shot(page, "08-concepts-region")

    page.locator(".xv-concept-name input").fill("lesion core")
    page.locator(".xv-concept-name input").press("Enter")
    page.locator(".xv-concept-label button").click()
    labelled = wait_state(page, lambda s: s["concepts"]["labelled"].get("lesion core", 0) > 0)["concepts"]
    count = labelled["labelled"]["lesion core"]
    assert f"{count} unit" in notification(page, "labelled 'lesion core'")
    assert labelled["scatter"]["lesion core"] == count                # the scatter is recoloured
    stored = LabelStore(server.feedback.with_name("feedback-concepts.db")).current(layer)
    assert sum(name == "lesion core" for name, _ in stored.values()) == count
    assert matched["matches"][0][0] in stored                         # the best unit got the name
    page.locator(".xv-concept-dictionary", has_text="lesion core").wait_for()
    shot(page, "09-concepts-labelled")

    wait_state(page, lambda s: s["concepts"]["report"] >= 1, timeout=300)      # rebuilt in the background
    page.locator(".xv-report-download button:not([disabled])").wait_for()
    with page.expect_download() as download:
        page.locator(".xv-report-download button").click()
    assert download.value.suggested_filename == "xcam-viz-report-v1-model-v0.html"
    assert b"report v1 of model v0" in Path(download.value.path()).read_bytes()
    notification(page, "downloading xcam-viz-report-v1-model-v0.html")
    page.locator(".xv-concept-scatter").scroll_into_view_if_needed()
    shot(page, "10-concepts-report")
    assert console.errors == [] and console.bokeh_warnings == []
