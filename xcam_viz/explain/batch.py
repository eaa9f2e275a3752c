"""Batch runs: the CAMs of a whole data set, streamed in batches into a zarr store or a netCDF file.

A run is planned once (`plan_store` lays the store out and says which batches are missing) and
then written batch by batch (`write_batch`), serially here or as Dask tasks (`distributed.py`):
the same function either way. Memory stays bounded by one batch: each batch is captured once (all
layers), weighed by every method and written into its own whole chunks (the chunks along `sample`
are one batch long), so concurrent writers never share a chunk. A per-batch flag, written after
the batch's data, records what is done: an interrupted run resumes with only the missing batches
(a zarr store survives even a hard kill; a netCDF file an interruption between batches).

Layout (xarray): cam (cam_method, layer, sample, y, x) float32 at input resolution, each map in [0, 1];
target_class (sample); label (sample) for an ImageSet; batch_done (batch) int8;
attrs run, model_fingerprint, target, class_names, complete.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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
    """A zarr (format 2) group: each batch writes whole chunks; metadata consolidated once planned and once done."""

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return (self.path / ".zgroup").exists()

    def create(self, template: xr.Dataset, shape: tuple, chunk: int) -> None:
        import zarr
        template.to_zarr(self.path, mode="w", zarr_format=2,
                         encoding={"target_class": {"chunks": (chunk,)}, "batch_done": {"chunks": (1,)}})
        group = zarr.open_group(self.path, mode="a")
        group.create_array("cam", shape=shape, chunks=(1, 1, chunk, *shape[-2:]), dtype="float32",
                           fill_value=np.nan, attributes={"_ARRAY_DIMENSIONS": list(DIMS)})
        zarr.consolidate_metadata(self.path)

    def attrs(self) -> dict:
        import zarr
        return dict(zarr.open_group(self.path, mode="r").attrs)

    def done(self) -> np.ndarray:
        import zarr
        return zarr.open_group(self.path, mode="r")["batch_done"][:].astype(bool)

    def write(self, batch: int, start: int, cams: np.ndarray, target_class: np.ndarray) -> None:
        import zarr
        group = zarr.open_group(self.path, mode="r+")
        stop = start + cams.shape[2]
        group["cam"][:, :, start:stop] = cams
        group["target_class"][start:stop] = target_class
        group["batch_done"][batch] = 1                 # last: a flag means the batch's data is in

    def finish(self, attrs: dict) -> None:
        import zarr
        zarr.open_group(self.path, mode="r+").attrs.update(attrs)
        zarr.consolidate_metadata(self.path)


class _NetCDFStore:
    """A netCDF-4 file (one writer at a time): slices written with netCDF4, synced after each batch."""

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

    def done(self) -> np.ndarray:
        import netCDF4
        with netCDF4.Dataset(self.path, "r") as nc:
            return np.asarray(nc["batch_done"][:]).astype(bool)

    def write(self, batch: int, start: int, cams: np.ndarray, target_class: np.ndarray) -> None:
        import netCDF4
        with netCDF4.Dataset(self.path, "a") as nc:
            stop = start + cams.shape[2]
            nc["cam"][:, :, start:stop] = cams
            nc["target_class"][start:stop] = target_class
            nc["batch_done"][batch] = 1

    def finish(self, attrs: dict) -> None:
        import netCDF4
        with netCDF4.Dataset(self.path, "a") as nc:
            nc.setncatts(attrs)


def store_for(path: Path):
    """The store behind an output path: *.zarr or *.nc / *.nc4."""
    if path.suffix == ".zarr":
        return _ZarrStore(path)
    if path.suffix in (".nc", ".nc4"):
        return _NetCDFStore(path)
    raise ValueError(f"unknown output format {path.name!r}: name it *.zarr or *.nc")


@dataclass(frozen=True)
class Plan:
    """What every batch of a run needs besides the model and the data (small and picklable: it travels to workers)."""

    path: Path
    methods: tuple[str, ...]
    layers: tuple[str, ...]
    target: Target
    region: object
    batch_size: int
    samples: int
    size: tuple[int, int]

    @property
    def batches(self) -> int:
        return -(-self.samples // self.batch_size)


@dataclass(frozen=True)
class DataSpec:
    """A data set named rather than held: 'demo' (its split, n images), a MedMNIST .npz, or a folder / CSV.

    Dask workers load it themselves (once per worker) instead of receiving the images.
    """

    source: str
    split: str = "test"
    n: int | None = None

    def load(self) -> ImageSet:
        return load_data(self.source, self.split, self.n)


def plan_store(model: nn.Module, data: ImageSet | torch.Tensor, out, methods: str | Sequence[str] = "gradcam",
               layers: str | Sequence[str] = "block3", target: Target = "predicted", region=None,
               batch_size: int = 32, overwrite: bool = False) -> tuple[Plan, list[int]]:
    """Check the arguments, lay out (or reopen) the store at `out`; return the plan and the batches still missing."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    for m in methods:
        check_method(m)
    names = layer_list(layers)
    if is_topk(target):
        raise ValueError("batch runs take one target per sample: use 'predicted', 'label', a class or a callable")
    if isinstance(target, str) and target == "label" and not isinstance(data, ImageSet):
        raise ValueError("target='label' needs an ImageSet (a tensor has no labels)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    images, ids, class_names = as_images(data)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise ValueError("data must be a non-empty ImageSet or a tensor N×C×H×W")
    path, n, (h, w) = Path(out), len(images), tuple(images.shape[-2:])
    store = store_for(path)
    plan = Plan(path, tuple(methods), tuple(names), target, region, batch_size, n, (h, w))
    run = json.dumps({"model": model_fingerprint(model), "methods": methods, "layers": names,
                      "target": describe_target(target), "region": describe_region(region), "samples": n,
                      "first_id": ids[0], "last_id": ids[-1], "batch_size": batch_size, "size": [h, w]})
    done = _resume(store, run, overwrite)
    if done is None:
        per_sample = {"target_class": ("sample", np.full(n, -1, dtype=np.int64)),
                      "batch_done": ("batch", np.zeros(plan.batches, dtype=np.int8))}
        if isinstance(data, ImageSet):
            per_sample["label"] = ("sample", data.labels.numpy())
        template = xr.Dataset(per_sample, coords={"sample": ids, "cam_method": methods, "layer": names,
                                                  "y": np.arange(h), "x": np.arange(w)},
                              attrs={"run": run, "model_fingerprint": model_fingerprint(model),
                                     "target": describe_target(target), "class_names": list(class_names or []),
                                     "complete": 0})
        store.create(template, (len(methods), len(names), n, h, w), batch_size)
        done = np.zeros(plan.batches, dtype=bool)
    return plan, [int(i) for i in np.flatnonzero(~done)]


def write_batch(plan: Plan, model: nn.Module, data: ImageSet | torch.Tensor, batch: int) -> int:
    """Explain batch `batch` of the plan (every method × layer) and write it into the store; returns its size."""
    images = as_images(data)[0]
    start = batch * plan.batch_size
    stop = min(start + plan.batch_size, plan.samples)
    t = data.labels if isinstance(plan.target, str) and plan.target == "label" else plan.target
    grads = any(needs_gradients(m) for m in plan.methods)
    cap = capture(model, images[start:stop], list(plan.layers), per_batch(t, 1, start, stop),
                  per_batch(plan.region, 3, start, stop), gradients=grads)
    cams = np.stack([np.stack([finish(weigh(cap, m, layer), plan.size).float().cpu().numpy()
                               for layer in plan.layers]) for m in plan.methods])
    store_for(plan.path).write(batch, start, cams, cap.target.cpu().numpy())
    return stop - start


def explain_dataset(model: nn.Module | str | Path, data: ImageSet | torch.Tensor | DataSpec, out,
                    methods: str | Sequence[str] = "gradcam", layers: str | Sequence[str] = "block3",
                    target: Target = "predicted", region=None, batch_size: int = 32, progress: bool = True,
                    overwrite: bool = False, client=None) -> Path:
    """Write the CAMs of every image (all methods × layers, upsampled, normalised) to `out` (.zarr or .nc).

    model: a module or a checkpoint written by xv.models.save. data: an ImageSet, a tensor or a DataSpec.
    target: as in xv.explain (not top-k), or "label" for the data set's labels. An existing store of
    the same run (model fingerprint, methods, layers, target, data, batch size) is resumed with its
    missing batches; a finished one is returned as it is; a different run's store is refused unless
    overwrite=True. client: a dask.distributed.Client to run the batches on its workers (zarr only;
    see xcam_viz.explain.distributed). Returns the path; read it with xr.open_zarr / xr.open_dataset.
    """
    checkpoint = Path(model) if isinstance(model, (str, Path)) else None
    if checkpoint is not None:
        from ..models import load
        model = load(checkpoint)
    loaded = data.load() if isinstance(data, DataSpec) else data
    if client is not None and Path(out).suffix != ".zarr":
        raise ValueError(f"distributed runs write a zarr store (a netCDF file takes one writer): name out "
                         f"*.zarr instead of {Path(out).name!r}, or run without a client")
    plan, missing = plan_store(model, loaded, out, methods, layers, target, region, batch_size, overwrite)
    if client is None:
        _run_serially(plan, model, loaded, missing, progress)
    else:
        from .distributed import run_on
        run_on(client, plan, checkpoint or model, data, missing, progress)
    store_for(plan.path).finish({"complete": int(store_for(plan.path).done().all())})
    return plan.path


def _run_serially(plan: Plan, model: nn.Module, data, batches: list[int], progress: bool) -> None:
    with tqdm(total=plan.batches, initial=plan.batches - len(batches), desc="explain", unit="batch",
              disable=not progress) as bar:
        for batch in batches:
            write_batch(plan, model, data, batch)
            bar.update()


def _resume(store, run: str, overwrite: bool) -> np.ndarray | None:
    """Which batches this run already wrote, or None when the store must be (re)created."""
    if overwrite or not store.exists():
        return None
    if store.attrs().get("run") != run:
        raise ValueError(f"{store.path} holds CAMs of a different run (model, methods, layers, target or data "
                         "differ): choose another output path or pass overwrite=True (--overwrite)")
    return store.done()


def load_data(spec: str, split: str = "test", n: int | None = None) -> ImageSet:
    """A data set named on the command line: 'demo' (the demo's split, n images), a MedMNIST .npz, or a folder / CSV."""
    from ..data import load_folder, load_medmnist
    if spec == "demo":
        from ..demo import demo_data
        return demo_data(split, n)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data {spec!r} not found: give 'demo', a MedMNIST .npz file, an image folder "
                                "or a CSV manifest")
    data = load_medmnist(path, split=split) if path.suffix == ".npz" else load_folder(path)
    return data.subset(range(min(n, len(data)))) if n else data
