"""Data sources: synthetic lesions, arrays, folders / manifests, MedMNIST, and their bad input."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import xcam_viz as xv
from xcam_viz.data import collate, from_arrays, load_folder, load_medmnist, synthetic_lesions


# ---------------------------------------------------------------- synthetic lesions
def test_synthetic_is_deterministic_and_well_formed():
    a = synthetic_lesions(n=40, size=48, split="train", seed=3)
    b = synthetic_lesions(n=40, size=48, split="train", seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.images.shape == (40, 3, 48, 48) and a.images.dtype == torch.float32
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert a.class_names == ["benign", "malignant"]
    assert set(a.labels.tolist()) == {0, 1}
    assert all(m.any() for m in a.masks), "every image has a lesion"
    c = synthetic_lesions(n=40, size=48, split="train", seed=4)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_synthetic_sizes(size):
    ds = synthetic_lesions(n=4, size=size)
    assert ds.images.shape[-2:] == (size, size) and ds.masks.shape[-2:] == (size, size)


def test_confounder_statistics_by_split():
    n = 1000
    rate = {}
    for split in ("train", "test", "flipped"):
        ds = synthetic_lesions(n=n, size=32, split=split, seed=0, confounder=0.9)
        marked = ds.regions["confounder"].any((1, 2))
        mal = ds.labels == 1
        rate[split] = (marked[mal].float().mean().item(), marked[~mal].float().mean().item())
    for split in ("train", "test"):
        assert rate[split][0] == pytest.approx(0.95, abs=0.03) and rate[split][1] == pytest.approx(0.05, abs=0.03)
    assert rate["flipped"][0] == pytest.approx(0.05, abs=0.03) and rate["flipped"][1] == pytest.approx(0.95, abs=0.03)


def test_confounder_zero_carries_no_information_and_marker_avoids_lesion():
    ds = synthetic_lesions(n=1000, size=32, seed=1, confounder=0.0)
    marked = ds.regions["confounder"].any((1, 2))
    mal = ds.labels == 1
    assert abs(marked[mal].float().mean() - marked[~mal].float().mean()) < 0.08
    assert not (ds.regions["confounder"] & ds.masks).any()


def test_segmentation_form():
    ds = synthetic_lesions(n=8, size=32, task="segmentation")
    assert ds.class_names == ["background", "benign", "malignant"]
    assert ds.targets.shape == (8, 32, 32)
    for i in range(8):
        assert set(ds.targets[i].unique().tolist()) == {0, int(ds.labels[i])}
        assert torch.equal(ds.targets[i] > 0, ds.masks[i])


@pytest.mark.parametrize("kw, match", [
    ({"split": "val"}, "unknown split"), ({"size": 16}, "between 32 and 224"),
    ({"n": 0}, "at least 1"), ({"confounder": 1.5}, r"\[0, 1\]"), ({"task": "detect"}, "task"),
])
def test_synthetic_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        synthetic_lesions(**{"n": 4, "size": 32, **kw})


def test_imageset_items_loader_and_xarray():
    ds = synthetic_lesions(n=10, size=32)
    s = ds[3]
    assert s.image.shape == (3, 32, 32) and isinstance(s.label, int) and s.mask.dtype == torch.bool
    assert s.id == ds.ids[3] and ds.index_of(s.id) == 3
    batch = next(iter(ds.loader(batch_size=4)))
    assert batch.image.shape == (4, 3, 32, 32) and batch.mask.shape == (4, 32, 32) and len(batch.id) == 4
    plain = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate)
    assert sum(len(b.label) for b in plain) == 10
    xr_ds = ds.to_xarray()
    assert xr_ds.image.dims == ("sample", "channel", "y", "x") and xr_ds.mask.dims == ("sample", "y", "x")
    assert list(xr_ds.sample.values) == ds.ids and xr_ds.attrs["class_names"] == ["benign", "malignant"]
    sub = ds.subset([1, 2])
    assert sub.ids == ds.ids[1:3] and torch.equal(sub.images, ds.images[1:3])
    with pytest.raises(KeyError, match="unknown sample id"):
        ds.index_of("nope")


def test_generation_speed_is_not_measured_here_but_works_at_scale():
    ds = synthetic_lesions(n=300, size=64)   # spans two generation chunks
    assert len(ds) == 300 and not torch.equal(ds.images[0], ds.images[256])


# ---------------------------------------------------------------- arrays
def test_from_arrays_layouts_and_dtypes():
    rng = np.random.default_rng(0)
    last = rng.integers(0, 256, (6, 20, 24, 3), dtype=np.uint8)
    first = np.moveaxis(last, -1, 1)
    a, b = from_arrays(last, [0, 1] * 3), from_arrays(first, [0, 1] * 3)
    assert a.images.shape == (6, 3, 20, 24) and torch.equal(a.images, b.images)
    assert a.images.max() <= 1
    assert torch.allclose(a.images[0, :, 0, 0] * 255, torch.tensor(last[0, 0, 0], dtype=torch.float32))
    gray = from_arrays(rng.random((4, 16, 16)).astype(np.float32), [0, 1, 1, 0], class_names=["a", "b"])
    assert gray.images.shape == (4, 1, 16, 16) and gray.class_names == ["a", "b"]
    u16 = from_arrays(np.full((2, 8, 8), 65535, np.uint16), [0, 0])
    assert u16.images.max() == pytest.approx(1.0)
    masked = from_arrays(last, [0] * 6, masks=np.ones((6, 20, 24, 1)), ids=list("abcdef"))
    assert masked.masks.shape == (6, 20, 24) and masked.ids[2] == "c"


@pytest.mark.parametrize("images, labels, kw, match", [
    (np.zeros((3, 8, 8)), [0, 1], {}, "3 images but 2 labels"),
    (np.zeros((0, 8, 8)), [], {}, "empty"),
    (np.full((2, 8, 8), np.nan, np.float32), [0, 1], {}, "NaN"),
    (np.full((2, 8, 8), 3.0, np.float32), [0, 1], {}, "divide by 255"),
    (np.zeros((2, 8, 8)), [0, 5], {"class_names": ["a", "b"]}, "labels must lie in 0..1"),
    (np.zeros((2, 8, 8)), [0, -1], {}, "labels must lie"),
    (np.zeros((2, 8, 8)), [0, 1], {"masks": np.zeros((2, 4, 4))}, "masks must have shape"),
    (np.zeros((2, 8, 8)), [0, 1], {"masks": np.zeros((3, 8, 8))}, "2 images but 3 masks"),
    (np.zeros((2, 7, 8, 9)), [0, 1], {}, "channel axis"),
    (np.zeros((2, 8, 8)), [0.5, 1.0], {}, "integer class indices"),
])
def test_from_arrays_bad_input(images, labels, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        from_arrays(images, labels, **kw)


# ---------------------------------------------------------------- folders and manifests
def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)


@pytest.fixture()
def tree(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        for i in range(3):
            _save(tmp_path / "img" / cls / f"{cls}{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            mask = np.zeros((16, 16), np.uint8)
            mask[4:8, 4:8] = 255
            _save(tmp_path / "mask" / cls / f"{cls}{i}.png", mask)
    return tmp_path


def test_load_folder_with_masks(tree):
    ds = load_folder(tree / "img", masks=tree / "mask")
    assert len(ds) == 6 and ds.class_names == ["benign", "malignant"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.ids[0] == "benign/benign0"
    assert ds.masks[0, 4:8, 4:8].all() and ds.masks[0].sum() == 16


def test_load_folder_skips_corrupt_file_with_warning(tree):
    (tree / "img" / "benign" / "broken.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = load_folder(tree / "img")
    assert len(ds) == 6


def test_load_folder_only_corrupt_files_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable images.*1 unreadable"):
            load_folder(tmp_path)


def test_load_folder_gray_rgba_and_16bit(tmp_path):
    _save(tmp_path / "g" / "a" / "x.png", np.full((8, 8), 128, np.uint8))
    _save(tmp_path / "g" / "b" / "y.png", np.full((8, 8), 65535, np.uint16))
    gray = load_folder(tmp_path / "g")
    assert gray.images.shape == (2, 1, 8, 8)
    assert gray.images[0].mean() == pytest.approx(128 / 255, abs=1e-3) and gray.images[1].max() == pytest.approx(1.0)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    _save(tmp_path / "c" / "a" / "x.png", rgba)
    _save(tmp_path / "c" / "b" / "y.png", np.full((8, 8), 0, np.uint8))
    mixed = load_folder(tmp_path / "c")
    assert mixed.images.shape == (2, 3, 8, 8)
    assert torch.allclose(mixed.images[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_load_folder_mask_of_wrong_size(tree):
    _save(tree / "mask" / "benign" / "benign0.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="masks must match their images"):
        load_folder(tree / "img", masks=tree / "mask")


def test_load_folder_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_folder(tmp_path / "empty")


def test_csv_manifest(tree):
    rows = ["image,label,mask"] + [f"img/{c}/{c}{i}.png,{c},mask/{c}/{c}{i}.png"
                                   for c in ("benign", "malignant") for i in range(3)]
    (tree / "manifest.csv").write_text("\n".join(rows))
    ds = load_folder(tree / "manifest.csv")
    assert len(ds) == 6 and ds.class_names == ["benign", "malignant"] and ds.masks is not None
    (tree / "bad.csv").write_text("image,label\nimg/benign/missing.png,benign\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_folder(tree / "bad.csv")
    (tree / "nohdr.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="header 'image,label"):
        load_folder(tree / "nohdr.csv")


# ---------------------------------------------------------------- MedMNIST
@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 64, 64, 3)])
def test_load_medmnist(tmp_path, shape):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, shape, dtype=np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": rng.integers(0, 3, (5, 1)) for s in ("train", "val", "test")})
    np.savez(tmp_path / "m.npz", **arrays)
    ds = load_medmnist(tmp_path / "m.npz", split="val")
    channels = 1 if len(shape) == 3 else 3
    assert ds.images.shape == (5, channels, shape[1], shape[2])
    assert ds.labels.tolist() == arrays["val_labels"].ravel().tolist()
    assert ds.ids[0] == "val-00000"


def test_load_medmnist_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_medmnist(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="no train_images"):
        load_medmnist(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_medmnist(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="unknown split"):
        load_medmnist(tmp_path / "other.npz", split="dev")


def test_top_level_api_names():
    assert xv.data.synthetic_lesions is synthetic_lesions
    with pytest.raises(AttributeError):
        xv.not_a_thing  # noqa: B018
