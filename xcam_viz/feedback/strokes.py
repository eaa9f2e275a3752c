"""Strokes as people paint them: a ground-truth mask turned into the mask an annotator would paint.

A person paints too wide, a little off, half the region, with a round brush of a fixed width, or on
the wrong place. Each such stroke kind is one `StrokeKind` in `STROKES` (name -> how to draw it); `paint`
applies one or several to a bool mask of any number of spatial axes (H×W images, D×H×W volumes), and
`xv.feedback.simulate(..., stroke=...)` applies them to every mask it draws. The benchmark
(`benchmarks/feedback_repair.py`) and the docs read the registry.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from .slices import extend

BRUSH_WIDTH = 4         # the Feedback tab's default brush width, in image pixels (voxels on a volume's plane)


@dataclass(frozen=True)
class StrokeKind:
    """name; summary (for docs and errors); draw (mask, amount, rng, avoid) -> mask, where avoid is the
    sample's ground truth a stroke must keep away from (or None); default amount; unit: "pixels" (a whole
    number >= 1) or "share" (in (0, 1]); volumes_only: for D×H×W masks only."""

    name: str
    summary: str
    draw: Callable[..., np.ndarray]
    default: float
    unit: str = "pixels"
    volumes_only: bool = False


def _dilate(mask, pixels, rng, avoid):
    return ndimage.distance_transform_edt(~mask) <= pixels


def _erode(mask, pixels, rng, avoid):
    depth = ndimage.distance_transform_edt(mask)
    return depth > pixels if (depth > pixels).any() else depth == depth.max()    # too thin: keep its core


def _shift(mask, pixels, rng, avoid):
    """Moved by a whole-pixel offset of length `pixels` (± 0.5) in a random direction, inside the image
    where such an offset exists."""
    grid = np.stack(np.meshgrid(*[np.arange(-pixels, pixels + 1)] * mask.ndim, indexing="ij"), -1)
    offsets = grid.reshape(-1, mask.ndim)
    offsets = offsets[np.abs(np.linalg.norm(offsets, axis=1) - pixels) <= 0.5]
    where = np.argwhere(mask)
    inside = ((where.min(0) + offsets >= 0) & (where.max(0) + offsets < mask.shape)).all(1)
    pool = offsets[inside] if inside.any() else offsets
    return _translate(mask, pool[rng.integers(len(pool))])


def _translate(mask: np.ndarray, offset) -> np.ndarray:
    out = np.zeros_like(mask)
    span = [max(0, size - abs(int(o))) for o, size in zip(offset, mask.shape)]
    source = tuple(slice(max(0, -int(o)), max(0, -int(o)) + n) for o, n in zip(offset, span))
    target = tuple(slice(max(0, int(o)), max(0, int(o)) + n) for o, n in zip(offset, span))
    out[target] = mask[source]
    return out


def _incomplete(mask, share, rng, avoid):
    """The part of the region on one side of a random line (plane) holding `share` of its pixels."""
    where = np.nonzero(mask)
    along = sum(c * d for c, d in zip(where, rng.normal(size=mask.ndim)))
    keep = along <= np.quantile(along, share)
    out = np.zeros_like(mask)
    out[tuple(c[keep] for c in where)] = True
    return out


def _brush(mask, width, rng, avoid):
    """Round-brush strokes `width` pixels wide on each plane (the last two axes), as the Feedback tab paints:
    where the brush fits inside the region, its outline traced with the brush's edge on the region's edge,
    then back-and-forth strokes one width apart (at a random angle) inside; a part narrower than the brush
    (a thin line, a sharp corner) gets a stroke along its middle, wider than the part."""
    ys, xs = np.indices(mask.shape[-2:])
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, width)
    across = ys * np.cos(angle) - xs * np.sin(angle) + phase
    lines = np.abs(across - width * np.round(across / width)) < 0.5
    centre = np.arange(width) - (width - 1) / 2
    tip = np.add.outer(centre ** 2, centre ** 2) <= (width / 2) ** 2        # the brush: `width` pixels across
    planes = mask.reshape(-1, *mask.shape[-2:])
    return np.stack([_brush_plane(p, lines, tip) if p.any() else p for p in planes]).reshape(mask.shape)


def _brush_plane(plane: np.ndarray, lines: np.ndarray, tip: np.ndarray) -> np.ndarray:
    fits = ndimage.binary_erosion(plane, tip)                     # where the brush's centre keeps it inside
    outline = fits & ~ndimage.binary_erosion(fits)
    reached = ndimage.binary_dilation(ndimage.binary_dilation(fits, tip))    # a pixel short is no part to paint
    thin = plane & ~reached
    depth = ndimage.distance_transform_edt(plane) * thin
    middle = thin & (depth >= ndimage.maximum_filter(depth, size=3))
    return ndimage.binary_dilation(outline | (fits & lines) | middle, tip)


def _wrong(mask, margin, rng, avoid):
    """The same shape placed at random where it stays `margin` pixels from the region and from the sample's
    other ground truth (`avoid`): a stroke on the wrong place, the control that should not repair."""
    taken = mask if avoid is None else mask | avoid
    near = ndimage.distance_transform_edt(~taken) <= margin
    where = np.argwhere(mask)
    low, high = where.min(0), where.max(0) + 1
    shape = mask[tuple(slice(a, b) for a, b in zip(low, high))]
    hits = signal.correlate(near.astype(np.float32), shape.astype(np.float32), mode="valid")
    free = np.argwhere(hits < 0.5)
    if not len(free):
        raise ValueError(f"no room for a 'wrong' stroke of {int(mask.sum())} pixels at least {margin} pixels from "
                         "the region and the sample's other ground truth; use a smaller margin (stroke={'wrong': 1})")
    corner = free[rng.integers(len(free))]
    out = np.zeros_like(mask)
    out[tuple(slice(c, c + s) for c, s in zip(corner, shape.shape))] = shape
    return out


def _slices(mask, count, rng, avoid):
    painted = np.flatnonzero(mask.any((1, 2)))
    chosen = painted[np.unique(np.linspace(0, len(painted) - 1, int(count)).round().astype(int))]
    out = np.zeros_like(mask)
    out[chosen] = mask[chosen]
    return out


# In the order `paint` applies them: where the stroke goes, how wide, how much of it, how it is painted.
STROKES: dict[str, StrokeKind] = {s.name: s for s in [
    StrokeKind("wrong", "the same shape placed at least `margin` pixels from the region and the sample's other "
               "ground truth (the control that should not repair)", _wrong, 4),
    StrokeKind("dilate", "grown by k pixels (voxels)", _dilate, 3),
    StrokeKind("erode", "shrunk by k pixels (voxels); a region too thin keeps its core", _erode, 1),
    StrokeKind("shift", "moved by k pixels in a random direction", _shift, 3),
    StrokeKind("incomplete", "only that share of it: the part on one side of a random line (plane)",
               _incomplete, 0.5, unit="share"),
    StrokeKind("brush", f"painted with a round brush that wide (default {BRUSH_WIDTH}, the Feedback tab's): "
               "its outline, then strokes one width apart", _brush, BRUSH_WIDTH),
    StrokeKind("slices", "painted on at most that many of its slices, spread evenly along z", _slices, 3,
               volumes_only=True),
    StrokeKind("extend", "each painted slice spread to that many slices either side (`xv.feedback.extend`)",
               lambda mask, k, rng, avoid: extend(mask, slices=k), 2, volumes_only=True),
]}


def stroke_settings(stroke, spatial_dims: int) -> dict[str, float]:
    """{kind: amount} in the order `paint` applies them, from `stroke`: None (exact masks), a kind's name
    (its default amount) or a dict {name: amount or None}. Raises a ValueError naming the known kinds."""
    if stroke is None:
        return {}
    asked = {stroke: None} if isinstance(stroke, str) else dict(stroke)
    unknown = [name for name in asked if name not in STROKES]
    if unknown:
        raise ValueError(f"unknown stroke kind {unknown[0]!r}; the kinds are {', '.join(STROKES)}")
    settings = {}
    for name, kind in STROKES.items():
        if name not in asked:
            continue
        amount = kind.default if asked[name] is None else asked[name]
        if kind.unit == "share" and not 0 < amount <= 1:
            raise ValueError(f"stroke {name!r} takes a share in (0, 1], got {amount!r}")
        if kind.unit == "pixels" and (isinstance(amount, bool) or amount < 1 or amount != int(amount)):
            raise ValueError(f"stroke {name!r} takes a whole number of pixels >= 1, got {amount!r}")
        if kind.volumes_only and spatial_dims != 3:
            raise ValueError(f"stroke {name!r} is for volumes (D×H×W masks); these masks have {spatial_dims} "
                             "spatial axes")
        settings[name] = amount if kind.unit == "share" else int(amount)
    return settings


def paint(mask, stroke, rng: np.random.Generator | int = 0, avoid=None) -> np.ndarray:
    """`mask` as an annotator would paint it with the stroke kinds `stroke` names (see `STROKES`).

    Args:
        mask: a non-empty bool mask, H×W or D×H×W (numpy or torch).
        stroke: a kind's name ("brush") or {name: amount} ({"dilate": 3, "shift": 2}); None for none.
        rng: a numpy Generator or a seed: the same seed paints the same strokes.
        avoid: the sample's other ground truth (same shape), which a "wrong" stroke keeps away from.

    Example:
        >>> import numpy as np, xcam_viz as xv
        >>> m = np.zeros((32, 32), bool); m[10:20, 10:20] = True
        >>> int(xv.feedback.paint(m, {"dilate": 2}).sum()), int(xv.feedback.paint(m, "incomplete").sum())
        (184, 50)
    """
    out = np.asarray(mask, dtype=bool)
    settings = stroke_settings(stroke, out.ndim)
    if not out.any():
        raise ValueError("the mask is empty: there is no region to paint strokes along; give a mask with at least "
                         "one set pixel (voxel)")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    avoid = None if avoid is None else np.asarray(avoid, dtype=bool)
    for name, amount in settings.items():
        out = STROKES[name].draw(out, amount, rng, avoid)
    return out
