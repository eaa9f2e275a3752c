"""The loop in the browser: paint the marker shortcut on ten training images, fine-tune with the
defaults, and see the flipped accuracy repaired in the Fine-tune tab (at 1366×768)."""
import json
import re

import numpy as np
import pytest

import xcam_viz as xv
from xcam_viz.demo import demo_data

from .harness import ARTIFACTS, demo_servers, drag, open_dashboard, select_sample, shot, state, wait_state

pytestmark = [pytest.mark.browser, pytest.mark.slow]          # ~3-5 minutes on 2 busy cores
ANNOTATED = 10
LAPTOP = {"width": 1366, "height": 768}


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory):
    """The demo served with an empty feedback database (no other test's feedback or versions)."""
    yield from demo_servers(tmp_path_factory.mktemp("repair"))


def trace(marker: np.ndarray, amplitude: float = 1.5, step: float = 2.0) -> list[tuple[float, float]]:
    """(col, row) points of a zigzag along the marker's long axis, end to end: how one scribbles over a
    thin ink stroke with a 4 px brush."""
    rows, cols = np.nonzero(marker)
    pts = np.stack([cols, rows], 1) + 0.5
    centre = pts.mean(0)
    axes = np.linalg.svd(pts - centre)[2]
    along = (pts - centre) @ axes[0]
    ts = np.arange(along.min() - 1, along.max() + 1 + step, step)
    return [tuple(centre + t * axes[0] + (amplitude if i % 2 else -amplitude) * axes[1]) for i, t in enumerate(ts)]


def test_painting_the_marker_on_ten_training_images_repairs_the_shortcut(fresh_server, browser):
    page = browser.new_context(viewport=LAPTOP).new_page()
    console = open_dashboard(page, fresh_server.url)
    s0 = state(page)
    assert s0["split"] == "train" and s0["version"] == "v0"
    train = demo_data("train")
    marker = train.regions["confounder"]
    chosen = marker.flatten(1).any(1).nonzero().flatten()[:ANNOTATED].tolist()      # the first marked images

    page.locator(".bk-tab", has_text="Feedback").click()
    page.locator(".xv-brush-mode .bk-btn", has_text=re.compile(r"^\s*irrelevant\s*$")).click()
    for n, index in enumerate(chosen):
        sample = train.ids[index]
        before = select_sample(page, sample)
        page.wait_for_timeout(300)                                  # the canvas shows the new image
        drag(page, ".xv-brush", before["brush_frame"], before["image_shape"], trace(marker[index].numpy()))
        wait_state(page, lambda s: s["strokes"] == 1)
        if n == 0:
            shot(page, "repair-01-marker-painted")
        page.locator(".xv-save button").click()
        wait_state(page, lambda s, r=before["revision"]: s["revision"] > r and s["strokes"] == 0)

    store = xv.FeedbackStore(fresh_server.feedback)
    assert len(store.sample_ids()) == ANNOTATED
    for index in chosen:                                              # the strokes cover the marker, not the lesion
        saved = store.annotations(train.ids[index])
        assert len(saved) == 1 and saved[0].relevant is None
        painted, truth = np.asarray(saved[0].irrelevant, bool), marker[index].numpy()
        assert (painted & truth).sum() >= 0.9 * truth.sum(), f"{train.ids[index]}: the marker is not covered"
        assert (painted & train.masks[index].numpy()).sum() <= 0.05 * painted.sum()

    page.locator(".bk-tab", has_text="Fine-tune").click()
    page.locator(".xv-finetune-status", has_text=f"{ANNOTATED} images of").wait_for()
    shot(page, "repair-02-before-launch")
    assert state(page)["finetune"]["settings"] == {"strategy": "auto", "layer": "block4", "lam": None,
                                                   "epochs": None, "lr": None}    # the core's defaults
    page.locator(".xv-launch button").click()
    wait_state(page, lambda s: s["finetune"]["phase"] == "training", timeout=120)
    shot(page, "repair-03-training")
    done = wait_state(page, lambda s: s["finetune"]["phase"] in ("done", "failed"), timeout=1200)
    run = done["finetune"]
    assert run["phase"] == "done" and run["base"] == "v0" and run["version"] == "v1"
    after, before = run["metrics"]["after"], run["metrics"]["before"]
    (ARTIFACTS / "repair.json").write_text(json.dumps(run, indent=1))
    print(f"flipped accuracy {before['flipped/accuracy']:.1%} -> {after['flipped/accuracy']:.1%}, test "
          f"{before['test/accuracy']:.1%} -> {after['test/accuracy']:.1%}, strategy {run['run_settings']['strategy']}, "
          f"best epoch {run['best_epoch']}, flagged {run['flagged']}")
    results = page.locator(".xv-finetune-results table").text_content()              # (in the pane's shadow DOM)
    assert f"{before['flipped/accuracy']:.1%} → {after['flipped/accuracy']:.1%}" in results   # as the tab shows it
    assert after["flipped/accuracy"] >= 0.85
    assert not run["flagged"] and done["version"] == "v1"            # a good run: the new version is selected
    page.locator(".xv-finetune-results").scroll_into_view_if_needed()
    shot(page, "repair-04-results")
    page.locator(".xv-versions").scroll_into_view_if_needed()
    shot(page, "repair-05-versions")
    page.locator(".bk-tab", has_text="Explain").click()
    compare = wait_state(page, lambda s: s["left_title"].split(" · ")[2] == "v1"
                         and s["right_title"].split(" · ")[2] == "v0")
    left, right = compare["left_title"].split(" · "), compare["right_title"].split(" · ")
    assert left[:2] == right[:2] == ["gradcam", "block4"] and compare["left"] != compare["right"]   # same CAM
    page.wait_for_timeout(800)
    shot(page, "repair-06-compare")
    assert console.errors == []
    page.context.close()
