"""What a batch run's every batch shares, serial or on Dask: the store layouts, the Plan and `write_batch`.

`batch.py` plans a run and walks its batches in this process; `distributed.py` runs the same
`write_batch` as Dask tasks. Both import this module (and neither imports the other's internals).
Layout (xarray): cam (cam_method, layer, sample, y, x) — volumes (…, z, y, x) — float32 at input resolution,
each map in [0, 1];
target_class (sample); label (sample) for an ImageSet; batch_done (batch) int8;
attrs run, model_fingerprint, target, class_names, complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..data import ImageSet, load_data
from ..data.examples import EXAMPLES
from ..spatial import axis_names
from .api import per_batch
from .capture import Target, capture
from .methods import finish, needs_gradients, weigh

DIMS = ("cam_method", "layer", "sample")   # not "method": that name clashes with DataArray.sel(method=)


def dims_of(shape: tuple) -> list[str]:
    """The cam array's dimension names for its shape (methods, layers, samples, then 2 or 3 spatial axes)."""
    return [*DIMS, *axis_names(len(shape) - len(DIMS))]


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
        group.create_array("cam", shape=shape, chunks=(1, 1, chunk, *shape[len(DIMS):]), dtype="float32",
                           fill_value=np.nan, attributes={"_ARRAY_DIMENSIONS": dims_of(shape)})
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
            nc.createVariable("cam", "f4", dims_of(shape), fill_value=np.float32(np.nan),
                              chunksizes=(1, 1, chunk, *shape[len(DIMS):]), zlib=True, complevel=1)

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
    size: tuple[int, ...]

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

    def absolute(self) -> DataSpec:
        """The same spec with a file source made absolute (workers may run elsewhere); example names stay."""
        if self.source in EXAMPLES:
            return self
        return DataSpec(str(Path(self.source).absolute()), self.split, self.n)


def write_batch(plan: Plan, model: nn.Module, data: ImageSet | torch.Tensor, batch: int) -> int:
    """Explain batch `batch` of the plan (every method × layer) and write it into the store; returns its size."""
    start = batch * plan.batch_size
    stop = min(start + plan.batch_size, plan.samples)
    images = data.read(range(start, stop))[0] if isinstance(data, ImageSet) else data[start:stop]
    t = data.labels if isinstance(plan.target, str) and plan.target == "label" else plan.target
    grads = any(needs_gradients(m) for m in plan.methods)
    cap = capture(model, images, list(plan.layers), per_batch(t, 1, start, stop),
                  per_batch(plan.region, 1 + len(plan.size), start, stop), gradients=grads)
    cams = np.stack([np.stack([finish(weigh(cap, m, layer), plan.size).float().cpu().numpy()
                               for layer in plan.layers]) for m in plan.methods])
    store_for(plan.path).write(batch, start, cams, cap.target.cpu().numpy())
    return stop - start
