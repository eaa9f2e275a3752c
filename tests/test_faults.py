"""Faults during checkpoint writes: a killed writer or a full disk never leaves a broken checkpoint."""
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

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
