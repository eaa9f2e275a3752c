"""Spatial axes: the one place that knows images have 2 (y, x) and volumes 3 (z, y, x) of them.

Every tensor is laid out batch-first, then channels (when it has them), then its spatial axes:
images N×C×H×W, volumes N×C×D×H×W, maps and masks N×H×W / N×D×H×W. Code takes the spatial axes
from the tensor (``n, c, *spatial = x.shape``), as MONAI does, and asks this module for what depends
on their number: the interpolation mode, the axes to reduce over, the xarray dimension names.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

AXIS_NAMES = ("z", "y", "x")
SPATIAL_DIMS = (2, 3)
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def check_dims(spatial_dims: int, what: str = "data") -> int:
    """`spatial_dims` if 2 (images) or 3 (volumes), else a ValueError saying what is supported."""
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"{what} has {spatial_dims} spatial axes; xcam-viz takes images (2: H×W) and "
                         "volumes (3: D×H×W)")
    return spatial_dims


def axis_names(spatial_dims: int) -> tuple[str, ...]:
    """xarray dimension names of the spatial axes: ('y', 'x') or ('z', 'y', 'x')."""
    return AXIS_NAMES[-check_dims(spatial_dims):]


def axes(t: torch.Tensor, first: int = 2) -> tuple[int, ...]:
    """The axes of `t` from `first` on: the spatial axes of N×C×*S (first=2) or of N×*S (first=1)."""
    return tuple(range(first, t.ndim))


def grid_of(t: torch.Tensor, first: int = 2) -> tuple[int, ...]:
    """The spatial shape of N×C×*S (first=2) or N×*S (first=1)."""
    return tuple(t.shape[first:])


def linear_mode(spatial_dims: int) -> str:
    """F.interpolate's linear mode for that many spatial axes: bilinear or trilinear."""
    return _LINEAR[spatial_dims]


def resize(t: torch.Tensor, size: Sequence[int], mode: str = "linear", align_corners: bool | None = False,
           antialias: bool = False) -> torch.Tensor:
    """N×C×*S resized to `size` on its spatial axes: mode "linear" (bi/trilinear) or "nearest".

    antialias applies to 2-D only (PyTorch has no antialiased trilinear); volumes are resized without it.
    """
    size = tuple(int(s) for s in size)
    if tuple(t.shape[2:]) == size:
        return t
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest")
    k = t.ndim - 2
    return F.interpolate(t, size=size, mode=linear_mode(k), align_corners=align_corners,
                         antialias=antialias and k == 2)


def resize_maps(maps: torch.Tensor, size: Sequence[int], mode: str = "linear") -> torch.Tensor:
    """Maps or masks N×*S resized to `size` (a channel axis is added and removed)."""
    out = resize(maps[:, None].float() if mode == "nearest" else maps[:, None], size, mode)[:, 0]
    return out > 0.5 if mode == "nearest" and maps.dtype == torch.bool else out


def per_map(t: torch.Tensor, reduce, first: int = 1) -> torch.Tensor:
    """`reduce` ("amax", "amin", "sum", "mean") of N×*S over its spatial axes, kept as N×1×…×1 for broadcasting."""
    return getattr(t, reduce)(axes(t, first), keepdim=True)


BATCH_VOXELS = 2 ** 21      # pixels or voxels per batch by default: 32 images of 256², 1 volume of 128³ (measured:
#                             2 volumes of 128³ through smallcnn3d peaked at 1.48 GB RSS, 0.83 GB of it torch)


def batch_for(image_shape: Sequence[int], most: int) -> int:
    """A default batch size for images of `image_shape` (C, *S): at most `most`, and at most BATCH_VOXELS
    pixels or voxels in all (at least 1), so a batch of volumes fits in memory as a batch of images does."""
    cells = 1
    for size in image_shape[1:]:
        cells *= int(size)
    return max(1, min(most, BATCH_VOXELS // cells))


def hottest_point(values: np.ndarray) -> tuple[int, ...]:
    """A map's maximum as an index (pixel or voxel). An upsampled map is flat at its maximum when that lies
    on the border of the layer's grid: of the cells at the maximum, the one nearest their centre (np.argmax's
    first one would sit on the image's edge)."""
    top = np.argwhere(values >= np.nanmax(values))
    return tuple(int(v) for v in top[np.argmin(((top - top.mean(0)) ** 2).sum(1))])


def pool(kind: str, t: torch.Tensor, kernel: int, **kw) -> torch.Tensor:
    """F.avg_pool2d / max_pool2d (kind "avg" / "max") of N×C×*S, or their 3-D forms for volumes."""
    return getattr(F, f"{kind}_pool{len(grid_of(t))}d")(t, kernel, **kw)


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Masks N×*S grown by `radius` pixels (voxels) along every spatial axis (a square / cubic window)."""
    return pool("max", masks[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0].bool()
