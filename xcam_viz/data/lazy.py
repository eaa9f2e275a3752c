"""Lazy image readers: collections decoded batch by batch, never held whole.

A reader knows its length and output shape (C, H, W) and decodes any positions on demand into
N×C×H×W float32 in [0, 1], fitted to that shape (`transform.fit`). It is small and picklable: it
holds paths and keys, never pixels, so a Dask worker or a DataLoader worker gets the reader and
opens the files itself. `ImageSet` wraps a reader with labels and ids (`ImageSet(reader, labels)`).
"""
from __future__ import annotations

import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .transform import fit, fit_masks

DEFAULT_BUDGET = 2 * 2**30
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def memory_budget(budget: int | str | None = None) -> int:
    """Bytes a data set may materialise at once: `budget`, else $XCAM_VIZ_MEMORY_BUDGET (e.g. "4GB"), else 2 GB."""
    value = budget if budget is not None else os.environ.get("XCAM_VIZ_MEMORY_BUDGET", DEFAULT_BUDGET)
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmg]?b?)\s*", str(value).lower())
    if not m:
        raise ValueError(f"memory budget {value!r} not understood: give bytes or a size such as '512MB' or '4GB'")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def check_budget(nbytes: int, what: str, budget: int | str | None = None) -> None:
    """Refuse to materialise more than the memory budget, saying how to stream instead."""
    limit = memory_budget(budget)
    if nbytes > limit:
        raise MemoryError(f"materialising {what} needs {nbytes / 2**30:.2f} GB, more than the memory budget of "
                          f"{limit / 2**30:.2f} GB: stream it batch by batch (ds.batches(n), ds[i], ds.loader()), "
                          "or raise the budget (XCAM_VIZ_MEMORY_BUDGET=8GB, or ds.materialize(budget=...))")


