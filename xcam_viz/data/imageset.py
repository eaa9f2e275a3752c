"""`ImageSet`: images, labels, optional masks, ids and class names in one torch Dataset."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import xarray as xr


class Sample(NamedTuple):
    """One item of an `ImageSet`: image C×H×W float in [0, 1], int label, H×W bool mask or None, id."""

    image: torch.Tensor
    label: int
    mask: torch.Tensor | None
    id: str


class ImageSet(torch.utils.data.Dataset):
    """Images (N×C×H×W float32 in [0, 1]) with labels, optional ground-truth masks and ids.

    ``targets`` (N×H×W int64), when given, holds per-pixel class indices for segmentation.
    ``regions`` holds further named N×H×W bool masks (e.g. the synthetic confounder).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        ids: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        targets: torch.Tensor | None = None,
        regions: dict[str, torch.Tensor] | None = None,
        attrs: dict | None = None,
    ):
        n = len(images)
        if images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}; "
                             "use xv.data.from_arrays to convert other layouts")
        if n == 0:
            raise ValueError("the data set is empty: give at least one image")
        if len(labels) != n:
            raise ValueError(f"{n} images but {len(labels)} labels: give one label per image")
        self.images = images.float()
        self.labels = labels.long()
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
        self.masks = None if masks is None else self._check_mask(masks, "masks").bool()
        self.targets = None if targets is None else self._check_mask(targets, "targets").long()
        self.regions = {k: self._check_mask(v, k).bool() for k, v in (regions or {}).items()}
        self.attrs = dict(attrs or {})
        self._index = {sid: i for i, sid in enumerate(self.ids)}

    def _check_mask(self, m: torch.Tensor, name: str) -> torch.Tensor:
        want = (len(self.images), *self.images.shape[2:])
        if tuple(m.shape) != want:
            raise ValueError(f"{name} must have shape {want} (one H×W mask per image, same size as the "
                             f"images), got {tuple(m.shape)}")
        return m

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        return Sample(self.images[i], int(self.labels[i]),
                      None if self.masks is None else self.masks[i], self.ids[i])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"ImageSet({len(self)} images {c}×{h}×{w}, classes={self.class_names}, "
                f"masks={'yes' if self.masks is not None else 'no'})")

    def index_of(self, sample_id: str) -> int:
        """Position of a sample id; a clear KeyError if it is not in the set."""
        try:
            return self._index[str(sample_id)]
        except KeyError:
            raise KeyError(f"unknown sample id {sample_id!r}; ids look like {self.ids[:3]}") from None

    def subset(self, indices) -> "ImageSet":
        """A new ImageSet with the given positions (a list, range, bool or index tensor)."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.long()
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return ImageSet(self.images[idx], self.labels[idx], pick(self.masks),
                        [self.ids[i] for i in idx.tolist()], self.class_names, pick(self.targets),
                        {k: v[idx] for k, v in self.regions.items()}, self.attrs)

    def loader(self, batch_size: int = 64, shuffle: bool = False, **kw) -> torch.utils.data.DataLoader:
        """A DataLoader yielding `Sample` batches (masks stacked, or None)."""
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle,
                                           collate_fn=collate, **kw)

    def to_xarray(self) -> xr.Dataset:
        """xr.Dataset with image(sample, channel, y, x), label(sample), mask(sample, y, x)."""
        _, c, h, w = self.images.shape
        coords = {"sample": self.ids, "channel": np.arange(c), "y": np.arange(h), "x": np.arange(w)}
        data = {"image": (("sample", "channel", "y", "x"), self.images.numpy()),
                "label": (("sample",), self.labels.numpy())}
        if self.masks is not None:
            data["mask"] = (("sample", "y", "x"), self.masks.numpy())
        if self.targets is not None:
            data["target"] = (("sample", "y", "x"), self.targets.numpy())
        for name, m in self.regions.items():
            data[f"region_{name}"] = (("sample", "y", "x"), m.numpy())
        attrs = {"class_names": list(self.class_names), **{k: v for k, v in self.attrs.items()
                                                            if isinstance(v, (str, int, float))}}
        return xr.Dataset(data, coords=coords, attrs=attrs)


def collate(batch: list[Sample]) -> Sample:
    """Collate `Sample`s into one batched `Sample` (mask None if any is missing)."""
    images, labels, masks, ids = zip(*batch)
    stacked = None if any(m is None for m in masks) else torch.stack(masks)
    return Sample(torch.stack(images), torch.tensor(labels), stacked, list(ids))
