"""`xv.explain`: CAMs of a data set or tensor as an xarray.DataArray."""
from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet, inputs_of
from ..models import default_layer, fingerprint
from ..spatial import axis_names, batch_for
from .capture import Reshape, Target, capture, is_topk, layer_list
from .methods import SEGMENTATION_METHODS, check_method, finish, needs_gradients, weigh

_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def model_fingerprint(model: nn.Module) -> str:
    """xv.models.fingerprint, cached until a parameter or buffer is replaced or changed in place.

    In-place changes are seen through the tensors' version counters; writes through `.data` bypass
    them (call xv.models.fingerprint directly after such writes).
    """
    key = tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))
    cached = _FINGERPRINTS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, fingerprint(model))
        _FINGERPRINTS[model] = cached
    return cached[1]


def per_batch(value, ndim: int, start: int, stop: int):
    """value[start:stop] for a per-sample array (ndim 1: targets; region masks: 1 + the spatial axes); shared
    values as they are."""
    if value is None or callable(value) or isinstance(value, (str, int)) or is_topk(value) or np.ndim(value) != ndim:
        return value
    return value[start:stop]


def describe_target(target: Target) -> str:
    if callable(target):
        return f"callable {getattr(target, '__name__', type(target).__name__)}"
    if isinstance(target, (str, int)):
        return str(target)
    if is_topk(target):
        return f"top-{target[1]}"
    return "per-sample"


def describe_region(region) -> str:
    if region is None or isinstance(region, str):
        return region or "predicted"
    return f"point {tuple(region)}" if isinstance(region, tuple) else "mask"


def class_labels(class_index: np.ndarray, names: list[str] | None, k: int) -> np.ndarray:
    """Class names for an array of class indices (-1, a callable target, is 'custom')."""
    names = names if names is not None and len(names) == k else [str(c) for c in range(k)]
    table = np.array([*names, "custom"], dtype=object)
    return table[class_index].astype(str)


def explain(model: nn.Module, data: ImageSet | torch.Tensor, method: str = "gradcam",
            layer: str | Sequence[str] | None = None, target: Target = "predicted", region=None,
            upsample: bool = True, normalize: bool = True, batch_size: int | None = None,
            progress: bool = False, reshape: Reshape | None = None, output=None) -> xr.DataArray:
    """Class activation maps of every image: an xr.DataArray (sample, y, x), or (sample, z, y, x) for volumes.

    The model runs in eval mode (every module's own mode is restored afterwards); requires_grad is not
    touched. Layers of any layout work: N×C×h×w, channels-last N×h×w×C, ViT tokens (see
    `xv.models.Layout`).

    Args:
        model: any classifier (logits N×K) or segmenter (N×K×H×W) `nn.Module`.
        data: an ImageSet, or a float tensor N×C×H×W (or one image C×H×W) or N×C×D×H×W (volumes) with
            values in [0, 1].
        method: a name from `xcam_viz.explain.REGISTRY` (gradcam, gradcam++, hirescam, xgradcam,
            layercam, scorecam, eigencam; seg-gradcam, seg-hirescam for segmenters).
        layer: a layer name, a list of names (captured in one pass; adds a leading 'layer' dim, which
            needs upsample=True or layers of one resolution), or None for `xv.models.default_layer`
            (logged once; attrs "layer" and "layer_source" say what was used).
        target: "predicted", a class index, one index per sample, ("topk", k) (adds a 'rank' dim after
            'sample'), or a callable(logits) -> scores (N,).
        region: segmenters only: "predicted" (default), "all", a point (y, x) / (z, y, x) or a bool mask
            *S / N×*S (H×W, or D×H×W for volumes).
        upsample, normalize: bilinear (volumes: trilinear) upsampling to the input size and per-map min-max
            scaling to
            [0, 1] (the default); both False give the raw layer-resolution map (ReLU applied).
        batch_size: images per forward pass (default: 32, fewer for large images and volumes, see
            `xcam_viz.spatial.batch_for`). progress: show a progress bar.
        reshape: how to read a layer that detection cannot (a `Layout` or any callable to N×C×h×w).
        output: a callable that picks the logits from what the model returns (default: tensors, a
            tuple's first element, a dict's or object's `logits`).

    Returns:
        Maps with coords sample (ids), (z/)y/x (for layer-resolution maps, the cell centres in input
        pixels), target_class and target_name; attrs method, layer, layer_resolution, layer_source,
        target, model_fingerprint, input_size.

    Example:
        >>> import xcam_viz as xv
        >>> from xcam_viz.demo import demo_data, demo_model
        >>> cams = xv.explain(demo_model(progress=False), demo_data("test", n=4), method="hirescam")
        >>> cams.dims, cams.attrs["layer"], cams.attrs["layer_resolution"]
        (('sample', 'y', 'x'), 'block4', [8, 8])
    """
    check_method(method)
    inputs = inputs_of(data)
    if len(inputs) == 0:
        raise ValueError("no images to explain: data is empty")
    names = layer_list(default_layer(model, inputs.shape) if layer is None else layer)
    batch_size = batch_size or batch_for(inputs.shape, 32)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    size = inputs.shape[1:]
    maps, targets, shapes, logits = [], [], {}, None
    for start in tqdm(range(0, len(inputs), batch_size), desc=f"explain {method}", disable=not progress):
        stop = start + batch_size
        caps = capture(model, inputs.read(start, stop), names, per_batch(target, 1, start, stop),
                       per_batch(region, 1 + len(size), start, stop), gradients=needs_gradients(method),
                       reshape=reshape, output=output)
        caps = caps if isinstance(caps, list) else [caps]
        logits = caps[0].logits
        per_rank = []
        for cap in caps:
            per_layer = []
            for name in names:
                cam = weigh(cap, method, name)
                shapes[name] = tuple(cam.shape[1:])
                per_layer.append(finish(cam, size if upsample else None, normalize).float().cpu().numpy())
            if len({m.shape for m in per_layer}) > 1:
                raise ValueError(f"layers {names} have different resolutions {[shapes[n] for n in names]}; "
                                 "use upsample=True to stack them, or explain one layer at a time")
            per_rank.append(np.stack(per_layer))
        maps.append(np.stack(per_rank, axis=2))                     # layer × n × rank × *s
        targets.append(torch.stack([c.target for c in caps], 1).cpu().numpy())
    result = _dataarray(np.concatenate(maps, 1), np.concatenate(targets), inputs.ids, names, shapes, size, method,
                        target, region, logits, inputs.class_names, model, upsample)
    result.attrs["layer_source"] = "default" if layer is None else "given"
    return result


