"""A workshop on one server without a browser: per-user workspaces, the fair fine-tuning queue, the
instructor's table, and the serve flags (the browser side: tests/browser/test_workshop.py)."""
import base64
import copy
import io
import os
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from xcam_viz import models
from xcam_viz.dashboard import MapRequest, Workbench
from xcam_viz.dashboard.instructor import (
    THUMB_PX,
    InstructorPage,
    participants,
    participants_csv,
    table_html,
    thumbnail_uri,
)
from xcam_viz.dashboard.server import LOGIN_PAGE, users_file
from xcam_viz.dashboard.workspaces import Workspaces, folder_name
from xcam_viz.demo import demo_data
from xcam_viz.finetune import ModelVersions
from xcam_viz.finetune.job import FinetuneJob
from xcam_viz.finetune.runqueue import NICE, RunQueue


# --- the queue, with jobs a test finishes by hand ---------------------------------------------------
class Gate:
    """A run that waits until the test lets it finish (or it is cancelled); records when it started."""

    def __init__(self, name: str, started: list):
        self.name, self.started, self.go = name, started, threading.Event()

    def __call__(self, control):
        self.started.append(self.name)
        while not self.go.wait(0.01):
            if control.cancel_requested:
                return SimpleNamespace(cancelled=True)
        if self.name.startswith("fail"):
            raise RuntimeError("the run broke")
        return SimpleNamespace(cancelled=False)


def queued(queue: RunQueue, names: list[str]):
    started = []
    gates = {name: Gate(name, started) for name in names}         # runs in threads: the queue's logic only
    tickets = {name: queue.submit(FinetuneJob(gates[name], start=False), owner=name) for name in names}
    return gates, tickets, started


def finish(gate: Gate, ticket) -> None:
    gate.go.set()
    assert ticket.wait(10)


def test_queue_is_first_come_first_served_with_at_most_n_runs():
    queue = RunQueue(max_runs=1)
    gates, tickets, started = queued(queue, ["ana", "ben", "cleo"])
    time.sleep(0.05)
    assert started == ["ana"] and [tickets[n].state for n in gates] == ["running", "queued", "queued"]
    assert [tickets[n].position for n in gates] == [0, 1, 2]
    assert tickets["ben"].progress["phase"] == "queued"
    finish(gates["ana"], tickets["ana"])
    time.sleep(0.05)
    assert started == ["ana", "ben"] and tickets["ana"].state == "done" and tickets["cleo"].position == 1
    finish(gates["ben"], tickets["ben"])
    finish(gates["cleo"], tickets["cleo"])
    assert started == ["ana", "ben", "cleo"] and queue.snapshot() == {"running": 0, "waiting": 0, "max_runs": 1}

    two = RunQueue(max_runs=2)
    gates, tickets, started = queued(two, ["a", "b", "c"])
    time.sleep(0.05)
    assert sorted(started) == ["a", "b"] and tickets["c"].position == 1
    for name in gates:
        finish(gates[name], tickets[name])


def test_queued_and_running_runs_can_be_cancelled():
    queue = RunQueue(max_runs=1)
    gates, tickets, started = queued(queue, ["ana", "ben", "cleo"])
    tickets["ben"].cancel()                                  # waiting: leaves the line, never starts
    assert tickets["ben"].state == "cancelled" and tickets["ben"].done and tickets["ben"].result() is None
    assert tickets["cleo"].position == 1
    tickets["ana"].cancel()                                  # running: stops after its current step
    assert tickets["ana"].wait(10) and tickets["ana"].state == "cancelled"
    finish(gates["cleo"], tickets["cleo"])
    assert started == ["ana", "cleo"] and tickets["cleo"].state == "done"


def test_one_run_per_participant_and_failures_free_the_slot():
    queue = RunQueue(max_runs=1)
    gates, tickets, started = queued(queue, ["fail-ana", "ben"])
    with pytest.raises(ValueError, match="you have a fine-tuning run waiting .position 1. already"):
        queue.submit(FinetuneJob(Gate("ben", started), start=False), owner="ben")
    gates["fail-ana"].go.set()
    assert tickets["fail-ana"].wait(10) and tickets["fail-ana"].state == "failed"
    with pytest.raises(RuntimeError, match="the run broke"):
        tickets["fail-ana"].result()
    finish(gates["ben"], tickets["ben"])
    assert queue.latest("ben") is tickets["ben"]
    with pytest.raises(ValueError, match="at least 1"):
        RunQueue(max_runs=0)


