"""The served dashboard in headless chromium: load, select, explain, paint, save, fine-tune, sessions."""
import pytest

import xcam_viz as xv

from .harness import (
    notification,
    open_card,
    open_dashboard,
    publish,
    select_option,
    shot,
    state,
    tile_point,
    wait_state,
)

pytestmark = pytest.mark.browser


def test_demo_loads_without_console_errors(server, page):
    console = open_dashboard(page, server.url)
    s = state(page)
    assert s["split"] == "train" and s["sample"] == s["page_ids"][0] and len(s["page_ids"]) == 20   # where users paint
    shot(page, "01-loaded")
    assert console.errors == []


def test_clicking_a_thumbnail_changes_the_overlay(server, page):
    console = open_dashboard(page, server.url)
    before = state(page)
    page.mouse.click(*tile_point(page, before, 7))
    wait_state(page, lambda s: s["sample"] == before["page_ids"][7] and s["left"] != before["left"]
               and s["right"] != before["right"])                    # both views show the new image
    page.wait_for_timeout(300)
    publish(shot(page, "02-thumbnail-selected"))
    assert console.errors == []


def test_layer_and_method_change_the_overlay(server, page):
    console = open_dashboard(page, server.url)
    s0 = state(page)
    select_option(page, "xv-layer", "block3 · 64×16×16")
    s1 = wait_state(page, lambda s: s["layer"] == "block3" and s["left"] != s0["left"])
    select_option(page, "xv-method", "layercam")
    s2 = wait_state(page, lambda s: s["method"] == "layercam" and s["left"] != s1["left"])
    assert s2["left_title"].startswith("layercam · block3")
    shot(page, "03-layer-method")
    select_option(page, "xv-method", "evidence · efficient (fast, signed)")
    wait_state(page, lambda s: s["method"] == "efficient" and s["left"] != s2["left"], timeout=60)
    shot(page, "04-evidence")
    assert console.errors == []


def test_brush_stroke_is_saved_as_a_mask(server, page):
    console = open_dashboard(page, server.url)
    s0 = state(page)
    page.mouse.click(*tile_point(page, s0, 4))
    sample = wait_state(page, lambda s: s["sample"] == s0["page_ids"][4])["sample"]
    page.locator(".bk-tab", has_text="Feedback").click()
    canvas = page.locator(".xv-brush .bk-Canvas")
    canvas.wait_for(state="visible")
    page.locator(".xv-save button").click()                          # nothing painted yet: a user error
    assert "paint a relevant or irrelevant region" in notification(page, "before saving")
    box = canvas.bounding_box()
    h, w = s0["image_shape"]
    fw, fh = s0["brush_frame"]                                       # the image fills the frame at the top left
    points = [(16.5, 20.5), (30.5, 24.5), (46.5, 30.5)]              # image (col, row) pixel centres
    to_page = lambda c, r: (box["x"] + c / w * fw, box["y"] + r / h * fh)  # noqa: E731
    page.mouse.move(*to_page(*points[0]))
    page.mouse.down()
    for c, r in points[1:]:
        page.mouse.move(*to_page(c, r), steps=8)
    page.mouse.up()
    wait_state(page, lambda s: s["strokes"] == 1)
    shot(page, "05-brush-stroke")
    page.locator(".xv-save button").click()
    wait_state(page, lambda s: s["revision"] > s0["revision"] and s["strokes"] == 0)
    notification(page, f"feedback saved for {sample}")
    shot(page, "06-feedback-saved")
    saved = xv.FeedbackStore(server.feedback).annotations(sample)
    assert len(saved) == 1 and saved[0].irrelevant is None
    mask = saved[0].relevant
    for c, r in points:
        assert mask[int(r), int(c)], f"pixel row {int(r)} col {int(c)} was dragged over but is not in the mask"
    assert mask.sum() < 0.2 * mask.size and not mask[:10].any() and not mask[40:].any()
    assert console.errors == []


def test_sessions_keep_their_own_selection(server, browser):
    pages = [browser.new_context(viewport={"width": 1600, "height": 1000}).new_page() for _ in range(2)]
    consoles = [open_dashboard(p, server.url) for p in pages]
    first = [state(p) for p in pages]
    assert first[0]["session"] != first[1]["session"]
    for p, s, i in zip(pages, first, (3, 12)):
        p.mouse.click(*tile_point(p, s, i))
    for p, s, i in zip(pages, first, (3, 12)):
        wait_state(p, lambda now, want=s["page_ids"][i]: now["sample"] == want)
    select_option(pages[1], "xv-method", "hirescam")
    wait_state(pages[1], lambda s: s["method"] == "hirescam")
    pages[0].wait_for_timeout(500)
    a, b = state(pages[0]), state(pages[1])
    assert a["sample"] == first[0]["page_ids"][3] and b["sample"] == first[1]["page_ids"][12]
    assert a["method"] == "gradcam" and a["left"] != b["left"]
    for p in pages:
        p.context.close()
    assert consoles[0].errors == consoles[1].errors == []


def test_tile_geometry_matches_the_montage(server, page):
    """Each of a page's thumbnails is selected by a click on its centre (checks y orientation)."""
    open_dashboard(page, server.url)
    s0 = state(page)
    for i in (0, 4, 15, 19):
        page.mouse.click(*tile_point(page, s0, i))
        wait_state(page, lambda s, i=i: s["sample"] == s0["page_ids"][i])


def test_one_epoch_finetune_shows_progress_and_results(server, page):
    console = open_dashboard(page, server.url)
    s0 = state(page)
    page.mouse.click(*tile_point(page, s0, 2))
    sample = wait_state(page, lambda s: s["sample"] == s0["page_ids"][2])["sample"]
    ds = xv.demo.demo_data("train")
    xv.FeedbackStore(server.feedback).add(sample, relevant=ds.masks[ds.index_of(sample)].numpy(), author="browser-test")
    page.locator(".bk-tab", has_text="Fine-tune").click()
    open_card(page, "xv-finetune-advanced", ".xv-finetune-epochs input")          # collapsed: the core's defaults
    page.locator(".xv-finetune-epochs input").fill("1")
    page.locator(".xv-finetune-epochs input").press("Enter")
    page.locator(".xv-launch button").click()
    wait_state(page, lambda s: s["finetune"]["phase"] not in ("idle", "starting"), timeout=60)
    seen = set()

    def finished(s):
        seen.add(s["finetune"]["progress"])
        return s["finetune"]["phase"] == "done"

    done = wait_state(page, finished, timeout=300)
    run = done["finetune"]
    assert run["progress"] == 100 and run["results"] and run["run_settings"]["epochs"] == 1
    if run["flagged"]:                                               # saved, shown on the right, not selected
        assert done["version"] == s0["version"] and run["warning_shown"]
        notification(page, f"{run['version']} is flagged")
    else:
        assert done["version"] == run["version"] != s0["version"]
        notification(page, f"fine-tuned {run['base']} → {run['version']}")
    table = page.locator(".xv-finetune-results table")
    assert table.count() == 1 and "accuracy" in table.text_content()
    assert "pointing game (block4 Grad-CAM)" in table.text_content()
    assert "pointing game (block4 Grad-CAM)" in page.locator(".xv-versions table").text_content()
    shot(page, "07-finetune-done")
    page.locator(".bk-tab", has_text="Explain").click()
    page.wait_for_timeout(800)
    shot(page, "08-before-after")
    assert len(seen) >= 2 and console.errors == []
