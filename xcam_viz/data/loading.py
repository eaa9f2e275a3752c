"""The one way a data set is named by a path or word (CLI, batch runs, the dashboard): `load_data`."""
from __future__ import annotations

from pathlib import Path

from .examples import EXAMPLES, example
from .imageset import ImageSet
from .medical import load_medical
from .sources import load_folder, load_medmnist, load_zarr


def load_data(spec, split: str = "test", n: int | None = None, size: tuple[int, int] | None = None) -> ImageSet:
    """A named example set (`EXAMPLES`: 'demo', 'volumes', 'decoy-digits'; its split, n samples), a MedMNIST
    .npz, a zarr store (arrays images, labels), an image folder or a CSV manifest; every file source is lazy.
    n: the first n images; size: (H, W) to fit to."""
    if str(spec) in EXAMPLES:
        return example(str(spec), split, n)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data {str(spec)!r} not found: give an example set ({', '.join(EXAMPLES)}), "
                                "a MedMNIST .npz file, a zarr store, an image folder or a CSV manifest")
    if path.suffix == ".npz":
        data = load_medmnist(path, split=split, size=size)
    elif path.suffix == ".zarr":
        data = load_zarr(path, size=size)
    elif (medical := load_medical(path, size)) is not None:      # NIfTI or DICOM files, or a folder of them
        data = medical
    else:
        data = load_folder(path, size=size)
    return data.subset(range(min(n, len(data)))) if n else data


def load_splits(spec) -> dict[str, ImageSet] | None:
    """Named splits from an ImageSet, a dict of them, or specs 'name=path' / 'path' (each as `load_data`,
    the name being the split of a MedMNIST file); None stays None."""
    if spec is None or isinstance(spec, dict):
        return spec
    if isinstance(spec, ImageSet):
        return {spec.attrs.get("split", "data"): spec}
    splits = {}
    for item in [spec] if isinstance(spec, (str, Path)) else spec:
        name, _, path = str(item).rpartition("=")
        splits[name or Path(path).stem] = load_data(path, split=name or "test")
    return splits