def test_a_run_in_its_own_process_sends_back_its_error():
    queue = RunQueue(max_runs=1)
    job = queue.process_job(dict(model=None, ds=None, feedback=None))
    assert (job.nice, job.threads) == (NICE, queue.threads) and not job.started
    ticket = queue.submit(job, owner="ana")
    assert ticket.wait(120) and ticket.state == "failed" and job.pid is not None
    with pytest.raises(TypeError, match="ds must be an ImageSet"):
        ticket.result()
    assert job.arguments is None                     # sent to the child: the queue keeps no copy of the data
    waiting = queue.process_job(dict(model=None, ds=None, feedback=None))
    waiting.cancel()                                 # cancelled before it started: nothing is kept either
    assert waiting.arguments is None and not waiting.started


def test_the_wait_is_estimated_from_finished_runs():
    now = [0.0]
    queue = RunQueue(max_runs=1, clock=lambda: now[0])
    gates, tickets, _ = queued(queue, ["ana", "ben", "cleo"])
    assert tickets["ben"].estimate is None                   # no run has shown its pace yet
    now[0] = 10.0
    finish(gates["ana"], tickets["ana"])                     # a run takes 10 s; ben starts at 10
    now[0] = 14.0
    assert tickets["cleo"].estimate == pytest.approx(6.0)   # ben has 6 s left
    gates2, more, _ = queued(queue, ["dan"])
    assert more["dan"].estimate == pytest.approx(16.0) and tickets["ben"].estimate == 0.0
    for name in ("ben", "cleo"):
        finish(gates[name], tickets[name])
    finish(gates2["dan"], more["dan"])


# --- workspaces -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def splits(demo_test, demo_flipped):
    return {"train": demo_data("train", n=128), "test": demo_test, "flipped": demo_flipped}


@pytest.fixture()
def spaces(demo_model, splits, tmp_path):
    root = Workbench(demo_model, splits, tmp_path / "feedback.db")
    return Workspaces(root, "per-user", tmp_path / "workshop", RunQueue(max_runs=1))


def paint(workbench: Workbench, position: int, author: str) -> str:
    train = workbench.splits["train"]
    sample = train.ids[position]
    workbench.feedback.add(sample, relevant=train.masks[position].numpy(), author=author)
    return sample


def test_folder_names_are_safe_and_distinct():
    assert folder_name("ana") == "ana" and folder_name("guest-3fa2c1") == "guest-3fa2c1"
    names = ["Ana", "ana", "../../etc/passwd", "Anne Marie", "anne_marie", "Zoë", "x" * 300, "<b>x</b>"]
    folders = [folder_name(n) for n in names]
    assert len(set(folders)) == len(names)
    assert all(f and len(f) <= 48 and f.replace("-", "").replace("_", "").isalnum() for f in folders)
    with pytest.raises(ValueError, match="needs a name"):
        folder_name("  ")


def test_each_participant_has_their_own_store_and_lineage_from_one_v0(spaces):
    ana, ben = spaces.workbench("Ana"), spaces.workbench("ben")
    assert spaces.workbench("Ana") is ana and spaces.names() == ["Ana", "ben"]
    assert ana.base_version == ben.base_version == "v0" and ana.versions == ben.versions == ["v0"]
    assert ana.registry.directory != ben.registry.directory
    fingerprints = {models.fingerprint(wb.registry.load("v0")) for wb in (ana, ben, spaces.root)}
    assert fingerprints == {models.fingerprint(spaces.root.model(spaces.root.base_version))}
    sample = paint(ana, 0, "Ana")
    assert ana.feedback.sample_ids() == [sample] and ben.feedback.sample_ids() == []
    assert len(spaces.root.feedback) == 0 and ana.feedback.path.parent.parent == spaces.folder
    ana.registry.save_new(ana.model("v0"), parent="v0")
    assert ana.versions == ["v0", "v1"] and ben.versions == ["v0"]


