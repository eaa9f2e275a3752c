"""A workshop in the browser: `xcam-viz serve --workspaces per-user --max-runs 1`, anonymous participants.

The queue: three participants paint one image each and launch fine-tuning at once; one runs while the
others see positions 1 and 2; each run trains on its own participant's feedback only, and every new
version shows on the instructor's page. Restart: the server is killed (-9) while a run is going, started
again on the same workspace folder, and every saved stroke and finished version is still there, in the
right workspace. Cheap data: the demo model on 160 training images (a MedMNIST-style .npz), one epoch.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from xcam_viz.demo import demo_data
from xcam_viz.feedback import FeedbackStore
from xcam_viz.finetune import ModelVersions

from .harness import (
    ROOT,
    VIEWPORT,
    Server,
    open_dashboard,
    page_text,
    paint_and_save,
    set_epochs,
    shot,
    state,
    tile_point,
    wait_state,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
RUN_TIMEOUT = 180            # seconds for three one-epoch runs, one after the other, on 2 busy cores


def lesions_npz(path: Path) -> Path:
    """The demo's lesions as a small MedMNIST-style file: train (160), val (flipped, 32), test (32)."""
    arrays = {}
    for split, source, n in (("train", "train", 160), ("val", "flipped", 32), ("test", "test", 32)):
        data = demo_data(source, n=n)
        arrays[f"{split}_images"] = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        arrays[f"{split}_labels"] = data.labels.numpy()[:, None]
    np.savez(path, **arrays)
    return path


class Workshop:
    """A per-user server on one workspace folder, which a test may kill and start again."""

    def __init__(self, folder: Path):
        self.folder = folder / "workspaces"
        self.args = ["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--model",
                     str(ROOT / "data" / "demo_smallcnn.pt"), "--data", str(lesions_npz(folder / "lesions.npz")),
                     "--feedback", str(folder / "feedback.db"), "--workspaces", "per-user",
                     "--workspace-dir", str(self.folder), "--max-runs", "1"]
        self.runs = 0
        self.start()

    def start(self) -> None:
        self.runs += 1
        self.server = Server(self.args, self.folder.parent / f"server-{self.runs}.db")
        self.url = self.server.url
        log = self.server.log.read_text()
        self.instructor = re.search(r"instructor's page: http://[^/]+(/instructor\?key=\w+)", log).group(1)

    def kill(self) -> None:
        os.kill(self.server.pid, signal.SIGKILL)
        self.server.proc.wait(30)
        self.server.stop()

    def stores(self) -> dict[str, tuple[list[str], int, list[str]]]:
        """Per workspace folder: its annotated samples, its annotation count, its model versions."""
        found = {}
        for db in sorted(self.folder.glob("*/feedback.db")):
            store = FeedbackStore(db)
            versions = ModelVersions(db.with_name("feedback-versions")).list()
            found[db.parent.name] = (store.sample_ids(), len(store), versions)
        return found


@pytest.fixture(scope="module")
def workshop(tmp_path_factory):
    shop = Workshop(tmp_path_factory.mktemp("workshop"))
    yield shop
    shop.server.stop()


