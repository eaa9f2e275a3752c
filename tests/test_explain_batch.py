"""Batch runs into zarr / netCDF: same maps as xv.explain, resumable, refusing a different run; on Dask; the CLI."""
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from dask.distributed import Client, LocalCluster

import xcam_viz as xv
from xcam_viz.cli import main
from xcam_viz.explain import batch, distributed
from xcam_viz.explain.batch import DataSpec, explain_dataset
from xcam_viz.explain.distributed import dask_client


def open_store(path):
    return xr.open_zarr(path) if path.suffix == ".zarr" else xr.load_dataset(path)


def interrupt_at(monkeypatch, out, index):
    """Make writing batch `index` of the store at `out` raise KeyboardInterrupt (a run killed there)."""
    store_cls = batch.store_for(out).__class__
    original = store_cls.write

    def write(self, i, *args):
        if i == index:
            raise KeyboardInterrupt
        original(self, i, *args)

    monkeypatch.setattr(store_cls, "write", write)


def chunk_times(path):
    """Modification times of the cam chunks of a zarr store."""
    return {f.name: f.stat().st_mtime_ns for f in (path / "cam").iterdir() if not f.name.startswith(".")}


@pytest.fixture(scope="module")
def small(demo_test):
    return demo_test.subset(range(40))


@pytest.fixture(scope="module")
def client():
    """Two single-threaded workers in this process (quick to start; the model still travels as a checkpoint)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture()
def tiny(tmp_path):
    """A 12-image MedMNIST-style .npz and a 3-class grey smallcnn checkpoint."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", test_images=rng.integers(0, 255, (12, 28, 28), dtype=np.uint8),
             test_labels=rng.integers(0, 3, (12, 1)))
    torch.manual_seed(0)
    xv.models.save(xv.models.build("smallcnn", num_classes=3, in_channels=1), tmp_path / "gray.pt")
    return ["--data", str(tmp_path / "tiny.npz"), "--model", str(tmp_path / "gray.pt"),
            "--methods", "gradcam,eigencam", "--layers", "block2,block3", "--batch-size", "5", "--quiet"]


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_batch_run_matches_explain(demo_model, small, tmp_path, suffix):
    path = explain_dataset(demo_model, small, tmp_path / f"cams{suffix}", methods=["gradcam", "hirescam"],
                           layers=["block3", "block4"], batch_size=16, progress=False)
    ds = open_store(path)
    assert ds.cam.dims == ("cam_method", "layer", "sample", "y", "x") and ds.cam.shape == (2, 2, 40, 64, 64)
    assert ds.batch_done.values.tolist() == [1, 1, 1] and ds.attrs["complete"] == 1
    assert list(ds.sample.values) == small.ids
    np.testing.assert_array_equal(ds.label.values, small.labels.numpy())
    want = xv.explain(demo_model, small, method="hirescam", layer=["block3", "block4"])
    np.testing.assert_allclose(ds.cam.sel(cam_method="hirescam").values, want.values, atol=1e-6)
    np.testing.assert_array_equal(ds.target_class.values, want.target_class.values)


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_interrupted_run_resumes(demo_model, small, tmp_path, monkeypatch, suffix):
    out = tmp_path / f"cams{suffix}"
    interrupt_at(monkeypatch, out, 2)
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(demo_model, small, out, layers="block4", target="label", batch_size=8, progress=False)
    monkeypatch.undo()
    ds = open_store(out)
    assert ds.batch_done.values.tolist() == [1, 1, 0, 0, 0] and ds.attrs["complete"] == 0
    assert not np.isnan(ds.cam.values[:, :, :16]).any() and np.isnan(ds.cam.values[:, :, 16:]).all()

    calls = []
    handle = demo_model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    try:
        explain_dataset(demo_model, small, out, layers="block4", target="label", batch_size=8, progress=False)
        assert sum(calls) == 40 - 16                      # written batches are skipped
        explain_dataset(demo_model, small, out, layers="block4", target="label", batch_size=8, progress=False)
        assert sum(calls) == 40 - 16                      # a finished run does nothing
    finally:
        handle.remove()
    ds = open_store(out)
    assert ds.attrs["complete"] == 1 and not np.isnan(ds.cam.values).any()
    want = xv.explain(demo_model, small, layer="block4", target=small.labels)
    np.testing.assert_allclose(ds.cam.sel(cam_method="gradcam", layer="block4").values, want.values, atol=1e-6)


def test_other_run_is_refused_unless_overwrite(demo_model, small, tmp_path):
    out = tmp_path / "cams.zarr"
    explain_dataset(demo_model, small, out, layers="block4", batch_size=20, progress=False)
    with pytest.raises(ValueError, match="different run.*overwrite=True"):
        explain_dataset(demo_model, small, out, layers="block3", batch_size=20, progress=False)
    explain_dataset(demo_model, small, out, layers="block3", batch_size=20, progress=False, overwrite=True)
    assert list(open_store(out).layer.values) == ["block3"]
    with pytest.raises(ValueError, match=r"\*.zarr or \*.nc"):
        explain_dataset(demo_model, small, tmp_path / "cams.h5", progress=False)
    with pytest.raises(ValueError, match="one target per sample"):
        explain_dataset(demo_model, small, out, target=("topk", 2), progress=False)