def test_participants_share_the_base_models_maps_but_not_their_own(spaces):
    ana, ben = spaces.workbench("ana"), spaces.workbench("ben")
    request = MapRequest(version="v0", split="test", sample=ana.splits["test"].ids[0], method="gradcam",
                         layer="block4")
    first = ana.saliency(request)
    passes = []
    hook = ana.model("v0").register_forward_hook(lambda *_: passes.append(1))
    try:
        assert ben.saliency(request) is first and passes == []      # the same v0: computed once
    finally:
        hook.remove()
    changed = copy.deepcopy(ana.model("v0"))
    with torch.no_grad():
        for weights in changed.parameters():
            weights.add_(torch.randn_like(weights) * 0.3)
    ana.add_version(ana.registry.save_new(changed, parent="v0"), changed)
    ben.registry.save_new(ben.model("v0"), parent="v0")              # ben's v1 is another model
    mine = MapRequest(**{**request.__dict__, "version": "v1"})
    assert np.allclose(ben.saliency(mine).values, first.values)
    assert not np.allclose(ana.saliency(mine).values, first.values)


def test_uploads_stay_in_their_workspace(spaces):
    ana, ben = spaces.workbench("ana"), spaces.workbench("ben")
    images = ana.splits["test"].images[:2]
    ana.add_images("uploads", images, ["up-a", "up-b"])
    assert "uploads" in ana.splits and "uploads" not in ben.splits and "uploads" not in spaces.root.splits


def test_a_restart_finds_every_workspace_with_its_feedback_and_versions(spaces, demo_model, splits, tmp_path):
    ana = spaces.workbench("Ana Lima")
    paint(ana, 0, "ana")
    paint(ana, 1, "ana")
    ana.registry.save_new(ana.model("v0"), parent="v0", meta={"flagged": False})
    paint(spaces.workbench("ben"), 2, "ben")
    cookie_name, cookie = spaces.new_guest()
    key = spaces.instructor_key

    root = Workbench(demo_model, splits, tmp_path / "feedback.db")         # a new server process on the folder
    again = Workspaces(root, "per-user", tmp_path / "workshop")
    assert again.names() == ["Ana Lima", "ben"]
    ana2 = again.workbench("Ana Lima")
    assert len(ana2.feedback) == 2 and ana2.versions == ["v0", "v1"] and ana2.parent("v1") == "v0"
    assert again.workbench("ben").feedback.sample_ids() == [splits["train"].ids[2]]
    assert again.guest(cookie) == cookie_name and again.instructor_key == key      # links outlive the restart
    assert again.guest(cookie[:-1] + "0") is None and again.guest("guest-1.abc") is None and again.guest(None) is None


def test_clear_errors_for_a_folder_that_cannot_be_used(demo_model, splits, tmp_path):
    root = Workbench(demo_model, splits, tmp_path / "feedback.db")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot write workspaces to .*a-file/workshop.*--workspace-dir"):
        Workspaces(root, "per-user", blocker / "workshop")
    Workspaces(root, "per-user", tmp_path / "workshop")
    other = models.build("smallcnn", num_classes=2)
    with pytest.raises(ValueError, match="made for another model"):
        Workspaces(Workbench(other, splits, tmp_path / "other.db"), "per-user", tmp_path / "workshop")
    with pytest.raises(ValueError, match="shared, per-user"):
        Workspaces(root, "per-team")
    shared = Workspaces(root)
    assert shared.workbench("anyone") is root and shared.names() == ["shared"] and shared.folder is None


