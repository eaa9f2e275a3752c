"""A volume's mask from a few painted slices: a user paints some slices, not a whole D×H×W volume.

`extend` spreads each painted slice's stroke to its neighbours (a thin object seen on one slice,
e.g. a marker or a table line, reaches a few slices either side); `interpolate` fills the slices
between painted ones by shape-based interpolation (Raya & Udupa 1990): each painted slice becomes
a signed distance map, the maps are blended linearly along the axis, and a voxel is set where the
blend is negative, so a shape grows and shrinks smoothly from one painted slice to the next. Each
map is first shifted so the strokes' centres meet where the interpolated centre lies: without that,
a stroke that moves by more than its size between two painted slices (a small nodule, a vessel
seen obliquely) vanishes halfway, because the two maps are positive there.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def extend(mask, slices: int = 1, axis: int = 0):
    """The D×H×W `mask` with every painted slice's stroke spread to its `slices` neighbours on
    each side along `axis` (the union of the copies; slices painted already keep their strokes).

    Args:
        mask: a volume's D×H×W bool (or 0/1) mask, numpy or torch, with strokes on some slices.
        slices: how many neighbouring slices on each side receive each stroke (0: none).
        axis: the slice axis (0: z, the axial slices of a D×H×W volume).

    Returns the same kind of array it is given (numpy or torch), bool.

    Example:
        >>> import numpy as np, xcam_viz as xv
        >>> m = np.zeros((8, 4, 4), bool); m[3, 1, 1] = True
        >>> np.flatnonzero(xv.feedback.extend(m, slices=2).any((1, 2))).tolist()
        [1, 2, 3, 4, 5]
    """
    if isinstance(slices, bool) or not isinstance(slices, (int, np.integer)) or slices < 0:
        raise ValueError(f"slices must be a whole number >= 0 (neighbours on each side), got {slices!r}")
    volume, axis = _volume_mask(mask, axis, "extend")
    if not volume.any():
        raise ValueError("extend was given an empty mask: paint a stroke on at least one slice first")
    spread = ndimage.maximum_filter1d(volume, size=2 * int(slices) + 1, axis=axis, mode="constant", cval=0)
    return _like(mask, spread)


def interpolate(masks, axis: int = 0):
    """The D×H×W mask with the slices between painted ones filled by shape-based interpolation
    along `axis`; painted slices keep their strokes, and slices before the first or after the last
    painted one stay empty.

    Args:
        masks: a volume's D×H×W bool (or 0/1) mask, numpy or torch, painted on at least two slices
            (for one, spread it with `extend`).
        axis: the slice axis (0: z).

    Returns the same kind of array it is given (numpy or torch), bool.

    Example:
        >>> import numpy as np, xcam_viz as xv
        >>> m = np.zeros((5, 9, 9), bool); m[0, 1:8, 1:8] = True; m[4, 3:6, 3:6] = True
        >>> [int(s.sum()) for s in xv.feedback.interpolate(m)]
        [49, 49, 25, 9, 9]
    """
    volume, axis = _volume_mask(masks, axis, "interpolate")
    stack = np.moveaxis(volume, axis, 0)
    painted = np.flatnonzero(stack.any((1, 2)))
    if len(painted) < 2:
        raise ValueError(f"interpolate needs strokes on at least two slices along axis {axis}, found "
                         f"{len(painted)}; paint another slice, or spread one stroke with extend(mask, slices=k)")
    out = stack.copy()
    distance = {int(i): _signed_distance(stack[i]) for i in painted}
    centre = {int(i): np.argwhere(stack[i]).mean(0) for i in painted}
    for lo, hi in zip(painted[:-1], painted[1:]):
        for i in range(lo + 1, hi):
            w = (i - lo) / (hi - lo)
            here = (1 - w) * centre[lo] + w * centre[hi]
            blend = sum(share * ndimage.shift(distance[j], here - centre[j], order=1, mode="nearest")
                        for j, share in ((lo, 1 - w), (hi, w)))
            out[i] = blend < 0
    return _like(masks, np.moveaxis(out, 0, axis))


def _signed_distance(plane: np.ndarray) -> np.ndarray:
    """Distance to the stroke's edge: negative inside, positive outside (pixels)."""
    return ndimage.distance_transform_edt(~plane) - ndimage.distance_transform_edt(plane)


def _volume_mask(mask, axis: int, what: str) -> tuple[np.ndarray, int]:
    """`mask` as a D×H×W bool numpy array and `axis` as a positive axis, or a clear error."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    values = np.asarray(getattr(mask, "values", mask))
    if values.ndim != 3:
        raise ValueError(f"{what} works on a volume's D×H×W mask, got shape {values.shape}"
                         + ("; an image's H×W mask has no slices to spread to" if values.ndim == 2 else ""))
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2 (the slice axis of the D×H×W mask), got {axis}")
    if values.dtype != bool and not (np.issubdtype(values.dtype, np.number) and np.isin(values, (0, 1)).all()):
        raise ValueError(f"{what} takes a bool (or 0/1) mask; threshold a soft mask first")
    return values.astype(bool), axis % 3


def _like(original, values: np.ndarray):
    """`values` as a torch tensor when `original` is one, else as numpy."""
    return torch.from_numpy(np.ascontiguousarray(values)) if isinstance(original, torch.Tensor) else values