class Reader:
    """Base of the lazy readers: `len`, `shape` (C, H, W), `read(positions)`, `subset(positions)`."""

    shape: tuple[int, int, int]
    crop: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images N×C×H×W float32 in [0, 1] (fitted to `shape`) and masks N×H×W bool or None."""
        raise NotImplementedError

    def subset(self, positions: Sequence[int]) -> Reader:
        return Subset(self, positions)

    @property
    def has_masks(self) -> bool:
        return False

    def decode(self, position: int) -> np.ndarray | None:
        """The image at `position` as stored in its file (H×W or H×W×C, uint8 / uint16); None without files."""
        return None

    def fit(self, stored: np.ndarray) -> torch.Tensor:
        """A decoded image (`decode`) as `read` gives it: 1×C×H×W float32 fitted to `shape`."""
        raise NotImplementedError


class Subset(Reader):
    """Some positions of another reader."""

    def __init__(self, base: Reader, positions: Sequence[int]):
        self.base, self.positions = base, np.asarray(positions, dtype=np.int64)
        self.shape, self.crop = base.shape, base.crop

    def __len__(self) -> int:
        return len(self.positions)

    def read(self, positions):
        return self.base.read(self.positions[np.asarray(positions, dtype=np.int64)].tolist())

    def subset(self, positions):
        return Subset(self.base, self.positions[np.asarray(positions, dtype=np.int64)])

    @property
    def has_masks(self) -> bool:
        return self.base.has_masks

    def decode(self, position):
        return self.base.decode(int(self.positions[position]))

    def fit(self, stored):
        return self.base.fit(stored)


class FileReader(Reader):
    """Image files (any size or mode; fitted to `shape`), with optional mask files, decoded with Pillow."""

    def __init__(self, paths: Sequence[Path], shape: tuple[int, int, int], masks: Sequence[Path] | None = None,
                 crop: bool = False):
        self.paths = [str(p) for p in paths]
        self.masks = None if masks is None else [str(p) for p in masks]
        self.shape, self.crop = tuple(shape), crop

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def decode(self, position):
        from .sources import read_image
        return read_image(Path(self.paths[position]))

    def fit(self, stored):
        from .sources import unit_image
        return fit(torch.from_numpy(unit_image(stored))[None], self.shape, self.crop)

    def read(self, positions):
        from .sources import read_image
        images, masks = [], []
        for i in positions:
            try:
                img = self.fit(self.decode(i))
            except (OSError, SyntaxError, ValueError) as err:      # Pillow: truncated or damaged pixel data
                warnings.warn(f"image {self.paths[i]} cannot be decoded ({err}); it is shown as a black image",
                              stacklevel=2)
                img = torch.zeros(1, *self.shape)
            images.append(img)
            if self.masks is not None:
                m = torch.from_numpy(read_image(Path(self.masks[i]), "L") > 0)[None]
                masks.append(fit_masks(m, self.shape[1:], self.crop))
        return torch.cat(images), (torch.cat(masks) if self.masks is not None else None)


class ArrayReader(Reader):
    """Images of an array N×H×W[×C] or N×C×H×W (volumes N×[C×]D×H×W; uint8 / uint16 / float in [0, 1]) opened
    by `open()`, sliced per batch: a memory-mapped MedMNIST .npz member or a zarr array."""

    def __init__(self, opener, shape: tuple[int, int, int], scale: float | None, crop: bool = False):
        self.opener, self.shape, self.scale, self.crop = opener, tuple(shape), scale, crop
        self._array = None

    def __getstate__(self):
        return {**self.__dict__, "_array": None}            # workers reopen the file, pixels never travel

    @property
    def array(self):
        if self._array is None:
            self._array = self.opener()
        return self._array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, positions):
        from .sources import channels_first, to_unit_float
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and np.all(np.diff(positions) == 1):
            raw = np.asarray(self.array[int(positions[0]):int(positions[-1]) + 1])
        else:
            raw = np.stack([np.asarray(self.array[int(i)]) for i in positions])
        unit = (raw / np.float32(self.scale)).astype(np.float32) if self.scale else to_unit_float(raw)
        images = channels_first(unit, len(self.shape) - 1)
        return fit(torch.from_numpy(np.ascontiguousarray(images)), self.shape, self.crop), None


class NpzMember:
    """Opens one array of an .npz file memory-mapped (stored members) or loaded (compressed ones)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = str(path), key

    def __call__(self):
        with zipfile.ZipFile(self.path) as z:
            info = z.getinfo(self.key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            with np.load(self.path, allow_pickle=False) as z:
                return z[self.key]
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")
            f.seek(start)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, fortran, dtype = read_header[np.lib.format.read_magic(f)](f)
            offset = f.tell()
        if dtype.hasobject or fortran:
            raise ValueError(f"{self.path}: array {self.key} holds objects or is Fortran-ordered; save plain C arrays")
        return np.memmap(self.path, dtype=dtype, mode="r", shape=shape, offset=offset)


class ZarrMember:
    """Opens one array of a zarr store (read-only)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = str(path), key

    def __call__(self):
        import zarr
        return zarr.open_array(self.path, mode="r", path=self.key)


class DatasetReader(Reader):
    """A torch Dataset whose items are (image, label, ...) or images: tensors C×H×W, arrays or PIL images."""

    def __init__(self, dataset, shape: tuple[int, int, int], crop: bool = False):
        self.dataset, self.shape, self.crop = dataset, tuple(shape), crop

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, positions):
        return torch.cat([fit(item_image(self.dataset[int(i)])[None], self.shape, self.crop)
                          for i in positions]), None


def item_image(item) -> torch.Tensor:
    """The image of a Dataset item as C×H×W float in [0, 1] (a tuple's first element; PIL, array or tensor)."""
    from .sources import unit_image
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, torch.Tensor):
        image = image.float() if image.is_floating_point() else image.float() / 255
        return image[None] if image.ndim == 2 else image
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return torch.from_numpy(unit_image(arr))
