"""xv.data.decoy_digits: real handwriting with a decoy patch that encodes the class."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import xcam_viz as xv
from xcam_viz.data import decoy
from xcam_viz.data.decoy import decoy_level

LEVELS = decoy_level(np.arange(10))


def decoded(ds) -> np.ndarray:
    """The class each image's patch encodes: the level nearest to the patch's mean grey value."""
    patch = ds.regions["confounder"]
    mean = (ds.images[:, 0] * patch).sum((1, 2)) / patch.sum((1, 2))
    return np.abs(mean.numpy()[:, None] - LEVELS[None]).argmin(1)


@pytest.fixture(scope="module")
def splits():
    return {s: xv.data.decoy_digits(split=s) for s in ("train", "test", "flipped")}


def test_shapes_dtypes_range_ids_and_attrs(splits):
    for split, ds in splits.items():
        n = 1200 if split == "train" else 597
        assert len(ds) == n
        assert ds.images.dtype == torch.float32 and tuple(ds.images.shape) == (n, 3, 32, 32)
        assert 0 <= ds.images.min() and ds.images.max() <= 1
        assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 0], ds.images[:, 2])
        assert ds.labels.dtype == torch.int64 and set(ds.labels.tolist()) == set(range(10))
        assert ds.class_names == [str(c) for c in range(10)]
        assert ds.masks.dtype == torch.bool and tuple(ds.masks.shape) == (n, 32, 32)
        assert ds.regions["confounder"].dtype == torch.bool and tuple(ds.regions["confounder"].shape) == (n, 32, 32)
        assert len(set(ds.ids)) == n and ds.ids[3] == f"digits-{split}-0-00003"
        assert ds.attrs == {"source": "decoy_digits", "split": split, "seed": 0, "confounder": 1.0, "labelled": True}
    # Light strokes on a dark background.
    ds = splits["test"]
    assert ds.images[:, 0][ds.masks].mean() > 0.5
    assert ds.images[:, 0][~ds.masks & ~ds.regions["confounder"]].mean() < 0.1


def test_deterministic_and_the_first_k_do_not_depend_on_n():
    a = xv.data.decoy_digits(n=40, split="flipped", seed=3, confounder=0.5)
    b = xv.data.decoy_digits(n=40, split="flipped", seed=3, confounder=0.5)
    small = xv.data.decoy_digits(n=7, split="flipped", seed=3, confounder=0.5)
    for x, y in ((a, b), (small, a)):
        k = len(x)
        assert torch.equal(x.images, y.images[:k]) and torch.equal(x.labels, y.labels[:k])
        assert torch.equal(x.masks, y.masks[:k]) and x.ids == y.ids[:k]
        assert torch.equal(x.regions["confounder"], y.regions["confounder"][:k])
    other = xv.data.decoy_digits(n=40, split="flipped", seed=4, confounder=0.5)
    assert not torch.equal(a.images, other.images)


@pytest.mark.parametrize("size", [24, 37, 64])
def test_patch_is_four_corner_squares_apart_from_the_digit(size):
    ds = xv.data.decoy_digits(n=60, size=size, split="test", seed=1)
    m = size // 4
    patch, masks = ds.regions["confounder"], ds.masks
    assert (patch.sum((1, 2)) == 4 * m * m).all() and (masks.sum((1, 2)) > 0).all()
    assert not (patch & masks).any()
    centre = torch.zeros(size, size, dtype=torch.bool)
    centre[m:-m, m:-m] = True
    assert not (masks & ~centre).any()                  # the margin is free of ink
    corners = torch.zeros(len(ds), 4, dtype=torch.bool)
    for k, (ys, xs) in enumerate([(slice(0, m), slice(0, m)), (slice(0, m), slice(-m, None)),
                                  (slice(-m, None), slice(0, m)), (slice(-m, None), slice(-m, None))]):
        corners[:, k] = patch[:, ys, xs].all((1, 2))
    assert corners.all()
    # The patch is where the region says: bright there, dark in the other corners.
    grey = ds.images[:, 0]
    assert (grey[patch].view(len(ds), -1).mean(1) > 0.2).all()
    other = (~patch) & ~masks
    other[:, m:-m, m:-m] = False
    assert (grey[other].mean() < 0.05)


def test_patch_level_encodes_the_label_or_its_reverse(splits):
    for split, ds in splits.items():
        want = 9 - ds.labels.numpy() if split == "flipped" else ds.labels.numpy()
        assert (decoded(ds) == want).all(), split
        patch = ds.regions["confounder"]
        mean = (ds.images[:, 0] * patch).sum((1, 2)) / patch.sum((1, 2))
        assert np.allclose(mean.numpy(), LEVELS[want], atol=0.02)   # noise std 0.02 over m*m pixels


@pytest.mark.parametrize("confounder, share", [(0.0, 0.1), (0.5, 0.55)])
def test_confounder_strength(confounder, share):
    for split in ("test", "flipped"):
        ds = xv.data.decoy_digits(split=split, confounder=confounder)
        labels = ds.labels.numpy()
        rule = 9 - labels if split == "flipped" else labels
        assert abs((decoded(ds) == rule).mean() - share) < 0.06, split
    # With confounder 0 every class code appears, whatever the label.
    assert set(decoded(xv.data.decoy_digits(n=200, split="train", confounder=0.0)).tolist()) == set(range(10))


def test_test_and_flipped_share_held_out_digits_unlike_train(splits):
    test, flipped, train = splits["test"], splits["flipped"], splits["train"]
    assert torch.equal(test.labels, flipped.labels) and torch.equal(test.masks, flipped.masks)
    outside = ~(test.regions["confounder"] | flipped.regions["confounder"])
    assert torch.equal(test.images[:, 0][outside], flipped.images[:, 0][outside])
    assert (decoded(test) != decoded(flipped)).mean() > 0.85       # differ wherever label != 9 - label
    seen = {m.numpy().tobytes() for m in train.masks}
    assert not any(m.numpy().tobytes() in seen for m in test.masks)
    assert xv.data.decoy_digits(n=1, split="test", seed=1).ids == ["digits-test-1-00000"]
    assert not torch.equal(xv.data.decoy_digits(n=20, split="test", seed=1).masks, test.masks[:20])


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "val"}, r"unknown split 'val'; choose one of \('train', 'test', 'flipped'\)"),
    ({"size": 16}, "between 24 and 224"),
    ({"size": 256}, "between 24 and 224"),
    ({"n": 598, "split": "test"}, "has 597 digits"),
    ({"n": 1201}, "has 1200 digits"),
    ({"n": 0}, "at least 1"),
    ({"confounder": -0.1}, r"\[0, 1\]"),
    ({"confounder": 1.5}, r"\[0, 1\]"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        xv.data.decoy_digits(**kwargs)


def test_the_docstring_example_runs():
    assert doctest.testmod(decoy).failed == 0 and "decoy_digits" in xv.data.__all__


@pytest.fixture(scope="module")
def plain_model(splits):
    torch.manual_seed(0)
    model = xv.models.build("smallcnn", num_classes=10)
    model, _ = xv.models.train(model, splits["train"], epochs=3, progress=False)
    return model


def test_smallcnn_learns_the_digits(plain_model, splits):
    assert xv.models.accuracy(plain_model, splits["test"]) >= 0.9


def test_smallcnn_learns_the_shortcut(plain_model, splits):
    assert xv.models.accuracy(plain_model, splits["flipped"]) < 0.5
