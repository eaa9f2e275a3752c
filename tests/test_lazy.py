"""Lazy data sources: results equal to in-memory ones, corrupt files skipped, the memory budget, Dask."""
import pickle

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

import xcam_viz as xv
from xcam_viz.cli import main
from xcam_viz.concepts import dissect
from xcam_viz.data import from_arrays, from_dataset, load_folder, load_medmnist, load_zarr
from xcam_viz.explain.batch import explain_dataset

N, SIZE = 12, 32


@pytest.fixture(scope="module")
def pixels():
    """N uint8 RGB images with a bright square (the 'lesion') and its masks; labels alternate."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (N, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((N, SIZE, SIZE), bool)
    for i in range(N):
        y, x = rng.integers(4, SIZE - 12, 2)
        images[i, y:y + 8, x:x + 8] = 230
        masks[i, y:y + 8, x:x + 8] = True
    return images, masks, np.arange(N) % 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory, pixels):
    """The images as an ImageFolder tree with a mask tree; file names sort in image order."""
    root = tmp_path_factory.mktemp("lazy")
    images, masks, labels = pixels
    for i, (img, m, y) in enumerate(zip(images, masks, labels)):
        for tree, arr in (("img", img), ("mask", (m * 255).astype(np.uint8))):
            (root / tree / f"c{y}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / tree / f"c{y}" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def pair(folder, pixels):
    """(lazy folder ImageSet, the same images in memory in the same order)."""
    lazy = load_folder(folder / "img", masks=folder / "mask")
    images, masks, labels = pixels
    order = [int(i.split("/")[1]) for i in lazy.ids]
    memory = from_arrays(images[order], labels[order], masks=masks[order], ids=lazy.ids, class_names=["c0", "c1"])
    return lazy, memory


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return xv.models.build("smallcnn", num_classes=2).eval()


def test_lazy_folder_has_the_imageset_api_and_decodes_nothing_up_front(pair):
    lazy, memory = pair
    assert lazy.lazy and len(lazy) == N and lazy.image_shape == (3, SIZE, SIZE) and lazy.has_masks
    assert lazy.class_names == memory.class_names and lazy.ids == memory.ids
    assert torch.equal(lazy[3].image, memory[3].image) and torch.equal(lazy[3].mask, memory[3].mask)
    sub = lazy.subset([5, 1])
    assert sub.lazy and sub.ids == [lazy.ids[5], lazy.ids[1]] and torch.equal(sub[0].image, memory[5].image)
    xr.testing.assert_identical(lazy.to_xarray().load().drop_attrs(), memory.to_xarray().drop_attrs())
    assert len(pickle.dumps(lazy)) < 20_000                          # paths and labels, never pixels
    batches = list(lazy.batches(5))
    assert [len(b) for b in batches] == [5, 5, 2] and torch.equal(torch.cat(batches), memory.images)


def test_lazy_and_in_memory_give_equal_results(pair, model, tmp_path):
    lazy, memory = pair
    for method in ("gradcam", "scorecam"):
        xr.testing.assert_identical(xv.explain(model, lazy, method=method, layer="block3"),
                                    xv.explain(model, memory, method=method, layer="block3"))
    cams = xv.explain(model, memory, layer="block3")
    xr.testing.assert_identical(xv.metrics.pointing_game(cams, lazy), xv.metrics.pointing_game(cams, memory))
    xr.testing.assert_identical(xv.metrics.accuracy(model, lazy), xv.metrics.accuracy(model, memory))
    kw = dict(method="efficient", progress=False)
    xr.testing.assert_identical(xv.evidence(model, lazy.subset([0, 1]), data=lazy, **kw),
                                xv.evidence(model, memory.subset([0, 1]), data=memory, **kw))
    a = dissect(model, load_folder(lazy.attrs["source"]), "block3", batch_size=5, progress=False)
    b = dissect(model, memory, "block3", batch_size=5, progress=False)
    assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.peak, b.peak)
    stores = [explain_dataset(model, d, tmp_path / f"{k}.zarr", layers="block3", batch_size=5, progress=False)
              for k, d in (("lazy", load_folder(lazy.attrs["source"])), ("memory", memory))]
    xr.testing.assert_identical(xr.load_dataset(stores[0], engine="zarr").drop_attrs(),
                                xr.load_dataset(stores[1], engine="zarr").drop_attrs())


def test_array_and_dataset_sources_are_lazy_and_equal(tmp_path, pixels):
    images, _, labels = pixels
    np.savez(tmp_path / "m.npz", test_images=images, test_labels=labels[:, None])
    med = load_medmnist(tmp_path / "m.npz", split="test")
    memory = from_arrays(images, labels, ids=med.ids)
    assert med.lazy and isinstance(med._reader.array, np.memmap)
    assert torch.equal(med.images, memory.images)
    import zarr
    group = zarr.open_group(tmp_path / "d.zarr", mode="w")
    group.create_array("images", data=images, chunks=(4, SIZE, SIZE, 3))
    group.create_array("labels", data=labels)
    z = load_zarr(tmp_path / "d.zarr")
    assert z.lazy and torch.equal(z.images, memory.images) and z.labels.tolist() == labels.tolist()
    pil = [Image.fromarray(a) for a in images]
    pil[3] = pil[3].resize((48, 40))                                  # mixed sizes are fitted to the first's
    ds = from_dataset([(p, int(y)) for p, y in zip(pil, labels)])
    assert ds.lazy and ds.image_shape == (3, SIZE, SIZE) and ds.labels.tolist() == labels.tolist()
    assert torch.equal(ds[0].image, memory[0].image) and ds[3].image.shape == (3, SIZE, SIZE)
    cropped = from_dataset([(p, 0) for p in pil], size=(16, 16), crop=True)
    assert cropped[3].image.shape == (3, 16, 16)
    with pytest.raises(ValueError, match="no array 'pixels'"):
        load_zarr(tmp_path / "d.zarr", images="pixels")


def test_corrupt_file_mid_folder_is_skipped_with_a_warning_and_the_run_goes_on(folder, model, tmp_path):
    root = tmp_path / "img"
    for f in sorted((folder / "img").rglob("*.png")):
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        (root / f.parent.name / f.name).write_bytes(f.read_bytes())
    (root / "c0" / "004b.png").write_bytes(b"this is not a png")            # no image at all: skipped on opening
    truncated = (root / "c1" / "005.png").read_bytes()
    (root / "c1" / "005.png").write_bytes(truncated[:len(truncated) // 2])  # damaged pixels: found while decoding
    with pytest.warns(UserWarning, match="004b.png"):
        data = load_folder(root)
    assert len(data) == N and "c0/004b" not in data.ids
    with pytest.warns(UserWarning, match="005.png"):
        out = explain_dataset(model, data, tmp_path / "cams.zarr", layers="block3", batch_size=4, progress=False)
    ds = xr.open_zarr(out)
    assert ds.attrs["complete"] == 1 and ds.sizes["sample"] == N and not bool(ds.cam.isnull().any())


def test_memory_budget_error_names_the_size(pair, monkeypatch):
    lazy = load_folder(pair[0].attrs["source"])
    monkeypatch.setenv("XCAM_VIZ_MEMORY_BUDGET", "10KB")
    with pytest.raises(MemoryError, match=r"12 images of 3×32×32 pixels as float32 needs 0.00 GB.*memory budget"
                                          r".*XCAM_VIZ_MEMORY_BUDGET"):
        _ = lazy.images
    assert len(list(lazy.batches(4))) == 3 and lazy.lazy                # streaming still works
    assert lazy.materialize(budget="1MB").images.shape == (N, 3, SIZE, SIZE) and not lazy.lazy
    with pytest.raises(ValueError, match="not understood"):
        xv.data.memory_budget("lots")


@pytest.mark.slow
def test_scheduler_on_a_real_multi_process_cluster(folder, model, tmp_path):
    """`xcam-viz explain --scheduler` and dissection on a LocalCluster of 2 worker processes: workers read the
    folder themselves (the lazy set travels as paths) and the results equal serial runs."""
    from dask.distributed import Client, LocalCluster
    checkpoint = xv.models.save(model, tmp_path / "m.pt")
    args = ["explain", "--data", str(folder / "img"), "--model", str(checkpoint), "--layers", "block3",
            "--batch-size", "5", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "serial.zarr")]) == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert main([*args, "--out", str(tmp_path / "dask.zarr"), "--scheduler", cluster.scheduler_address]) == 0
        data = load_folder(folder / "img")
        spread = dissect(model, data, "block3", batch_size=5, progress=False, client=client)
    xr.testing.assert_identical(xr.load_dataset(tmp_path / "dask.zarr", engine="zarr"),
                                xr.load_dataset(tmp_path / "serial.zarr", engine="zarr"))
    serial = dissect(model, data, "block3", batch_size=5, progress=False)
    assert torch.equal(spread.thresholds, serial.thresholds) and torch.equal(spread.mean, serial.mean)
