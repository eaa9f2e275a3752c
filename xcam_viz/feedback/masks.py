"""Feedback masks: validation to bool arrays (H×W images, D×H×W volumes) and a compact, exact encoding.

The encoding crops a mask to the bounding box of its set voxels, packs the box 8 voxels a byte
and deflates it, so a painted 256³ volume costs kilobytes (the 16 MB of one byte a voxel would
not fit a feedback row). Rows written before volumes existed hold 1-bit PNGs; `decode` reads both.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from ..spatial import SPATIAL_DIMS

MAGIC = b"XVM1"                       # this encoding, version 1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"       # rows written by xcam-viz before volumes


def as_mask(mask, what: str = "mask", spatial_dims: int | None = None) -> np.ndarray:
    """Any H×W or D×H×W mask-like (numpy, torch, xarray, nested lists) as a bool array, or a clear error.

    bool is kept; integers count as set where non-zero (negative values refused); floats must
    lie in [0, 1] and are thresholded at 0.5 (soft brush strokes). Leading length-1 axes are
    dropped down to `spatial_dims` axes (None: down to 2, so 1×H×W is an image's mask). An empty
    mask (no pixel set) is refused: pass None for "no mask".
    """
    if hasattr(mask, "detach"):                       # torch tensor
        mask = mask.detach().cpu().numpy()
    a = np.asarray(getattr(mask, "values", mask))
    while a.ndim > (spatial_dims or 2) and a.shape[0] == 1:
        a = a[0]
    allowed = SPATIAL_DIMS if spatial_dims is None else (spatial_dims,)
    if a.ndim not in allowed:
        want = " or ".join({2: "a 2-D H×W", 3: "a 3-D D×H×W"}[k] for k in allowed)
        raise ValueError(f"{what} must be {want} mask, got shape {a.shape}")
    if a.dtype == bool:
        out = a
    elif np.issubdtype(a.dtype, np.integer):
        if a.size and a.min() < 0:
            raise ValueError(f"{what} holds negative integers; give a bool mask (or 0/1, 0/255 values)")
        out = a != 0
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or (a.size and (a.min() < 0 or a.max() > 1)):
            raise ValueError(f"{what} is a float mask outside [0, 1] (or with NaN); give a bool mask or "
                             "values in [0, 1] (thresholded at 0.5)")
        out = a >= 0.5
    else:
        raise TypeError(f"{what} has dtype {a.dtype}; give a bool, integer or float mask")
    if not out.any():
        raise ValueError(f"{what} is empty (no pixel set); paint at least one pixel or pass None")
    return np.ascontiguousarray(out)


def union_masks(annotations, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The union of the relevant and of the irrelevant masks of `annotations` (bool arrays of
    `shape`, H×W or D×H×W; all False where none has one); the one rule for "what a sample's saved
    feedback marks"."""
    relevant, irrelevant = np.zeros(shape, bool), np.zeros(shape, bool)
    for a in annotations:
        if a.relevant is not None:
            relevant |= np.asarray(a.relevant, bool)
        if a.irrelevant is not None:
            irrelevant |= np.asarray(a.irrelevant, bool)
    return relevant, irrelevant


def encode(mask: np.ndarray) -> bytes:
    """A bool mask (any number of axes) as bytes: its shape, the bounding box of its set voxels,
    and the box's bits deflated (lossless; a painted 256³ volume takes a few KB)."""
    mask = np.asarray(mask, bool)
    set_axes = [np.flatnonzero(mask.any(tuple(a for a in range(mask.ndim) if a != axis)))
                for axis in range(mask.ndim)]
    lo = [int(s[0]) if len(s) else 0 for s in set_axes]
    hi = [int(s[-1]) + 1 if len(s) else 0 for s in set_axes]
    box = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    header = struct.pack(f"<B{3 * mask.ndim}I", mask.ndim, *mask.shape, *lo, *hi)
    return MAGIC + header + zlib.compress(np.packbits(box, axis=None).tobytes(), 9)


def decode(data: bytes) -> np.ndarray:
    """The bool mask back from `encode`'s bytes (or from a 1-bit PNG of an older store)."""
    data = bytes(data)
    if data.startswith(PNG_MAGIC):
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("1"), dtype=bool)
    if not data.startswith(MAGIC):
        raise ValueError(f"not an xcam-viz feedback mask (starts with {data[:8]!r})")
    ndim = data[len(MAGIC)]
    start = len(MAGIC) + 1
    end = start + 12 * ndim
    numbers = struct.unpack(f"<{3 * ndim}I", data[start:end])
    shape, lo, hi = numbers[:ndim], numbers[ndim:2 * ndim], numbers[2 * ndim:]
    box_shape = tuple(b - a for a, b in zip(lo, hi))
    bits = np.unpackbits(np.frombuffer(zlib.decompress(data[end:]), np.uint8), count=int(np.prod(box_shape)))
    out = np.zeros(shape, bool)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = bits.reshape(box_shape).astype(bool)
    return out
