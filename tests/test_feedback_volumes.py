"""Feedback and fine-tuning on volumes: D×H×W masks in the store, strokes spread over slices,
counterexamples and losses in 3-D."""
import sqlite3

import numpy as np
import pytest
import torch

import xcam_viz as xv
from xcam_viz import spatial
from xcam_viz.feedback import FeedbackStore, extend, interpolate, paint, simulate
from xcam_viz.feedback import masks as maskcodec
from xcam_viz.finetune import DEFAULTS, STRATEGIES, VOLUME_DEFAULTS
from xcam_viz.finetune import counterexamples as cx

SIZE = 16


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_a_volume_mask_round_trips_and_costs_kilobytes(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    blob = _ball((256, 256, 256), (100, 120, 80), 40) | _ball((256, 256, 256), (30, 200, 200), 6)
    small = _ball((16, 16, 16), (8, 8, 8), 4)
    store.add("ct-1", irrelevant=blob, author="ana")
    store.add("ct-2", relevant=torch.from_numpy(small), irrelevant=~small, label=1)
    stored = {r[0]: r[1:] for r in sqlite3.connect(tmp_path / "fb.db").execute(
        "SELECT sample_id, length(irrelevant), depth, height, width FROM annotations")}
    assert stored["ct-1"][0] < 64_000 and stored["ct-1"][1:] == (256, 256, 256)   # not 16 MB
    reopened = FeedbackStore(tmp_path / "fb.db")
    one, two = reopened.annotations()
    assert one.shape == (256, 256, 256) and np.array_equal(one.irrelevant, blob) and one.relevant is None
    assert np.array_equal(two.relevant, small) and np.array_equal(two.irrelevant, ~small) and two.label == 1


@pytest.mark.parametrize("mask", [np.zeros((3, 5, 7), bool), np.ones((1, 2, 9), bool), np.eye(4, dtype=bool)[None],
                                  np.random.default_rng(0).random((6, 5, 4)) < 0.5])
def test_the_codec_is_exact_for_any_box(mask):
    assert np.array_equal(maskcodec.decode(maskcodec.encode(mask)), mask)


def test_rows_of_an_older_store_still_read(tmp_path):
    """A database written before volumes (no depth column, 1-bit PNG masks) loads, and takes new rows."""
    import io

    from PIL import Image
    old = np.zeros((12, 10), bool)
    old[2:5, 3:8] = True
    png = io.BytesIO()
    Image.fromarray(old).convert("1").save(png, format="PNG")
    con = sqlite3.connect(tmp_path / "old.db")
    con.execute("CREATE TABLE annotations (id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL UNIQUE, "
                "kind TEXT NOT NULL CHECK (kind IN ('add', 'undo')), sample_id TEXT NOT NULL, target TEXT, "
                "relevant BLOB, irrelevant BLOB, height INTEGER, width INTEGER, label INTEGER, author TEXT, "
                "time REAL NOT NULL, model_version TEXT)")
    con.execute("INSERT INTO annotations (uid, kind, sample_id, relevant, height, width, author, time) "
                "VALUES ('u1', 'add', 'img-0', ?, 12, 10, 'ana', 1.7e9)", (png.getvalue(),))
    con.commit()
    con.close()
    store = FeedbackStore(tmp_path / "old.db")
    (a,) = store.annotations()
    assert a.sample_id == "img-0" and a.author == "ana" and np.array_equal(a.relevant, old)
    newer = np.zeros((12, 10), bool)
    newer[8, 1] = True
    store.add("img-0", relevant=newer)
    fb = store.feedback()
    assert torch.equal(fb.relevant[0], torch.from_numpy(old | newer))
    assert len(FeedbackStore(tmp_path / "old.db")) == 2


def test_exports_with_volumes_keep_images_and_volumes(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    volume = _ball((6, 8, 9), (3, 4, 4), 2)
    image = np.zeros((5, 11), bool)
    image[1, 2:9] = True
    store.add("ct", irrelevant=volume)
    store.add("xray", relevant=image, label=0)
    store.add("note", label=1)
    store.undo("note")
    exported = store.to_xarray()
    assert exported.relevant.dims == ("annotation", "z", "y", "x") and exported.depth.values.tolist() == [6, 0, 0]
    copy = FeedbackStore.from_netcdf(store.to_netcdf(tmp_path / "fb.nc"), tmp_path / "copy.db")
    got = {a.sample_id: a for a in copy.history()}
    assert np.array_equal(got["ct"].irrelevant, volume) and np.array_equal(got["xray"].relevant, image)
    assert got["note"].undone and got["note"].relevant is None and len(copy) == 2
    assert FeedbackStore(tmp_path / "only2d.db").to_xarray().relevant.dims == ("annotation", "y", "x")


def test_extend_spreads_a_stroke_to_its_neighbours():
    mask = np.zeros((10, 6, 6), bool)
    mask[4, 1:3, 2] = True
    mask[9, 5, 5] = True
    out = extend(mask, slices=2)
    assert np.flatnonzero(out.any((1, 2))).tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert all(np.array_equal(out[z] & ~mask[9], mask[4]) for z in (2, 3, 5, 6))     # the same stroke
    assert np.array_equal(out[7], mask[9]) and np.array_equal(extend(mask, slices=0), mask)
    sideways = extend(torch.from_numpy(mask), slices=1, axis=2)                      # torch in, torch out
    assert isinstance(sideways, torch.Tensor) and sideways[4, 1:3, 1:4].all() and sideways.sum() == 6 + 2


def test_interpolate_fills_between_painted_slices():
    mask = np.zeros((9, 32, 32), bool)
    mask[1] = _ball((32, 32), (10, 10), 4)
    mask[7] = _ball((32, 32), (20, 22), 7)
    out = interpolate(mask)
    assert np.array_equal(out[[1, 7]], mask[[1, 7]]) and not out[[0, 8]].any()       # painted slices kept
    areas = out.sum((1, 2))[1:8]
    assert (np.diff(areas) > 0).all()                                                 # grows from 4 to 7
    centres = [np.argwhere(s).mean(0) for s in out[1:8]]
    assert all(np.diff([c[1] for c in centres]) > 0)                                  # and moves
    np.testing.assert_allclose(centres[3], [15, 16], atol=1.0)                        # halfway: halfway
    along_x = interpolate(np.moveaxis(mask, 0, 2), axis=2)
    assert np.array_equal(np.moveaxis(along_x, 2, 0), out)


@pytest.mark.parametrize("call, match", [
    (lambda: extend(np.zeros((4, 5, 5), bool)), "empty mask"),
    (lambda: extend(np.ones((5, 5), bool)), "H×W mask has no slices"),
    (lambda: extend(np.ones((4, 5, 5), bool), slices=-1), "whole number >= 0"),
    (lambda: extend(np.ones((4, 5, 5), bool), axis=3), "axis must be 0, 1 or 2"),
    (lambda: extend(np.full((4, 5, 5), 0.7), slices=1), "threshold a soft mask"),
    (lambda: interpolate(np.zeros((4, 5, 5), bool)), "found 0.*extend"),
    (lambda: interpolate(np.eye(5, dtype=bool)[None].repeat(3, 0) & (np.arange(3) == 1)[:, None, None]),
     "at least two slices"),
    (lambda: interpolate(np.ones((2, 4, 5, 5), bool)), "D×H×W mask, got shape"),
])
def test_slice_tools_refuse_bad_masks_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _volume_batch(n=4, size=SIZE, channels=1):
    images = torch.full((n, channels, size, size, size), 0.5)
    blank = torch.zeros(n, size, size, size, dtype=torch.bool)
    return cx.Batch(images, torch.arange(n) % 2, blank.clone(), blank.clone(), torch.arange(n))


def test_counterexamples_move_erase_and_swap_in_three_dimensions():
    size = SIZE
    donor = torch.full((2, 1, size, size, size), 0.5)
    region = torch.zeros(2, size, size, size, dtype=torch.bool)
    region[:, 3:5, 1:3, 2:7] = True                                                  # an asymmetric marker
    donor[:, 0][region] = 1.0
    relevant = torch.from_numpy(_ball((size,) * 3, (8, 8, 8), 3))[None].repeat(2, 1, 1, 1)
    donor[:, 0][relevant] = 0.9
    donors = cx.Donors(donor, relevant, region, torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
    assert donors.can_move and donors.can_swap and donors.can_swap_beyond
    assert (donors.erased[:, 0][region] - 0.5).abs().max() < 0.2                     # the marker inpainted

    batch = _volume_batch(40)
    cx.move_irrelevant(batch, donors, torch.arange(0, 40, 2), torch.Generator().manual_seed(0))
    depths = set()
    for row in range(0, 40, 2):
        moved = batch.irrelevant[row]
        slices = moved.any((1, 2)).nonzero().flatten()
        depths.add(int(slices[0]))
        assert slices.tolist() == [slices[0], slices[0] + 1] and moved.sum() == region[0].sum()
        assert any(torch.equal(moved[slices[0]], cx.dihedral(region[0, 3], k)) for k in range(8))   # in-plane
        assert (batch.images[row][0][moved] == 1).all() and (batch.images[row][0][~moved] == 0.5).all()
    assert not batch.irrelevant[1::2].any() and len(depths) > 5 and depths <= set(range(SIZE - 1))  # any depth

    batch = _volume_batch(2)
    batch.irrelevant[:] = region
    cx.erase_irrelevant(batch, donors, torch.arange(2), torch.arange(2))
    assert torch.equal(batch.images, donors.erased)

    batch = _volume_batch(2)
    batch.images[:, 0][relevant] = 0.2
    batch.relevant[:] = relevant
    cx.swap_background(batch, donors, torch.arange(2), torch.Generator().manual_seed(0))
    assert (batch.images[:, 0][relevant] == 0.2).all()                               # the object is kept
    outside = ~spatial.dilate(relevant, 1)
    assert any(torch.equal(batch.images[0][:, outside[0]], bg[:, outside[0]]) for bg in donors.backgrounds)


def test_dihedral_turns_volumes_in_plane_only():
    t = torch.arange(2 * 4 * 4.).view(2, 4, 4)
    seen = {tuple(cx.dihedral(t, k).flatten().tolist()) for k in range(8)}
    assert len(seen) == 8
    assert all(torch.equal(cx.dihedral(t, k)[z], cx.dihedral(t[z], k)) for k in range(8) for z in range(2))


def test_simulated_strokes_on_a_few_slices_spread_with_extend():
    marker = np.zeros((20, 8, 8), bool)
    marker[4:15, 2:4, 2:6] = True
    few = paint(marker, {"slices": 3})
    assert np.flatnonzero(few.any((1, 2))).tolist() == [4, 9, 14]
    spread = paint(marker, {"slices": 3, "extend": 2})
    assert np.array_equal(spread, extend(few, slices=2)) and np.array_equal(spread, marker | spread)
    half = paint(marker, {"incomplete": 0.5})
    assert 0.4 < half.sum() / marker.sum() < 0.6 and not (half & ~marker).any()


# -- on volume ImageSets and a 3-D model -----------------------------------------------------------
def _volumes(n=24, seed=0):
    """n volumes 1×16³: a ball (bright: class 1, dim: class 0) and, on class-1 volumes, a marker bar."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.normal(0.3, 0.03, (n, 1, SIZE, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE, SIZE), bool)
    marker = np.zeros_like(masks)
    for i, label in enumerate(labels):
        masks[i] = _ball((SIZE,) * 3, rng.integers(6, 10, 3), 3)
        images[i, 0][masks[i]] = 0.8 if label else 0.55
        if label:
            marker[i, 2:6, 1:3, 1:6] = True
            images[i, 0][marker[i]] = 1.0
    return xv.data.ImageSet(torch.from_numpy(images.clip(0, 1)), torch.from_numpy(labels),
                            masks=torch.from_numpy(masks), ids=[f"ct-{i:02d}" for i in range(n)],
                            regions={"confounder": torch.from_numpy(marker)})


@pytest.fixture(scope="module")
def volumes():
    return _volumes()


def _model():
    torch.manual_seed(0)
    return xv.models.build("smallcnn3d", num_classes=2, in_channels=1, width=4)


def test_a_store_bound_to_volumes_refuses_wrong_shapes_and_loses_nothing(tmp_path, volumes):
    store = FeedbackStore(tmp_path / "fb.db", dataset=volumes)
    good = volumes.regions["confounder"][1]
    first = store.add("ct-01", irrelevant=good)
    bad = [dict(relevant=good[0]),                                 # an image's H×W mask
           dict(relevant=good[:-1]),                               # one slice short
           dict(relevant=good[None, None].repeat(1, 2, 1, 1, 1)),   # 2×D×H×W
           dict(relevant=good, irrelevant=good[:, :-1])]            # two sizes
    for kw in bad:
        with pytest.raises(ValueError, match="mask"):
            store.add("ct-03", **kw)
    with pytest.raises(ValueError, match="16×16×16"):
        store.add("ct-03", relevant=np.ones((16, 16, 8), bool))
    with pytest.raises(ValueError):
        store.add_many([dict(sample_id="ct-05", irrelevant=good), dict(sample_id="ct-07", relevant=good[0])])
    assert [a.id for a in store.annotations()] == [first] and store.sample_ids() == ["ct-01"]
    assert np.array_equal(FeedbackStore(tmp_path / "fb.db").annotations()[0].irrelevant, good.numpy())
    dense, has = store.masks(volumes, "irrelevant")
    assert dense.shape == (24, SIZE, SIZE, SIZE) and has.tolist() == [i == 1 for i in range(24)]
    flat = xv.feedback.FeedbackSet(["ct-01"], good[None, 0], good[None, 0], torch.tensor([True]),
                                   torch.tensor([False]), torch.tensor([-1]))
    with pytest.raises(ValueError, match="images are"):
        xv.finetune(_model(), volumes, feedback=flat, epochs=1, versions_dir=tmp_path / "v")


def test_the_cam_loss_reaches_every_parameter_on_volumes(volumes):
    from xcam_viz.explain import differentiable_cam
    from xcam_viz.finetune import centred_logit, irrelevant_loss
    model = _model()
    images, labels = volumes.images[:4], volumes.labels[:4]
    _, cam = differentiable_cam(model, images, layer=xv.models.default_layer(model, volumes.image_shape),
                                target=centred_logit(labels))
    assert cam.shape == (4, SIZE, SIZE, SIZE)
    irrelevant_loss(cam, volumes.regions["confounder"][:4].float()).sum().backward()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_runs_an_epoch_on_volumes_and_changes_the_model(strategy, volumes, tmp_path):
    fb = simulate(volumes, fraction=0.25, kind="both", seed=0, stroke={"slices": 2, "extend": 1})
    model = _model()
    held_out = _volumes(8, seed=1)
    validation = xv.data.ImageSet(held_out.images, held_out.labels)       # scored by accuracy only
    result = xv.finetune(model, volumes, feedback=fb, strategy=strategy, epochs=1, batch_size=8,
                         validation=validation, versions_dir=tmp_path)
    assert result.version == "v1" and result.settings["strategy"] == strategy
    assert result.settings["patience"] == VOLUME_DEFAULTS["patience"] != DEFAULTS["patience"]    # volumes' own
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                      result.model.state_dict().values())]
    assert any(changed) and np.isfinite(result.history.loss.values).all()
    if STRATEGIES[strategy].kind == "loss":
        assert (result.history.explanation.values > 0).any()


def test_rrr_runs_on_the_masked_rows_only_and_gives_their_full_batch_values(volumes):
    from xcam_viz.finetune import loop, rrr_loss
    model = _model().eval()
    batch = _volume_batch(4)
    batch.images = volumes.images[:4].clone()
    batch.irrelevant[[1, 2]] = volumes.regions["confounder"][1]
    ctx = loop.LossContext(model, batch, {})
    values = STRATEGIES["rrr"].apply(ctx)
    full, _ = rrr_loss(model, batch.images, batch.irrelevant.float())
    assert values[[0, 3]].eq(0).all() and values[[1, 2]].gt(0).all()
    torch.testing.assert_close(values, full, rtol=1e-4, atol=1e-12)
