"""Metrics on volumes (N×D×H×W maps and masks) against hand-computed values."""
import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn
from torchvision.transforms.functional import gaussian_blur as torchvision_blur

import xcam_viz as xv
from xcam_viz.metrics import gaussian_blur


def _mask(box, size=6):
    m = np.zeros((size,) * 3, bool)
    m[tuple(slice(*b) for b in box)] = True
    return m


def _peak(z, y, x, size=6):
    a = np.zeros((size,) * 3)
    a[z, y, x] = 1.0
    return a


def test_pointing_game_in_3d_with_tolerance_and_spacing():
    masks = np.stack([_mask(((0, 2), (0, 2), (0, 2)))] * 3)
    maps = np.stack([_peak(1, 1, 1), _peak(4, 1, 1), _peak(4, 4, 4)])
    scores = xv.metrics.pointing_game(maps, masks)
    assert scores.values.tolist() == [1.0, 0.0, 0.0]
    assert [scores[f"point_{a}"].values.tolist() for a in "zyx"] == [[1, 4, 4], [1, 1, 4], [1, 1, 4]]
    # (4, 1, 1) is 3 voxels from the mask's slice z = 1; (4, 4, 4) is sqrt(3·3²) ≈ 5.2 from (1, 1, 1)
    assert xv.metrics.pointing_game(maps, masks, tolerance=3).values.tolist() == [1.0, 1.0, 0.0]
    assert xv.metrics.pointing_game(maps, masks, tolerance=5.2).values.tolist() == [1.0, 1.0, 1.0]
    # 2.5 mm slices, 0.5 mm pixels: (4, 1, 1) is 7.5 mm away, (4, 4, 4) sqrt(7.5² + 2·1.5²) ≈ 7.79 mm
    mm = xv.metrics.pointing_game(maps, masks, tolerance=7.6, spacing=(2.5, 0.5, 0.5))
    assert mm.values.tolist() == [1.0, 1.0, 0.0] and mm.attrs["spacing"] == (2.5, 0.5, 0.5)


def test_energy_pointing_game_in_3d():
    a = np.zeros((6, 6, 6))
    a[0, 0, 0], a[1, 0, 1], a[5, 5, 5], a[3, 3, 3] = 3.0, 1.0, 4.0, -5.0   # negatives are ignored
    share = xv.metrics.energy_pointing_game(a[None], _mask(((0, 2), (0, 1), (0, 2)))[None])
    assert share.values.tolist() == [0.5]


def test_iou_and_best_iou_in_3d():
    a = np.zeros((6, 6, 6))
    a[0:2, 0:2, 0:4] = 1.0           # 16 voxels at full height
    a[2:4, 0:2, 0:4] = 0.4           # 16 voxels at 0.4 of the maximum
    mask = _mask(((0, 4), (0, 2), (0, 2)))[None]   # 16 voxels, 8 of them in the top block
    # threshold 0.5: region = top block (16); overlap 8; union 24. threshold 0.3: region 32, overlap 16, union 32
    assert xv.metrics.iou(a[None], mask, threshold=0.5).item() == pytest.approx(8 / 24)
    assert xv.metrics.iou(a[None], mask, threshold=0.3).item() == pytest.approx(16 / 32)
    best = xv.metrics.best_iou(a[None], mask, thresholds=[0.3, 0.5, 0.9])
    assert best.item() == pytest.approx(0.5) and best.threshold.item() == 0.3


def test_volume_layouts_dataarray_channel_axis_and_imageset():
    masks = np.stack([_mask(((0, 2), (0, 2), (0, 2))), _mask(((3, 6), (3, 6), (3, 6)))])
    maps = xr.DataArray(np.stack([_peak(0, 0, 0), _peak(0, 0, 0)]), dims=("sample", "z", "y", "x"),
                        coords={"sample": ["a", "b"]})
    for m in (masks, torch.from_numpy(masks), masks[:, None], xr.DataArray(masks, dims=("sample", "z", "y", "x"))):
        scores = xv.metrics.pointing_game(maps, m)
        assert scores.values.tolist() == [1.0, 0.0] and scores.sample.values.tolist() == ["a", "b"]
    ds = xv.data.from_arrays(np.zeros((2, 6, 6, 6), np.float32), [0, 1], masks=masks, ids=["a", "b"],
                             spatial_dims=3, spacing=(2.5, 0.5, 0.5))
    far = xr.DataArray(np.stack([_peak(4, 1, 1), _peak(0, 0, 0)]), dims=("sample", "z", "y", "x"))
    assert xv.metrics.pointing_game(far, ds, tolerance=7.6, spacing=ds.spacing).values.tolist() == [1.0, 0.0]
    assert xv.metrics.pointing_game(far, ds, tolerance=7.4, spacing=ds.spacing).values.tolist() == [0.0, 0.0]
    # a DataArray naming z keeps a one-slice volume a volume
    thin = xr.DataArray(np.ones((1, 1, 4, 4)), dims=("sample", "z", "y", "x"))
    assert xv.metrics.energy_pointing_game(thin, np.ones((1, 1, 4, 4), bool)).item() == 1.0
    with pytest.raises(ValueError, match=r"shape \(2, 6, 6, 6\) but masks \(2, 6, 6\)"):
        xv.metrics.pointing_game(maps, masks[:, 0])
    with pytest.raises(ValueError, match=r"maps must be N×H×W or N×D×H×W .*got shape \(1, 2, 2, 2, 2, 2\)"):
        xv.metrics.iou(np.ones((1, 2, 2, 2, 2, 2)), masks)


