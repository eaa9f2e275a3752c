"""What a function that explains images was given, an ImageSet or a tensor, read batch by batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .imageset import ImageSet


@dataclass(frozen=True)
class Inputs:
    """Images to explain: their count, shape C×H×W (volumes C×D×H×W), ids, class names (None for a tensor)
    and a reader."""

    data: ImageSet | torch.Tensor
    ids: list[str]
    class_names: list[str] | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.image_shape) if isinstance(self.data, ImageSet) else tuple(self.data.shape[1:])

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Images start..stop (decoded only for them when the ImageSet is lazy)."""
        if isinstance(self.data, ImageSet):
            return self.data.read(range(start, min(stop, len(self))))[0]
        return self.data[start:stop]

    def all(self) -> torch.Tensor:
        return self.read(0, len(self))


def inputs_of(data, name: str = "data") -> Inputs:
    """An ImageSet or a tensor N×C×H×W / N×C×D×H×W (one image C×H×W becomes N = 1; a 4-D tensor is always a
    batch of images, so one volume is given as 1×C×D×H×W) as `Inputs`; a TypeError otherwise."""
    if isinstance(data, ImageSet):
        return Inputs(data, list(data.ids), list(data.class_names))
    if isinstance(data, torch.Tensor) and data.ndim == 3:
        data = data.unsqueeze(0)
    if isinstance(data, torch.Tensor) and data.ndim in (4, 5):
        return Inputs(data, [str(i) for i in range(len(data))], None)
    shape = tuple(data.shape) if hasattr(data, "shape") else ""
    raise TypeError(f"{name} must be an ImageSet or a float tensor N×C×H×W (or C×H×W) or volumes N×C×D×H×W, got "
                    f"{type(data).__name__}{shape}; wrap arrays with xv.data.from_arrays or torch.as_tensor")