# --- fine-tuning in workspaces, and the instructor's table ----------------------------------------
@pytest.mark.slow
def test_runs_queue_train_on_their_own_feedback_and_fill_the_instructors_table(spaces):
    ana, ben, cleo = (spaces.workbench(n) for n in ("ana", "ben", "<cleo>"))
    paint(ana, 0, "ana")
    for i in (1, 2):
        paint(ben, i, "ben")
    paint(cleo, 3, "cleo")
    tickets = [wb.finetune("v0", "train", epochs=1, lr=1e-6) for wb in (ana, ben)]
    assert [t.state for t in tickets] == ["running", "queued"] and tickets[1].position == 1
    with pytest.raises(ValueError, match="no feedback saved on train yet"):
        spaces.workbench("dan").finetune("v0", "train")
    frame = participants(spaces)
    assert frame.set_index("participant").loc["ben", ["state", "queue position"]].tolist() == ["queued", 1]
    while tickets[0].progress["phase"] == "starting":
        time.sleep(0.05)
    if sys.platform.startswith("linux"):                          # the run's process works below the server
        below = min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        assert os.getpriority(os.PRIO_PROCESS, tickets[0].job.pid) == below
    results = [t.result(300) for t in tickets]
    assert [r.settings["feedback_samples"] for r in results] == [1, 2]        # their own feedback only
    assert ana.versions == ben.versions == ["v0", "v1"] and cleo.versions == ["v0"]
    ben.add_version("v1", results[1].model)
    long = cleo.finetune("v0", "train", epochs=50)                  # cancelled while it trains: nothing saved
    while long.progress["phase"] != "training":
        assert not long.done, long.job.error
        time.sleep(0.1)
    long.cancel()
    assert long.wait(120) and long.state == "cancelled" and long.result().cancelled and cleo.versions == ["v0"]

    frame = pd.read_csv(io.StringIO(participants_csv(spaces)))
    rows = frame.set_index("participant")
    assert list(rows.index) == ["ana", "ben", "<cleo>", "dan"]
    assert rows["annotations"].tolist() == [1, 2, 1, 0] and rows["versions"].tolist() == [1, 1, 0, 0]
    assert rows.loc["ana", "state"] in ("done", "flagged") and rows.loc["<cleo>", "state"] == "cancelled"
    assert rows.loc["dan", "state"] == "not started"
    assert rows.loc["ben", "latest version"] == "v1"
    assert rows.loc["ben", "last painted"] == ben.feedback.sample_ids()[-1]
    saved = ModelVersions(ben.registry.directory).meta("v1")["metrics"]
    assert rows.loc["ben", "test accuracy"] == pytest.approx(saved["test/accuracy"])
    assert rows.loc["ben", "flipped accuracy"] == pytest.approx(saved["flipped/accuracy"])

    page = InstructorPage(spaces)
    assert "&lt;cleo&gt;" in page.table.object and "<cleo>" not in page.table.object
    assert page.table.object.count("data:image/png;base64,") == 3
    assert "4 participants" in page.summary.object
    assert page.csv_file().read() == participants_csv(spaces)


def test_the_thumbnail_shows_the_saved_regions(spaces):
    ana = spaces.workbench("ana")
    train = ana.splits["train"]
    ana.feedback.add(train.ids[0], irrelevant=np.ones(train.image_shape[1:], bool), author="ana")
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumbnail_uri(ana, train.ids[0]).split(",")[1]))))
    assert picture.shape[:2] == (THUMB_PX, THUMB_PX)
    assert (picture[..., 0].astype(int) - picture[..., 1] > 60).all()        # red all over: irrelevant
    assert thumbnail_uri(ana, "not-a-sample") is None


def test_the_table_of_nobody_and_its_html():
    assert "No participant" in table_html(pd.DataFrame(), [])
    frame = pd.DataFrame([{"participant": "a", "test accuracy": 0.5, "state": "queued", "queue position": 2.0,
                           "progress": np.nan, "last painted": None}])
    html = table_html(frame, [None])
    assert "50.0%" in html and ">2<" in html and 'class="xv-state-queued"' in html


# --- serve flags ----------------------------------------------------------------------------------
def test_users_file_is_checked(tmp_path):
    assert users_file(None) is None and users_file("a password") is None
    with pytest.raises(ValueError, match="no such file"):
        users_file(str(tmp_path / "users.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{ana: 1}")
    with pytest.raises(ValueError, match="not readable JSON"):
        users_file(str(bad))
    bad.write_text('["ana"]')
    with pytest.raises(ValueError, match="user names and passwords"):
        users_file(str(bad))
    good = tmp_path / "users.json"
    good.write_text('{"ana": "pw1", "instructor": "pw2"}')
    assert users_file(str(good)) == good
    page = LOGIN_PAGE.read_text()                 # Panel's own login page links its logo from a CDN
    assert 'name="username"' in page and 'name="password"' in page and "src=" not in page and "href=" not in page


def test_cli_serve_workshop_flags(monkeypatch):
    from xcam_viz import cli
    from xcam_viz.dashboard import app

    seen = {}
    monkeypatch.setattr(app, "serve", lambda **kw: seen.update(kw))
    cli.main(["serve", "--workspaces", "per-user", "--workspace-dir", "ws", "--max-runs", "2",
              "--instructor", "ana"])
    assert (seen["workspaces"], seen["workspace_dir"], seen["max_runs"], seen["instructors"]) == ("per-user", "ws",
                                                                                                  2, ["ana"])
    cli.main(["serve"])
    assert seen["workspaces"] == "shared" and seen["max_runs"] is None and seen["instructors"] == ["instructor"]
    for bad in (["--max-runs", "0"], ["--workspaces", "team"]):
        with pytest.raises(SystemExit):
            cli.main(["serve", *bad])
