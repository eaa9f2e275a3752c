"""Batch runs into zarr / netCDF: same maps as xv.explain, resumable, refusing a different run; the CLI."""
import numpy as np
import pytest
import torch
import xarray as xr

import xcam_viz as xv
from xcam_viz.cli import main
from xcam_viz.explain import batch
from xcam_viz.explain.batch import explain_dataset


def open_store(path):
    return xr.open_zarr(path) if path.suffix == ".zarr" else xr.load_dataset(path)


@pytest.fixture(scope="module")
def small(demo_test):
    return demo_test.subset(range(40))


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_batch_run_matches_explain(demo_model, small, tmp_path, suffix):
    path = explain_dataset(demo_model, small, tmp_path / f"cams{suffix}", methods=["gradcam", "hirescam"],
                           layers=["block3", "block4"], batch_size=16, progress=False)
    ds = open_store(path)
    assert ds.cam.dims == ("cam_method", "layer", "sample", "y", "x") and ds.cam.shape == (2, 2, 40, 64, 64)
    assert ds.attrs["samples_done"] == 40 and ds.attrs["complete"] == 1
    assert list(ds.sample.values) == small.ids
    np.testing.assert_array_equal(ds.label.values, small.labels.numpy())
    want = xv.explain(demo_model, small, method="hirescam", layer=["block3", "block4"])
    np.testing.assert_allclose(ds.cam.sel(cam_method="hirescam").values, want.values, atol=1e-6)
    np.testing.assert_array_equal(ds.target_class.values, want.target_class.values)


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_interrupted_run_resumes(demo_model, small, tmp_path, monkeypatch, suffix):
    out = tmp_path / f"cams{suffix}"
    store_cls = batch._store(out).__class__
    original, writes = store_cls.write, []

    def write_then_stop(self, start, *args):
        if len(writes) == 2:
            raise KeyboardInterrupt
        writes.append(start)
        original(self, start, *args)

    monkeypatch.setattr(store_cls, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(demo_model, small, out, layers="block4", target="label", batch_size=8, progress=False)
    assert writes == [0, 8] and open_store(out).attrs["samples_done"] == 16
    monkeypatch.setattr(store_cls, "write", original)

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


def test_cli_explain_medmnist(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", test_images=rng.integers(0, 255, (12, 28, 28), dtype=np.uint8),
             test_labels=rng.integers(0, 3, (12, 1)))
    torch.manual_seed(0)
    xv.models.save(xv.models.build("smallcnn", num_classes=3, in_channels=1), tmp_path / "gray.pt")
    argv = ["explain", "--data", str(tmp_path / "tiny.npz"), "--model", str(tmp_path / "gray.pt"),
            "--methods", "gradcam,eigencam", "--layers", "block2,block3", "--out", str(tmp_path / "c.zarr"),
            "--batch-size", "5", "--quiet"]
    assert main(argv) == 0
    assert "CAMs written to" in capsys.readouterr().out
    ds = xr.open_zarr(tmp_path / "c.zarr")
    assert ds.cam.shape == (2, 2, 12, 28, 28) and list(ds.cam_method.values) == ["gradcam", "eigencam"]
    assert float(ds.cam.max()) <= 1 and not bool(ds.cam.isnull().any())
