"""`FeedbackSet`: the per-sample union of feedback, in tensors, ready for fine-tuning."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from ..data import ImageSet
from ..spatial import axis_names

NO_LABEL = -1


@dataclass
class FeedbackSet:
    """Feedback for K samples: relevant / irrelevant masks (K×H×W, or K×D×H×W for volumes, bool; all
    False where a sample has none), which samples have each kind, and class corrections (`labels`,
    -1 = none).

    `FeedbackStore.feedback()` and `xv.feedback.simulate()` return one; `xv.finetune` takes one.
    """

    sample_ids: list[str]
    relevant: torch.Tensor
    irrelevant: torch.Tensor
    has_relevant: torch.Tensor
    has_irrelevant: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __repr__(self) -> str:
        size = "×".join(map(str, self.relevant.shape[1:]))
        return (f"FeedbackSet({len(self)} samples {size}: {int(self.has_relevant.sum())} relevant, "
                f"{int(self.has_irrelevant.sum())} irrelevant, {int((self.labels >= 0).sum())} labels)")

    @classmethod
    def empty(cls, shape: tuple[int, ...] = (0, 0)) -> FeedbackSet:
        none = torch.zeros(0, dtype=torch.bool)
        return cls([], torch.zeros(0, *shape, dtype=torch.bool), torch.zeros(0, *shape, dtype=torch.bool),
                   none, none, torch.zeros(0, dtype=torch.long))

    def painted(self, kind: str) -> torch.Tensor:
        """The `kind` ("relevant" or "irrelevant") masks, all False on the samples flagged without one."""
        masks = getattr(self, kind)
        has = getattr(self, f"has_{kind}")
        return masks & has.view(-1, *(1,) * (masks.ndim - 1))

    def subset(self, keep) -> FeedbackSet:
        """The feedback of the positions `keep` (an index or bool tensor)."""
        keep = torch.as_tensor(keep)
        idx = keep.nonzero().flatten() if keep.dtype == torch.bool else keep.long()
        return FeedbackSet([self.sample_ids[i] for i in idx.tolist()], self.relevant[idx], self.irrelevant[idx],
                           self.has_relevant[idx], self.has_irrelevant[idx], self.labels[idx])

    def align(self, dataset: ImageSet) -> tuple[torch.Tensor, FeedbackSet]:
        """Positions in `dataset` of the samples with feedback, and the feedback restricted to them.

        Samples the data set does not hold are left out with a warning; none in common, or masks
        of another size than the images, is an error.
        """
        known = [dataset._index.get(s) for s in self.sample_ids]
        keep = torch.tensor([k is not None for k in known], dtype=torch.bool)
        if len(self) and not keep.any():
            raise ValueError(f"none of the {len(self)} samples with feedback is in the data set (feedback ids "
                             f"look like {self.sample_ids[:3]}, data set ids like {dataset.ids[:3]}); "
                             "fine-tune on the data set the feedback was given on")
        if not keep.all():
            warnings.warn(f"{int((~keep).sum())} samples with feedback are not in the data set and are ignored "
                          f"(e.g. {[s for s, k in zip(self.sample_ids, known) if k is None][:3]})", stacklevel=2)
        fb = self.subset(keep)
        if len(fb) and (fb.has_relevant.any() or fb.has_irrelevant.any()) \
                and tuple(fb.relevant.shape[1:]) != tuple(dataset.image_shape[1:]):
            raise ValueError(f"feedback masks are {tuple(fb.relevant.shape[1:])} but the images are "
                             f"{tuple(dataset.image_shape[1:])}; give masks of the images' size")
        return torch.tensor([k for k in known if k is not None], dtype=torch.long), fb

    def to_xarray(self) -> xr.Dataset:
        """xr.Dataset relevant/irrelevant(sample, y, x) (volumes: sample, z, y, x), has_relevant,
        has_irrelevant, label(sample)."""
        names = axis_names(self.relevant.ndim - 1)
        coords = {"sample": list(self.sample_ids), **{a: np.arange(n) for a, n in zip(names, self.relevant.shape[1:])}}
        return xr.Dataset({"relevant": (("sample", *names), self.relevant.numpy()),
                           "irrelevant": (("sample", *names), self.irrelevant.numpy()),
                           "has_relevant": ("sample", self.has_relevant.numpy()),
                           "has_irrelevant": ("sample", self.has_irrelevant.numpy()),
                           "label": ("sample", self.labels.numpy())}, coords=coords)

    def write(self, store, author: str = "simulated", model_version: str | None = None) -> list[int]:
        """Add this feedback to a `FeedbackStore` in one transaction, one annotation per sample; returns the ids."""
        return store.add_many(
            dict(sample_id=sid, relevant=self.relevant[i] if self.has_relevant[i] else None,
                 irrelevant=self.irrelevant[i] if self.has_irrelevant[i] else None,
                 label=int(self.labels[i]) if self.labels[i] >= 0 else None, author=author,
                 model_version=model_version)
            for i, sid in enumerate(self.sample_ids))
