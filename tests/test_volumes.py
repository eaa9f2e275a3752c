"""Volumes through the core: ImageSet C×D×H×W, arrays and zarr stores, layouts, explain and batch runs."""
import numpy as np
import pytest
import torch
import xarray as xr

import xcam_viz as xv
from xcam_viz.explain.batch import explain_dataset
from xcam_viz.spatial import batch_for, resize

GRID = (8, 16, 16)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    images = rng.random((4, *GRID), dtype=np.float32)
    masks = np.zeros((4, *GRID), bool)
    masks[:, 2:5, 4:9, 6:12] = True
    return xv.data.from_arrays(images, [0, 1, 0, 1], masks=masks, spatial_dims=3, spacing=(2.5, 0.7, 0.7))


@pytest.fixture(scope="module")
def model3d():
    torch.manual_seed(0)
    return xv.models.build("smallcnn3d", num_classes=2, in_channels=1, width=4).eval()


def test_an_imageset_of_volumes(volumes):
    assert volumes.image_shape == (1, *GRID) and volumes.spatial_dims == 3
    assert volumes[0].image.shape == (1, *GRID) and volumes[0].mask.shape == GRID
    assert volumes.spacing == (2.5, 0.7, 0.7)
    assert "4 volumes 1×8×16×16" in repr(volumes) and "spacing=2.5×0.7×0.7 mm" in repr(volumes)
    part = volumes.subset([3, 1])
    assert part.ids == ["00003", "00001"] and part.spacing == volumes.spacing
    ds = volumes.to_xarray()
    assert ds.image.dims == ("sample", "channel", "z", "y", "x") and ds.mask.dims == ("sample", "z", "y", "x")
    np.testing.assert_allclose(ds.z.values, np.arange(8) * 2.5)
    assert ds.attrs["spacing_mm"] == [2.5, 0.7, 0.7]


def test_volumes_with_channels_and_geometry():
    images = np.zeros((2, 2, *GRID), np.float32)
    geometry = [xv.data.Geometry(np.diag([2.0, 1.0, 1.0, 1.0]), (16, 32, 32)) for _ in range(2)]
    ds = xv.data.ImageSet(torch.from_numpy(images), torch.tensor([0, 1]), geometry=geometry)
    assert ds.image_shape == (2, *GRID) and ds.subset([1]).geometry[0].shape == (16, 32, 32)


def test_bad_volumes_are_refused_with_a_fix():
    with pytest.raises(ValueError, match="spatial_dims=3"):
        xv.data.from_arrays(np.zeros((2, 5, 6, 7, 8)), [0, 1])
    with pytest.raises(ValueError, match="N×D×H×W or N×C×D×H×W"):
        xv.data.from_arrays(np.zeros((2, 6, 7)), [0, 1], spatial_dims=3)
    with pytest.raises(ValueError, match="spatial axes"):
        xv.data.from_arrays(np.zeros((2, 6, 7)), [0, 1], spatial_dims=4)
    with pytest.raises(ValueError, match="one size in mm per spatial axis"):
        xv.data.from_arrays(np.zeros((2, 4, 6, 7)), [0, 1], spatial_dims=3, spacing=(1, 1))
    with pytest.raises(ValueError, match=r"one D×H×W mask per image"):
        xv.data.from_arrays(np.zeros((2, 4, 6, 7)), [0, 1], masks=np.zeros((2, 4, 6, 8)), spatial_dims=3)
    with pytest.raises(ValueError, match="one per image"):
        xv.data.ImageSet(torch.zeros(2, 1, *GRID), torch.tensor([0, 1]),
                         geometry=[xv.data.Geometry(np.eye(4), GRID)])


def test_fit_and_resize_volumes():
    x = torch.rand(2, 1, *GRID)
    fitted = xv.data.fit(x, (3, 4, 8, 8))
    assert fitted.shape == (2, 3, 4, 8, 8) and 0 <= fitted.min() and fitted.max() <= 1
    np.testing.assert_allclose(fitted[:, 0], fitted[:, 2])
    masks = torch.zeros(1, *GRID, dtype=torch.bool)
    masks[0, :4] = True
    small = xv.data.transform.fit_masks(masks, (4, 8, 8))
    assert small.dtype == torch.bool and small[0, :2].all() and not small[0, 2:].any()
    assert torch.allclose(resize(x, GRID), x)


