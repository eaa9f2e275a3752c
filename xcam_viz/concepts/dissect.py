"""Unit dissection (network-dissection style, after Lu & Perer 2022).

Each unit (channel) of a layer gets a threshold: the `quantile` of its activations over every
pixel of every image, found in one streaming pass that keeps only each unit's top values (exact,
bounded by (1 - quantile) of the data). A unit's mask on an image is its activation, upsampled to
the input, above that threshold. A region the user paints is matched against every unit's mask
by IoU (or, for a region too large for any IoU to pass, by the share of the mask inside it);
naming it labels every unit whose score passes a threshold.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from ..explain import capture
from ..models import default_layer
from .labels import LabelStore

RULES = ("auto", "iou", "coverage")
THRESHOLDS = {"iou": 0.2, "coverage": 0.5}   # the paper's IoU threshold; coverage: most of the mask inside


class StreamingQuantile:
    """Exact per-unit quantile ("linear" interpolation, as torch.quantile) of a known number of values.

    Only the top `total - floor(q·(total-1))` values per unit are kept while batches stream in.
    """

    def __init__(self, units: int, total: int, q: float):
        if not 0 < q < 1:
            raise ValueError(f"quantile must lie strictly between 0 and 1, got {q}")
        self.total, self.q = total, q
        self.position = q * (total - 1)
        self.keep = total - math.floor(self.position)
        self.top = torch.empty(units, 0)

    def update(self, values: torch.Tensor) -> None:
        """Add values (units × n)."""
        merged = torch.cat([self.top, values.float().cpu()], 1)
        self.top = merged.topk(min(self.keep, merged.shape[1]), dim=1).values

    def result(self) -> torch.Tensor:
        ordered = self.top.sort(1, descending=True).values      # rank r from the top = index total-1-r
        lo_rank = self.total - 1 - math.floor(self.position)
        hi_rank = self.total - 1 - math.ceil(self.position)
        frac = self.position - math.floor(self.position)
        return ordered[:, lo_rank] + frac * (ordered[:, hi_rank] - ordered[:, lo_rank])


class Units:
    """The dissected units of one layer: thresholds, top images, ROI matching and labelling."""

    def __init__(self, model: nn.Module, data: ImageSet, layer: str, thresholds: torch.Tensor,
                 peak: torch.Tensor, mean: torch.Tensor, quantile: float, labels: LabelStore | None):
        self.model, self.data, self.layer, self.quantile = model, data, layer, quantile
        self.thresholds = thresholds            # (units,)
        self.peak = peak                        # (images, units): max activation per image
        self.mean = mean                        # (images, units): mean activation per image
        self.labels = labels if labels is not None else LabelStore(":memory:")

    def __len__(self) -> int:
        return len(self.thresholds)

    def activations(self, sample_id: str) -> torch.Tensor:
        """The layer's activations for one image, upsampled to the input size (units × H × W)."""
        x = self.data[self.data.index_of(sample_id)].image[None]
        act = capture(self.model, x, self.layer, gradients=False).activations[self.layer]
        return nn.functional.interpolate(act, size=x.shape[-2:], mode="bilinear", align_corners=False)[0].cpu()

    def masks(self, sample_id: str) -> torch.Tensor:
        """Every unit's mask on one image (units × H × W bool)."""
        return self.activations(sample_id) > self.thresholds.view(-1, 1, 1)

    def top_images(self, unit: int, k: int = 8) -> list[str]:
        """Ids of the k images on which the unit fires most strongly."""
        order = self.peak[:, unit].argsort(descending=True)[:k]
        return [self.data.ids[i] for i in order.tolist()]

    def match(self, sample_id: str, roi, rule: str = "auto") -> xr.DataArray:
        """Every unit's score against the ROI (H×W bool) on the image, units ranked best first.

        rule: "iou" (the paper's: IoU of the unit's mask with the ROI), "coverage" (the share of the
        unit's mask inside the ROI; ties: more pixels inside first), or "auto": IoU unless the ROI is
        so large that no unit's mask touching it could reach IoU `THRESHOLDS["iou"]` even lying
        wholly inside it, then coverage. The DataArray is named after the rule used.
        """
        roi = _check_roi(roi, tuple(self.data.image_shape[-2:]))
        masks = self.masks(sample_id)
        area = masks.flatten(1).sum(1).float()
        inter = (masks & roi).flatten(1).sum(1).float()
        if rule == "auto":
            reach = float(area[inter > 0].max()) if (inter > 0).any() else 0.0     # largest mask touching the ROI
            rule = "coverage" if reach < THRESHOLDS["iou"] * float(roi.sum()) else "iou"
        if rule == "iou":
            score = inter / (area + roi.sum() - inter).clamp(min=1)
            order = score.argsort(descending=True, stable=True)
        elif rule == "coverage":
            score = inter / area.clamp(min=1)
            order = torch.from_numpy(np.lexsort((-inter.numpy(), -score.numpy())))
        else:
            raise ValueError(f"unknown matching rule {rule!r}; choose one of {RULES}")
        return xr.DataArray(score[order].numpy(), dims="unit", coords={"unit": order.numpy()}, name=rule,
                            attrs={"layer": self.layer, "sample": sample_id, "rule": rule})

    def label(self, sample_id: str, roi, name: str, threshold: float | None = None, author: str = "",
              rule: str = "auto") -> list[int]:
        """Label every unit whose score (`match` with `rule`) passes `threshold` (default: the rule's
        `THRESHOLDS` entry) and beats the score of its current label."""
        if not name or not name.strip():
            raise ValueError("give the concept a non-empty name")
        scores = self.match(sample_id, roi, rule)
        threshold = THRESHOLDS[scores.attrs["rule"]] if threshold is None else threshold
        current = self.labels.current(self.layer)
        chosen = [int(u) for u, v in zip(scores.unit.values, scores.values)
                  if v > threshold and v > current.get(int(u), ("", -1.0))[1]]
        self.labels.add(self.layer, {u: float(scores.sel(unit=u)) for u in chosen}, name.strip(), sample_id, author)
        return chosen

    def active(self, sample_id: str) -> torch.Tensor:
        """Which units fire on the image: a non-empty mask (activation above the threshold somewhere)."""
        return self.masks(sample_id).flatten(1).any(1)

    def concept_table(self, sample_id: str) -> xr.Dataset:
        """Per label with units active on one image (`active`): how many of its units are active, their
        mean activation on the image and their mean score at labelling. Labels none of whose units
        fire on the image are left out."""
        current = self.labels.current(self.layer)
        i = self.data.index_of(sample_id)
        act, active = self.mean[i], self.active(sample_id)
        units: dict[str, list[int]] = {}
        for u, (name, _) in sorted(current.items()):
            if active[u]:
                units.setdefault(name, []).append(u)
        names = sorted(units)
        return xr.Dataset({
            "units": ("concept", [len(units[n]) for n in names]),
            "mean_activation": ("concept", [float(act[units[n]].mean()) for n in names]),
            "mean_iou": ("concept", [float(np.mean([current[u][1] for u in units[n]])) for n in names]),
        }, coords={"concept": names}, attrs={"layer": self.layer, "sample": sample_id})


