"""Unit dissection (network-dissection style, after Lu & Perer 2022).

Each unit (channel) of a layer gets a threshold: the `quantile` of its activations over every
pixel (voxel) of every image (volume), found in one streaming pass that keeps only each unit's top
values (exact, bounded by (1 - quantile) of the data). A unit's mask on an image is its activation,
upsampled to the input, above that threshold. A region the user paints (H×W, or D×H×W on a volume) is
matched against every unit's mask by IoU (or, for a region too large for any IoU to pass, by the share
of the mask inside it); naming it labels every unit whose score passes a threshold. A unit's peak on an
image (inside a region, if given) is where to look at it: on a volume, its axial slice is the unit's
best slice. Images and volumes take one code path (`xcam_viz.spatial`).
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
from ..spatial import BATCH_VOXELS, axis_names, batch_for, resize
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
        self._last: tuple[str | None, torch.Tensor | None] = (None, None)     # the last image's activations

    def __len__(self) -> int:
        return len(self.thresholds)

    def activations(self, sample_id: str, units=None) -> torch.Tensor:
        """The layer's activations for one image, upsampled to the input size (units × *S: H×W, or D×H×W on
        a volume); `units`: only those (indices), in that order."""
        return torch.cat([act for _, act in self._upsampled(sample_id, units)])

    def masks(self, sample_id: str, units=None) -> torch.Tensor:
        """Every unit's mask on one image (units × *S bool); `units`: only those."""
        return torch.cat([self._above(part, act) for part, act in self._upsampled(sample_id, units)])

    def _captured(self, sample_id: str) -> torch.Tensor:
        """The layer's activations on one image at the layer's resolution (units × *s). The last image's are
        kept: its ranking, masks and peaks are asked for one after the other (one model pass, not three)."""
        last = self._last
        if last[0] != sample_id:
            x = self.data[self.data.index_of(sample_id)].image[None]
            act = capture(self.model, x, self.layer, gradients=False).activations[self.layer]
            last = self._last = sample_id, act[0].cpu()
        return last[1]

    def _upsampled(self, sample_id: str, units=None):
        """(unit indices, their activations upsampled to the input) in chunks of at most
        `spatial.BATCH_VOXELS` values: a volume's units never all lie in memory at full resolution."""
        act, grid = self._captured(sample_id), tuple(self.data.image_shape[1:])
        chosen = torch.arange(len(self)) if units is None else torch.tensor(np.asarray(units, np.int64)).reshape(-1)
        step = max(1, BATCH_VOXELS // math.prod(grid))
        for part in chosen.split(step):             # no units: one empty part
            yield part, resize(act[None, part], grid)[0] if len(part) else act.new_zeros((0, *grid))

    def _above(self, part: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The masks of units `part` from their upsampled activations (len × *S)."""
        return act > self.thresholds[part].view(-1, *(1,) * (act.ndim - 1))

    def peaks(self, sample_id: str, roi=None, units=None) -> xr.DataArray:
        """Where each unit fires most on the image (inside `roi`, if given): unit × axis pixel (voxel) indices,
        axes ("y", "x") or ("z", "y", "x"). On a volume the peak's axial slice is the unit's best slice
        (`best_slice`)."""
        roi = None if roi is None else self._check_roi(roi)
        grid = tuple(self.data.image_shape[1:])
        found, points = [np.zeros(0, int)], [np.zeros((0, len(grid)), int)]
        for part, act in self._upsampled(sample_id, units):
            if roi is not None:
                act = act.masked_fill(~roi, -math.inf)
            found.append(part.numpy())
            points.append(np.stack(np.unravel_index(act.flatten(1).argmax(1).numpy(), grid), 1))
        return xr.DataArray(np.concatenate(points), dims=("unit", "axis"), name="peak",
                            coords={"unit": np.concatenate(found), "axis": list(axis_names(len(grid)))},
                            attrs={"layer": self.layer, "sample": sample_id, "in_region": roi is not None})

    def top_images(self, unit: int, k: int = 8) -> list[str]:
        """Ids of the k images on which the unit fires most strongly."""
        order = self.peak[:, unit].argsort(descending=True)[:k]
        return [self.data.ids[i] for i in order.tolist()]

    def match(self, sample_id: str, roi, rule: str = "auto") -> xr.DataArray:
        """Every unit's score against the ROI (H×W bool; a volume's D×H×W) on the image, units ranked best first.

        rule: "iou" (the paper's: IoU of the unit's mask with the ROI), "coverage" (the share of the
        unit's mask inside the ROI; ties: more pixels inside first), or "auto": IoU unless the ROI is
        so large that no unit's mask touching it could reach IoU `THRESHOLDS["iou"]` even lying
        wholly inside it, then coverage. The DataArray is named after the rule used.
        """
        roi = self._check_roi(roi)
        area, inter = torch.zeros(len(self)), torch.zeros(len(self))
        for part, act in self._upsampled(sample_id):
            masks = self._above(part, act)
            area[part] = masks.flatten(1).sum(1).float()
            inter[part] = (masks & roi).flatten(1).sum(1).float()
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
        return torch.cat([self._above(part, act).flatten(1).any(1) for part, act in self._upsampled(sample_id)])

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

    def _check_roi(self, roi) -> torch.Tensor:
        """The ROI as a bool tensor of the images' spatial shape, or a ValueError saying what to paint."""
        shape = tuple(self.data.image_shape[1:])
        roi = torch.as_tensor(np.asarray(roi))
        if tuple(roi.shape) != shape:
            raise ValueError(f"the ROI must be a {'×'.join('DHW'[-len(shape):])} mask of the image size {shape}, "
                             f"got {tuple(roi.shape)}")
        roi = roi.bool()
        if not roi.any():
            raise ValueError("the ROI is empty: paint a region first")
        return roi


def best_slice(array, peak) -> np.ndarray:
    """`array` (*S, or *S×C: an image channels last) through a unit's peak (a row of `Units.peaks`): an image
    whole, a volume's axial slice through the peak (the unit's best slice)."""
    return np.asarray(array)[tuple(int(i) for i in np.asarray(peak)[:-2])]


def dissect(model: nn.Module, data: ImageSet, layer: str | None = None, quantile: float = 0.99,
            batch_size: int | None = None,
            labels: LabelStore | str | None = None, progress: bool = True, client=None) -> Units:
    """Dissect `layer`: per-unit quantile thresholds over `data` in one streaming pass, and per-image stats.

    The images are read batch by batch (a lazy ImageSet is never held whole); memory holds one batch's
    activations and each unit's top (1 - quantile) share of values.

    Args:
        model: the network. data: the ImageSet the thresholds come from.
        layer: the layer whose units (channels) are dissected (default `xv.models.default_layer`).
        quantile: a unit's mask on an image is where its activation passes this quantile over `data`.
        batch_size, progress: images per forward pass (default `xcam_viz.spatial.batch_for`: up to 64 images,
            fewer volumes); a progress bar.
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
    batch_size = batch_size or batch_for(data.image_shape, 64)
    spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    shape = capture(model, torch.zeros(1, *data.image_shape), layer, gradients=False).activations[layer].shape
    stream = StreamingQuantile(shape[1], n * math.prod(shape[2:]), quantile)
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
