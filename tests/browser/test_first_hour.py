"""The first hour with your own model and data, as a new user meets it at 1366×768: a folder of grey
1024×1024 scans in five long-named classes (one split) and a torchvision resnet18 checkpoint.

Every tab is used (select, layer and method, paint and save, fine-tune, label a concept, build a report);
no demo word and no raw markdown may show, every control must be on screen, and the fine-tune result must
name the split it was scored on. Screenshots: test-artifacts/browser/first-hour-*.png.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import xcam_viz as xv
from xcam_viz.data.synthetic import CLASS_NAMES, CONCEPTS
from xcam_viz.feedback import FeedbackStore

from .harness import (
    Server,
    drag,
    notification,
    open_card,
    open_dashboard,
    page_text,
    select_option,
    shot,
    tile_point,
    wait_state,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CLASSES = ["left lower lobe opacity, round shape", "right upper lobe nodule, calcified",
           "no finding on the posterior view", "enlarged heart with pleural effusion",
           "small apical pneumothorax on the left"]
PER_CLASS = 3                 # a held-out image, a validation image and one to train on, per class
VIEWPORT = {"width": 1366, "height": 768}
DEMO_WORDS = ["flipped", "marker", *CLASS_NAMES, *CONCEPTS]
CONTAINERS = {"sidebar": "#sidebar", "images": ".xv-images", "tabs": ".xv-tabs"}
MEASURE = (Path(__file__).with_name("layout.js")).read_text()


def grey_scans(root: Path, size: int = 1024) -> Path:
    """root/<class>/scan-<i>.png: grey ("L") 1024×1024 scans, a bright disc placed by class."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    body = 90 + 50 * np.exp(-(((xx - size / 2) / 300) ** 2 + ((yy - size / 2) / 380) ** 2))
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            scan = Image.fromarray((body + rng.normal(0, 6, body.shape)).clip(0, 255).astype(np.uint8), "L")
            cx, cy = 200 + 150 * k, 300 + int(rng.integers(0, 400))
            ImageDraw.Draw(scan).ellipse([cx - 60, cy - 60, cx + 60, cy + 60], fill=200)
            scan.save(root / name / f"scan-{i}.png")
    return root


@pytest.fixture(scope="module")
def first_hour(tmp_path_factory):
    """`xcam-viz serve --model resnet18.pt --data scans/ --feedback fb.db`: no split name, no size, no channels."""
    assert all(30 <= len(name) <= 40 for name in CLASSES)
    folder = tmp_path_factory.mktemp("first-hour")
    torch.manual_seed(0)
    checkpoint = xv.models.save(xv.models.build("resnet18", num_classes=len(CLASSES)), folder / "resnet18.pt")
    feedback = folder / "fb.db"
    srv = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--model", str(checkpoint),
                  "--data", str(grey_scans(folder / "scans")), "--feedback", str(feedback)], feedback, timeout=300)
    yield srv
    srv.stop()


def check_page(page, tab: str) -> None:
    """No demo word, no raw markdown, every control on screen and inside its box; a screenshot."""
    text = page_text(page)
    leftovers = [word for word in DEMO_WORDS if word.lower() in text.lower()]
    assert not leftovers and "|---|" not in text and "**" not in text, (tab, leftovers)
    for button in page.locator(".notyf__dismiss-btn").all():      # a toast is no control of the page
        button.click()
    page.locator(".notyf__toast").first.wait_for(state="detached")
    assert page.evaluate(MEASURE, CONTAINERS) == [], tab
    shot(page, f"first-hour-{tab}")


def test_the_first_hour(first_hour, browser):
    page = browser.new_context(viewport=VIEWPORT).new_page()
    console = open_dashboard(page, first_hour.url)
    s = wait_state(page, lambda s: s["picture"] == [1024, 1024])
    assert s["split"] == "train" and s["image_shape"] == [224, 224] and len(s["page_ids"]) == len(CLASSES) * PER_CLASS
    info = page_text(page, ".xv-map-info")
    assert "image 1024×1024, model input 224×224" in info and "grey images replicated to 3 channels" in info

    # Explain: another image, layer and method
    page.mouse.click(*tile_point(page, s, 1))
    s = wait_state(page, lambda now: now["sample"] == s["page_ids"][1] and now["left_sample"] == now["sample"], 120)
    select_option(page, "xv-layer", next(o for o in page.locator(".xv-layer option").all_text_contents()
                                         if o.startswith("layer3 · ")))
    wait_state(page, lambda now: now["left_title"].startswith("gradcam · layer3"), timeout=120)
    select_option(page, "xv-method", "layercam")
    wait_state(page, lambda now: now["left_title"].startswith("layercam · layer3"), timeout=60)
    page.wait_for_timeout(500)
    check_page(page, "1-explain")

    # Feedback: paint the disc as relevant and save
    page.locator(".bk-tab", has_text="Feedback").click()
    frame = wait_state(page, lambda now: now["tabs"]["Feedback"])["brush_frame"]
    drag(page, ".xv-brush", frame, (224, 224), [(60, 90), (130, 110), (60, 140)])
    wait_state(page, lambda now: now["strokes"] == 1)
    page.locator(".xv-save button").click()
    notification(page, "feedback saved")
    check_page(page, "2-feedback")

    # Fine-tune: one epoch, scored on the held-out share of train
    page.locator(".bk-tab", has_text="Fine-tune").click()
    status = page_text(page, ".xv-finetune-status")
    assert "5 train images are held out as held-out" in status and "never trained on" in status
    open_card(page, "xv-finetune-advanced", ".xv-finetune-epochs input")
    page.locator(".xv-finetune-epochs input").fill("1")
    page.locator(".xv-finetune-epochs input").press("Enter")
    page.locator(".xv-launch button").click()
    done = wait_state(page, lambda now: now["finetune"]["phase"] in ("done", "failed"), timeout=900)
    assert done["finetune"]["phase"] == "done", done["finetune"]
    results = page.locator(".xv-finetune-results table").text_content()
    assert f"held-out ({len(CLASSES)} training images, never trained on)" in results
    assert "validation (held out of training)" in results
    page.locator(".xv-versions").scroll_into_view_if_needed()
    assert "held-out accuracy" in page.locator(".xv-versions table").text_content()
    check_page(page, "3-finetune")
    page.locator(".xv-versions").scroll_into_view_if_needed()
    shot(page, "first-hour-3-finetune-results")

    # Concepts: paint a region, name it, build the report
    page.locator(".bk-tab", has_text="Concepts").click()
    ready = wait_state(page, lambda now: now["concepts"]["phase"] == "ready", timeout=300)["concepts"]
    drag(page, ".xv-concept-roi", ready["frame"], (224, 224), [(60, 100), (130, 110), (70, 130)])
    wait_state(page, lambda now: now["concepts"]["strokes"] == 1 and now["concepts"]["matches"], timeout=120)
    page.locator(".xv-concept-name input").fill("bright round spot")
    page.locator(".xv-concept-name input").press("Enter")
    page.locator(".xv-concept-label button").click()
    notification(page, "bright round spot", timeout=120)          # labelled, or: no unit passes the threshold
    page.locator(".xv-concept-update button").click()
    wait_state(page, lambda now: now["concepts"]["report"] >= 1, timeout=600)
    page.locator(".xv-report-download button:not([disabled])").wait_for()
    check_page(page, "4-concepts")
    assert FeedbackStore(first_hour.feedback).sample_ids() == [s["sample"]]
    assert console.errors == []
    page.context.close()
