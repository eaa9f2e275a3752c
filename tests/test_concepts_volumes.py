"""Unit dissection on volumes: one code path with images, 3-D regions, each unit's best slice."""
import importlib

import numpy as np
import pytest
import torch
from torch import nn

import xcam_viz as xv
from xcam_viz.concepts import best_slice, dissect

DEPTH, SIZE = 8, 16


def twin_nets():
    """A 2-D net and its 3-D twin that applies the same convolution to each slice (kernel depth 1)."""
    torch.manual_seed(0)
    flat = nn.Sequential()
    flat.add_module("features", nn.Conv2d(3, 6, 3, stride=2, padding=1))
    flat.add_module("pool", nn.AdaptiveAvgPool2d(1))
    flat.add_module("flat", nn.Flatten())
    flat.add_module("head", nn.Linear(6, 2))
    deep = nn.Sequential()
    deep.add_module("features", nn.Conv3d(3, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
    deep.add_module("pool", nn.AdaptiveAvgPool3d(1))
    deep.add_module("flat", nn.Flatten())
    deep.add_module("head", nn.Linear(6, 2))
    with torch.no_grad():
        deep.features.weight.copy_(flat.features.weight[:, :, None])
        deep.features.bias.copy_(flat.features.bias)
        deep.head.load_state_dict(flat.head.state_dict())
    return flat, deep


def test_a_volume_dissects_as_its_slices_do():
    """A 3-D net applying a 2-D net to each slice: thresholds, masks and IoU are the 2-D ones, slice by slice."""
    flat, deep = twin_nets()
    rng = np.random.default_rng(0)
    volumes = rng.random((5, 3, 4, SIZE, SIZE)).astype(np.float32)          # 5 volumes of 4 slices
    slices = volumes.transpose(0, 2, 1, 3, 4).reshape(20, 3, SIZE, SIZE)     # the same 20 slices as images
    units3 = dissect(deep, xv.data.from_arrays(volumes, [0, 1, 0, 1, 0], spatial_dims=3), "features",
                     quantile=0.9, progress=False)
    units2 = dissect(flat, xv.data.from_arrays(slices, [0, 1] * 10), "features", quantile=0.9, progress=False)
    assert torch.allclose(units3.thresholds, units2.thresholds, atol=1e-5)
    volume_id, slice_ids = units3.data.ids[1], units2.data.ids[4:8]
    masks3 = units3.masks(volume_id)
    assert masks3.shape == (6, 4, SIZE, SIZE)
    assert torch.equal(masks3, torch.stack([units2.masks(s) for s in slice_ids], 1))

    one_slice = dissect(deep, xv.data.from_arrays(slices[:, :, None], [0, 1] * 10, spatial_dims=3), "features",
                        quantile=0.9, progress=False)                      # D = 1: the 2-D dissection exactly
    roi = np.zeros((SIZE, SIZE), bool)
    roi[2:9, 3:12] = True
    flat_ranking = units2.match(slice_ids[0], roi, "iou")
    deep_ranking = one_slice.match(one_slice.data.ids[4], roi[None], "iou")
    np.testing.assert_array_equal(deep_ranking.unit, flat_ranking.unit)
    np.testing.assert_allclose(deep_ranking, flat_ranking, atol=1e-6)
    peaks = one_slice.peaks(one_slice.data.ids[4], roi[None])
    assert list(peaks.axis.values) == ["z", "y", "x"] and (peaks.sel(axis="z") == 0).all()
    np.testing.assert_array_equal(peaks.sel(axis=["y", "x"]), units2.peaks(slice_ids[0], roi))


class Layered(nn.Module):
    """Units 0-1 fire on the top-left block of slices 0-3, units 2-3 on the same block of slices 4-7, unit 4
    everywhere with a peak on slice 5; each unit's activation grows along z within its block."""

    def __init__(self):
        super().__init__()
        region = torch.zeros(5, DEPTH, SIZE, SIZE)
        ramp = torch.arange(1, DEPTH + 1, dtype=torch.float32).view(DEPTH, 1, 1)
        region[0:2, 0:4, :8, :8] = 1
        region[2:4, 4:8, :8, :8] = 1
        region[:4] *= ramp
        region[4] = 0.5
        region[4, 5, 10, 3] = 9
        self.register_buffer("region", region)
        self.features = nn.Identity()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        a = self.features(self.region * (1 + 0.01 * x.mean(1, keepdim=True)))
        return self.head(a.mean((2, 3, 4)))


@pytest.fixture(scope="module")
def layered():
    data = xv.data.from_arrays(np.random.default_rng(1).random((6, 1, DEPTH, SIZE, SIZE)).astype(np.float32),
                               [0, 1] * 3, spatial_dims=3)
    return dissect(Layered(), data, "features", quantile=0.5, progress=False)


def test_a_painted_3d_region_ranks_the_units_firing_there_first(layered):
    sid = layered.data.ids[0]
    roi = np.zeros((DEPTH, SIZE, SIZE), bool)
    roi[4:8, :8, :8] = True                          # the top-left block, deep slices only
    ranked = layered.match(sid, roi)
    assert ranked.attrs["rule"] == "iou" and set(ranked.unit.values[:2].tolist()) == {2, 3}
    assert (ranked.values[:2] > 0.2).all() and (ranked.values[2:] < 0.2).all()
    assert sorted(layered.label(sid, roi, "deep corner")) == [2, 3]
    roi[:] = False
    roi[0:4, :8, :8] = True                          # the same block in the shallow slices
    assert set(layered.match(sid, roi).unit.values[:2].tolist()) == {0, 1}


def test_each_unit_has_its_best_slice(layered):
    sid = layered.data.ids[2]
    peaks = layered.peaks(sid)
    assert peaks.dims == ("unit", "axis") and list(peaks.unit.values) == [0, 1, 2, 3, 4]
    assert peaks.sel(axis="z").values.tolist() == [3, 3, 7, 7, 5]          # the top of each ramp; unit 4's spike
    assert peaks.sel(unit=4).values.tolist() == [5, 10, 3]
    roi = np.zeros((DEPTH, SIZE, SIZE), bool)
    roi[1:3, :, :] = True                            # inside a region: the peak within it
    inside = layered.peaks(sid, roi, units=[4, 0])
    assert inside.unit.values.tolist() == [4, 0] and inside.attrs["in_region"]
    assert inside.sel(unit=0, axis="z") == 2 and inside.sel(unit=4, axis="z") in (1, 2)
    volume = np.arange(DEPTH)[:, None, None, None] * np.ones((DEPTH, SIZE, SIZE, 3))   # D×H×W×C, slice z holds z
    tile = best_slice(volume, peaks.sel(unit=4))
    assert tile.shape == (SIZE, SIZE, 3) and (tile == 5).all()
    image = np.ones((SIZE, SIZE, 3))
    assert best_slice(image, [4, 7]).shape == image.shape                    # an image is shown whole


def test_volume_regions_say_what_is_wrong(layered):
    sid = layered.data.ids[0]
    with pytest.raises(ValueError, match="ROI is empty"):
        layered.match(sid, np.zeros((DEPTH, SIZE, SIZE), bool))
    with pytest.raises(ValueError, match=r"D×H×W mask of the image size \(8, 16, 16\), got \(16, 16\)"):
        layered.match(sid, np.ones((SIZE, SIZE), bool))             # one slice is not a region of the volume
    with pytest.raises(ValueError, match="ROI is empty"):
        layered.peaks(sid, np.zeros((DEPTH, SIZE, SIZE), bool))


def test_large_volumes_are_matched_in_chunks_of_units(layered, monkeypatch):
    """Upsampled activations are held a few units at a time; the scores do not depend on it."""
    module = importlib.import_module("xcam_viz.concepts.dissect")
    sid = layered.data.ids[3]
    roi = np.zeros((DEPTH, SIZE, SIZE), bool)
    roi[2:6, 4:12, 4:12] = True
    whole = layered.match(sid, roi, "iou")
    peaks = layered.peaks(sid, roi)
    monkeypatch.setattr(module, "BATCH_VOXELS", 2 * DEPTH * SIZE * SIZE)      # two units per chunk
    assert [len(part) for part, _ in layered._upsampled(sid)] == [2, 2, 1]
    np.testing.assert_array_equal(layered.match(sid, roi, "iou").unit, whole.unit)
    np.testing.assert_array_equal(layered.peaks(sid, roi), peaks)
    assert layered.active(sid).tolist() == [True] * 5
    assert layered.masks(sid, []).shape == (0, DEPTH, SIZE, SIZE) and layered.peaks(sid, roi, []).shape == (0, 3)


def test_another_volume_set_and_a_random_3d_net():
    """Nodules of another seed without the shortcut, a smallcnn3d with random weights and anisotropic input:
    thresholds are the in-memory quantile, a unit's own mask ranks it first, its peak lies in a region."""
    from xcam_viz.explain import capture

    torch.manual_seed(3)
    data = xv.data.synthetic_nodules(n=4, size=48, split="test", seed=7, confounder=0.0)
    data = xv.data.ImageSet(data.images[:, :, ::2].contiguous(), data.labels, ids=data.ids,
                            class_names=data.class_names, spacing=(2.0, 1.0, 1.0))     # 24×48×48
    model = xv.models.build("smallcnn3d", num_classes=2, in_channels=1, width=4)
    units = dissect(model, data, "block3", quantile=0.95, progress=False)
    full = capture(model, data.images, "block3", gradients=False).activations["block3"]
    assert full.shape[2:] == (6, 12, 12)
    assert torch.allclose(units.thresholds, torch.quantile(full.transpose(0, 1).flatten(1), 0.95, dim=1), atol=1e-5)
    sid = data.ids[2]
    masks = units.masks(sid)
    assert masks.shape == (16, 24, 48, 48)
    unit = int(masks.flatten(1).sum(1).argmax())
    ranked = units.match(sid, masks[unit])
    assert ranked.attrs["rule"] == "iou" and int(ranked.unit[0]) == unit and float(ranked[0]) == 1.0
    peak = units.peaks(sid, masks[unit], [unit]).sel(unit=unit)
    assert masks[unit][tuple(peak.values)]
    assert best_slice(data.images[2].movedim(0, -1).numpy(), peak).shape == (48, 48, 1)
