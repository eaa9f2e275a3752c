"""The screenshots of the 3-D demo in docs/dashboard.md and the README, and the orientation check of the axial
thumbnail against the axial plane.

Run from the repository root (needs Debian's chromium, as the browser tests do):

    .venv/bin/python docs/volume_screenshots.py

Serves `xcam-viz demo --volumes` (with a temporary feedback store), opens it at 1366×768 and writes
docs/img/volumes.png (a volume with the metal skin marker the model learned as a shortcut, the crosshair on
the marker: the browser and the axial planes) and docs/img/volumes-planes.png (the three planes of both
maps: the Explain tab alone, the same 1366 px wide layout in a taller window) and docs/img/volumes-row.png
(the README's: the left map's three planes cut from that page and put side by side). test-artifacts/browser/
gets volumes-orientation.png: the selected volume's thumbnail (its middle axial slice) beside the axial plane
at the same slice, both as the page draws them, to compare by eye.
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser.harness import (  # noqa: E402
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    Server,
    open_dashboard,
    state,
    tile_point,
    wait_state,
)

OUT = ROOT / "docs" / "img"
VIEWPORT = {"width": 1366, "height": 768}
MARKED = 1                     # the second training volume: malignant, with the metal skin marker (the shortcut)


def element_picture(locator) -> Image.Image:
    return Image.open(io.BytesIO(locator.screenshot())).convert("RGB")


def orientation(page) -> Path:
    """The first thumbnail (the selected volume's middle axial slice) beside the left axial plane at the same
    slice (the crosshair starts at the centre) with the map hidden (opacity 0), scaled to one height; prints
    how well the thumbnail matches the plane as drawn and flipped upside down."""
    s = wait_state(page, lambda now: now.get("volume") is not None and now["slices"][0] is None)
    d = s["volume"]["grid"][0]
    assert s["volume"]["crosshair"][0] == d // 2 and s["sample"] == s["page_ids"][0], s["volume"]
    page.locator("#sidebar .noUi-handle").first.focus()                # the map opacity
    page.keyboard.press("Home")
    page.wait_for_timeout(1000)
    box = page.locator(".xv-montage .bk-Canvas").bounding_box()
    scale = box["width"] / s["grid"]["size"][1]                        # page px per montage px
    side = (s["grid"]["tile"] - 4) * scale                             # the picture of tile 0, at (2, 2)
    shot = Image.open(io.BytesIO(page.screenshot(clip={"x": box["x"] + 2 * scale, "y": box["y"] + 2 * scale,
                                                       "width": side, "height": side})))
    plane = element_picture(page.locator(".xv-plane-axial .bk-Canvas").first)
    height = 300
    pictures = [im.convert("RGB").resize((round(im.width * height / im.height), height)) for im in (shot, plane)]
    joined = Image.new("RGB", (sum(im.width for im in pictures) + 20, height), "white")
    joined.paste(pictures[0], (0, 0))
    joined.paste(pictures[1], (pictures[0].width + 20, 0))
    thumb = np.asarray(shot.convert("L").resize((64, 64)), float)
    frame = plane.convert("L").crop((0, plane.height - plane.width, plane.width, plane.height))   # below the title
    drawn = np.asarray(frame.resize((64, 64)), float)
    match = {name: float(np.corrcoef(thumb.ravel(), image.ravel())[0, 1]) for name, image in
             (("as drawn", drawn), ("upside down", drawn[::-1]), ("mirrored", drawn[:, ::-1]))}
    print("correlation of the thumbnail with the axial plane:", {k: round(v, 3) for k, v in match.items()})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "volumes-orientation.png"
    joined.save(path)
    return path


def marker_centre(i: int) -> list[int]:
    """The voxel (z, y, x) at the centre of training volume i's skin marker."""
    from xcam_viz.demo import demo_volumes

    marker = demo_volumes("train", i + 1).regions["confounder"][i].numpy()
    return [int(round(float(v))) for v in np.argwhere(marker).mean(0)]


def move_crosshair(page, point: list[int]) -> None:
    """The axial slider to z (by keyboard), then a click on the left axial plane at (y, x)."""
    z, y, x = point
    s = state(page)
    handle = page.locator(".xv-slice-axial .noUi-handle").first
    handle.focus()
    for _ in range(abs(z - s["volume"]["crosshair"][0])):
        page.keyboard.press("ArrowRight" if z > s["volume"]["crosshair"][0] else "ArrowLeft")
    wait_state(page, lambda now: now["volume"]["crosshair"][0] == z)
    d, h, w = s["volume"]["grid"]
    box = page.locator(".xv-plane-axial .bk-Canvas").first.bounding_box()     # the frame under the title: y up
    frame = box["width"] * h / w
    page.mouse.click(box["x"] + (x + 0.5) / w * box["width"], box["y"] + box["height"] - (y + 0.5) / h * frame)
    wait_state(page, lambda now: now["volume"]["crosshair"] == [z, y, x])
    page.mouse.move(5, VIEWPORT["height"] - 5)                         # no hover tooltip, no focus outline
    page.evaluate("""() => { let e = document.activeElement;
      while (e && e.shadowRoot && e.shadowRoot.activeElement) e = e.shadowRoot.activeElement;
      if (e) e.blur(); }""")


def planes_in_a_row(page) -> Image.Image:
    """The left map's three planes (each with its title) side by side on white, for the README."""
    pictures = [element_picture(page.locator(f".xv-plane-{name}").first) for name in ("axial", "coronal", "sagittal")]
    row = Image.new("RGB", (sum(im.width for im in pictures) + 16 * (len(pictures) - 1),
                            max(im.height for im in pictures)), "white")
    x = 0
    for im in pictures:
        row.paste(im, (x, 0))
        x += im.width + 16
    return row


def explain_tab(page) -> Image.Image:
    """The Explain tab from the window controls to the info line under the planes."""
    tabs = page.locator(".xv-tabs").first.bounding_box()
    info = page.locator(".xv-map-info").first.bounding_box()
    top = page.locator(".xv-window").first.bounding_box()["y"] - 30
    return Image.open(io.BytesIO(page.screenshot(clip={"x": tabs["x"], "y": top, "width": tabs["width"],
                                                       "height": info["y"] + info["height"] - top + 10})))


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="xcam-viz-volumes-"))
    feedback = folder / "feedback.db"
    server = Server(["-m", "xcam_viz.cli", "demo", "--volumes", "--quiet", "--port", "{port}"], feedback,
                    env={"XCAM_VIZ_FEEDBACK": str(feedback)}, timeout=600)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport=VIEWPORT).new_page()
            open_dashboard(page, server.url)
            print(f"wrote {orientation(page)}", flush=True)
            page.reload()                                              # a new session: the map's opacity again
            open_dashboard(page, server.url)
            s = wait_state(page, lambda now: now.get("volume") is not None)
            page.mouse.click(*tile_point(page, s, MARKED))
            wait_state(page, lambda now: now["left_sample"] == s["page_ids"][MARKED])
            move_crosshair(page, marker_centre(MARKED))
            page.wait_for_timeout(1500)
            OUT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=OUT / "volumes.png")
            page.set_viewport_size({"width": VIEWPORT["width"], "height": 1400})   # the same layout, taller
            page.wait_for_timeout(1500)
            explain_tab(page).save(OUT / "volumes-planes.png")
            planes_in_a_row(page).save(OUT / "volumes-row.png")
            print(f"wrote {OUT / 'volumes.png'}, {OUT / 'volumes-planes.png'} and {OUT / 'volumes-row.png'}",
                  flush=True)
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
