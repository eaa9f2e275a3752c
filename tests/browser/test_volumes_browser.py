"""The 3-D demo in headless chromium: three planes, a slice slider, a click that moves the crosshair, a
window preset, the hottest point and a Concepts region (screenshots at 1366×768 in test-artifacts/browser/).
The layout of the volume views at four screen sizes: test_layout.py."""
import io

import numpy as np
import pytest
from PIL import Image

from .harness import drag, open_dashboard, select_option, shot, tile_point, wait_state

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PLANES = ("axial", "coronal", "sagittal")


def canvas(page, plane: str):
    return page.locator(f".xv-plane-{plane} .bk-Canvas").first


def picture(page, plane: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(canvas(page, plane).screenshot())).convert("L"), np.float32)


def montage_picture(page) -> np.ndarray:
    montage = page.locator(".xv-concept-montage .bk-Canvas").first
    montage.scroll_into_view_if_needed()
    return np.asarray(Image.open(io.BytesIO(montage.screenshot())).convert("L"), np.float32)


def test_three_planes_slices_crosshair_window_and_hottest_point(volume_server, page):
    page.set_viewport_size({"width": 1366, "height": 768})
    console = open_dashboard(page, volume_server.url)
    v = wait_state(page, lambda s: s.get("volume") is not None)["volume"]
    d, h, w = v["grid"]
    assert v["slices"] == {"axial": [h, w], "coronal": [d, w], "sagittal": [d, h]}
    for plane in PLANES:
        box = canvas(page, plane).bounding_box()
        assert box["width"] >= 200 and box["height"] >= 200, (plane, box)
    shot(page, "volumes-1366")

    z = v["crosshair"][0]                                             # the axial slider, by keyboard
    page.locator(".xv-slice-axial .noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    wait_state(page, lambda now: now["volume"]["crosshair"][0] == z + 1)

    before = {plane: picture(page, plane) for plane in ("coronal", "sagittal")}
    canvas(page, "axial").scroll_into_view_if_needed()
    box = canvas(page, "axial").bounding_box()                        # below its title, the frame: x right, y up
    _, sy, sx = v["spacing"]
    fw, fh = box["width"], box["width"] * h * sy / (w * sx)
    col, row = 12, 30
    page.mouse.click(box["x"] + (col + 0.5) / w * fw, box["y"] + box["height"] - (row + 0.5) / h * fh)
    v = wait_state(page, lambda now: now["volume"]["crosshair"][1:] == [row, col])["volume"]
    assert v["crosshair"][0] == z + 1
    page.wait_for_timeout(500)
    for plane in ("coronal", "sagittal"):
        assert np.abs(picture(page, plane) - before[plane]).mean() > 0.5, f"the {plane} slice did not change"

    lung = picture(page, "axial")
    select_option(page, "xv-window", "ct-bone")
    wait_state(page, lambda now: now["volume"]["preset"] == "ct-bone" and now["volume"]["window"] == [400, 1800])
    page.wait_for_timeout(500)
    assert np.abs(picture(page, "axial") - lung).mean() > 2, "the bone window did not change the picture"
    shot(page, "volumes-1366-bone")

    page.locator(".xv-hottest .bk-btn").first.click()
    wait_state(page, lambda now: now["volume"]["crosshair"] == now["volume"]["hottest"])
    page.wait_for_timeout(500)
    shot(page, "volumes-1366-hottest")
    canvas(page, "sagittal").scroll_into_view_if_needed()
    shot(page, "volumes-1366-planes")
    assert not console.errors, console.errors


def test_paint_on_a_plane_extend_and_save(volume_server, page):
    page.set_viewport_size({"width": 1366, "height": 768})
    console = open_dashboard(page, volume_server.url)
    page.locator(".bk-tab", has_text="Feedback").click()
    s = wait_state(page, lambda now: now["tabs"]["Feedback"] and "brush_frames" in now)
    d, h, w = s["volume"]["grid"]
    z = s["brush_point"][0]
    fw, fh = s["brush_frames"]["axial"]
    box = page.locator(".xv-brush-axial .bk-Canvas").first.bounding_box()      # rows go down, index up
    page.mouse.move(box["x"] + 10 / w * fw, box["y"] + 12 / h * fh)
    page.mouse.down()
    page.mouse.move(box["x"] + 30 / w * fw, box["y"] + 14 / h * fh, steps=8)
    page.mouse.up()
    wait_state(page, lambda now: now["strokes"] == 1)
    page.locator(".xv-extend .bk-btn").first.click()
    wait_state(page, lambda now: now["spreads"] == [["extend", 2, 0]])
    page.wait_for_timeout(500)
    page.locator(".xv-brush-axial .bk-Canvas").first.scroll_into_view_if_needed()
    shot(page, "volumes-1366-feedback")
    page.locator(".xv-save .bk-btn").first.click()
    wait_state(page, lambda now: now["strokes"] == 0 and now["spreads"] == [] and now["revision"] == 1)
    from xcam_viz.feedback import FeedbackStore

    saved = FeedbackStore(volume_server.feedback).annotations(s["sample"])[-1].relevant
    assert saved.shape == (d, h, w)
    assert [int(i) for i in np.flatnonzero(saved.any((1, 2)))] == list(range(z - 2, z + 3))
    assert not console.errors, console.errors


def test_concepts_rank_units_for_a_region_on_slices(volume_server, page):
    """A stroke across the body on the axial plane of the Concepts tab, extended to ±2 slices, ranks the units
    that fire there; the montage shows their best slices. (test_layout.py, run before, dissected the split.)"""
    page.set_viewport_size({"width": 1366, "height": 768})
    console = open_dashboard(page, volume_server.url)
    page.locator(".bk-tab", has_text="Concepts").click()
    s = wait_state(page, lambda now: now["concepts"]["phase"] == "ready", timeout=90)
    d, h, w = s["volume"]["grid"]
    before = montage_picture(page)
    page.locator(".xv-concept-roi-axial .bk-Canvas").first.scroll_into_view_if_needed()
    drag(page, ".xv-concept-roi-axial", s["concepts"]["brush_frames"]["axial"], (h, w),
         [(6.5, 24.5), (42.5, 24.5), (42.5, 30.5), (6.5, 30.5)])     # (col, row) with rows going down
    one = wait_state(page, lambda now: now["concepts"]["strokes"] == 1 and now["concepts"]["matches"]
                     and now["concepts"]["matches"][0][1] > 0, timeout=60)["concepts"]["matches"][0][1]
    page.locator(".xv-concept-roi-extend .bk-btn").click()                # one slice: IoU 0.06; five: 0.22
    wait_state(page, lambda now: now["concepts"]["spreads"] == [["extend", 2, 0]]
               and now["concepts"]["matches"][0][1] > max(0.1, one), timeout=60)
    page.wait_for_timeout(1000)
    assert np.abs(montage_picture(page) - before).mean() > 5, "the montage shows no unit"
    shot(page, "volumes-1366-concepts")
    assert not console.errors, console.errors


def test_a_thumbnail_turns_to_the_slice_through_its_maps_maximum(volume_server, page):
    """A volume's thumbnail shows its middle axial slice until its map is known; once another volume is
    selected, it shows the slice through that map's maximum (its pixels patched into the montage). On the
    second page, whose maps no other test computes (the server's caches are shared)."""
    page.set_viewport_size({"width": 1366, "height": 768})
    console = open_dashboard(page, volume_server.url)
    page.locator(".bk-btn", has_text="▶").click()
    s = wait_state(page, lambda now: now["page"] == 1)
    assert s["slices"] == [None] * len(s["page_ids"])               # no map of this page is known: middle slices
    montage = page.locator(".xv-montage .bk-Canvas")
    box, (h, w), tile = montage.bounding_box(), s["grid"]["size"], s["grid"]["tile"]
    clip = {"x": box["x"] + 2 * box["width"] / w, "y": box["y"] + 2 * box["height"] / h,
            "width": (tile - 4) * box["width"] / w, "height": (tile - 4) * box["height"] / h}

    def first_tile() -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("L"), np.float32)
    page.wait_for_timeout(500)
    middle = first_tile()                                           # before any map of the page is computed
    page.mouse.click(*tile_point(page, s, 0))
    wait_state(page, lambda now: now["left_sample"] == now["page_ids"][0])
    page.mouse.click(*tile_point(page, s, 1))
    now = wait_state(page, lambda now: now["sample"] == s["page_ids"][1] and now["slices"][0] is not None)
    assert now["slices"][0] != s["volume"]["grid"][0] // 2          # train volume 20: its Grad-CAM peaks at z 27
    page.wait_for_timeout(500)
    assert np.abs(first_tile() - middle).mean() > 2, "the first thumbnail still shows the middle slice"
    assert not console.errors, console.errors
