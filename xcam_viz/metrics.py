"""Scores for explanation maps: localisation against masks and faithfulness to the model.

Every function returns an xr.DataArray with one value per sample (dim `sample`); `.mean()` is
the aggregate (NaN entries, e.g. a map without positive mass, are skipped). The curves have
dims (sample, fraction) and plot directly.

maps: any map per sample — a CAM or evidence DataArray (sample, y, x), a tensor or a numpy array
(N×H×W, N×1×H×W or one H×W map). Values are used as given: higher = more important.
masks: an ImageSet (its .masks), DataArray, tensor or numpy array of the maps' shape.
"""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from scipy.ndimage import distance_transform_edt

from .data import ImageSet, inputs_of
from .evidence.analysis import class_probabilities, resolve_targets
from .models import eval_mode, logits_of, model_device, predict

BASELINES = ("blur", "zero", "mean")
BEST_IOU_THRESHOLDS = np.linspace(0.05, 0.95, 19)      # fractions of the map's maximum


def pointing_game(maps, masks, tolerance: float = 0) -> xr.DataArray:
    """1.0 if the map's maximum (first in row-major order) lies within `tolerance` px of the mask, else 0.0.

    Coords point_y, point_x give the maximum's position.
    """
    values, m, samples = _prepare(maps, masks)
    flat = values.reshape(len(values), -1).argmax(1)
    py, px = np.unravel_index(flat, values.shape[1:])
    hit = [distance_transform_edt(~mi)[y, x] <= tolerance for mi, y, x in zip(m, py, px)]
    return xr.DataArray(np.array(hit, float), dims="sample", name="pointing_game",
                        coords={"sample": samples, "point_y": ("sample", py), "point_x": ("sample", px)},
                        attrs={"tolerance": tolerance})


def energy_pointing_game(maps, masks) -> xr.DataArray:
    """Share of the map's positive mass inside the mask (NaN where the map has none)."""
    values, m, samples = _prepare(maps, masks)
    pos = np.clip(values, 0, None)
    total = pos.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (pos * m).sum((1, 2)) / total, np.nan)
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

    Dims (sample, fraction); fraction = share of pixels removed, steps + 1 points from 0 to 1.
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
    """Maps (float64 N×H×W), masks (bool N×H×W) and sample labels, checked against each other."""
    values, samples = _maps(maps, masks.ids if isinstance(masks, ImageSet) else None)
    return values, _masks(masks, values.shape, samples), samples


def _maps(maps, samples: list | None = None) -> tuple[np.ndarray, list]:
    """Maps as float64 N×H×W and their sample labels (the DataArray's, else `samples`, else
    positions); NaN maps are refused."""
    if isinstance(maps, xr.DataArray):
        if "sample" in maps.dims:
            samples = list(maps["sample"].values)
            maps = maps.transpose("sample", ...)
        maps = maps.values
    elif isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    values = np.asarray(maps, dtype=np.float64)
    if values.ndim == 4 and values.shape[1] == 1:
        values = values[:, 0]
    elif values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise ValueError(f"maps must be N×H×W (or N×1×H×W, or one H×W map), got shape {values.shape}")
    if samples is None or len(samples) != len(values):
        samples = list(range(len(values)))
    bad = np.isnan(values).any((1, 2))
    if bad.any():
        raise ValueError(f"maps contain NaN for samples {_names(samples, bad)}")
    return values, samples


def _masks(masks, shape: tuple, samples: list) -> np.ndarray:
    """Masks as bool N×H×W matching `shape`; empty masks are refused (named by sample)."""
    if isinstance(masks, ImageSet):
        if masks.masks is None:
            raise ValueError("the ImageSet has no masks: pass masks explicitly")
        masks = masks.masks
    if isinstance(masks, xr.DataArray):
        masks = masks.values
    elif isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    m = np.asarray(masks).astype(bool)
    m = m[None] if m.ndim == 2 else m
    if m.shape != shape:
        raise ValueError(f"maps have shape {shape} but masks {m.shape}: give one mask per map at the "
                         "maps' resolution (upsample the maps to the input size)")
    empty = ~m.any((1, 2))
    if empty.any():
        raise ValueError(f"empty masks (no pixel set) for samples {_names(samples, empty)}")
    return m


def _names(samples: list, bad: np.ndarray) -> str:
    names = [str(s) for s, b in zip(samples, bad) if b]
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _iou(values: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold is a fraction of each map's maximum and must lie in [0, 1], got {threshold}")
    top = values.max((1, 2), keepdims=True)
    region = (values > 0) & (values >= threshold * top)
    return (region & masks).sum((1, 2)) / (region | masks).sum((1, 2))


def _baseline(images: torch.Tensor, baseline: str) -> torch.Tensor:
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur
        return gaussian_blur(images, kernel_size=11, sigma=5.0)
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images)
    raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")


def _curve(model, inputs, maps, baseline, steps, target, batch_size, insert: bool) -> xr.DataArray:
    given = inputs_of(inputs, "inputs")
    images, ids = given.all().float(), given.ids
    values, samples = _maps(maps, ids)
    n, _, h, w = images.shape
    if values.shape != (n, h, w):
        raise ValueError(f"maps have shape {values.shape} but the inputs need {(n, h, w)}: one map per "
                         "image at the input resolution")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    base = _baseline(images, baseline)
    device = model_device(model)
    # rank[i, pixel] = position of the pixel in the order of decreasing map value
    order = np.argsort(-values.reshape(n, -1), axis=1, kind="stable")
    rank = torch.from_numpy(np.argsort(order, axis=1).reshape(n, h, w))
    fraction = np.linspace(0, 1, steps + 1)
    counts = torch.from_numpy(np.round(fraction * h * w).astype(np.int64))
    items = torch.arange(n * (steps + 1))
    with eval_mode(model):
        with torch.inference_mode():
            targets = resolve_targets(target, class_probabilities(model, images.to(device), batch_size)).cpu()
            probs = []
            for chunk in items.split(batch_size):
                i, s = chunk // (steps + 1), chunk % (steps + 1)
                changed = (rank[i] < counts[s][:, None, None])[:, None]
                x = torch.where(changed, images[i], base[i]) if insert else torch.where(changed, base[i], images[i])
                p = logits_of(model(x.to(device))).float().softmax(1)
                probs.append(p[torch.arange(len(chunk)), targets[i].to(device)].cpu())
    curve = torch.cat(probs).view(n, steps + 1).numpy()
    return xr.DataArray(curve, dims=("sample", "fraction"), name="insertion" if insert else "deletion",
                        coords={"sample": samples, "fraction": fraction, "target": ("sample", targets.numpy())},
                        attrs={"baseline": baseline, "steps": steps})
