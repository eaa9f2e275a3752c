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


LUMA = (0.299, 0.587, 0.114)     # ITU-R 601 luminance weights of R, G, B (what Pillow's convert("L") uses)
CHANNELS = (1, 3)                # what `channels=` converts between: grey and colour


def check_channels(channels: int | None) -> int | None:
    """`channels` if it is None, 1 or 3; a ValueError naming the choices otherwise."""
    if channels is not None and channels not in CHANNELS:
        raise ValueError(f"channels={channels!r}: give channels=1 (grey) or channels=3 (colour), or leave it "
                         "out to keep the images' own")
    return channels


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Images N×C×... with `channels` channels: RGBA composited on white, grey replicated to 3 channels,
    colour converted to luminance. Other counts are refused with a message naming `channels=`."""
    if images.shape[1] == 4:                                    # RGBA: composite on white
        images = images[:, :3] * images[:, 3:] + (1 - images[:, 3:])
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(images.shape[0], 3, *images.shape[2:])
    if have == 3 and channels == 1:
        weights = images.new_tensor(LUMA).view(1, 3, *[1] * (images.ndim - 2))
        return (images * weights).sum(1, keepdim=True)
    raise ValueError(f"cannot turn {have}-channel images into {channels} channels: channels= converts only "
                     "between grey (1) and colour (3); give images with the channel count the model takes")


def conversion(stored: int, channels: int) -> dict:
    """What loading did to the images' channels, for a set's attrs: {"channels", "stored_channels",
    "conversion"} ("conversion" only when the counts differ, in words)."""
    attrs = {"channels": channels, "stored_channels": stored}
    if stored == 1 and channels == 3:
        attrs["conversion"] = "grey images replicated to 3 channels"
    elif stored == 3 and channels == 1:
        attrs["conversion"] = "colour images converted to grey (luminance)"
    return attrs


def fit(images: torch.Tensor, shape: tuple[int, ...], crop: bool = False) -> torch.Tensor:
    """Images N×C×H×W (or volumes N×C×D×H×W) in [0, 1] with the channel count and size of `shape` (C, *S).

    RGBA is composited on white, grey and colour are converted (`to_channels`), and other sizes are resized
    (bilinear, antialiased; volumes trilinear). crop=True first cuts the centre of the last two axes to
    the target's aspect ratio (no distortion); crop=False keeps the whole image in view.
    """
    channels, *grid = shape
    if crop:
        images = _crop(images, grid)
    if images.shape[1] >= channels:                 # fewer channels to resize: convert first, replicate after
        images = to_channels(images, channels)
    images = resize(images, grid, antialias=True)
    return to_channels(images, channels).clamp(0, 1).contiguous()


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
