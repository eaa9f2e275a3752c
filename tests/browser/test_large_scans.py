"""Mammogram-sized grey scans (4096×3328) served with a checkpoint that does not fit the data: the scan opens
at full resolution, a brush stroke lands where it was drawn, and a map the model cannot make says why.

The checkpoint is deliberately mismatched: a resnet18 with 2 outputs for data in 3 classes. Explaining the
third class is model work that fails; the page must say so (a notification naming the fix) and show no map.
"""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import xcam_viz as xv
from xcam_viz.feedback import FeedbackStore

from .harness import Server, drag, notification, open_dashboard, page_text, select_option, shot, wait_state

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CLASSES = ["left breast, craniocaudal view", "right breast, craniocaudal view", "right breast, oblique view"]
STORED = (3328, 4096)                  # height, width of the files
INPUT = (182, 224)                     # what the dashboard fits them to (224 px on the longer side)


def mammograms(root):
    """One 4096×3328 grey PNG per class: a smooth body with a bright disc (a few MB each)."""
    h, w = STORED
    yy, xx = np.mgrid[0:h, 0:w]
    body = (60 + 110 * np.exp(-(((xx - w * 0.3) / 1500) ** 2 + ((yy - h / 2) / 1300) ** 2))).astype(np.uint8)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        scan = Image.fromarray(body, "L")
        ImageDraw.Draw(scan).ellipse([1200 + 400 * k, 1400, 1500 + 400 * k, 1700], fill=230)
        scan.save(root / name / "scan.png")
    return root


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    torch.manual_seed(0)
    checkpoint = xv.models.save(xv.models.build("resnet18", num_classes=2), folder / "two-class-resnet18.pt")
    feedback = folder / "fb.db"
    srv = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--model", str(checkpoint),
                  "--data", str(mammograms(folder / "scans")), "--feedback", str(feedback)], feedback, timeout=300)
    yield srv
    srv.stop()


def test_a_large_scan_opens_and_a_stroke_lands_within_one_stored_pixel(scans, page):
    console = open_dashboard(page, scans.url)
    s = wait_state(page, lambda s: s["picture"] == list(STORED), timeout=120)
    assert s["image_shape"] == list(INPUT)
    assert "image 4096×3328, model input 224×182" in page_text(page, ".xv-map-info")
    shot(page, "large-scan-explain")
    page.locator(".bk-tab", has_text="Feedback").click()
    frame = wait_state(page, lambda now: now["tabs"]["Feedback"])["brush_frame"]
    row, (first, last) = 100, (40, 180)
    drag(page, ".xv-brush", frame, INPUT, [(first + 0.5, row + 0.5), (last + 0.5, row + 0.5)], steps=20)
    wait_state(page, lambda now: now["strokes"] == 1)
    page.locator(".xv-save button").click()
    notification(page, "feedback saved")
    shot(page, "large-scan-stroke")
    mask = FeedbackStore(scans.feedback).annotations(s["sample"])[-1].relevant
    assert mask.shape == INPUT
    rows, cols = np.nonzero(mask)
    centre = [rows[cols == c].mean() for c in np.unique(cols)]
    width = 4                                                         # the brush's default, in stored pixels
    assert np.abs(np.array(centre) - row).max() <= 1                  # along the whole stroke
    assert abs(cols.min() - (first - width / 2)) <= 1 and abs(cols.max() - (last + width / 2)) <= 1
    assert console.errors == []


def test_a_mismatched_model_says_why_it_has_no_map(scans, page):
    console = open_dashboard(page, scans.url)
    select_option(page, "xv-target", CLASSES[2])                      # the model has 2 outputs, not 3
    s = wait_state(page, lambda now: now["left_problem"] != "", timeout=120)
    assert s["left_title"].startswith("no map") and "out of range" in s["left_problem"]
    assert "Fix: choose a class the model has" in notification(page, "No map")
    assert "No map" in page_text(page, ".xv-map-info")
    shot(page, "large-scan-no-map")
    select_option(page, "xv-target", "predicted class")               # back to a map
    wait_state(page, lambda now: now["left_problem"] == "" and not now["left_title"].startswith("no map"))
    assert console.errors == []
