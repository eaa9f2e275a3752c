"""Scores for explanation maps: localisation against masks and faithfulness to the model.

Every function returns an xr.DataArray with one value per sample (dim `sample`); `.mean()` is
the aggregate (NaN entries, e.g. a map without positive mass, are skipped). The curves have
dims (sample, fraction) and plot directly.

maps: any map per sample — a CAM or evidence DataArray (sample, y, x) or (sample, z, y, x), a
tensor or a numpy array: images N×H×W (or N×1×H×W, or one H×W map), volumes N×D×H×W (or
N×1×D×H×W). A 3-D array is always N×H×W, so one volume is given as 1×D×H×W. Values are used as
given: higher = more important.
masks: an ImageSet (its .masks), DataArray, tensor or numpy array of the maps' shape.
Every metric works on any number of spatial axes: "pixel" below means voxel for volumes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr
from scipy.ndimage import distance_transform_edt
from torch.nn import functional as F

from .data import ImageSet, inputs_of
from .evidence.analysis import batch_limit, class_probabilities, resolve_targets
from .models import eval_mode, logits_of, model_device, predict
from .spatial import SPATIAL_DIMS, axes, axis_names

BASELINES = ("blur", "zero", "mean")
BEST_IOU_THRESHOLDS = np.linspace(0.05, 0.95, 19)      # fractions of the map's maximum


def pointing_game(maps, masks, tolerance: float = 0, spacing=None) -> xr.DataArray:
    """1.0 if the map's maximum (first in row-major order) lies within `tolerance` px of the mask, else 0.0.

    spacing: the size of a pixel along each spatial axis (e.g. an ImageSet's `spacing` in mm), which
    makes `tolerance` a distance in those units. Coords point_y, point_x (and point_z for volumes)
    give the maximum's position.
    """
    values, m, samples = _prepare(maps, masks)
    point = np.unravel_index(values.reshape(len(values), -1).argmax(1), values.shape[1:])
    hit = [distance_transform_edt(~mi, sampling=spacing)[at] <= tolerance for mi, at in zip(m, zip(*point))]
    points = {f"point_{name}": ("sample", at) for name, at in zip(axis_names(values.ndim - 1), point)}
    return xr.DataArray(np.array(hit, float), dims="sample", name="pointing_game",
                        coords={"sample": samples, **points},
                        attrs={"tolerance": tolerance} | ({} if spacing is None else {"spacing": tuple(spacing)}))


def energy_pointing_game(maps, masks) -> xr.DataArray:
    """Share of the map's positive mass inside the mask (NaN where the map has none)."""
    values, m, samples = _prepare(maps, masks)
    pos = np.clip(values, 0, None).reshape(len(values), -1)
    total = pos.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (pos * m.reshape(len(m), -1)).sum(1) / total, np.nan)
    return xr.DataArray(share, dims="sample", coords={"sample": samples}, name="energy_pointing_game")


def iou(maps, masks, threshold: float = 0.5) -> xr.DataArray:
    """IoU of the mask and the region where the map is >= `threshold` × its maximum (and > 0)."""
    values, m, samples = _prepare(maps, masks)
    return xr.DataArray(_iou(values, m, threshold), dims="sample", coords={"sample": samples},
                        name="iou", attrs={"threshold": threshold})


def best_iou(maps, masks, thresholds=BEST_IOU_THRESHOLDS) -> xr.DataArray:
    """Per sample, the highest IoU over `thresholds` (fractions of the map's maximum); coord threshold."""
    values, m, samples = _prepare(maps, masks)
    thresholds = np.asarray(thresholds, float)
    scores = np.stack([_iou(values, m, t) for t in thresholds])
    return xr.DataArray(scores.max(0), dims="sample", name="best_iou",
                        coords={"sample": samples, "threshold": ("sample", thresholds[scores.argmax(0)])})


def deletion_curve(model, inputs, maps, baseline: str = "blur", steps: int = 32, target="predicted",
                   batch_size: int = 256) -> xr.DataArray:
    """Target-class probability as pixels are replaced by the baseline, most important first (Petsiuk 2018).

    Dims (sample, fraction); fraction = share of pixels removed, steps + 1 points from 0 to 1: each
    image or volume costs steps + 1 forward passes, whatever its number of pixels. Baselines: "blur"
    (Gaussian, kernel 11, σ 5 over the spatial axes), "zero", "mean" (of each channel).
    """
    return _curve(model, inputs, maps, baseline, steps, target, batch_size, insert=False)


