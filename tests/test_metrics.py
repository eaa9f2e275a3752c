"""Metrics against hand-computed values on small arrays, and their error messages."""
import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import xcam_viz as xv
from xcam_viz.data import from_arrays


def _mask(box, size=8):
    m = np.zeros((size, size), bool)
    (y0, y1), (x0, x1) = box
    m[y0:y1, x0:x1] = True
    return m


def _peak(y, x, size=8):
    a = np.zeros((size, size))
    a[y, x] = 1.0
    return a


def test_pointing_game_hit_miss_and_tolerance():
    masks = np.stack([_mask(((0, 2), (0, 2)))] * 3)
    maps = np.stack([_peak(1, 1), _peak(1, 4), _peak(5, 5)])
    assert xv.metrics.pointing_game(maps, masks).values.tolist() == [1.0, 0.0, 0.0]
    # (1, 4) is 3 px from the mask's column 1; (5, 5) is sqrt(4² + 4²) ≈ 5.66 px from (1, 1)
    assert xv.metrics.pointing_game(maps, masks, tolerance=3).values.tolist() == [1.0, 1.0, 0.0]
    scores = xv.metrics.pointing_game(maps, masks, tolerance=5.7)
    assert scores.values.tolist() == [1.0, 1.0, 1.0]
    assert float(scores.mean()) == 1.0
    assert scores.point_y.values.tolist() == [1, 1, 5] and scores.point_x.values.tolist() == [1, 4, 5]


def test_energy_pointing_game_share_of_positive_mass():
    a = np.zeros((8, 8))
    a[0, 0], a[0, 1], a[7, 7], a[4, 4] = 3.0, 1.0, 4.0, -5.0   # negatives are ignored
    share = xv.metrics.energy_pointing_game(a, _mask(((0, 1), (0, 2))))
    assert share.values.tolist() == [0.5]
    none = xv.metrics.energy_pointing_game(-np.ones((8, 8)), _mask(((0, 1), (0, 2))))
    assert np.isnan(none.values[0])


def test_iou_and_best_iou():
    a = np.zeros((8, 8))
    a[0:2, 0:4] = 1.0          # 8 px at full height
    a[2:4, 0:4] = 0.4          # 8 px at 0.4 of the maximum
    mask = _mask(((0, 4), (0, 2)))   # 8 px, 4 of them in the top block
    # threshold 0.5: region = top block (8 px); overlap 4; union 12
    assert xv.metrics.iou(a, mask, threshold=0.5).item() == pytest.approx(4 / 12)
    # threshold 0.3: region = 16 px; overlap 8; union 16
    assert xv.metrics.iou(a, mask, threshold=0.3).item() == pytest.approx(8 / 16)
    best = xv.metrics.best_iou(a, mask, thresholds=[0.3, 0.5, 0.9])
    assert best.item() == pytest.approx(0.5) and best.threshold.item() == 0.3
    assert xv.metrics.iou(a * 7, mask, threshold=0.5).item() == pytest.approx(4 / 12)  # scale-free


def test_auc_of_known_curves():
    f = np.linspace(0, 1, 5)
    curve = xr.DataArray(np.stack([1 - f, f ** 2, np.ones(5)]), dims=("sample", "fraction"),
                         coords={"fraction": f})
    # trapezoid rule: exact for lines; f² on 5 points gives 0.34375 (true 1/3)
    np.testing.assert_allclose(xv.metrics.auc(curve).values, [0.5, 0.34375, 1.0])


class _PatchModel(nn.Module):
    """Logit of class 1 = 10·(mean of the top-left 4×4 pixels) − 5."""

    def forward(self, x):
        z = 10 * x[:, :, :4, :4].mean((1, 2, 3)) - 5
        return torch.stack([torch.zeros_like(z), z], 1)


