"""Layer layouts: read any layer's output as a spatial map N×C×h×w, or refuse with the choices.

CNN layers output N×C×h×w (3-D CNNs N×C×d×h×w); Swin and ConvNeXt block internals are channels-last
N×h×w×C; vision transformers output token sequences N×(k+h·w)×C with k class or register tokens in front. One
detection (`detect`) serves capture, `spatial_layers` and the dashboard's layer list. It never
guesses: when two readings fit, it asks for an explicit `reshape=` (a `Layout` or any callable).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MAX_PREFIX = 16           # class, distillation and register tokens a token sequence may start with
STRIDE_SPREAD = 1.5       # a spatial reading's vertical and horizontal strides agree within this factor


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps to N×C×h×w: "nchw", "nhwc" (channels-last) or "tokens".

    "nchw" and "nhwc" name the channel axis' place for any number of spatial axes: a 3-D CNN's N×C×d×h×w
    reads as "nchw", a channels-last N×d×h×w×C as "nhwc".

    For tokens, `grid` (h, w) is the patch grid and `prefix` the number of leading tokens dropped.
    A Layout is callable: ``Layout("tokens", (14, 14), 1)(out)`` gives the N×C×14×14 map, so it can be
    passed as ``reshape=`` to explain / capture (as pytorch-grad-cam's ``reshape_transform``).
    """

    kind: str = "nchw"
    grid: tuple[int, int] | None = None
    prefix: int = 0

    def __post_init__(self):
        if self.kind not in ("nchw", "nhwc", "tokens"):
            raise ValueError(f"unknown layout {self.kind!r}: use 'nchw', 'nhwc' or 'tokens'")
        if self.kind == "tokens" and self.grid is None:
            raise ValueError("a token layout needs its patch grid: Layout('tokens', grid=(h, w), prefix=k)")

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if self.kind == "nchw":
            return out
        if self.kind == "nhwc":
            return out.movedim(-1, 1)
        h, w = self.grid
        if out.ndim != 3 or out.shape[1] < self.prefix + h * w:
            raise ValueError(f"a token layout {self} needs N×({self.prefix}+{h}·{w})×C, got {tuple(out.shape)}")
        return out[:, self.prefix:self.prefix + h * w].unflatten(1, (h, w)).permute(0, 3, 1, 2)

    def __str__(self) -> str:
        if self.kind == "tokens":
            return f"tokens {self.prefix}+{self.grid[0]}×{self.grid[1]}"
        return {"nchw": "N×C×h×w", "nhwc": "channels-last N×h×w×C"}[self.kind]