def insertion_curve(model, inputs, maps, baseline: str = "blur", steps: int = 32, target="predicted",
                    batch_size: int = 256) -> xr.DataArray:
    """Target-class probability as pixels of the image are put into the baseline, most important first."""
    return _curve(model, inputs, maps, baseline, steps, target, batch_size, insert=True)


def deletion_auc(model, inputs, maps, baseline: str = "blur", steps: int = 32, target="predicted",
                 batch_size: int = 256) -> xr.DataArray:
    """Area under the deletion curve (lower = more faithful map)."""
    return auc(deletion_curve(model, inputs, maps, baseline, steps, target, batch_size)).rename("deletion_auc")


def insertion_auc(model, inputs, maps, baseline: str = "blur", steps: int = 32, target="predicted",
                  batch_size: int = 256) -> xr.DataArray:
    """Area under the insertion curve (higher = more faithful map)."""
    return auc(insertion_curve(model, inputs, maps, baseline, steps, target, batch_size)).rename("insertion_auc")


def auc(curve: xr.DataArray) -> xr.DataArray:
    """Trapezoid-rule area under a curve along its `fraction` dim (over [0, 1] for our curves)."""
    return curve.integrate("fraction").assign_attrs(curve.attrs)


def accuracy(model, data: ImageSet) -> xr.DataArray:
    """1.0 where the predicted class equals the label; `.mean()` equals xv.models.accuracy(model, data)."""
    if not isinstance(data, ImageSet):
        raise TypeError(f"accuracy needs an ImageSet (images with labels), got {type(data).__name__}")
    return predict(model, data).correct.astype(float).rename("accuracy")


def _prepare(maps, masks) -> tuple[np.ndarray, np.ndarray, list]:
    """Maps (float64 N×*S), masks (bool N×*S) and sample labels, checked against each other."""
    values, samples = _maps(maps, masks.ids if isinstance(masks, ImageSet) else None)
    return values, _masks(masks, values.shape, samples), samples


def _maps(maps, samples: list | None = None) -> tuple[np.ndarray, list]:
    """Maps as float64 N×*S and their sample labels (the DataArray's, else `samples`, else
    positions); NaN maps are refused."""
    if isinstance(maps, xr.DataArray) and "sample" in maps.dims:
        samples = list(maps["sample"].values)
        maps = maps.transpose("sample", ...)
    values = _batch(maps, "maps").astype(np.float64)
    if samples is None or len(samples) != len(values):
        samples = list(range(len(values)))
    bad = np.isnan(values).reshape(len(values), -1).any(1)
    if bad.any():
        raise ValueError(f"maps contain NaN for samples {_names(samples, bad)}")
    return values, samples


def _masks(masks, shape: tuple, samples: list) -> np.ndarray:
    """Masks as bool N×*S matching `shape`; empty masks are refused (named by sample)."""
    if isinstance(masks, ImageSet):
        if masks.masks is None:
            raise ValueError("the ImageSet has no masks: pass masks explicitly")
        masks = masks.masks
    m = _batch(masks, "masks", like=shape).astype(bool)
    if m.shape != shape:
        raise ValueError(f"maps have shape {shape} but masks {m.shape}: give one mask per map at the "
                         "maps' resolution (upsample the maps to the input size)")
    empty = ~m.reshape(len(m), -1).any(1)
    if empty.any():
        raise ValueError(f"empty masks (no pixel set) for samples {_names(samples, empty)}")
    return m


def _batch(maps, what: str, like: tuple | None = None) -> np.ndarray:
    """A DataArray, tensor or array as N×*S: one H×W map becomes 1×H×W and a channel axis of size 1
    (N×1×H×W, N×1×D×H×W) is dropped, unless the DataArray names it z or the array has shape `like`."""
    named_z = isinstance(maps, xr.DataArray) and "z" in maps.dims
    if isinstance(maps, xr.DataArray):
        maps = maps.values
    elif isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    values = np.asarray(maps)
    if values.shape == like:
        return values
    if values.ndim == 2:
        values = values[None]
    elif values.ndim in (4, 5) and values.shape[1] == 1 and not (named_z and values.ndim == 4):
        values = values[:, 0]
    if values.ndim - 1 not in SPATIAL_DIMS:
        raise ValueError(f"{what} must be N×H×W or N×D×H×W (or N×1×H×W, N×1×D×H×W, or one H×W map), "
                         f"got shape {values.shape}")
    return values