def join(browser, url: str, tile: int):
    """A participant in a browser of their own: opens the dashboard and selects thumbnail `tile`."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    console = open_dashboard(page, url)
    first = state(page)
    page.mouse.click(*tile_point(page, first, tile))
    chosen = wait_state(page, lambda s: s["sample"] == first["page_ids"][tile])
    return page, console, chosen


def launched(page) -> dict:
    return wait_state(page, lambda s: s["finetune"]["phase"] != "idle" and s["finetune"]["queue"])["finetune"]


def test_three_participants_queue_their_own_runs_and_the_instructor_sees_them(workshop, browser):
    people = [join(browser, workshop.url, tile) for tile in (1, 2, 3)]
    names = [chosen["finetune"]["workspace"] for _, _, chosen in people]
    assert len(set(names)) == 3 and all(n.startswith("guest-") for n in names)
    for (page, _, _), name in zip(people, names):
        assert f"xcam-viz · {name}'s workspace" in page_text(page, ".title")
        paint_and_save(page)
        set_epochs(page, 1)
    for page, _, _ in people:                                       # at once: one click after the other
        page.locator(".xv-launch button").click()
    first = [launched(page) for page, _, _ in people]
    assert sorted(f["queue"]["position"] for f in first) == [0, 1, 2]    # one running, two waiting in order
    waiting = next(page for (page, _, _), f in zip(people, first) if f["queue"]["position"] == 2)
    assert "position 2 in the queue" in page_text(waiting, ".xv-finetune-status")   # said at once, in words
    shot(waiting, "workshop-01-queued")

    done = [wait_state(page, lambda s: s["finetune"]["phase"] == "done", timeout=RUN_TIMEOUT)["finetune"]
            for page, _, _ in people]
    assert [run["version"] for run in done] == ["v1"] * 3                 # each in their own lineage
    assert [run["run_settings"]["epochs"] for run in done] == [1, 1, 1]
    assert [run["run_settings"]["feedback_samples"] for run in done] == [1, 1, 1]   # their own stroke only
    stores = workshop.stores()                                           # guest names are their folders' names
    assert {name: stores[name] for name in names} == {
        name: ([chosen["sample"]], 1, ["v0", "v1"]) for name, (_, _, chosen) in zip(names, people)}

    teacher = browser.new_context(viewport=VIEWPORT).new_page()
    teacher.goto(workshop.url + "instructor", timeout=60_000)            # without the key: refused
    teacher.locator(".xv-instructor-refused").wait_for()
    teacher.goto(workshop.url.rstrip("/") + workshop.instructor, timeout=60_000)
    table = teacher.locator(".xv-participants table")
    table.wait_for(timeout=60_000)
    rows = table.locator("tbody tr")
    assert rows.count() == 3 and table.locator("img").count() == 3
    for name in names:
        row = rows.filter(has_text=name)
        assert row.count() == 1 and "v1" in row.text_content()
        assert re.search(r"\b(done|flagged)\b", row.text_content())
    shot(teacher, "workshop-02-instructor")
    for page, console, _ in people:
        assert console.errors == []
        page.context.close()
    teacher.context.close()


def test_a_killed_server_restarts_with_every_stroke_and_version(workshop, browser):
    page, console, _ = join(browser, workshop.url, 5)
    name = state(page)["finetune"]["workspace"]
    paint_and_save(page)
    set_epochs(page, 1)
    page.locator(".xv-launch button").click()
    wait_state(page, lambda s: s["finetune"]["phase"] == "done", timeout=RUN_TIMEOUT)
    page.locator(".bk-tab", has_text="Explain").click()
    first = state(page)
    page.mouse.click(*tile_point(page, first, 6))
    wait_state(page, lambda s: s["sample"] == first["page_ids"][6])
    paint_and_save(page)
    set_epochs(page, 50)                                                 # long enough to be killed mid-run
    page.locator(".xv-launch button").click()
    wait_state(page, lambda s: s["finetune"]["phase"] == "training", timeout=60)
    before = workshop.stores()
    assert console.errors == []
    workshop.kill()                                                      # mid-run, as a power cut would
    assert workshop.stores() == before

    workshop.start()
    assert workshop.stores() == before                                   # nothing lost, nothing half-written
    assert before[name][2] == ["v0", "v1"] and len(before[name][0]) == 2 and len(before) == 4
    page.goto("about:blank")                                             # the old page could not reach the server
    console = open_dashboard(page, workshop.url)                         # the same browser: the same workspace
    again = state(page)
    assert again["finetune"]["workspace"] == name and again["versions"] == ["v0", "v1"]
    teacher = browser.new_context(viewport=VIEWPORT).new_page()
    teacher.goto(workshop.url.rstrip("/") + workshop.instructor, timeout=60_000)
    rows = teacher.locator(".xv-participants table tbody tr")
    rows.first.wait_for(timeout=60_000)
    assert rows.count() == 4 and "v1" in rows.filter(has_text=name).text_content()
    assert console.errors == []
    page.context.close()
    teacher.context.close()
