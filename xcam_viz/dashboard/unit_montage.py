"""The Concepts tab's montage: the top images of the units that best match a region, one row per unit.

Each tile shows the image through the unit's peak on it (`Units.peaks`; on the painted image, the peak
inside the region) with the unit's mask in amber: an image whole, a volume at the unit's best slice
(`xv.concepts.best_slice`, y up as the planes draw it), its depth in the caption.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xarray as xr

from ..concepts import Units, best_slice
from .raster import Grid, composite, montage

UNIT_COLOUR = (1.0, 0.78, 0.0)


def unit_layer(mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGBA layer painting a unit's mask (H×W bool, or D×H×W) in amber."""
    rgba = np.zeros((*mask.shape, 4), np.float32)
    rgba[mask] = (*UNIT_COLOUR, alpha)
    return rgba


def drawn(array: np.ndarray, peak: xr.DataArray) -> np.ndarray:
    """`array` at a unit's best slice as the dashboard draws it: an image as stored (row 0 at the top), a
    volume's axial slice y up, as its planes and thumbnails show it."""
    picture = best_slice(array, peak)
    return picture[::-1] if len(peak) > 2 else picture


class UnitViews(NamedTuple):
    """The best units (best first), each one's top images, and each (unit, image) shown's (peak, mask)."""

    best: list[int]
    tops: dict[int, list[str]]
    views: dict[tuple[int, str], tuple[xr.DataArray, np.ndarray]]


def unit_views(units: Units, ranked: xr.DataArray, sample: str, roi: np.ndarray, rows: int, cols: int) -> UnitViews:
    """The `rows` best units of `ranked` that touch the region, their `cols` top images, and where each is shown
    (the painted image: the best unit, its peak inside `roi`). One model pass per image, for its units only."""
    best = [int(u) for u, v in zip(ranked.unit.values[:rows], ranked.values) if v > 0]
    tops = {u: units.top_images(u, cols) for u in best}
    shown: dict[str, list[int]] = {sample: best[:1]} if best else {}      # image -> units shown on it
    for u, ids in tops.items():
        for s in ids:
            shown.setdefault(s, []).append(u)
    views = {}
    for s, chosen in shown.items():
        chosen = list(dict.fromkeys(chosen))
        peaks = units.peaks(s, roi if s == sample else None, chosen)
        for u, mask in zip(chosen, units.masks(s, chosen).numpy()):
            views[u, s] = peaks.sel(unit=u), mask
    return UnitViews(best, tops, views)


def unit_montage(workbench, version: str, split: str, sample: str, chosen: UnitViews, grid: Grid) -> np.ndarray:
    """The montage of `unit_views`' result: a row per unit, the painted image marked, captions green when the
    model is right on the image."""
    images, captions, correct, marked = [], [], [], []
    for u, ids in chosen.tops.items():
        for s in ids:
            peak, mask = chosen.views[u, s]
            images.append(composite(drawn(workbench.image(split, s), peak), unit_layer(drawn(mask, peak))))
            depth = " ".join(f"{axis}{int(i)}" for axis, i in zip(peak.axis.values[:-2], peak.values[:-2]))
            captions.append((f"unit {u}", f"{s[-4:]} {depth}".strip()))
        correct += workbench.outcomes(version, split, ids)
        marked += [s == sample for s in ids]
    return montage(images, captions, correct, marked, grid)
