"""Faults for real: writers killed with SIGKILL and disks that run full, during checkpoint writes,
feedback writes and batch explain runs. Afterwards nothing committed is lost, nothing torn is
visible, and the work goes on (the store accepts writes, the batch run resumes)."""
import errno
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch

import xcam_viz as xv

WRITER = textwrap.dedent("""
    import sys, torch, xcam_viz as xv
    torch.manual_seed(0)
    model = xv.models.build("smallcnn", num_classes=2, width=96)
    path = sys.argv[1]
    i = 0
    print("ready", flush=True)
    while True:
        with torch.no_grad():
            model.head.bias.fill_(i)
        xv.models.save(model, path, meta={"i": i})
        i += 1
""")


def test_killed_writer_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    for delay in (0.3, 0.9):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model = xv.models.load(path)                 # the last complete version, never a torn file
        i = model.xcam_meta["i"]
        assert torch.all(model.head.bias == i)


def test_full_disk_keeps_the_previous_version(tmp_path, monkeypatch):
    model = xv.models.build("smallcnn", num_classes=2)
    path = xv.models.save(model, tmp_path / "m.pt", meta={"version": "v0"})
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with torch.no_grad():
        model.head.bias.fill_(7)
    with pytest.raises(OSError, match="No space"):
        xv.models.save(model, path, meta={"version": "v1"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"], "the temporary file is removed"
    assert xv.models.load(path).xcam_meta == {"version": "v0"}


# --- feedback writes ------------------------------------------------------------------------------
FEEDBACK_WRITER = textwrap.dedent("""
    import sys, numpy as np, xcam_viz as xv
    store, first = xv.FeedbackStore(sys.argv[1]), int(sys.argv[2])
    i = first
    while True:
        if i % 5 == 4:                              # now and then undo the sample's newest annotation
            print("undo", store.undo(f"s{i % 3}"), flush=True)
        else:
            mask = np.random.default_rng(i).random((48, 40)) < 0.3
            print("add", store.add(f"s{i % 3}", relevant=mask, label=i % 2, author=f"w{i}"), i, flush=True)
        i += 1
""")


def expected_mask(i: int) -> np.ndarray:
    return np.random.default_rng(i).random((48, 40)) < 0.3


def test_feedback_writer_killed_mid_write_loses_nothing_committed(tmp_path):
    """A child appends (and undoes) annotations and reports each commit; SIGKILL at random moments.
    Every reported annotation is there with its exact mask, every reported undo holds, and the store
    opens, accepts writes and undoes them."""
    path, rng = tmp_path / "feedback.db", random.Random(9)
    added, undone = {}, set()
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", FEEDBACK_WRITER, str(path), str(round_ * 10**6)],
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()                   # the writer has started committing
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        out = first + proc.stdout.read()
        proc.wait()
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):                  # cut by the kill: not reported
                continue
            kind, *rest = line.split()
            if kind == "add":
                added[int(rest[0])] = int(rest[1])
            elif rest[0] != "None":
                undone.add(int(rest[0]))

        store = xv.FeedbackStore(path)
        assert store._query("PRAGMA integrity_check")[0][0] == "ok"
        history = {a.id: a for a in store.history()}
        assert set(added) <= set(history), f"committed annotations lost: {set(added) - set(history)}"
        for aid, a in history.items():                   # reported or not, no row is torn
            if a.author == "parent":
                continue
            i = int(a.author[1:])
            assert added.get(aid, i) == i and a.sample_id == f"s{i % 3}" and a.label == i % 2
            np.testing.assert_array_equal(a.relevant, expected_mask(i))
        assert undone <= {aid for aid, a in history.items() if a.undone}
        live = len(store)
        new = store.add("after-kill", relevant=expected_mask(0), author="parent")
        assert len(store) == live + 1 and store.undo("after-kill") == new and len(store) == live
        store.close()
    assert len(added) > 20 and undone, f"the writer committed too little to test ({len(added)} adds)"


@pytest.fixture()
def small_disk(tmp_path):
    """A 3 MB tmpfs, so writes really run out of space (we run as root; elsewhere the test uses
    SQLite's own size limit, which raises the same error)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_during_feedback_writes_keeps_earlier_rows(small_disk, tmp_path):
    store = xv.FeedbackStore((small_disk or tmp_path) / "feedback.db")
    ballast = (small_disk or tmp_path) / "ballast"
    ballast.write_bytes(b"\0" * 2**20)
    if small_disk is None:
        store._connect().execute("PRAGMA max_page_count=600")
    masks, rng = {}, np.random.default_rng(0)
    with pytest.raises((sqlite3.OperationalError, OSError)) as full:
        for i in range(10**4):
            mask = rng.random((256, 256)) < 0.5                       # ~8 KB, incompressible
            masks[store.add(f"s{i}", relevant=mask)] = mask
    assert "full" in str(full.value) or getattr(full.value, "errno", None) == errno.ENOSPC
    assert len(masks) > 10, "the disk filled before any write"
    for reader in (store, xv.FeedbackStore(store.path)):          # this connection and a new one
        got = {a.id: a.relevant for a in reader.annotations()}
        assert got.keys() == masks.keys(), "earlier rows lost, or the failed write half-kept"
        for aid, mask in masks.items():
            np.testing.assert_array_equal(got[aid], mask)
    ballast.unlink()                                               # space again: writing goes on
    if small_disk is None:
        store._connect().execute("PRAGMA max_page_count=1073741823")
    new = store.add("after", relevant=np.ones((4, 4), bool))
    assert len(store) == len(masks) + 1 and store.undo("after") == new


# --- batch explain runs ---------------------------------------------------------------------------
def explain_cli(data, out, *extra):
    return [sys.executable, "-m", "xcam_viz.cli", "explain", "--data", str(data), "--split", "test", "--model", "demo",
            "--methods", "gradcam,hirescam", "--layers", "block3,block4", "--batch-size", "8", "--out", str(out),
            "--quiet", *extra]


def samples_done(path) -> int:
    """Samples whose every CAM is written (unwritten ones are NaN), read as a user would, with xarray."""
    import xarray as xr
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")             # metadata not consolidated yet
            with xr.open_zarr(path) as ds:
                return int(np.isfinite(ds.cam.values).all(axis=(0, 1, 3, 4)).sum())
    except Exception:                                   # noqa: BLE001 - not laid out yet, or mid-write
        return 0


@pytest.mark.slow
def test_killed_batch_explain_run_resumes(tmp_path):
    """`xcam-viz explain` killed at random moments: each re-run goes on from what is written (the
    batches done stay as they are) and the final store equals an uninterrupted run's."""
    import xarray as xr
    import zarr

    from xcam_viz.demo import demo_data

    n = 800                                             # ~100 batches: a quiet machine cannot finish them
    ds = demo_data("test", n=n)                         # between reaching the target and the kill
    data = tmp_path / "lesions.npz"
    np.savez(data, test_images=ds.images.numpy(), test_labels=ds.labels.numpy())
    clean, out, rng = tmp_path / "clean.zarr", tmp_path / "resumed.zarr", random.Random(3)
    subprocess.run(explain_cli(data, clean), check=True, capture_output=True, timeout=600)
    done, original = [], None
    for _kill in range(2):
        proc = subprocess.Popen(explain_cli(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target, deadline = (done[-1] if done else 0) + rng.randint(16, 40), time.monotonic() + 300
        while samples_done(out) < target and proc.poll() is None:      # leaves >= 4 batches to kill in
            assert time.monotonic() < deadline, "the run wrote nothing"
            time.sleep(0.1)
        time.sleep(rng.uniform(0, 0.2))
        assert proc.poll() is None, "the run finished before it could be killed: give it more work"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done.append(samples_done(out))
        if original is None:                            # mark batch 0: a restart from zero would redo it
            cam = zarr.open_group(out, mode="a")["cam"]
            original = cam[:, :, :8]
            cam[:, :, :8] = 2.0
    assert 16 <= done[0] <= done[1] < n, f"samples done after each kill: {done}"
    print(f"samples done after each kill: {done}")
    subprocess.run(explain_cli(data, out), check=True, capture_output=True, timeout=600)
    with xr.open_zarr(out) as resumed, xr.open_zarr(clean) as reference:
        assert resumed.attrs["complete"] == 1 and reference.attrs["complete"] == 1
        got, want = resumed.cam.values, reference.cam.values
        assert np.all(got[:, :, :8] == 2.0), "batch 0 was computed again: the re-run did not resume"
        np.testing.assert_allclose(original, want[:, :, :8], atol=1e-5)
        np.testing.assert_allclose(got[:, :, 8:], want[:, :, 8:], atol=1e-5)
        np.testing.assert_array_equal(resumed.target_class.values, reference.target_class.values)
