"""Display windows: the one registry of presets that map scanner values (Hounsfield units, MR signal) to [0, 1].

A window is either (level, width), applied with DICOM's linear VOI formula (PS3.3 C.11.2.1.2, the
numbers pydicom's `apply_windowing` gives), or `Percentiles(low, high)`, which scales each volume's
low-th..high-th percentile to [0, 1] (MR signal has no absolute unit). Adding a preset is one line
in `WINDOWS`; loaders, the CLI and the dashboard list presets from it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Percentiles(NamedTuple):
    """A window set per volume: its `low`-th percentile maps to 0, its `high`-th to 1."""

    low: float
    high: float


WINDOWS: dict[str, tuple[float, float] | Percentiles] = {
    "ct-soft-tissue": (40, 400),
    "ct-lung": (-600, 1500),
    "ct-bone": (400, 1800),
    "ct-brain": (40, 80),
    "mri": Percentiles(1, 99),
}
MIN_MAX = Percentiles(0, 100)


def resolve_window(window) -> tuple[float, float] | Percentiles:
    """A preset name, (level, width) or `Percentiles` as (level, width) or `Percentiles`; None is min-max.
    `window_label`'s texts ('level/width', 'min-max') resolve to what they label."""
    if window is None or window == "min-max":
        return MIN_MAX
    if isinstance(window, str) and "/" in window:
        window = tuple(window.split("/"))
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; give one of {sorted(WINDOWS)} or (level, width)")
        return WINDOWS[window]
    if isinstance(window, Percentiles):
        return window
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window {window!r} not understood; give a preset {sorted(WINDOWS)} or "
                         "(level, width), e.g. (40, 400)") from None
    if width < 1:
        raise ValueError(f"window width {width:g} must be at least 1 (DICOM's linear window)")
    return level, width


def window_label(window, default: str = "min-max") -> str:
    """How a window is recorded in a data set's attrs: the preset name, 'level/width', or `default` for None."""
    if window is None or isinstance(window, str):
        return window or default
    return "/".join(f"{v:g}" for v in resolve_window(window))


def window_bounds(window) -> tuple[float, float] | None:
    """The scanner values a fixed window maps to 0 and 1 (a preset name, (level, width) or `window_label`'s
    'level/width' text), by DICOM's linear formula; None for a per-volume window (`Percentiles`, min-max),
    whose values have no fixed unit."""
    rule = resolve_window(window)
    if isinstance(rule, Percentiles):
        return None
    centre, width = rule[0] - 0.5, rule[1] - 1                      # DICOM's LINEAR window
    return centre - width / 2, centre + width / 2


def apply_window(values: np.ndarray, window) -> np.ndarray:
    """Values (any shape, e.g. HU) to float32 in [0, 1] through `window` (preset, (level, width), Percentiles,
    or None for the values' own min..max). A constant image maps to 0. Computed in float32, in place where it
    can (a 256×256×128 volume is 32 MB per copy)."""
    values = np.asarray(values, dtype=np.float32)
    rule = resolve_window(window)
    if isinstance(rule, Percentiles):
        low, high = (np.percentile(values, [rule.low, rule.high]) if rule != MIN_MAX     # min/max: no partition,
                     else (values.min(), values.max()))                                    # 0.1 s instead of 0.7 s
        offset, scale = low, (1 / (high - low) if high > low else 0.0)
    else:
        low, high = window_bounds(rule)
        if high == low:
            return (values > low).astype(np.float32)
        offset, scale = low, 1 / (high - low)
    scaled = np.subtract(values, np.float32(offset))
    scaled *= np.float32(scale)
    return np.clip(scaled, 0, 1, out=scaled)