def _dataarray(maps: np.ndarray, targets: np.ndarray, ids: list[str], names: list[str], shapes: dict,
               size: tuple, method: str, target: Target, region, logits: torch.Tensor,
               class_names: list[str] | None, model: nn.Module, upsample: bool) -> xr.DataArray:
    """Assemble layer × sample × rank × *s maps, dropping the layer / rank dims when single."""
    cells = maps.shape[3:]
    names_of_axes = axis_names(len(cells))
    grid = {axis: np.arange(k) if upsample else (np.arange(k) + 0.5) * full / k - 0.5
            for axis, k, full in zip(names_of_axes, cells, size)}
    topk = is_topk(target)
    tdims = ("sample", "rank") if topk else ("sample",)
    if not topk:
        maps, targets = maps[:, :, 0], targets[:, 0]
    coords = {"sample": ids, **grid, "target_class": (tdims, targets),
              "target_name": (tdims, class_labels(targets, class_names, logits.shape[1]))}
    dims = (*tdims, *names_of_axes)
    if topk:
        coords["rank"] = np.arange(maps.shape[2])
    attrs = {"method": method, "target": describe_target(target), "model_fingerprint": model_fingerprint(model),
             "input_size": list(size)}
    if method in SEGMENTATION_METHODS:
        attrs["region"] = describe_region(region)
    if len(names) == 1:
        attrs |= {"layer": names[0], "layer_resolution": list(shapes[names[0]])}
        return xr.DataArray(maps[0], dims=dims, coords=coords, attrs=attrs, name="cam")
    coords |= {"layer": names, "layer_height": ("layer", [shapes[n][-2] for n in names]),
               "layer_width": ("layer", [shapes[n][-1] for n in names])}
    if len(cells) == 3:
        coords["layer_depth"] = ("layer", [shapes[n][0] for n in names])
    attrs["layer"] = list(names)
    return xr.DataArray(maps, dims=("layer", *dims), coords=coords, attrs=attrs, name="cam")