def test_a_data_spec_sent_to_workers_keeps_example_names_and_makes_paths_absolute():
    for name in xv.data.examples.EXAMPLES:
        assert DataSpec(name, "test").absolute() == DataSpec(name, "test")
    assert DataSpec("scans", "train", 4).absolute() == DataSpec(str(Path("scans").absolute()), "train", 4)


def test_distributed_run_equals_serial_run(demo_model, small, tmp_path, client):
    kw = dict(methods=["gradcam", "hirescam"], layers=["block3", "block4"], batch_size=8, progress=False)
    serial = xr.load_dataset(explain_dataset(demo_model, small, tmp_path / "serial.zarr", **kw), engine="zarr")
    spread = xr.open_zarr(explain_dataset(demo_model, small, tmp_path / "dask.zarr", client=client, **kw))
    assert spread.cam.chunks[2] == (8,) * 5                  # one chunk per batch: no two tasks share one
    xr.testing.assert_identical(spread.load(), serial)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dask.zarr", "serial.zarr"]   # temporary checkpoint gone
    spec = DataSpec("demo", "test", 24)                       # workers generate the images themselves
    named = explain_dataset(demo_model, spec, tmp_path / "spec.zarr", client=client, **kw)
    xr.testing.assert_identical(xr.load_dataset(named, engine="zarr"),
                                xr.load_dataset(explain_dataset(demo_model, spec, tmp_path / "spec-serial.zarr", **kw),
                                                engine="zarr"))


def test_distributed_run_resumes_only_missing_batches(demo_model, small, tmp_path, client, monkeypatch):
    kw = dict(layers="block4", target="label", batch_size=8, progress=False)
    failing, original = tmp_path / "failing.zarr", distributed.write_batch

    def lose_batch_3(plan, model, data, index):
        if index == 3:
            raise RuntimeError("worker lost")
        return original(plan, model, data, index)

    monkeypatch.setattr(distributed, "write_batch", lose_batch_3)
    with pytest.raises(RuntimeError, match="worker lost"):
        explain_dataset(demo_model, small, failing, client=client, **kw)
    monkeypatch.undo()
    done = xr.open_zarr(failing).batch_done.values
    assert done[3] == 0 and xr.open_zarr(failing).attrs["complete"] == 0
    calls = []
    handle = demo_model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    try:                                                     # a serial run writes only what the tasks left
        explain_dataset(demo_model, small, failing, **kw)
    finally:
        handle.remove()
    assert sum(calls) == 8 * int((done == 0).sum())

    killed = tmp_path / "killed.zarr"                         # a distributed run resumes a killed serial one
    interrupt_at(monkeypatch, killed, 2)
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(demo_model, small, killed, **kw)
    monkeypatch.undo()
    first = chunk_times(killed)
    assert sorted(first) == ["0.0.0.0.0", "0.0.1.0.0"]
    explain_dataset(demo_model, small, killed, client=client, **kw)
    after = chunk_times(killed)
    assert len(after) == 5 and all(after[name] == first[name] for name in first)
    np.testing.assert_array_equal(xr.load_dataset(killed, engine="zarr").cam.values,
                                  xr.load_dataset(failing, engine="zarr").cam.values)


def test_distributed_needs_zarr_and_a_reachable_scheduler(demo_model, small, tmp_path, client):
    with pytest.raises(ValueError, match=r"distributed runs write a zarr store.*\*.zarr"):
        explain_dataset(demo_model, small, tmp_path / "cams.nc", client=client, progress=False)
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler 'tcp://127.0.0.1:9'.*tcp://host:8786"):
        with dask_client(scheduler="tcp://127.0.0.1:9", timeout=2):
            pass
    with pytest.raises(ValueError, match="either workers .* or scheduler"):
        with dask_client(workers=2, scheduler="tcp://127.0.0.1:9"):
            pass
    with pytest.raises(SystemExit):                          # argparse: --workers and --scheduler exclude each other
        main(["explain", "--data", "demo", "--model", "demo", "--out", str(tmp_path / "c.zarr"),
              "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"])


def test_cli_explain_medmnist(tmp_path, tiny, capsys):
    assert main(["explain", *tiny, "--out", str(tmp_path / "c.zarr")]) == 0
    assert "CAMs written to" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "c.zarr")
    assert ds.cam.shape == (2, 2, 12, 28, 28) and list(ds.cam_method.values) == ["gradcam", "eigencam"]
    assert float(ds.cam.max()) <= 1 and not bool(ds.cam.isnull().any())


@pytest.mark.slow
def test_cli_explain_on_worker_processes(tmp_path, tiny):
    """Two worker processes load the checkpoint and the .npz themselves: the same store as a serial run."""
    assert main(["explain", *tiny, "--out", str(tmp_path / "serial.zarr")]) == 0
    assert main(["explain", *tiny, "--out", str(tmp_path / "dask.zarr"), "--workers", "2"]) == 0
    xr.testing.assert_identical(xr.load_dataset(tmp_path / "dask.zarr", engine="zarr"),
                                xr.load_dataset(tmp_path / "serial.zarr", engine="zarr"))