def _check_roi(roi, shape: tuple[int, int]) -> torch.Tensor:
    roi = torch.as_tensor(np.asarray(roi))
    if tuple(roi.shape) != shape:
        raise ValueError(f"the ROI must be an H×W mask of the image size {shape}, got {tuple(roi.shape)}")
    roi = roi.bool()
    if not roi.any():
        raise ValueError("the ROI is empty: paint a region first")
    return roi


def dissect(model: nn.Module, data: ImageSet, layer: str | None = None, quantile: float = 0.99, batch_size: int = 64,
            labels: LabelStore | str | None = None, progress: bool = True, client=None) -> Units:
    """Dissect `layer`: per-unit quantile thresholds over `data` in one streaming pass, and per-image stats.

    The images are read batch by batch (a lazy ImageSet is never held whole); memory holds one batch's
    activations and each unit's top (1 - quantile) share of values.

    Args:
        model: the network. data: the ImageSet the thresholds come from.
        layer: the layer whose units (channels) are dissected (default `xv.models.default_layer`).
        quantile: a unit's mask on an image is where its activation passes this quantile over `data`.
        batch_size, progress: images per forward pass; a progress bar.
        labels: a LabelStore or a path for one (e.g. beside the feedback store) to persist concept labels.
        client: a dask.distributed.Client whose workers compute the batches (the model travels as a
            checkpoint, the data as its reader).

    Returns:
        `Units`: thresholds, top images, `match` / `label` of regions, concept tables.

    Example:
        >>> import xcam_viz as xv
        >>> from xcam_viz.demo import demo_data, demo_model
        >>> units = xv.concepts.dissect(demo_model(progress=False), demo_data("test", n=16), "block3",
        ...                             progress=False)
        >>> units.thresholds.shape
        torch.Size([64])
    """
    layer = layer or default_layer(model, tuple(data.image_shape))
    n = len(data)
    spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    c, h, w = data.image_shape
    shape = capture(model, torch.zeros(1, c, h, w), layer, gradients=False).activations[layer].shape
    stream = StreamingQuantile(shape[1], n * shape[2] * shape[3], quantile)
    peaks, means = torch.empty(n, shape[1]), torch.empty(n, shape[1])
    if client is None:
        results = (_dissect_batch(model, data, layer, stream.keep, *span) for span in spans)
        results = tqdm(results, total=len(spans), desc=f"dissect {layer}", disable=not progress)
    else:
        import tempfile

        from ..explain.distributed import map_batches
        tasks = [(layer, stream.keep, *span) for span in spans]
        results = map_batches(client, _dissect_batch, model, data, tasks, Path(tempfile.gettempdir()) / "xcam-viz",
                              progress, f"dissect {layer}")
    for start, top, peak, mean in results:
        stream.update(top)
        peaks[start:start + len(peak)], means[start:start + len(mean)] = peak, mean
    store = LabelStore(labels) if isinstance(labels, str) or hasattr(labels, "__fspath__") else labels
    return Units(model, data, layer, stream.result(), peaks, means, quantile, store)


def _dissect_batch(model: nn.Module, data: ImageSet, layer: str, keep: int, start: int, stop: int):
    """(start, each unit's top `keep` activations, per-image peaks, per-image means) of images start..stop."""
    act = capture(model, data.read(range(start, stop))[0], layer, gradients=False).activations[layer].cpu()
    values = act.transpose(0, 1).flatten(1)
    top = values.topk(keep, dim=1).values if values.shape[1] > keep else values
    return start, top, act.flatten(2).amax(2), act.flatten(2).mean(2)
