"""Data sources users bring: arrays, image folders / CSV manifests, MedMNIST `.npz` files."""
from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..spatial import batch_for, check_dims
from .imageset import ImageSet
from .lazy import ArrayReader, DatasetReader, FileReader, NpzMember, ZarrMember, item_image
from .transform import check_channels, conversion, to_channels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
MEDMNIST_SPLITS = ("train", "val", "test")


def to_unit_float(a: np.ndarray, name: str = "images") -> np.ndarray:
    """uint8 / uint16 / bool / float arrays to float32 in [0, 1]; NaN, inf and bad ranges refused."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        if a.min(initial=0) < 0:
            raise ValueError(f"{name} hold negative integers; give uint8 / uint16 or floats in [0, 1]")
        top = 255 if a.max(initial=0) <= 255 else 65535
        return (a / np.float32(top)).astype(np.float32)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} have dtype {a.dtype}; give uint8, uint16 or float arrays")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contain NaN or inf values; clean or drop those images first")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"float {name} must lie in [0, 1], found {a.min():.3g}..{a.max():.3g}; "
                         "divide by 255 (or rescale) first")
    return a.astype(np.float32)


def channels_first(a: np.ndarray, spatial_dims: int = 2) -> np.ndarray:
    """Images N×H×W, N×H×W×C or N×C×H×W (C in 1, 3, 4) to N×C×H×W; with spatial_dims=3, volumes
    N×D×H×W or N×C×D×H×W to N×C×D×H×W (channels first only: a volume's last axis is always x)."""
    if a.ndim == spatial_dims + 1:
        return a[:, None]
    if spatial_dims == 3:
        if a.ndim != 5:
            raise ValueError(f"volumes must be N×D×H×W or N×C×D×H×W, got shape {a.shape}")
        return a
    if a.ndim != 4:
        raise ValueError(f"images must be N×H×W, N×H×W×C or N×C×H×W, got shape {a.shape}; "
                         "for volumes pass spatial_dims=3")
    if a.shape[1] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        return a
    if a.shape[-1] in (1, 3, 4):
        return np.moveaxis(a, -1, 1)
    raise ValueError(f"cannot tell the channel axis of shape {a.shape}: put 1, 3 or 4 channels "
                     "first (N×C×H×W) or last (N×H×W×C); for volumes N×D×H×W pass spatial_dims=3")


def from_arrays(images, labels, masks=None, class_names: Sequence[str] | None = None,
                ids: Sequence[str] | None = None, spatial_dims: int = 2,
                spacing: Sequence[float] | None = None, channels: int | None = None) -> ImageSet:
    """An ImageSet from arrays: uint8/uint16 or float in [0, 1].

    Images: N×H×W, N×H×W×C or N×C×H×W; with spatial_dims=3, volumes N×D×H×W or N×C×D×H×W (masks
    N×D×H×W) and optionally their voxel `spacing` in mm (z, y, x). channels: 1 or 3 to convert grey and
    colour (default: the arrays' own).
    """
    check_dims(spatial_dims, "from_arrays' spatial_dims")
    images = np.asarray(images)
    if images.size == 0:
        raise ValueError("images is empty: give at least one image")
    imgs = channels_first(to_unit_float(images), spatial_dims)
    stored = min(imgs.shape[1], 3)
    if check_channels(channels) is not None:
        imgs = to_channels(torch.from_numpy(np.ascontiguousarray(imgs)), channels).numpy()
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(imgs):
        raise ValueError(f"{len(imgs)} images but {len(labels)} labels: give one label per image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    m = None
    if masks is not None:
        m = np.asarray(masks)
        if m.ndim == spatial_dims + 2 and m.shape[1] == 1:
            m = m[:, 0]
        elif m.ndim == spatial_dims + 2 and m.shape[-1] == 1:
            m = m[..., 0]
        if len(m) != len(imgs):
            raise ValueError(f"{len(imgs)} images but {len(m)} masks: give one mask per image")
        m = torch.from_numpy(m > 0)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(imgs)), torch.from_numpy(labels.astype(np.int64)),
                    m, ids, class_names, spacing=spacing, attrs=conversion(stored, channels or stored))


def read_image(path: Path, mode: str | None = None) -> np.ndarray:
    with Image.open(path) as im:
        if mode is not None:
            return np.asarray(im.convert(mode))
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im, dtype=np.uint16) if im.mode != "I" else np.asarray(im).astype(np.uint16)
        return np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") and "A" in im.getbands()
                                     else ("L" if im.mode in ("L", "1") else "RGB")))


def unit_image(arr: np.ndarray) -> np.ndarray:
    """One image array (H×W or H×W×C) as C×H×W float in [0, 1], its channels as stored (`fit` converts them)."""
    img = to_unit_float(arr, "image")
    return img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)


GREY_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I")


