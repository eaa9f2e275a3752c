"""Strokes as people paint them (`xv.feedback.paint`, `STROKES`, `simulate(..., stroke=)`), on 2-D and 3-D masks."""
import numpy as np
import pytest
import torch
from scipy import ndimage

import xcam_viz as xv
from xcam_viz.feedback import BRUSH_WIDTH, STROKES, paint, simulate

SHAPES = {"image": (48, 48), "volume": (20, 32, 32)}


def _box(shape):
    """A box of 10 pixels (voxels) a side, off-centre, and its centroid."""
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s // 3, s // 3 + 10) for s in shape)] = True
    return mask


def _centroid(mask):
    return np.array(ndimage.center_of_mass(mask))


def _gap(mask, other):
    """The largest distance from a pixel of `mask` to `other`."""
    return ndimage.distance_transform_edt(~other)[mask].max()


@pytest.fixture(params=sorted(SHAPES))
def box(request):
    return _box(SHAPES[request.param])


def test_dilate_grows_by_k(box):
    out = paint(box, {"dilate": 3})
    assert (out >= box).all() and _gap(out, box) == 3
    assert out.any(tuple(range(1, box.ndim))).sum() == 10 + 2 * 3          # its extent grows by 3 on each side


def test_erode_shrinks_and_keeps_a_core(box):
    assert paint(box, {"erode": 2}).sum() == 6 ** box.ndim
    assert paint(box, {"erode": 50}).any()


def test_shift_moves_the_centroid_by_k(box):
    for seed in range(5):
        out = paint(box, {"shift": 3}, rng=seed)
        assert out.sum() == box.sum() and abs(np.linalg.norm(_centroid(out) - _centroid(box)) - 3) <= 0.5


def test_incomplete_keeps_about_the_share(box):
    for share in (0.3, 0.5):
        out = paint(box, {"incomplete": share}, rng=1)
        assert not (out & ~box).any() and abs(out.sum() / box.sum() - share) < 0.05


def test_brush_stays_near_the_region_and_has_the_default_width(box):
    out = paint(box, "brush", rng=2)
    assert _gap(out, box) <= BRUSH_WIDTH / 2 + 1 and (out & box).sum() >= 0.8 * box.sum()
    line = np.zeros(box.shape, bool)
    line[..., 20, 8:30] = True                                       # one pixel thin: painted as one stroke
    painted = paint(line, "brush", rng=2)
    assert (painted.sum(-2)[..., 12:26] == BRUSH_WIDTH).all() and _gap(painted, line) <= BRUSH_WIDTH / 2 + 1
    assert (painted.sum(-2)[..., 12:26] == paint(line, {"brush": 8}).sum(-2)[..., 12:26] - 4).all()


def test_brush_paints_each_plane_of_a_volume_on_its_own():
    volume = _box(SHAPES["volume"])
    out = paint(volume, "brush", rng=3)
    assert np.array_equal(out.any((1, 2)), volume.any((1, 2)))     # no stroke reaches another slice


def test_wrong_keeps_away_from_the_region_and_the_other_ground_truth(box):
    other = np.zeros_like(box)
    other[(0,) * (box.ndim - 2) + (slice(0, 8), slice(-8, None))] = True
    out = paint(box, {"wrong": 2}, rng=4, avoid=other)
    assert out.sum() == box.sum() and not (out & box).any() and not (out & other).any()
    assert ndimage.distance_transform_edt(~(box | other))[out].min() > 2
    with pytest.raises(ValueError, match="no room for a 'wrong' stroke"):
        paint(box, "wrong", avoid=~box)


@pytest.mark.parametrize("kind", sorted(STROKES))
def test_every_kind_is_seeded_and_refuses_an_empty_mask(kind):
    shape = SHAPES["volume" if STROKES[kind].volumes_only else "image"]
    box = _box(shape)
    assert np.array_equal(paint(box, kind, rng=7), paint(box, kind, rng=7))
    with pytest.raises(ValueError, match="the mask is empty"):
        paint(np.zeros(shape, bool), kind)


def test_stroke_settings_are_checked():
    image = _box(SHAPES["image"])
    with pytest.raises(ValueError, match="unknown stroke kind 'blur'; the kinds are wrong, dilate, erode"):
        paint(image, "blur")
    with pytest.raises(ValueError, match="for volumes"):
        paint(image, {"slices": 2})
    with pytest.raises(ValueError, match="share in"):
        paint(image, {"incomplete": 1.5})
    with pytest.raises(ValueError, match="whole number of pixels"):
        paint(image, {"dilate": 1.5})
    assert np.array_equal(paint(image, None), image) and paint(torch.from_numpy(image), {"dilate": 1}).sum() > 100


def test_simulate_paints_every_mask_with_the_strokes():
    ds = xv.data.synthetic_lesions(40, size=64, split="train")
    exact = simulate(ds, 0.25, kind="irrelevant", seed=1)
    for stroke in ("brush", {"shift": 3}, {"dilate": 3, "incomplete": 0.5}, "wrong"):
        fb = simulate(ds, 0.25, kind="irrelevant", seed=1, stroke=stroke)
        assert fb.sample_ids == exact.sample_ids and fb.has_irrelevant.all()
        assert fb.irrelevant.flatten(1).any(1).all() and not torch.equal(fb.irrelevant, exact.irrelevant)
    wrong = simulate(ds, 0.25, kind="irrelevant", seed=1, stroke="wrong")
    truth = ds.regions["confounder"] | ds.masks
    assert not (wrong.irrelevant & truth[[ds.index_of(i) for i in wrong.sample_ids]]).any()
    assert torch.equal(wrong.irrelevant, simulate(ds, 0.25, kind="irrelevant", seed=1, stroke="wrong").irrelevant)


def test_the_feedback_tab_paints_with_the_default_brush_width():
    from xcam_viz.dashboard.brush import BrushFeedback
    from xcam_viz.dashboard.raster import Stroke
    assert BrushFeedback.param.width.default == Stroke([], []).width == BRUSH_WIDTH
