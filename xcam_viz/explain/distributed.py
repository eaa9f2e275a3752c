"""Batch runs on Dask: every batch of a planned store is one task running `stores.write_batch` on a worker.

The model travels as a checkpoint path (an in-memory model is saved next to the output first) and
is loaded once per worker thread (capture hooks make a model single-threaded). Data never travels
whole: a DataSpec is opened once per worker process, a lazy ImageSet is sent as its reader (paths
and labels) and each task decodes only its own batch; only an in-memory ImageSet or tensor is
scattered (once). Workers write their batches straight into the zarr store, so the store, the
checkpoint and any data folder must be on a filesystem every worker sees (any path on one machine;
a shared filesystem on a cluster). `map_batches` is the one task loop (batch runs and dissection).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
import threading
from pathlib import Path

from tqdm.auto import tqdm

from .stores import DataSpec, Plan, write_batch

_local = threading.local()


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, timeout: float = 10):
    """A Client of the scheduler at `scheduler`, or of a LocalCluster of `workers` single-threaded processes."""
    from dask.distributed import Client, LocalCluster
    if scheduler and workers:
        raise ValueError("give either workers (a local cluster) or scheduler (an existing cluster), not both")
    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, ValueError, TypeError) as err:
            raise ConnectionError(f"cannot reach the Dask scheduler {scheduler!r} ({err}); start one with "
                                  "`dask scheduler` and give its address, e.g. tcp://host:8786") from None
        with client:
            yield client
        return
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def run_on(client, plan: Plan, model, data, batches: list[int], progress: bool) -> None:
    """Write `batches` of the plan as tasks on the client's workers; the first failing task's error is raised
    once every other task has ended."""
    plan = dataclasses.replace(plan, path=plan.path.absolute())
    for _ in map_batches(client, _write, model, data, [(plan, b) for b in batches], plan.path, progress, "explain"):
        pass


def map_batches(client, fn, model, data, tasks: list[tuple], directory: Path, progress: bool, desc: str):
    """Run fn(model, data, *task) for every task on the client's workers and yield the results as they complete.

    The model travels as a checkpoint (a temporary one in `directory` for an in-memory model, removed
    afterwards), loaded once per worker thread; data as a DataSpec, or scattered once (a lazy ImageSet
    is its reader: paths, not pixels). When a task fails, the others end first, then its error is raised.
    """
    from dask.distributed import as_completed, wait

    from ..models import save
    directory = Path(directory).absolute()
    data = data.absolute() if isinstance(data, DataSpec) else client.scatter(data)
    with contextlib.ExitStack() as cleanup:
        if isinstance(model, Path):
            checkpoint = model.absolute()
        else:                               # a temporary checkpoint beside the output, removed afterwards
            fd, name = tempfile.mkstemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".pt")
            os.close(fd)
            checkpoint = save(model, name)
            cleanup.callback(checkpoint.unlink, missing_ok=True)
        futures = [client.submit(_task, fn, str(checkpoint), data, task, pure=False) for task in tasks]
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="batch",
                               disable=not progress):
                yield future.result()
        except Exception:
            wait(futures)               # the other batches finish: no task writes once this returns,
            raise                       # and a re-run redoes only the batches that failed
        finally:
            client.cancel(futures)


def _task(fn, checkpoint: str, data, task: tuple):
    """One batch on a worker: the cached model and data, then `fn` as a serial run would call it."""
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"this worker cannot see {checkpoint}: the output and the checkpoint must be on "
                                "a filesystem shared by every worker")
    return fn(_model(checkpoint), _data(data) if isinstance(data, DataSpec) else data, *task)


def _write(model, data, plan: Plan, batch: int) -> int:
    """`write_batch` of a serial run, once the worker sees the store."""
    if not plan.path.exists():
        raise FileNotFoundError(f"this worker cannot see {plan.path}: the output store must be on a filesystem "
                                "shared by every worker")
    return write_batch(plan, model, data, batch)


def _model(checkpoint: str):
    """The checkpoint's model, loaded once per worker thread (reloaded when the file changes)."""
    from ..models import load
    stat = os.stat(checkpoint)
    key = (checkpoint, stat.st_mtime_ns, stat.st_size)
    if getattr(_local, "key", None) != key:
        _local.key, _local.model = key, load(checkpoint)
    return _local.model


@functools.lru_cache(maxsize=1)
def _data(spec: DataSpec):
    return spec.load()