def _names(samples: list, bad: np.ndarray) -> str:
    names = [str(s) for s, b in zip(samples, bad) if b]
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _iou(values: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold is a fraction of each map's maximum and must lie in [0, 1], got {threshold}")
    flat, masks = values.reshape(len(values), -1), masks.reshape(len(masks), -1)
    region = (flat > 0) & (flat >= threshold * flat.max(1, keepdims=True))
    return (region & masks).sum(1) / (region | masks).sum(1)


def gaussian_blur(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """N×C×*S blurred by a Gaussian over every spatial axis, one axis at a time, reflecting at the
    edges (in 2-D torchvision's `gaussian_blur`, to float precision)."""
    steps = torch.linspace(-(kernel_size // 2), kernel_size // 2, kernel_size, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (steps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1).to(images.device)
    out = images
    for axis in axes(images):
        size = out.shape[axis]
        if size <= kernel_size // 2:
            raise ValueError(f"the blur baseline needs more than {kernel_size // 2} px along every spatial axis, "
                             f"got {size}; use baseline='zero' or 'mean'")
        lines = out.movedim(axis, -1)
        padded = F.pad(lines.reshape(-1, 1, size), (kernel_size // 2,) * 2, mode="reflect")
        out = F.conv1d(padded, kernel).view(lines.shape).movedim(-1, axis)
    return out


def _baseline(images: torch.Tensor, baseline: str) -> torch.Tensor:
    if baseline == "blur":
        return gaussian_blur(images)
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(axes(images), keepdim=True).expand_as(images)
    raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")


def _curve(model, inputs, maps, baseline, steps, target, batch_size, insert: bool) -> xr.DataArray:
    given = inputs_of(inputs, "inputs")
    values, samples = _maps(maps, given.ids)
    n, (_, *spatial) = len(given), given.shape
    if values.shape != (n, *spatial):
        raise ValueError(f"maps have shape {values.shape} but the inputs need {(n, *spatial)}: one map per "
                         "image at the input resolution")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = model_device(model)
    fraction = np.linspace(0, 1, steps + 1)
    counts = torch.from_numpy(np.round(fraction * math.prod(spatial)).astype(np.int64))
    counts = counts.view(-1, *[1] * len(spatial))       # one count per step, broadcast over the spatial axes
    block = batch_limit(given.read(0, 1), batch_size)   # images read at a time: bounded memory on volumes
    blocks = [(start, min(n, start + block)) for start in range(0, n, block)]
    probs = []
    with eval_mode(model), torch.inference_mode():
        predicted = torch.cat([class_probabilities(model, given.read(*b).float().to(device), batch_size)
                               for b in blocks])
        targets = resolve_targets(target, predicted).cpu()
        for start, stop in blocks:
            images = given.read(start, stop).float()
            base = _baseline(images, baseline)
            # rank[i, pixel] = position of the pixel in the order of decreasing map value
            order = np.argsort(-values[start:stop].reshape(stop - start, -1), axis=1, kind="stable")
            rank = torch.from_numpy(np.argsort(order, axis=1).reshape(stop - start, *spatial))
            for chunk in torch.arange((stop - start) * (steps + 1)).split(block):
                i, s = chunk // (steps + 1), chunk % (steps + 1)
                changed = (rank[i] < counts[s])[:, None]
                x = torch.where(changed, images[i], base[i]) if insert else torch.where(changed, base[i], images[i])
                p = logits_of(model(x.to(device))).float().softmax(1)
                probs.append(p[torch.arange(len(chunk)), targets[start + i].to(device)].cpu())
    curve = torch.cat(probs).view(n, steps + 1).numpy()
    return xr.DataArray(curve, dims=("sample", "fraction"), name="insertion" if insert else "deletion",
                        coords={"sample": samples, "fraction": fraction, "target": ("sample", targets.numpy())},
                        attrs={"baseline": baseline, "steps": steps})
