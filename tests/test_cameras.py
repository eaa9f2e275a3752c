"""The two-camera lesions (`xv.data.camera_lesions`): a diffuse shortcut with ground truth and an oracle split."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import xcam_viz as xv
from xcam_viz.data import Camera, camera_lesions

N = 200


@pytest.fixture(scope="module")
def splits():
    return {split: camera_lesions(N, split=split) for split in ("train", "test", "flipped", "oracle")}


def _camera(ds) -> np.ndarray:
    return np.array([int(i.rsplit("camera", 1)[1]) for i in ds.ids])


def _border_statistics(ds, width: int = 6) -> np.ndarray:
    """Per image: the mean colour of the border strip and the sd of its horizontal pixel differences (noise)."""
    x = ds.images.numpy()
    border = np.ones(x.shape[-2:], bool)
    border[width:-width, width:-width] = False
    return np.concatenate([x[:, :, border].mean(-1), np.diff(x, axis=-1)[:, :, border[:, 1:]].std(-1)], 1)


def test_shapes_balance_masks_and_regions(splits):
    for split, ds in splits.items():
        assert ds.images.shape == (N, 3, 64, 64) and ds.images.dtype == torch.float32
        assert 0 <= ds.images.min() and ds.images.max() <= 1 and ds.class_names == ["benign", "malignant"]
        assert ds.labels.sum() == N // 2 and ds.masks.flatten(1).any(1).all()
        assert torch.equal(ds.regions["confounder"], ~ds.masks)
        corners = ds.regions["corners"]
        assert corners.flatten(1).any(1).all() and not (corners & ds.masks).any() and corners[:, 0, 0].all()
        assert ds.attrs["split"] == split and ds.ids[0].startswith(f"cameras-{split}-0-00000-camera")


def test_each_camera_goes_with_one_class_and_the_other_in_flipped(splits):
    agree = {split: (_camera(ds) == ds.labels.numpy()).mean() for split, ds in splits.items()}
    assert 0.9 <= agree["train"] < 1 and 0.9 <= agree["test"] < 1            # 95 % (binomial, n 200)
    assert 0.01 <= agree["flipped"] <= 0.1 and 0.4 <= agree["oracle"] <= 0.6
    assert torch.equal(splits["test"].masks, splits["flipped"].masks)          # the same lesions, other cameras
    assert torch.equal(splits["train"].masks, splits["oracle"].masks)
    strong = camera_lesions(N, split="train", confounder=1.0)
    assert (_camera(strong) == strong.labels.numpy()).all()


def test_deterministic_by_seed_and_the_cameras_are_arguments(splits):
    again = camera_lesions(N, split="train")
    assert torch.equal(again.images, splits["train"].images) and again.ids == splits["train"].ids
    assert not torch.equal(camera_lesions(N, split="train", seed=1).images, again.images)
    plain, dark = Camera(noise=0.0), Camera(vignetting=0.5, noise=0.0)
    flat = camera_lesions(8, split="train", cameras=(plain, plain), exposure=0.0)
    shaded = camera_lesions(8, split="train", cameras=(dark, dark), exposure=0.0)
    assert torch.allclose(shaded.images[..., 32, 32], flat.images[..., 32, 32], atol=0.01)    # the centre keeps
    assert (shaded.images[..., 0, 0] < 0.6 * flat.images[..., 0, 0]).all()                    # the corners darken
    with pytest.raises(ValueError, match="choose one of"):
        camera_lesions(4, split="validation")
    with pytest.raises(ValueError, match="two xv.data.Camera"):
        camera_lesions(4, cameras=(plain,))


def test_a_classifier_of_border_statistics_learns_the_shortcut(splits):
    """The shortcut is diffuse and learnable: image statistics of the border alone, no lesion, predict the
    class in train and test, and fail in flipped; in oracle they say nothing."""
    train = splits["train"]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(_border_statistics(train), train.labels)
    accuracy = {split: model.score(_border_statistics(ds), ds.labels) for split, ds in splits.items()}
    assert accuracy["train"] >= 0.9 and accuracy["test"] >= 0.9
    assert accuracy["flipped"] <= 0.15 and 0.35 <= accuracy["oracle"] <= 0.65


def test_the_example_registry_reaches_it():
    ds = xv.data.load_data("cameras", split="oracle", n=4)
    assert ds.ids == camera_lesions(4, split="oracle").ids and ds.image_shape == (3, 64, 64)