class _CubeModel(nn.Module):
    """Logit of class 1 = 10·(mean of the corner 2×2×2 voxels) − 5; counts the volumes it sees."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(len(x))
        z = 10 * x[:, :, :2, :2, :2].mean((1, 2, 3, 4)) - 5
        return torch.stack([torch.zeros_like(z), z], 1)


def test_deletion_and_insertion_in_3d_follow_the_map():
    volumes = torch.ones(2, 1, 4, 4, 4)
    good = np.zeros((4, 4, 4))
    good[:2, :2, :2] = 1.0           # the 8 voxels the model uses: 1/8 of the volume
    bad = 1 - good                   # those 8 last
    maps, model = np.stack([good, bad]), _CubeModel()
    dele = xv.metrics.deletion_curve(model, volumes, maps, baseline="zero", steps=8, target=1)
    ins = xv.metrics.insertion_curve(model, volumes, maps, baseline="zero", steps=8, target=1)
    p = torch.sigmoid(torch.tensor(5.0)).item()
    np.testing.assert_allclose(dele.values[0], [p] + [1 - p] * 8, rtol=1e-4)
    np.testing.assert_allclose(dele.values[1], [p] * 8 + [1 - p], rtol=1e-4)
    np.testing.assert_allclose(ins.values[0], [1 - p] + [p] * 8, rtol=1e-4)
    # trapezoid areas over 8 equal steps
    d_auc = xv.metrics.deletion_auc(model, volumes, maps, baseline="zero", steps=8, target=1)
    np.testing.assert_allclose(d_auc.values, [(p + (1 - p)) / 16 + 7 * (1 - p) / 8,
                                              7 * p / 8 + (p + (1 - p)) / 16], rtol=1e-4)


def test_curves_cost_steps_plus_one_forwards_per_volume():
    model = _CubeModel()
    xv.metrics.deletion_curve(model, torch.rand(3, 1, 10, 10, 10), torch.rand(3, 10, 10, 10), steps=5,
                              batch_size=4)
    assert sum(model.batches) == 3 + 3 * 6 and max(model.batches) == 4   # the prediction, then steps + 1 each


def test_curves_read_volumes_in_blocks_within_the_voxel_budget(monkeypatch):
    from xcam_viz.evidence import analysis
    g = torch.Generator().manual_seed(0)
    volumes, maps = torch.rand(5, 1, 6, 6, 6, generator=g), torch.rand(5, 6, 6, 6, generator=g)
    ds = xv.data.from_arrays(volumes.numpy(), [0, 1, 0, 1, 0], spatial_dims=3)
    whole = xv.metrics.insertion_curve(_CubeModel(), ds, maps, baseline="blur", steps=4, target=[1, 0, 1, 0, 1])
    monkeypatch.setattr(analysis, "VOXEL_BUDGET", 2 * 6 ** 3)
    model = _CubeModel()
    blocks = xv.metrics.insertion_curve(model, ds, maps, baseline="blur", steps=4, target=[1, 0, 1, 0, 1])
    assert max(model.batches) == 2 and sum(model.batches) == 5 + 5 * 5
    np.testing.assert_allclose(blocks.values, whole.values, rtol=1e-6)
    assert blocks.target.values.tolist() == [1, 0, 1, 0, 1]


def test_blur_is_separable_over_every_spatial_axis():
    images = torch.rand(2, 3, 12, 9)
    np.testing.assert_allclose(gaussian_blur(images), torchvision_blur(images, kernel_size=11, sigma=5.0),
                               atol=1e-6)
    # a volume constant along z blurs like each of its slices; one varying along z only like a 1-D signal
    slab = images[:, :, None].expand(2, 3, 7, 12, 9)
    np.testing.assert_allclose(gaussian_blur(slab), torchvision_blur(images, 11, 5.0)[:, :, None].expand_as(slab),
                               atol=1e-6)
    ramp = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 6, 6)
    blurred = gaussian_blur(ramp)[0, 0, :, 0, 0]
    line = torchvision_blur(torch.arange(8.0).view(1, 8, 1).expand(1, 8, 8), 11, 5.0)[0, :, 0]
    np.testing.assert_allclose(blurred, line, atol=1e-5)
    with pytest.raises(ValueError, match="more than 5 px along every spatial axis, got 4"):
        gaussian_blur(torch.rand(1, 1, 4, 8, 8))