def _header(path: Path) -> tuple[int, int, str] | None:
    """(height, width, mode) from an image file's header, or None (with a warning naming it) if unreadable."""
    try:
        with Image.open(path) as im:
            return im.height, im.width, im.mode
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=4)
        return None


def _load_items(items: list[tuple[Path, int, Path | None]], class_names: list[str], root: Path,
                size: tuple[int, int] | None, crop: bool, channels: int | None) -> ImageSet:
    """A lazy ImageSet of image files: only headers are read here; pixels are decoded batch by batch."""
    kept, headers, skipped = [], [], 0
    for path, label, mask_path in items:
        head = _header(path)
        if head is None:
            skipped += 1
            continue
        if mask_path is not None:
            if not mask_path.exists():
                raise FileNotFoundError(f"mask {mask_path} for image {path} is missing; add it or "
                                        "remove the image from the manifest / folder")
            with Image.open(mask_path) as m:
                if (m.height, m.width) != head[:2]:
                    raise ValueError(f"mask {mask_path} is {m.width}×{m.height} pixels but its image is "
                                     f"{head[1]}×{head[0]}; masks must match their images")
        kept.append((path, label, mask_path))
        headers.append(head)
    if not kept:
        raise ValueError(f"no readable images under {root}"
                         + (f" ({skipped} unreadable files skipped)" if skipped else ""))
    masks = [m for _, _, m in kept]
    if any(m is not None for m in masks) and any(m is None for m in masks):
        raise ValueError("some images have masks and some do not; give a mask for every image or none")
    stored = 1 if all(mode in GREY_MODES for *_, mode in headers) else 3
    channels = channels or stored
    h, w = size or headers[0][:2]
    ids = [p.relative_to(root).with_suffix("").as_posix() if p.is_relative_to(root) else p.stem for p, _, _ in kept]
    reader = FileReader([p for p, _, _ in kept], (channels, h, w), None if masks[0] is None else masks, crop)
    return ImageSet(reader, torch.tensor([label for _, label, _ in kept]), ids=ids, class_names=class_names,
                    attrs={"source": str(root), **conversion(stored, channels)})


def load_folder(root, masks=None, size: tuple[int, int] | None = None, crop: bool = False,
                channels: int | None = None) -> ImageSet:
    """A lazy ImageSet of an ImageFolder tree (`root/<class>/<image>`) or an ISIC-style CSV manifest.

    masks: for a tree, a folder with the same layout (same relative paths, any image suffix).
    A CSV manifest has columns `image,label[,mask]`; paths are relative to the CSV's folder and
    labels are class names or integer indices. Only file headers are read on opening (files that
    are no image are skipped with a warning); pixels are decoded batch by batch. size: (H, W) to fit
    every image to (default: the first image's size; images of other sizes are resized, or cut to
    the aspect ratio first with crop=True). channels: 1 or 3, the channel count the model takes:
    grey images are replicated for a colour model, colour ones converted to luminance for a grey
    one (default: 1 when every image is grey, else 3); the set's attrs record the conversion.
    """
    root = Path(root)
    check_channels(channels)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; give an image folder or a CSV manifest")
    if root.is_file():
        return _load_manifest(root, size, crop, channels)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; lay images out as {root}/<class>/<image>.png")
    mask_root = None if masks is None else Path(masks)
    if mask_root is not None and not mask_root.is_dir():
        raise FileNotFoundError(f"mask folder {mask_root} does not exist")
    items = []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((path, label, None if mask_root is None else _mask_for(mask_root / cls, path)))
    return _load_items(items, classes, root, size, crop, channels)


