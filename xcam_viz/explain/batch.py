"""Batch runs: the CAMs of a whole data set, streamed in batches into a zarr store or a netCDF file.

Memory stays bounded by one batch: each batch is captured once (all layers), weighed by every
method, and written into its region of a store laid out in advance. The store's attributes record
how many samples are done, so an interrupted run resumes where it stopped (a zarr store survives
even a hard kill; a netCDF file an interruption between batches).

Layout (xarray): cam (cam_method, layer, sample, y, x) float32 at input resolution, each map in [0, 1];
target_class (sample); label (sample) for an ImageSet; attrs model_fingerprint, target,
class_names, samples_done, complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from .api import as_images, describe_region, describe_target, model_fingerprint, per_batch
from .capture import Target, capture, is_topk, layer_list
from .methods import check_method, finish, needs_gradients, weigh

DIMS = ("cam_method", "layer", "sample", "y", "x")   # not "method": that name clashes with DataArray.sel(method=)


class _ZarrStore:
    """A zarr (format 2) group: region writes of whole chunks, metadata consolidated after each batch."""

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return (self.path / ".zgroup").exists()

    def create(self, template: xr.Dataset, shape: tuple, chunk: int) -> None:
        import zarr
        template.to_zarr(self.path, mode="w", zarr_format=2)
        group = zarr.open_group(self.path, mode="a")
        group.create_array("cam", shape=shape, chunks=(1, 1, chunk, *shape[-2:]), dtype="float32",
                           fill_value=np.nan, attributes={"_ARRAY_DIMENSIONS": list(DIMS)})
        zarr.consolidate_metadata(self.path)

    def attrs(self) -> dict:
        import zarr
        return dict(zarr.open_group(self.path, mode="r").attrs)

    def write(self, start: int, cams: np.ndarray, per_sample: dict[str, np.ndarray], attrs: dict) -> None:
        import zarr
        group = zarr.open_group(self.path, mode="a")
        stop = start + cams.shape[2]
        group["cam"][:, :, start:stop] = cams
        for name, values in per_sample.items():
            group[name][start:stop] = values
        group.attrs.update(attrs)
        zarr.consolidate_metadata(self.path)


class _NetCDFStore:
    """A netCDF-4 file: slices written with netCDF4, synced after each batch."""

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def create(self, template: xr.Dataset, shape: tuple, chunk: int) -> None:
        import netCDF4
        template.to_netcdf(self.path, mode="w", format="NETCDF4")
        with netCDF4.Dataset(self.path, "a") as nc:
            nc.createVariable("cam", "f4", DIMS, fill_value=np.float32(np.nan),
                              chunksizes=(1, 1, chunk, *shape[-2:]), zlib=True, complevel=1)

    def attrs(self) -> dict:
        import netCDF4
        with netCDF4.Dataset(self.path, "r") as nc:
            return {k: nc.getncattr(k) for k in nc.ncattrs()}

    def write(self, start: int, cams: np.ndarray, per_sample: dict[str, np.ndarray], attrs: dict) -> None:
        import netCDF4
        with netCDF4.Dataset(self.path, "a") as nc:
            stop = start + cams.shape[2]
            nc["cam"][:, :, start:stop] = cams
            for name, values in per_sample.items():
                nc[name][start:stop] = values
            nc.setncatts(attrs)


def _store(path: Path):
    if path.suffix == ".zarr":
        return _ZarrStore(path)
    if path.suffix in (".nc", ".nc4"):
        return _NetCDFStore(path)
    raise ValueError(f"unknown output format {path.name!r}: name it *.zarr or *.nc")


def explain_dataset(model: nn.Module, data: ImageSet | torch.Tensor, out, methods: str | Sequence[str] = "gradcam",
                    layers: str | Sequence[str] = "block3", target: Target = "predicted", region=None,
                    batch_size: int = 32, progress: bool = True, overwrite: bool = False) -> Path:
    """Write the CAMs of every image (all methods × layers, upsampled, normalised) to `out` (.zarr or .nc).

    target: as in xv.explain (not top-k), or "label" for the data set's labels. An existing store of
    the same run (model fingerprint, methods, layers, target, data, batch size) is resumed from its
    first unwritten batch; a finished one is returned as it is; a different run's store is refused
    unless overwrite=True. Returns the path; read it with xr.open_zarr / xr.open_dataset.
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    for m in methods:
        check_method(m)
    names = layer_list(layers)
    if is_topk(target):
        raise ValueError("batch runs take one target per sample: use 'predicted', 'label', a class or a callable")
    if isinstance(target, str) and target == "label" and not isinstance(data, ImageSet):
        raise ValueError("target='label' needs an ImageSet (a tensor has no labels)")
    images, ids, class_names = as_images(data)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("data must be an ImageSet or a tensor N×C×H×W")
    path, n, (h, w) = Path(out), len(images), images.shape[-2:]
    store = _store(path)
    run = json.dumps({"model": model_fingerprint(model), "methods": methods, "layers": names,
                      "target": describe_target(target), "region": describe_region(region), "samples": n,
                      "first_id": ids[0], "last_id": ids[-1], "batch_size": batch_size, "size": [h, w]})
    done = _resume(store, run, overwrite)
    if done is None:
        per_sample = {"target_class": ("sample", np.full(n, -1, dtype=np.int64))}
        if isinstance(data, ImageSet):
            per_sample["label"] = ("sample", data.labels.numpy())
        template = xr.Dataset(per_sample, coords={"sample": ids, "cam_method": methods, "layer": names,
                                                  "y": np.arange(h), "x": np.arange(w)},
                              attrs={"run": run, "model_fingerprint": model_fingerprint(model),
                                     "target": describe_target(target), "class_names": list(class_names or []),
                                     "samples_done": 0, "complete": 0})
        store.create(template, (len(methods), len(names), n, h, w), batch_size)
        done = 0
    grads = any(needs_gradients(m) for m in methods)
    starts = range(done, n, batch_size)
    for start in tqdm(starts, desc="explain", unit="batch", disable=not progress):
        stop = min(start + batch_size, n)
        t = data.labels if isinstance(target, str) and target == "label" else target
        cap = capture(model, images[start:stop], names, per_batch(t, 1, start, stop), per_batch(region, 3, start, stop),
                      gradients=grads)
        cams = np.stack([np.stack([finish(weigh(cap, m, layer), (h, w)).float().cpu().numpy() for layer in names])
                         for m in methods])
        store.write(start, cams, {"target_class": cap.target.cpu().numpy()},
                    {"samples_done": stop, "complete": int(stop == n)})
    return path


def _resume(store, run: str, overwrite: bool) -> int | None:
    """Samples already written by this run, or None when the store must be (re)created."""
    if overwrite or not store.exists():
        return None
    attrs = store.attrs()
    if attrs.get("run") != run:
        raise ValueError(f"{store.path} holds CAMs of a different run (model, methods, layers, target or data "
                         "differ): choose another output path or pass overwrite=True (--overwrite)")
    return int(attrs.get("samples_done", 0))


def load_data(spec: str, split: str = "test") -> ImageSet:
    """A data set named on the command line: 'demo' (the demo's split), a MedMNIST .npz, or a folder / CSV."""
    from ..data import load_folder, load_medmnist
    if spec == "demo":
        from ..demo import demo_data
        return demo_data(split)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data {spec!r} not found: give 'demo', a MedMNIST .npz file, an image folder "
                                "or a CSV manifest")
    return load_medmnist(path, split=split) if path.suffix == ".npz" else load_folder(path)
