"""`ImageSet`: images, labels, optional masks, ids and class names in one torch Dataset.

The images are either one tensor in memory or a lazy `Reader` (`data/lazy.py`) decoded batch by
batch: the same API either way, and `images` / `masks` of a lazy set are materialised only when
asked for, within the memory budget.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr

from ..spatial import axis_names, check_dims
from .lazy import Reader, check_budget


class Sample(NamedTuple):
    """One item of an `ImageSet`: image C×H×W (or C×D×H×W) float in [0, 1], int label, H×W (D×H×W) bool mask
    or None, id."""

    image: torch.Tensor
    label: int
    mask: torch.Tensor | None
    id: str


class Geometry(NamedTuple):
    """Where a volume came from: its source file's voxel grid `shape` and 4×4 voxel-to-world `affine` (RAS mm),
    so maps can be written back onto the scan (`xv.data.save_nifti`)."""

    affine: np.ndarray
    shape: tuple[int, ...]


class ImageSet(torch.utils.data.Dataset):
    """Images N×C×H×W or volumes N×C×D×H×W (float32 in [0, 1], a tensor or a lazy `Reader`) with labels,
    optional ground-truth masks and ids. Every item of one set has the same number of spatial axes.

    ``targets`` (N×H×W or N×D×H×W int64), when given, holds per-pixel class indices for segmentation.
    ``regions`` holds further named bool masks shaped like the masks (e.g. the synthetic confounder).
    A lazy set takes its masks from the reader; targets and regions need images in memory.
    ``spacing`` is the voxel size in mm per spatial axis (z, y, x order), None for plain arrays;
    ``geometry`` one `Geometry` per sample (source grid and affine) for images read from medical files.
    """

    def __init__(
        self,
        images: torch.Tensor | Reader,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        ids: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        targets: torch.Tensor | None = None,
        regions: dict[str, torch.Tensor] | None = None,
        attrs: dict | None = None,
        spacing: Sequence[float] | None = None,
        geometry: Sequence[Geometry] | None = None,
    ):
        n = len(images)
        self._reader = images if isinstance(images, Reader) else None
        if self._reader is not None:
            if targets is not None or regions or masks is not None:
                raise ValueError("a lazy ImageSet takes its masks from its reader and has no targets or regions")
            self.image_shape = tuple(images.shape)
            images = None
        elif images.ndim not in (4, 5):
            raise ValueError(f"images must be N×C×H×W (or volumes N×C×D×H×W), got shape {tuple(images.shape)}; "
                             "use xv.data.from_arrays to convert other layouts")
        else:
            self.image_shape = tuple(images.shape[1:])
        check_dims(len(self.image_shape) - 1, "an image")
        if n == 0:
            raise ValueError("the data set is empty: give at least one image")
        if len(labels) != n:
            raise ValueError(f"{n} images but {len(labels)} labels: give one label per image")
        self._images = None if images is None else images.float()
        self._masks = None
        self.labels = torch.as_tensor(labels).long()
        self.class_names = list(class_names) if class_names is not None else [
            str(c) for c in range(int(self.labels.max()) + 1)]
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise ValueError(f"labels must lie in 0..{len(self.class_names) - 1} "
                             f"(one per class name), found {int(self.labels.min())}..{int(self.labels.max())}")
        self.ids = [str(i) for i in ids] if ids is not None else [f"{i:05d}" for i in range(n)]
        if len(self.ids) != n:
            raise ValueError(f"{n} images but {len(self.ids)} ids: give one id per image")
        if len(set(self.ids)) != n:
            raise ValueError("sample ids must be unique")
        if masks is not None:
            self._masks = self._check_mask(masks, "masks").bool()
        self.targets = None if targets is None else self._check_mask(targets, "targets").long()
        self.regions = {k: self._check_mask(v, k).bool() for k, v in (regions or {}).items()}
        self.attrs = dict(attrs or {})
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        if self.spacing is not None and len(self.spacing) != self.spatial_dims:
            raise ValueError(f"spacing {self.spacing} must give one size in mm per spatial axis "
                             f"({self.spatial_dims} for {'volumes' if self.spatial_dims == 3 else 'images'})")
        self.geometry = None if geometry is None else list(geometry)
        if self.geometry is not None and len(self.geometry) != n:
            raise ValueError(f"{n} images but {len(self.geometry)} geometries: give one per image")
        self._index = {sid: i for i, sid in enumerate(self.ids)}

    @property
    def spatial_dims(self) -> int:
        """2 for images (H×W), 3 for volumes (D×H×W)."""
        return len(self.image_shape) - 1

    def _check_mask(self, m: torch.Tensor, name: str) -> torch.Tensor:
        want = (len(self), *self.image_shape[1:])
        if tuple(m.shape) != want:
            grid = "×".join("DHW"[-self.spatial_dims:])
            raise ValueError(f"{name} must have shape {want} (one {grid} mask per image, same size as the "
                             f"images), got {tuple(m.shape)}")
        return m

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lazy(self) -> bool:
        """True when the images are decoded on demand (and not materialised yet)."""
        return self._reader is not None and self._images is None

    @property
    def has_masks(self) -> bool:
        return self._masks is not None or (self._reader is not None and self._reader.has_masks)

    @property
    def images(self) -> torch.Tensor:
        """All images N×C×H×W; a lazy set decodes them once, within the memory budget (see `materialize`)."""
        if self._images is None:
            self.materialize()
        return self._images

    @property
    def masks(self) -> torch.Tensor | None:
        """Ground-truth masks N×H×W bool, or None; a lazy set decodes them once, within the memory budget."""
        if self._masks is None and self.has_masks:
            self.materialize()
        return self._masks

    def materialize(self, budget: int | str | None = None) -> ImageSet:
        """Decode a lazy set's images (and masks) into memory once; a MemoryError names the size when it would
        exceed `budget` (bytes or '4GB'; default $XCAM_VIZ_MEMORY_BUDGET or 2 GB). Returns self."""
        if self._reader is None or self._images is not None:
            return self
        c, *grid = self.image_shape
        voxels = int(np.prod(grid))
        nbytes = len(self) * voxels * (4 * c + self.has_masks)
        check_budget(nbytes, f"{len(self)} images of {'×'.join(map(str, self.image_shape))} pixels as float32",
                     budget)
        chunks = [self._reader.read(range(s, min(s + 256, len(self)))) for s in range(0, len(self), 256)]
        self._images = torch.cat([im for im, _ in chunks])
        self._masks = torch.cat([m for _, m in chunks]) if self.has_masks else None
        return self

    def read(self, positions) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images N×C×*S and masks N×*S (or None) of some positions, decoded only for them when lazy."""
        idx = torch.as_tensor(positions if isinstance(positions, torch.Tensor) else list(positions), dtype=torch.long)
        if self._images is not None:
            return self._images[idx], None if self._masks is None else self._masks[idx]
        return self._reader.read(idx.tolist())

    def batches(self, batch_size: int = 64) -> Iterator[torch.Tensor]:
        """The images in order, batch_size at a time (decoded batch by batch when lazy)."""
        for start in range(0, len(self), batch_size):
            yield self.read(range(start, min(start + batch_size, len(self))))[0]

    def __getitem__(self, i: int) -> Sample:
        if self._images is not None:
            return Sample(self._images[i], int(self.labels[i]), None if self._masks is None else self._masks[i],
                          self.ids[i])
        images, masks = self._reader.read([int(i)])
        return Sample(images[0], int(self.labels[i]), None if masks is None else masks[0], self.ids[i])

    def __getstate__(self):
        """A lazy set pickles as its reader, labels and ids (what a Dask or DataLoader worker needs), never pixels."""
        state = dict(self.__dict__)
        if self._reader is not None:
            state["_images"] = state["_masks"] = None
        return state

    def __repr__(self) -> str:
        kind = "volumes" if self.spatial_dims == 3 else "images"
        spacing = "" if self.spacing is None else f", spacing={'×'.join(f'{s:g}' for s in self.spacing)} mm"
        return (f"ImageSet({len(self)} {'lazy ' if self.lazy else ''}{kind} {'×'.join(map(str, self.image_shape))}, "
                f"classes={self.class_names}, masks={'yes' if self.has_masks else 'no'}{spacing})")

    def index_of(self, sample_id: str) -> int:
        """Position of a sample id; a clear KeyError if it is not in the set."""
        try:
            return self._index[str(sample_id)]
        except KeyError:
            raise KeyError(f"unknown sample id {sample_id!r}; ids look like {self.ids[:3]}") from None

    def subset(self, indices) -> ImageSet:
        """A new ImageSet with the given positions (a list, range, bool or index tensor)."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.long()
        ids = [self.ids[i] for i in idx.tolist()]
        geometry = None if self.geometry is None else [self.geometry[i] for i in idx.tolist()]
        if self._reader is not None:
            return ImageSet(self._reader.subset(idx.tolist()), self.labels[idx], ids=ids,
                            class_names=self.class_names, attrs=self.attrs, spacing=self.spacing, geometry=geometry)
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return ImageSet(self._images[idx], self.labels[idx], pick(self.masks),
                        ids, self.class_names, pick(self.targets),
                        {k: v[idx] for k, v in self.regions.items()}, self.attrs, self.spacing, geometry)

    def loader(self, batch_size: int = 64, shuffle: bool = False, **kw) -> torch.utils.data.DataLoader:
        """A DataLoader yielding `Sample` batches (masks stacked, or None)."""
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle,
                                           collate_fn=collate, **kw)

    def to_xarray(self) -> xr.Dataset:
        """xr.Dataset with image(sample, channel, y, x), label(sample), mask(sample, y, x) (volumes: z, y, x); a
        lazy set gives dask arrays read batch by batch. Volumes with a spacing get coordinates in mm."""
        c, *grid = self.image_shape
        names = axis_names(self.spatial_dims)
        steps = self.spacing or (1,) * len(grid)
        coords = {"sample": self.ids, "channel": np.arange(c),
                  **{name: np.arange(size) * step for name, size, step in zip(names, grid, steps)}}
        images, masks = (self._lazy_arrays() if self.lazy else
                         (self._images.numpy(), None if self._masks is None else self._masks.numpy()))
        dims = ("sample", *names)
        data = {"image": (("sample", "channel", *names), images),
                "label": (("sample",), self.labels.numpy())}
        if masks is not None:
            data["mask"] = (dims, masks)
        if self.targets is not None:
            data["target"] = (dims, self.targets.numpy())
        for name, m in self.regions.items():
            data[f"region_{name}"] = (dims, m.numpy())
        attrs = {"class_names": list(self.class_names), **{k: v for k, v in self.attrs.items()
                                                            if isinstance(v, (str, int, float))}}
        if self.spacing is not None:
            attrs["spacing_mm"] = list(self.spacing)
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def _lazy_arrays(self, chunk: int = 256):
        """Dask arrays of the images (and masks) whose blocks are batches read by the reader."""
        import dask
        import dask.array as da
        starts = range(0, len(self), chunk)
        blocks = [dask.delayed(self._reader.read, pure=True)(range(s, min(s + chunk, len(self)))) for s in starts]
        sizes = [min(s + chunk, len(self)) - s for s in starts]
        images = da.concatenate([da.from_delayed(b[0], (k, *self.image_shape), np.float32)
                                 for b, k in zip(blocks, sizes)])
        masks = None if not self.has_masks else da.concatenate(
            [da.from_delayed(b[1], (k, *self.image_shape[1:]), bool) for b, k in zip(blocks, sizes)])
        return images, masks


def collate(batch: list[Sample]) -> Sample:
    """Collate `Sample`s into one batched `Sample` (mask None if any is missing)."""
    images, labels, masks, ids = zip(*batch)
    stacked = None if any(m is None for m in masks) else torch.stack(masks)
    return Sample(torch.stack(images), torch.tensor(labels), stacked, list(ids))