def patch_size(model: nn.Module) -> tuple[int, int] | None:
    """The patch size of a transformer's patch embedding: its first Conv2d whose kernel equals its stride > 1."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if module.kernel_size == module.stride and max(module.stride) > 1:
                return tuple(module.stride)
            return None
    return None


def detect(out, input_size: tuple[int, ...], module: nn.Module | None = None,
           patch: tuple[int, int] | None = None, name: str = "the layer") -> Layout:
    """The layout of one layer output for an input of `input_size` (H, W) or (D, H, W); ValueError if none or
    several fit.

    Outputs with the input's number of spatial axes plus two: N×C×*s or N×*s×C, whichever has a grid
    that can be the input seen at some stride (in-plane strides agreeing); when both do (e.g. C = h = w),
    the module's last channel-carrying part decides (a Conv / BatchNorm reads N×C×*s, a LayerNorm / Linear
    N×*s×C). 3-D outputs of 2-D inputs: tokens on the patch grid (from `patch`), else on the one grid that
    square patches make of the input and that leaves at most MAX_PREFIX leading tokens.
    """
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    hint = ("pick a layer from xv.models.spatial_layers(model, input_shape), or pass reshape= (e.g. "
            "xv.models.Layout('tokens', grid=(h, w), prefix=1)) to say how to read it")
    spatial = len(input_size)
    size = "×".join(map(str, input_size))
    if shape is None or out.ndim not in (spatial + 2, 3) or (out.ndim == 3 and spatial != 2):
        raise ValueError(f"{name} outputs {shape or type(out).__name__} for a {size} input, not a spatial map "
                         f"(N×C×{'d×' * (spatial - 2)}h×w, channels-last, or for images tokens N×L×C); {hint}")
    if out.ndim == spatial + 2:
        # a channels-last reading needs channels: N×C×1×1×1 (a pooled vector) is no N×C×1×1 grid of one channel
        readings = (("nchw", shape[2:]), ("nhwc", shape[1:-1])) if shape[-1] > 1 else (("nchw", shape[2:]),)
        fits = [kind for kind, grid in readings if _is_grid(grid, input_size)]
        if len(fits) == 2:
            fits = [_channel_side(module, shape)] if _channel_side(module, shape) else fits
        if len(fits) == 1:
            return Layout(fits[0])
        if not fits:
            raise ValueError(f"{name} outputs {shape} for a {size} input: not a spatial map (no grid with more "
                             f"than one cell fits); {hint}")
        raise ValueError(f"{name} outputs {shape} for a {size} input, which reads as channels-first N×C×… or "
                         "as channels-last N×…×C: say which with reshape=xv.models.Layout('nchw') or "
                         "Layout('nhwc')")
    length = shape[1]
    if patch is not None:
        grid = (input_size[0] // patch[0], input_size[1] // patch[1])
        if 0 <= length - grid[0] * grid[1] <= MAX_PREFIX and grid[0] * grid[1] > 1:
            return Layout("tokens", grid, length - grid[0] * grid[1])
    fits = [Layout("tokens", grid, k) for k in range(min(MAX_PREFIX, length - 2) + 1)
            if (grid := _grid_of(length - k, input_size)) is not None]
    if len(fits) == 1:
        return fits[0]
    choices = ", ".join(f"Layout('tokens', grid={f.grid}, prefix={f.prefix})" for f in fits)
    raise ValueError(f"{name} outputs {shape} for a {input_size[0]}×{input_size[1]} input: "
                     + (f"several token grids fit ({choices}); say which with reshape=" if fits
                        else f"not a spatial map (no token grid fits); {hint}"))


def _is_grid(grid: tuple[int, ...], input_size: tuple[int, ...]) -> bool:
    """Whether a grid (h×w or d×h×w, more than one cell) can be the input seen at some stride: no axis larger
    than the input's, and the in-plane (y, x) strides agree (a volume's depth may be strided differently,
    as video and anisotropic 3-D networks do)."""
    if torch.Size(grid).numel() <= 1 or any(g > s for g, s in zip(grid, input_size)):
        return False
    sy, sx = input_size[-2] / grid[-2], input_size[-1] / grid[-1]
    return max(sy, sx) / min(sy, sx) <= STRIDE_SPREAD


def _grid_of(count: int, input_size: tuple[int, int]) -> tuple[int, int] | None:
    """The h×w grid of `count` tokens that patches of one size p make of the input (floor or ceil of H/p, W/p)."""
    height, width = input_size
    for p in range(1, max(input_size) + 1):
        for h, w in ((height // p, width // p), (-(-height // p), -(-width // p))):
            if h * w == count and count > 1:
                return h, w
    return None


CHANNELS_FIRST = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d,
                  nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.InstanceNorm3d)
CHANNELS_LAST = (nn.LayerNorm, nn.Linear)


def _channel_side(module: nn.Module | None, shape: tuple) -> str | None:
    """"nchw" / "nhwc" from the module's parts: the last part that carries a channel count decides when the count
    matches one side; a module made of channels-first parts only (convolutions, batch / instance norms, e.g. a
    U-Net stage that concatenates its skip connection, so no part's count matches) reads channels-first."""
    parts = list(module.modules()) if module is not None else []
    for part in reversed(parts):
        if isinstance(part, CHANNELS_FIRST):
            count = getattr(part, "out_channels", None) or getattr(part, "num_features", None) or part.num_channels
            if count == shape[1]:
                return "nchw"
            break
        if isinstance(part, CHANNELS_LAST):
            count = part.out_features if isinstance(part, nn.Linear) else part.normalized_shape[-1]
            return "nhwc" if count == shape[-1] else None
    channels_first = [part for part in parts if isinstance(part, CHANNELS_FIRST)]
    return "nchw" if channels_first and not any(isinstance(part, CHANNELS_LAST) for part in parts) else None
