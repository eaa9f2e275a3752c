"""Image checks and the one resize-to-model-input transform (used by every lazy source and the dashboard)."""
from __future__ import annotations

import torch

from ..spatial import resize, resize_maps


def check_images(images: torch.Tensor, what: str) -> None:
    """Refuse NaN, inf or values outside [0, 1] (they would draw as garbage and break every map)."""
    low, high = torch.aminmax(images)
    if not (0 <= low and high <= 1):
        raise ValueError(f"{what} hold NaN, inf or values outside [0, 1] (found {float(low):.3g}..{float(high):.3g}); "
                         "clean or rescale them first (xv.data.from_arrays checks its input)")


def fit(images: torch.Tensor, shape: tuple[int, ...], crop: bool = False) -> torch.Tensor:
    """Images N×C×H×W (or volumes N×C×D×H×W) in [0, 1] with the channel count and size of `shape` (C, *S).

    RGBA is composited on white, grey and colour are converted, and other sizes are resized
    (bilinear, antialiased; volumes trilinear). crop=True first cuts the centre of the last two axes to
    the target's aspect ratio (no distortion); crop=False keeps the whole image in view.
    """
    channels, *grid = shape
    if crop:
        images = _crop(images, grid)
    if images.shape[1] == 4:                                    # RGBA: composite on white
        images = images[:, :3] * images[:, 3:] + (1 - images[:, 3:])
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True) if channels == 1 else images[:, :1].expand(-1, channels,
                                                                                         *images.shape[2:])
    images = resize(images, grid, antialias=True)
    return images.clamp(0, 1).contiguous()


def _crop(t: torch.Tensor, grid) -> torch.Tensor:
    """The centre of t's last two axes cut to the aspect ratio of `grid`'s last two sizes."""
    h, w = grid[-2:]
    return t[..., _centre(t.shape[-2], t.shape[-1] * h / w), _centre(t.shape[-1], t.shape[-2] * w / h)]


def _centre(length: int, wanted: float) -> slice:
    """The centred slice of at most `wanted` of `length` pixels."""
    keep = min(length, max(1, round(wanted)))
    return slice((length - keep) // 2, (length - keep) // 2 + keep)


def fit_masks(masks: torch.Tensor, size: tuple[int, ...], crop: bool = False) -> torch.Tensor:
    """Bool masks N×*S cut and resized (nearest) to `size`, as their images are by `fit`."""
    if crop:
        masks = _crop(masks, size)
    return resize_maps(masks.bool(), size, mode="nearest")
