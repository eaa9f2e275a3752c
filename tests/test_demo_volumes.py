"""The 3-D demo: synthetic chest CT volumes with a skin-marker shortcut, its model, and the example registry."""
import numpy as np
import pytest
import torch
from scipy import ndimage

import xcam_viz as xv
from xcam_viz.cli import main
from xcam_viz.data.examples import EXAMPLES
from xcam_viz.data.nodules import HU
from xcam_viz.demo import VOLUMES, cache_dir, demo_volume_model, demo_volumes


@pytest.fixture(scope="module")
def train():
    return xv.data.synthetic_nodules(n=48, split="train")


@pytest.fixture(scope="module")
def test_and_flipped():
    return demo_volumes("test", n=64), demo_volumes("flipped", n=64)


def marked(data):
    return data.regions["confounder"].flatten(1).any(1)


def test_volumes_are_deterministic_and_the_first_k_do_not_depend_on_n():
    a = xv.data.synthetic_nodules(n=3, split="test", seed=1)
    b = xv.data.synthetic_nodules(n=5, split="test", seed=1)
    assert torch.equal(a.images, b.images[:3]) and torch.equal(a.masks, b.masks[:3])
    assert torch.equal(a.labels, b.labels[:3]) and a.ids == b.ids[:3]
    assert not torch.equal(a.images, xv.data.synthetic_nodules(n=3, split="test", seed=2).images)


def test_shapes_spacing_and_hounsfield_units_before_the_lung_window():
    raw = xv.data.synthetic_nodules(n=4, size=56, hounsfield=True)
    ds = xv.data.synthetic_nodules(n=4, size=56)
    assert tuple(ds.images.shape) == (4, 1, 56, 56, 56) and ds.image_shape == (1, 56, 56, 56)
    assert tuple(ds.masks.shape) == (4, 56, 56, 56) and ds.spatial_dims == 3 and len(ds.spacing) == 3
    hu = raw.images
    assert -1150 < hu.min() and hu.amin((1, 2, 3, 4)).max() < -950          # air around the body
    lung = hu[:, 0][(hu[:, 0] < -600) & (hu[:, 0] > -950)]
    assert abs(float(lung.median()) - HU["lung"]) < 40                      # parenchyma
    assert float(hu[:, 0][raw.masks].mean()) > -150                          # the nodule is solid tissue
    assert torch.allclose(ds.images, torch.from_numpy(xv.data.apply_window(hu.numpy(), "ct-lung")), atol=1e-6)
    assert ds.images.min() >= 0 and ds.images.max() <= 1


def test_each_volume_has_one_nodule_whose_mask_is_bright_and_connected(train):
    for image, mask in zip(train.images[:16, 0], train.masks[:16]):
        assert ndimage.label(mask.numpy(), np.ones((3, 3, 3)))[1] == 1
        assert image[mask].mean() > 0.75 > 0.5 > image[~mask].median()


def test_the_marker_goes_with_malignant_in_train_and_with_benign_in_flipped(train, test_and_flipped):
    test, flipped = test_and_flipped
    malignant = train.labels == 1
    assert marked(train)[malignant].float().mean() > 0.9 and marked(train)[~malignant].float().mean() < 0.1
    assert marked(flipped)[flipped.labels == 0].float().mean() > 0.9
    assert marked(flipped)[flipped.labels == 1].float().mean() < 0.1
    # flipped holds test's patients: only the markers differ.
    outside = ~(test.regions["confounder"] | flipped.regions["confounder"])
    assert torch.equal(test.labels, flipped.labels) and torch.equal(test.masks, flipped.masks)
    assert torch.equal(test.images[:, 0][outside], flipped.images[:, 0][outside])
    beads = test.images[:, 0][test.regions["confounder"]]
    assert beads.numel() and beads.min() > 0.95                               # saturated in the lung window


def test_the_shortcut_can_be_turned_off():
    off = xv.data.synthetic_nodules(n=60, confounder=0.0)
    for label in (0, 1):
        assert 0.25 < marked(off)[off.labels == label].float().mean() < 0.75


def sphericity(mask: np.ndarray) -> float:
    """π^(1/3) (6V)^(2/3) / A with A the count of exposed voxel faces (a voxelised sphere gives about 2/3)."""
    volume = mask.sum()
    faces = sum(np.count_nonzero(np.diff(np.pad(mask, 1).astype(np.int8), axis=a)) for a in range(3))
    return float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / faces)


def test_benign_nodules_are_round_and_malignant_ones_spiculated(train):
    scores = np.array([sphericity(m.numpy()) for m in train.masks[:24]])
    benign, malignant = scores[train.labels[:24] == 0], scores[train.labels[:24] == 1]
    assert benign.min() > malignant.max(), (benign, malignant)
    assert benign.mean() > 0.6 and malignant.mean() < 0.5


def test_the_segmentation_variant_has_nodule_and_vessel_voxels():
    ds = xv.data.synthetic_nodules(n=2, task="segmentation")
    assert ds.class_names == ["background", "nodule", "vessel"] and ds.labels.tolist() == [1, 1]
    assert set(ds.targets.unique().tolist()) == {0, 1, 2}
    assert torch.equal(ds.targets == 1, ds.masks)
    assert ds.images[:, 0][ds.targets == 2].mean() > 0.75                   # vessels are bright tubes


def test_the_committed_model_learned_the_shortcut(test_and_flipped):
    assert (cache_dir() / VOLUMES.checkpoint).stat().st_size < 1_000_000
    model = demo_volume_model(progress=False)
    test, flipped = test_and_flipped
    assert xv.models.accuracy(model, test) >= 0.9
    assert xv.models.accuracy(model, flipped) < 0.5


def test_the_example_sets_come_from_one_registry(capsys):
    assert set(EXAMPLES) == {"demo", "volumes", "decoy-digits", "cameras"}
    ds = xv.data.load_data("volumes", split="flipped", n=2)
    assert ds.ids == demo_volumes("flipped", n=2).ids and ds.image_shape == (1, 48, 48, 48)
    assert len(xv.data.load_data("decoy-digits", split="test")) == EXAMPLES["decoy-digits"].sizes["test"]
    assert len(xv.data.load_data("demo", split="flipped", n=3)) == 3
    with pytest.raises(ValueError, match="splits train, test, flipped"):
        xv.data.load_data("volumes", split="validation")
    with pytest.raises(FileNotFoundError, match="demo, volumes, decoy-digits"):
        xv.data.load_data("no-such-set")
    assert main(["examples"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in EXAMPLES) and "train 400" in listing


@pytest.mark.slow                                   # generates and scores 400 volumes: 20-60 s
def test_demo_volumes_prints_what_the_model_learned_then_serves_the_3d_demo(capsys, monkeypatch):
    served = []
    monkeypatch.setattr("xcam_viz.dashboard.app.serve", lambda *a, **k: served.append(k))
    assert main(["demo", "--volumes", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "smallcnn3d" in out and "block4" in out and "test" in out and "flipped" in out and "%" in out
    assert [k["demo"] for k in served] == ["volumes"] and "serving the 3-D demo dashboard" in out
