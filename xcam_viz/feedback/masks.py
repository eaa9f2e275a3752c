"""Feedback masks: validation to H×W bool arrays and a compact, exact encoding (1-bit PNG)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def as_mask(mask, what: str = "mask") -> np.ndarray:
    """Any H×W mask-like (numpy, torch, xarray, nested lists) as a bool array, or a clear error.

    bool is kept; integers count as set where non-zero (negative values refused); floats must
    lie in [0, 1] and are thresholded at 0.5 (soft brush strokes). Leading length-1 axes are
    dropped (1×H×W). An empty mask (no pixel set) is refused: pass None for "no mask".
    """
    if hasattr(mask, "detach"):                       # torch tensor
        mask = mask.detach().cpu().numpy()
    a = np.asarray(getattr(mask, "values", mask))
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D H×W mask, got shape {a.shape}")
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


def union_masks(annotations, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The union of the relevant and of the irrelevant masks of `annotations` (H×W bool each; all
    False where none has one); the one rule for "what a sample's saved feedback marks"."""
    relevant, irrelevant = np.zeros(shape, bool), np.zeros(shape, bool)
    for a in annotations:
        if a.relevant is not None:
            relevant |= np.asarray(a.relevant, bool)
        if a.irrelevant is not None:
            irrelevant |= np.asarray(a.irrelevant, bool)
    return relevant, irrelevant


def encode(mask: np.ndarray) -> bytes:
    """A bool H×W mask as 1-bit PNG bytes (lossless, typically a few hundred bytes)."""
    buf = io.BytesIO()
    Image.fromarray(mask).convert("1").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """The bool H×W mask back from `encode`'s bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("1"), dtype=bool)
