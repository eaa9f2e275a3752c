"""Pictures of a data set's images for people to look at: the stored image at (up to) full resolution, a
thumbnail, and the model's input, all from one decode of the image file when the set reads files.

A large scan (a 4096×3328 mammogram) is decoded once per look: `decode` gives the picture, the thumbnail
and the model input together, so a viewer never decodes a file twice for one image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .imageset import ImageSet

PICTURE_BYTES = 16 * 2**20     # a picture is halved until it fits (grey 4096×4096, colour 2048×2048 as RGBA)
THUMBNAIL = 96                 # px on the longer side


@dataclass(frozen=True)
class Decoded:
    """One image for a viewer: `picture` H×W (grey) or H×W×3 uint8 at up to full resolution, `thumbnail`
    the same at most THUMBNAIL px, `image` the model input C×h×w float32 (what `ds[i].image` is) and
    `stored` the (height, width) of the stored file. A volume's picture is its model input as D×H×W uint8
    (8 bits once, so a viewer's slice change only slices), its thumbnail the middle axial slice (`axial_thumbnail`)."""

    picture: np.ndarray
    thumbnail: np.ndarray
    image: torch.Tensor
    stored: tuple[int, int]


def decode(ds: ImageSet, i: int, picture_bytes: int = PICTURE_BYTES) -> Decoded:
    """Image `i` of `ds` for a viewer: from its file (decoded once) when `ds` reads files, else from `ds[i]`."""
    reader = getattr(ds, "_reader", None)
    stored = None if reader is None or not ds.lazy else reader.decode(int(i))
    if stored is None:
        image = ds[int(i)].image
        big = to_uint8(image.movedim(0, -1).numpy())
    else:
        image = reader.fit(stored)[0]
        big = to_uint8(stored)
    if ds.spatial_dims == 3:
        return Decoded(big, axial_thumbnail(big, len(big) // 2), image, tuple(big.shape))
    return Decoded(reduced(big, picture_bytes), reduced(big, thumbnail=THUMBNAIL), image, tuple(big.shape[:2]))


def axial_thumbnail(volume: np.ndarray, z: int) -> np.ndarray:
    """A thumbnail of axial slice `z` of a uint8 volume D×H×W, y up as viewers draw the axial plane."""
    return reduced(np.ascontiguousarray(volume[z, ::-1]), thumbnail=THUMBNAIL)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """An image array (H×W, H×W×C; uint8, uint16 or float in [0, 1]) as uint8 H×W (grey) or H×W×3 (colour;
    RGBA composited on white)."""
    a = np.asarray(array)
    if a.ndim in (3, 4) and a.shape[-1] == 1:                           # grey images and volumes
        a = a[..., 0]
    if np.issubdtype(a.dtype, np.integer) and a.max(initial=0) > 255:    # the rule of sources.to_unit_float
        a = a / np.float32(65535)
    if np.issubdtype(a.dtype, np.floating):
        a = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    a = a.astype(np.uint8, copy=False)
    if a.ndim == 3 and a.shape[-1] == 4:
        alpha = a[..., 3:] / np.float32(255)
        a = np.round(a[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return a


def reduced(picture: np.ndarray, max_bytes: int | None = None, thumbnail: int | None = None) -> np.ndarray:
    """A uint8 picture halved (box filter) until it takes at most `max_bytes` to show (RGBA for colour), or
    shrunk to at most `thumbnail` px on its longer side."""
    image = Image.fromarray(picture)
    if thumbnail is not None:
        image.thumbnail((thumbnail, thumbnail), Image.BILINEAR)
        return np.asarray(image)
    per_pixel = 1 if picture.ndim == 2 else 4
    factor = 1
    while picture.shape[0] * picture.shape[1] * per_pixel > max_bytes * factor ** 2:
        factor *= 2
    return picture if factor == 1 else np.asarray(image.reduce(factor))
