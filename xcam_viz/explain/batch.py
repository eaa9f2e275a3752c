"""Batch runs: the CAMs of a whole data set, streamed in batches into a zarr store or a netCDF file.

A run is planned once (`plan_store` lays the store out and says which batches are missing) and
then written batch by batch (`write_batch`), serially here or as Dask tasks (`distributed.py`):
the same function either way. Memory stays bounded by one batch: each batch is captured once (all
layers), weighed by every method and written into its own whole chunks (the chunks along `sample`
are one batch long), so concurrent writers never share a chunk. A per-batch flag, written after
the batch's data, records what is done: an interrupted run resumes with only the missing batches
(a zarr store survives even a hard kill; a netCDF file an interruption between batches).
A lazy ImageSet is decoded batch by batch too. The store layout is in `stores.py`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from ..models import default_layer
from ..spatial import axis_names, batch_for
from .api import describe_region, describe_target, model_fingerprint
from .capture import Target, is_topk, layer_list
from .methods import check_method
from .stores import DataSpec, Plan, store_for, write_batch

__all__ = ["DataSpec", "explain_dataset", "plan_store", "store_for", "write_batch"]


def plan_store(model: nn.Module, data: ImageSet | torch.Tensor, out, methods: str | Sequence[str] = "gradcam",
               layers: str | Sequence[str] | None = None, target: Target = "predicted", region=None,
               batch_size: int | None = None, overwrite: bool = False) -> tuple[Plan, list[int]]:
    """Check the arguments, lay out (or reopen) the store at `out`; return the plan and the batches still missing.

    layers=None: `xv.models.default_layer` of the model for the data's image shape."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    for m in methods:
        check_method(m)
    if is_topk(target):
        raise ValueError("batch runs take one target per sample: use 'predicted', 'label', a class or a callable")
    if isinstance(target, str) and target == "label" and not isinstance(data, ImageSet):
        raise ValueError("target='label' needs an ImageSet (a tensor has no labels)")
    if isinstance(data, ImageSet):
        ids, class_names = list(data.ids), list(data.class_names)
    elif isinstance(data, torch.Tensor) and data.ndim in (4, 5) and len(data):
        ids, class_names = [str(i) for i in range(len(data))], None
    else:
        raise ValueError("data must be a non-empty ImageSet or a tensor N×C×H×W (volumes N×C×D×H×W)")
    shape = data.image_shape if isinstance(data, ImageSet) else tuple(data.shape[1:])
    grid = tuple(shape[1:])
    batch_size = batch_for(shape, 32) if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    names = layer_list(default_layer(model, shape) if layers is None else layers)
    path, n = Path(out), len(ids)
    store = store_for(path)
    plan = Plan(path, tuple(methods), tuple(names), target, region, batch_size, n, grid)
    run = json.dumps({"model": model_fingerprint(model), "methods": methods, "layers": names,
                      "target": describe_target(target), "region": describe_region(region), "samples": n,
                      "first_id": ids[0], "last_id": ids[-1], "batch_size": batch_size, "size": list(grid)})
    done = _resume(store, run, overwrite)
    if done is None:
        per_sample = {"target_class": ("sample", np.full(n, -1, dtype=np.int64)),
                      "batch_done": ("batch", np.zeros(plan.batches, dtype=np.int8))}
        if isinstance(data, ImageSet):
            per_sample["label"] = ("sample", data.labels.numpy())
        axes = {axis: np.arange(k) for axis, k in zip(axis_names(len(grid)), grid)}
        template = xr.Dataset(per_sample, coords={"sample": ids, "cam_method": methods, "layer": names, **axes},
                              attrs={"run": run, "model_fingerprint": model_fingerprint(model),
                                     "target": describe_target(target), "class_names": list(class_names or []),
                                     "complete": 0})
        store.create(template, (len(methods), len(names), n, *grid), batch_size)
        done = np.zeros(plan.batches, dtype=bool)
    return plan, [int(i) for i in np.flatnonzero(~done)]


def explain_dataset(model: nn.Module | str | Path, data: ImageSet | torch.Tensor | DataSpec, out,
                    methods: str | Sequence[str] = "gradcam", layers: str | Sequence[str] | None = None,
                    target: Target = "predicted", region=None, batch_size: int | None = None, progress: bool = True,
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
