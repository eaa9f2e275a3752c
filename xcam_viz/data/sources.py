"""Data sources users bring: arrays, image folders / CSV manifests, MedMNIST `.npz` files."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .imageset import ImageSet

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


def _channels_first(a: np.ndarray) -> np.ndarray:
    """N×H×W, N×H×W×C or N×C×H×W (C in 1, 3, 4) to N×C×H×W."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim != 4:
        raise ValueError(f"images must be N×H×W, N×H×W×C or N×C×H×W, got shape {a.shape}")
    if a.shape[1] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        return a
    if a.shape[-1] in (1, 3, 4):
        return np.moveaxis(a, -1, 1)
    raise ValueError(f"cannot tell the channel axis of shape {a.shape}: put 1, 3 or 4 channels "
                     "first (N×C×H×W) or last (N×H×W×C)")


def from_arrays(images, labels, masks=None, class_names: Sequence[str] | None = None,
                ids: Sequence[str] | None = None) -> ImageSet:
    """An ImageSet from arrays: channels-last or channels-first, uint8/uint16 or float in [0, 1]."""
    images = np.asarray(images)
    if images.size == 0:
        raise ValueError("images is empty: give at least one image")
    imgs = _channels_first(to_unit_float(images))
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(imgs):
        raise ValueError(f"{len(imgs)} images but {len(labels)} labels: give one label per image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    m = None
    if masks is not None:
        m = np.asarray(masks)
        if m.ndim == 4 and m.shape[1] == 1:
            m = m[:, 0]
        elif m.ndim == 4 and m.shape[-1] == 1:
            m = m[..., 0]
        if len(m) != len(imgs):
            raise ValueError(f"{len(imgs)} images but {len(m)} masks: give one mask per image")
        m = torch.from_numpy(m > 0)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(imgs)), torch.from_numpy(labels.astype(np.int64)),
                    m, ids, class_names)


def _read_image(path: Path, mode: str | None = None) -> np.ndarray:
    with Image.open(path) as im:
        if mode is not None:
            return np.asarray(im.convert(mode))
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im, dtype=np.uint16) if im.mode != "I" else np.asarray(im).astype(np.uint16)
        return np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") and "A" in im.getbands()
                                     else ("L" if im.mode in ("L", "1") else "RGB")))


def _unit_image(arr: np.ndarray, channels: int) -> np.ndarray:
    """One image array (H×W or H×W×C) to C×H×W float in [0, 1] with the wanted channel count."""
    img = to_unit_float(arr, "image")
    img = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
    if img.shape[0] == 4:                  # RGBA: composite on white
        img = img[:3] * img[3:] + (1 - img[3:])
    if img.shape[0] == channels:
        return img
    if img.shape[0] == 1 and channels == 3:
        return np.repeat(img, 3, 0)
    if img.shape[0] == 3 and channels == 1:
        return img.mean(0, keepdims=True)
    raise ValueError(f"cannot turn {img.shape[0]} channels into {channels}")


def _load_items(items: list[tuple[Path, int, Path | None]], class_names: list[str], root: Path) -> ImageSet:
    images, labels, masks, ids, skipped = [], [], [], [], []
    for path, label, mask_path in items:
        try:
            arr = _read_image(path)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            skipped.append(path)
            warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=3)
            continue
        if mask_path is not None and not mask_path.exists():
            raise FileNotFoundError(f"mask {mask_path} for image {path} is missing; add it or "
                                    "remove the image from the manifest / folder")
        images.append(arr)
        labels.append(label)
        masks.append(None if mask_path is None else _read_image(mask_path, "L") > 0)
        ids.append(path.relative_to(root).with_suffix("").as_posix() if path.is_relative_to(root) else path.stem)
    if not images:
        raise ValueError(f"no readable images under {root}"
                         + (f" ({len(skipped)} unreadable files skipped)" if skipped else ""))
    shapes = {a.shape[:2] for a in images}
    if len(shapes) > 1:
        raise ValueError(f"images under {root} have different sizes {sorted(shapes)[:4]}; "
                         "resize them to one size first")
    channels = 3 if any(a.ndim == 3 for a in images) else 1
    stacked = np.stack([_unit_image(a, channels) for a in images])
    mask_t = None
    if any(m is not None for m in masks):
        if any(m is None for m in masks):
            raise ValueError("some images have masks and some do not; give a mask for every image or none")
        for m, i in zip(masks, ids):
            if m.shape != stacked.shape[2:]:
                raise ValueError(f"mask of {i} is {m.shape[1]}×{m.shape[0]} pixels but its image is "
                                 f"{stacked.shape[3]}×{stacked.shape[2]}; masks must match their images")
        mask_t = torch.from_numpy(np.stack(masks))
    return ImageSet(torch.from_numpy(stacked), torch.tensor(labels), mask_t, ids, class_names,
                    attrs={"source": str(root)})


def load_folder(root, masks=None) -> ImageSet:
    """Images from an ImageFolder tree (`root/<class>/<image>`) or an ISIC-style CSV manifest.

    masks: for a tree, a folder with the same layout (same relative paths, any image suffix).
    A CSV manifest has columns `image,label[,mask]`; paths are relative to the CSV's folder and
    labels are class names or integer indices. Unreadable images are skipped with a warning.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; give an image folder or a CSV manifest")
    if root.is_file():
        return _load_manifest(root)
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
    return _load_items(items, classes, root)


def _mask_for(folder: Path, image: Path) -> Path:
    found = sorted(p for p in folder.glob(image.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return found[0] if found else folder / (image.stem + ".png")


def _load_manifest(path: Path) -> ImageSet:
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
    return _load_items(items, names, base)


def load_medmnist(path, split: str = "train") -> ImageSet:
    """A split of a MedMNIST `.npz` file (`{split}_images`, `{split}_labels`), gray or RGB, any size."""
    path = Path(path)
    if split not in MEDMNIST_SPLITS:
        raise ValueError(f"unknown split {split!r}; MedMNIST files have {MEDMNIST_SPLITS}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; download the MedMNIST .npz file and give its path")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in (f"{split}_images", f"{split}_labels") if k in z.files}
            keys = sorted(z.files)
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}); is it a MedMNIST file?") from None
    if len(arrays) != 2:
        raise ValueError(f"{path} has no {split}_images / {split}_labels arrays (it has {keys}); "
                         "is it a MedMNIST file?")
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise ValueError(f"{path} has multi-label targets {labels.shape}; xcam-viz explains "
                         "single-label classifiers: pick one column")
    labels = labels.reshape(-1).astype(np.int64)
    ids = [f"{split}-{i:05d}" for i in range(len(labels))]
    ds = from_arrays(images, labels, ids=ids)
    ds.attrs.update(source=str(path), split=split)
    return ds
