"""Uploading images in the served dashboard: bad files become notifications, a good one is explained."""
import io

import numpy as np
import pytest
from PIL import Image

from xcam_viz.demo import demo_data

from .harness import Server, notification, open_dashboard, shot, state, wait_state

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory):
    """The demo served with a 0.05 MB upload limit."""
    feedback = tmp_path_factory.mktemp("upload") / "feedback.db"
    srv = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--feedback", str(feedback),
                  "--max-upload-mb", "0.05"], feedback)
    yield srv
    srv.stop()


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def upload(page, name: str, content: bytes) -> None:
    page.locator(".xv-upload input[type=file]").set_input_files(
        files=[{"name": name, "mimeType": "image/png", "buffer": content}])


def test_bad_uploads_notify_and_a_good_one_is_explained(small_limit, page):
    console = open_dashboard(page, small_limit.url)
    before = state(page)
    upload(page, "corrupt.png", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    assert "corrupt.png is not a readable PNG or JPEG" in notification(page, "corrupt.png")
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    assert len(png(noise)) > 0.05 * 2**20
    upload(page, "large.png", png(noise))
    assert "more than the 0.05 MB limit" in notification(page, "large.png")
    unchanged = ("split", "sample", "left")
    assert [state(page)[k] for k in unchanged] == [before[k] for k in unchanged]

    lesion = (demo_data("flipped", n=1).images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    upload(page, "my lesion.png", png(lesion))
    assert "opened my lesion.png" in notification(page, "opened")
    after = wait_state(page, lambda s: s["split"] == "uploads" and s["sample"].startswith("upload-")
                       and s["left"] not in ("", before["left"]), timeout=60)
    assert after["page_ids"] == [after["sample"]]                            # the browser lists the upload
    assert after["left_title"].startswith(before["left_title"].split(" · ")[0])   # same method, new image
    shot(page, "11-upload")
    assert console.errors == []