def test_batch_sizes_follow_the_voxel_count():
    assert batch_for((3, 64, 64), 32) == 32
    assert batch_for((1, 128, 128, 128), 32) == 1
    assert batch_for((1, 512, 512, 512), 32) == 1


def test_layers_and_default_layer_of_3d_models(model3d):
    layers = dict(xv.models.spatial_layers(model3d, (1, *GRID)))
    assert layers["block1"] == (4, *GRID) and layers["block4"] == (32, 1, 2, 2)
    assert xv.models.default_layer(model3d, (1, *GRID)) == "block4"
    unet = xv.models.build("unet3d", num_classes=3, in_channels=1, width=4)
    assert xv.models.default_layer(unet, (1, *GRID)) == "dec1"


def test_anisotropic_depth_stride_reads_as_a_grid():
    # a video / anisotropic network halves depth less often than height and width
    out = torch.zeros(1, 64, 4, 2, 2)
    assert xv.models.detect(out, (8, 16, 16)).kind == "nchw"
    with pytest.raises(ValueError, match="not a spatial map"):
        xv.models.detect(torch.zeros(1, 64, 9, 2, 2), (8, 16, 16))
    with pytest.raises(ValueError, match="tokens"):
        xv.models.detect(torch.zeros(1, 65, 16), (8, 16, 16))
    with pytest.raises(ValueError, match="not a spatial map"):     # a pooled vector, not 128 slices of 1 channel
        xv.models.detect(torch.zeros(1, 128, 1, 1, 1), (128, 128, 128))


def test_explain_volumes_gives_z_y_x_maps(model3d, volumes):
    cams = xv.explain(model3d, volumes, method="gradcam")
    assert cams.dims == ("sample", "z", "y", "x") and cams.shape == (4, *GRID)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1
    raw = xv.explain(model3d, volumes, method="gradcam", layer="block3", upsample=False, normalize=False)
    assert raw.shape == (4, 2, 4, 4) and raw.attrs["layer_resolution"] == [2, 4, 4]
    np.testing.assert_allclose(raw.z.values, [1.5, 5.5])           # cell centres in input voxels
    both = xv.explain(model3d, volumes, layer=["block3", "block4"])
    assert list(both.layer_depth.values) == [2, 1]


def test_one_volume_must_keep_its_batch_axis(model3d):
    with pytest.raises(ValueError, match="rejected an input"):
        xv.explain(model3d, torch.rand(1, *GRID))          # read as a batch of 1-channel 2-D images


def test_segmentation_points_in_3d():
    unet = xv.models.build("unet3d", num_classes=2, in_channels=1, width=4).eval()
    x = torch.rand(1, 1, *GRID)
    cams = xv.explain(unet, x, method="seg-gradcam", region=(1, 2, 3))
    assert cams.shape == (1, *GRID) and cams.attrs["region"] == "point (1, 2, 3)"
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        xv.explain(unet, x, method="seg-gradcam", region=(2, 3))
    with pytest.raises(ValueError, match="bool mask"):
        xv.explain(unet, x, method="seg-gradcam", region=torch.ones(16, 16, dtype=torch.bool))


def test_zarr_volumes_are_lazy_and_batch_runs_resume(tmp_path, model3d):
    import zarr
    group = zarr.open_group(tmp_path / "v.zarr", mode="w")
    group.create_array("images", data=np.random.default_rng(1).integers(0, 256, (5, *GRID), dtype=np.uint8))
    group.create_array("labels", data=np.array([0, 1, 0, 1, 1]))
    data = xv.data.load_zarr(tmp_path / "v.zarr", spatial_dims=3)
    assert data.lazy and data.image_shape == (1, *GRID)
    out = explain_dataset(model3d, data, tmp_path / "cams.zarr", methods=["gradcam", "hirescam"], batch_size=2,
                          progress=False)
    stored = xr.open_zarr(out)
    assert stored.cam.dims == ("cam_method", "layer", "sample", "z", "y", "x")
    direct = xv.explain(model3d, data, method="hirescam")
    np.testing.assert_allclose(stored.cam.sel(cam_method="hirescam").isel(layer=0).values, direct.values, atol=1e-6)
    group = zarr.open_group(out, mode="r+")
    group["batch_done"][1] = 0
    group["cam"][:, :, 2:4] = np.nan
    explain_dataset(model3d, data, out, methods=["gradcam", "hirescam"], batch_size=2, progress=False)
    assert not np.isnan(xr.open_zarr(out).cam.values).any()