def _mask_for(folder: Path, image: Path) -> Path:
    found = sorted(p for p in folder.glob(image.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return found[0] if found else folder / (image.stem + ".png")


def _load_manifest(path: Path, size, crop: bool, channels: int | None) -> ImageSet:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "image" not in rows[0] or "label" not in rows[0]:
        raise ValueError(f"{path} must be a CSV with a header 'image,label[,mask]' and at least one row")
    raw = [r["label"].strip() for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        labels = [int(v) for v in raw]
        if min(labels) < 0:
            raise ValueError(f"{path}: labels must be non-negative class indices")
        names = [str(i) for i in range(max(labels) + 1)]
    else:
        names = sorted(set(raw))
        labels = [names.index(v) for v in raw]
    base = path.parent
    items = []
    for r, label in zip(rows, labels):
        img = base / r["image"]
        if not img.exists():
            raise FileNotFoundError(f"{path}: image {img} listed in the manifest does not exist")
        items.append((img, label, base / r["mask"] if r.get("mask") else None))
    return _load_items(items, names, base, size, crop, channels)


def load_medmnist(path, split: str = "train", size: tuple[int, int] | None = None, crop: bool = False,
                  channels: int | None = None) -> ImageSet:
    """A lazy split of a MedMNIST `.npz` file (`{split}_images`, `{split}_labels`), gray or RGB, any size.

    The images are memory-mapped (np.savez stores them uncompressed; a compressed file is loaded) and
    decoded batch by batch; size: (H, W) to fit them to and channels (1 or 3), as in `load_folder`.
    """
    path = Path(path)
    if split not in MEDMNIST_SPLITS:
        raise ValueError(f"unknown split {split!r}; MedMNIST files have {MEDMNIST_SPLITS}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; download the MedMNIST .npz file and give its path")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = sorted(z.files)
            labels = z[f"{split}_labels"] if f"{split}_labels" in keys else None
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}); is it a MedMNIST file?") from None
    if labels is None or f"{split}_images" not in keys:
        raise ValueError(f"{path} has no {split}_images / {split}_labels arrays (it has {keys}); "
                         "is it a MedMNIST file?")
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise ValueError(f"{path} has multi-label targets {labels.shape}; xcam-viz explains "
                         "single-label classifiers: pick one column")
    ds = from_array_store(NpzMember(path, f"{split}_images"), labels.reshape(-1).astype(np.int64),
                          ids=[f"{split}-{i:05d}" for i in range(len(labels))], size=size, crop=crop,
                          channels=channels)
    ds.attrs.update(source=str(path), split=split)
    return ds


def load_zarr(path, images: str = "images", labels: str = "labels", class_names: Sequence[str] | None = None,
              size: tuple[int, ...] | None = None, crop: bool = False, spatial_dims: int = 2,
              channels: int | None = None) -> ImageSet:
    """A lazy ImageSet of a zarr store holding an image array (N×H×W[×C] or N×C×H×W; with spatial_dims=3,
    volumes N×D×H×W or N×C×D×H×W) and a label array (size and channels as in `load_folder`)."""
    import zarr
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a zarr store with arrays {images!r} and {labels!r}")
    group = zarr.open_group(path, mode="r")
    missing = [k for k in (images, labels) if k not in group]
    if missing:
        raise ValueError(f"{path} has no array {missing[0]!r} (it has {sorted(group.array_keys())}); "
                         "name the image and label arrays with images= and labels=")
    ds = from_array_store(ZarrMember(path, images), np.asarray(group[labels][:]).reshape(-1).astype(np.int64),
                          class_names=class_names, size=size, crop=crop, spatial_dims=spatial_dims,
                          channels=channels)
    ds.attrs.update(source=str(path))
    return ds


def from_array_store(opener, labels, ids: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                     size: tuple[int, ...] | None = None, crop: bool = False, spatial_dims: int = 2,
                     channels: int | None = None) -> ImageSet:
    """A lazy ImageSet over an array that `opener()` opens (memory-mapped or chunked), read per batch."""
    array = opener()
    if array.ndim - spatial_dims not in (1, 2) or array.shape[0] == 0:
        raise ValueError(f"images must be a non-empty N×H×W, N×H×W×C or N×C×H×W array (volumes: N×D×H×W or "
                         f"N×C×D×H×W with spatial_dims=3), got shape {array.shape}")
    c, *grid = channels_first(np.empty((1, *array.shape[1:]), np.uint8), check_dims(spatial_dims)).shape[1:]
    dtype = np.dtype(array.dtype)
    scale = None
    if np.issubdtype(dtype, np.integer):        # one scale for every batch: the whole array's range, as from_arrays
        step = batch_for(array.shape, 256)            # 256 images, fewer volumes, at a time
        scale = 255 if dtype == np.uint8 or max(int(np.max(array[i:i + step])) for i in range(0, len(array), step)) \
            <= 255 else 65535
    stored = min(c, 3)
    reader = ArrayReader(opener, (check_channels(channels) or stored, *(size or grid)), scale, crop)
    return ImageSet(reader, torch.as_tensor(np.asarray(labels)), ids=ids, class_names=class_names,
                    attrs=conversion(stored, channels or stored))


def from_dataset(dataset, labels=None, class_names: Sequence[str] | None = None, ids: Sequence[str] | None = None,
                 size: tuple[int, int] | None = None, crop: bool = False, channels: int | None = None) -> ImageSet:
    """A lazy ImageSet over any torch Dataset whose items are (image, label, ...) or images.

    Images may be tensors C×H×W, arrays or PIL images of any size (fitted to `size`, default the first
    item's). labels: given, else the dataset's `targets`, else each item's second element (one pass).
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: give at least one item")
    first = item_image(dataset[0])
    if labels is None:
        labels = getattr(dataset, "targets", None)
    if labels is None:
        items = (dataset[i] for i in range(len(dataset)))
        labels = [int(item[1]) if isinstance(item, (tuple, list)) and len(item) > 1 else 0 for item in items]
    stored = min(first.shape[0], 3)
    shape = (check_channels(channels) or stored, *(size or first.shape[1:]))
    return ImageSet(DatasetReader(dataset, shape, crop), torch.as_tensor(np.asarray(labels)).reshape(-1),
                    ids=ids, class_names=class_names,
                    attrs={"source": type(dataset).__name__, **conversion(stored, shape[0])})