def test_deletion_and_insertion_follow_the_map():
    images = torch.ones(2, 1, 8, 8)
    good, bad = np.zeros((8, 8)), np.zeros((8, 8))
    good[:4, :4] = 1.0                       # points at the patch the model uses
    bad[4:, 4:] = 1.0
    maps = np.stack([good, bad])
    model = _PatchModel()
    dele = xv.metrics.deletion_curve(model, images, maps, baseline="zero", steps=4, target=1)
    ins = xv.metrics.insertion_curve(model, images, maps, baseline="zero", steps=4, target=1)
    assert dele.dims == ("sample", "fraction") and dele.sizes["fraction"] == 5
    p = torch.sigmoid(torch.tensor(5.0)).item()
    assert dele.values[0, 0] == pytest.approx(p, rel=1e-4) and dele.values[0, 1] == pytest.approx(1 - p, rel=1e-4)
    assert dele.values[1, 1] == pytest.approx(p, rel=1e-4)                 # wrong region: still confident
    d_auc = xv.metrics.deletion_auc(model, images, maps, baseline="zero", steps=4, target=1)
    i_auc = xv.metrics.insertion_auc(model, images, maps, baseline="zero", steps=4, target=1)
    assert d_auc[0] < d_auc[1] and i_auc[0] > i_auc[1]
    assert float(d_auc[0]) == pytest.approx(float(xv.metrics.auc(dele)[0]))
    assert ins.values[0, 1] == pytest.approx(p, rel=1e-4) and ins.values[0, 0] == pytest.approx(1 - p, rel=1e-4)


@pytest.mark.parametrize("grid", [(16, 16), (8, 8, 8)], ids=["image", "volume"])
@pytest.mark.parametrize("baseline", ["blur", "mean", "zero"])
def test_curves_end_at_the_baseline(baseline, grid):
    images = torch.rand(2, 3, *grid)
    maps = torch.rand(2, *grid)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * images[0, 0].numel(), 3))
    dele = xv.metrics.deletion_curve(model, images, maps, baseline=baseline, steps=3)
    ins = xv.metrics.insertion_curve(model, images, maps, baseline=baseline, steps=3)
    np.testing.assert_allclose(dele.values[:, -1], ins.values[:, 0], rtol=1e-5)
    np.testing.assert_allclose(dele.values[:, 0], ins.values[:, -1], rtol=1e-5)


def test_accepts_dataarray_tensor_and_imageset_masks():
    masks = np.stack([_mask(((0, 2), (0, 2))), _mask(((4, 8), (4, 8)))])
    ds = from_arrays(np.zeros((2, 8, 8, 3), np.float32), [0, 1], masks=masks, ids=["a", "b"])
    maps = xr.DataArray(np.stack([_peak(0, 0), _peak(0, 0)]), dims=("sample", "y", "x"),
                        coords={"sample": ["a", "b"]})
    for m in (ds, torch.from_numpy(masks), xr.DataArray(masks), masks):
        scores = xv.metrics.pointing_game(maps, m)
        assert scores.values.tolist() == [1.0, 0.0] and scores.sample.values.tolist() == ["a", "b"]
    assert xv.metrics.pointing_game(maps.values, ds).sample.values.tolist() == ["a", "b"]


def test_accuracy_matches_models_accuracy(demo_model, demo_test):
    acc = xv.metrics.accuracy(demo_model, demo_test)
    assert acc.dims == ("sample",) and len(acc) == len(demo_test)
    assert float(acc.mean()) == pytest.approx(xv.models.accuracy(demo_model, demo_test))


def test_clear_errors():
    masks = np.stack([_mask(((0, 2), (0, 2))), np.zeros((8, 8), bool)])
    maps = np.random.rand(2, 8, 8)
    with pytest.raises(ValueError, match=r"empty masks .*samples 1"):
        xv.metrics.iou(maps, masks)
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8\) but masks \(2, 4, 4\)"):
        xv.metrics.pointing_game(maps, np.ones((2, 4, 4), bool))
    nan = maps.copy()
    nan[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN for samples 1"):
        xv.metrics.energy_pointing_game(nan, np.ones((2, 8, 8), bool))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(ValueError, match="unknown baseline 'noise'"):
        xv.metrics.deletion_auc(model, torch.rand(2, 1, 8, 8), maps, baseline="noise")
    with pytest.raises(ValueError, match="maps have shape"):
        xv.metrics.insertion_auc(model, torch.rand(2, 1, 8, 8), np.random.rand(2, 4, 4))
    with pytest.raises(ValueError, match="no masks"):
        xv.metrics.iou(maps, from_arrays(np.zeros((2, 8, 8, 3), np.float32), [0, 1]))
