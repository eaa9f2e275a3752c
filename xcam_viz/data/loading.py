"""The one way a data set is named by a path or word (CLI, batch runs, the dashboard): `load_data`."""
from __future__ import annotations

from pathlib import Path

from .examples import EXAMPLES, example
from .imageset import ImageSet
from .medical import load_medical
from .sources import MEDMNIST_SPLITS, load_folder, load_medmnist, load_zarr
from .transform import CHANNELS

LARGEST_INPUT = 224     # px on the longer side that larger images are fitted down to when neither size= nor the
                        # model says (the ImageNet convention most CNN checkpoints were trained at; fast on a CPU)
UNNAMED_SPLIT = "train"  # the split one unnamed folder or manifest becomes


def load_data(spec, split: str = "test", n: int | None = None, size: tuple[int, int] | None = None,
              channels: int | None = None, window=None) -> ImageSet:
    """A named example set (`EXAMPLES`: 'demo', 'volumes', 'decoy-digits'; its split, n samples), a MedMNIST
    .npz, a zarr store (arrays images, labels), NIfTI / DICOM files, an image folder or a CSV manifest; every
    file source is lazy. n: the first n images; size: (H, W) to fit to; channels: 1 or 3 to convert grey and
    colour (see `load_folder`); window: the display window NIfTI / DICOM volumes are read through (a preset of
    `xv.data.WINDOWS` or (level, width); default each volume's min..max)."""
    if str(spec) in EXAMPLES:
        return example(str(spec), split, n)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data {str(spec)!r} not found: give an example set ({', '.join(EXAMPLES)}), "
                                "a MedMNIST .npz file, a zarr store, an image folder or a CSV manifest")
    if path.suffix == ".npz":
        data = load_medmnist(path, split=split, size=size, channels=channels)
    elif path.suffix == ".zarr":
        data = load_zarr(path, size=size, channels=channels)
    elif (medical := load_medical(path, size, window)) is not None:      # NIfTI or DICOM files, or a folder of them
        data = medical
    else:
        data = load_folder(path, size=size, channels=channels)
    return data.subset(range(min(n, len(data)))) if n else data


def load_splits(spec, size: tuple[int, int] | None = None, channels: int | None = None,
                model=None, window=None) -> dict[str, ImageSet] | None:
    """Named splits from an ImageSet, a dict of them, or specs 'name=path' / 'path' (each as `load_data`,
    the name being the split of a MedMNIST file); None stays None.

    One unnamed folder or manifest is the split "train"; an unnamed MedMNIST file gives its train, val and
    test splits. Paths are fitted to one input size for every split: `size`, else what `model` declares,
    else the first split's own (fitted down to `LARGEST_INPUT` px on its longer side, aspect kept); their
    channels are `channels`, else what `model` takes (`model_input`).
    """
    if spec is None or isinstance(spec, dict):
        return spec
    if isinstance(spec, ImageSet):
        return {spec.attrs.get("split", "data"): spec}
    takes_channels, takes_size = model_input(model) if model is not None else (None, None)
    channels = channels or (takes_channels if takes_channels in CHANNELS else None)
    items = [str(item) for item in ([spec] if isinstance(spec, (str, Path)) else spec)]
    named = [(name, path) for name, _, path in (item.rpartition("=") for item in items)]

    def load(size):
        splits = {}
        for name, path in named:
            if not name and path.endswith(".npz"):
                splits.update({s: load_data(path, s, size=size, channels=channels, window=window)
                               for s in _npz_splits(path)})
            else:
                name = name or (UNNAMED_SPLIT if len(named) == 1 else Path(path).stem)
                splits[name] = load_data(path, split=name, size=size, channels=channels, window=window)
        return splits

    size = size or takes_size
    splits = load(size)
    first = tuple(next(iter(splits.values())).image_shape[1:])
    wanted = size or (_fitted_down(first) if len(first) == 2 else first)      # volumes: their own size
    if any(tuple(data.image_shape[1:]) != tuple(wanted) for data in splits.values()):
        splits = load(wanted)
    return splits


def _npz_splits(path: str) -> list[str]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return [s for s in MEDMNIST_SPLITS if f"{s}_images" in z.files] or ["test"]


def _fitted_down(shape: tuple[int, int]) -> tuple[int, int]:
    """(H, W) scaled so the longer side is at most LARGEST_INPUT (aspect kept)."""
    scale = LARGEST_INPUT / max(shape)
    return tuple(shape) if scale >= 1 else tuple(max(1, round(s * scale)) for s in shape)


def model_input(model) -> tuple[int | None, tuple[int, int] | None]:
    """The channel count and input size (H, W) a model takes, where it says: its build arguments (or its
    first convolution) for the channels; its declared input size (`xv.models.input_shape_of`) for the size."""
    from torch import nn

    from ..models import input_shape_of

    channels = getattr(model, "xcam_arch", {}).get("in_channels")
    if channels is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = conv.in_channels if conv is not None else None
    try:
        size = tuple(input_shape_of(model)[1:])
    except ValueError:
        size = None
    return channels, size


def check_channels(model, splits: dict[str, ImageSet]) -> None:
    """Refuse splits whose channel count differs from the model's (when the model says), naming channels=."""
    takes = model_input(model)[0]
    for name, data in splits.items():
        have = data.image_shape[0]
        if takes is not None and have != takes:
            fix = (f"load them with channels={takes} (xcam-viz serve --channels {takes}; xv.data.load_folder(..., "
                   f"channels={takes}))" if takes in (1, 3) else
                   f"channels= converts only between grey (1) and colour (3): give {takes}-channel images")
            raise ValueError(f"the model takes {takes}-channel images but split {name!r} has {have}: {fix}")
