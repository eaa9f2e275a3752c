"""Image checks and the one resize-to-model-input transform (used by every lazy source and the dashboard)."""
from __future__ import annotations

import torch


def check_images(images: torch.Tensor, what: str) -> None:
    """Refuse NaN, inf or values outside [0, 1] (they would draw as garbage and break every map)."""
    low, high = torch.aminmax(images)
    if not (0 <= low and high <= 1):
        raise ValueError(f"{what} hold NaN, inf or values outside [0, 1] (found {float(low):.3g}..{float(high):.3g}); "
                         "clean or rescale them first (xv.data.from_arrays checks its input)")


def fit(images: torch.Tensor, shape: tuple[int, int, int], crop: bool = False) -> torch.Tensor:
    """Images N×C×H×W in [0, 1] with the channel count and size of `shape` (C, H, W).

    RGBA is composited on white, grey and colour are converted, and other sizes are resized
    (bilinear, antialiased). crop=True first cuts the centre to the target's aspect ratio (no
    distortion); crop=False keeps the whole image in view.
    """
    channels, h, w = shape
    if crop:
        images = images[..., _centre(images.shape[-2], images.shape[-1] * h / w),
                        _centre(images.shape[-1], images.shape[-2] * w / h)]
    if images.shape[1] == 4:                                    # RGBA: composite on white
        images = images[:, :3] * images[:, 3:] + (1 - images[:, 3:])
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True) if channels == 1 else images[:, :1].expand(-1, channels, -1, -1)
    if images.shape[-2:] != (h, w):
        images = torch.nn.functional.interpolate(images, size=(h, w), mode="bilinear", antialias=True,
                                                 align_corners=False)
    return images.clamp(0, 1).contiguous()


def _centre(length: int, wanted: float) -> slice:
    """The centred slice of at most `wanted` of `length` pixels."""
    keep = min(length, max(1, round(wanted)))
    return slice((length - keep) // 2, (length - keep) // 2 + keep)


def fit_masks(masks: torch.Tensor, size: tuple[int, int], crop: bool = False) -> torch.Tensor:
    """Bool masks N×H×W cut and resized (nearest) to `size` (H, W), as their images are by `fit`."""
    h, w = size
    if crop:
        masks = masks[..., _centre(masks.shape[-2], masks.shape[-1] * h / w),
                      _centre(masks.shape[-1], masks.shape[-2] * w / h)]
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.bool()
    return torch.nn.functional.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
