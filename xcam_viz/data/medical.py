"""Medical files (NIfTI, DICOM): the voxel-grid rule both loaders share, their lazy reader, and `save_nifti`.

Axis order. A file's voxel array has axes (i, j, k) and a 4×4 affine to world RAS millimetres (NIfTI's
order; a DICOM series is stacked as (column, row, slice)). A volume is turned to the closest canonical
orientation (as `nibabel.as_closest_canonical`: i toward the patient's Right, j Anterior, k Superior),
then its axes are reversed: the ImageSet's D×H×W is (z, y, x) = (k, j, i), so z runs inferior to
superior, y posterior to anterior and x the patient's left to right. A single DICOM image stays as
acquired: H×W = (row, column). `Geometry(affine, shape)` keeps the source's own grid and affine, and
`save_nifti` undoes resampling, reversal and reorientation, so a map lies voxel for voxel on the scan.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..spatial import resize_maps
from .imageset import Geometry, ImageSet
from .lazy import Reader
from .transform import fit, fit_masks
from .windows import window_label

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """A NIfTI file's name without .nii / .nii.gz."""
    name = path.name
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4] if name.lower().endswith(".nii") else name


def orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel's (axis, flip) rows taking a grid with this affine to the closest canonical (RAS) one."""
    return nib.orientations.io_orientation(affine)


def canonical_zyx(raw: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A source array (i, j, k) in the ImageSet's volume order: closest canonical, axes reversed (z, y, x)."""
    return np.ascontiguousarray(nib.orientations.apply_orientation(raw, orientation(affine)).T)


def grid_order(values: Sequence, geometry: Geometry) -> tuple:
    """Per-axis values of the source grid (sizes, zooms) in the ImageSet's axis order (z, y, x) or (y, x)."""
    values = list(values)
    if len(geometry.shape) == 3:
        canonical = [None] * 3
        for axis, (target, _) in enumerate(orientation(geometry.affine)):
            canonical[int(target)] = values[axis]
        values = canonical
    return tuple(values[::-1])


def to_source(map_: torch.Tensor, geometry: Geometry) -> np.ndarray:
    """A map on an ImageSet grid back on its source's own grid: resized, axes reversed, orientation undone."""
    grid = grid_order(geometry.shape, geometry)
    source = resize_maps(map_[None].float(), grid)[0].numpy().T
    if len(geometry.shape) == 3:
        ornt = orientation(geometry.affine)
        source = np.flip(np.transpose(source, ornt[:, 0].astype(int)), tuple(np.flatnonzero(ornt[:, 1] < 0)))
    return np.ascontiguousarray(source, dtype=np.float32)


class MedicalReader(Reader):
    """Medical files read sample by sample: a subclass's `load(i)` gives the unit image C×*S (windowed, ImageSet
    axis order, source resolution) and the mask *S or None; this fits both to `shape`."""

    def __init__(self, shape: tuple[int, ...], window):
        self.shape, self.window = tuple(shape), window

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def read(self, positions):
        images, masks = [], []
        for i in positions:
            image, mask = self.load(int(i))
            images.append(fit(torch.from_numpy(image)[None], self.shape))
            if self.has_masks:
                masks.append(fit_masks(torch.from_numpy(mask)[None], self.shape[1:]))
        return torch.cat(images), (torch.cat(masks) if self.has_masks else None)


def medical_set(reader: MedicalReader, geometry: list[Geometry], zooms: list[Sequence[float]], labels, ids,
                class_names, size, source: str, default_window: str = "min-max") -> ImageSet:
    """The lazy ImageSet of a medical reader: spacing (z, y, x mm) when every sample has the same one on the
    set's grid (else None; each sample's own is in `geometry`), window and size in attrs."""
    grid = reader.shape[1:]
    spacings = [np.asarray(grid_order(z, g)) * grid_order(g.shape, g) / grid for z, g in zip(zooms, geometry)]
    same = all(np.allclose(s, spacings[0], rtol=1e-3) for s in spacings)
    labels = torch.zeros(len(ids), dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
    return ImageSet(reader, labels, ids=ids, class_names=class_names, geometry=geometry,
                    spacing=tuple(spacings[0]) if same else None,
                    attrs={"source": source, "window": window_label(reader.window, default_window),
                           "size": "×".join(map(str, grid)) if size else "source"})


def save_nifti(maps, folder, like: ImageSet) -> list[Path]:
    """Write one NIfTI per sample, `folder/<sample id>.nii.gz`, in the source file's own shape and affine.

    Args:
        maps: an xarray DataArray (sample, z, y, x) from `xv.explain` (samples matched by id), or a tensor /
            array N×D×H×W (N×H×W for 2-D DICOM images) in `like`'s order; any grid (e.g. `size=`'s) is
            resampled (trilinear) back onto the source grid.
        folder: where to write (created).
        like: the ImageSet the maps explain, read by `load_nifti` or `load_dicom` (it holds each geometry).

    Returns the written paths. Everything is checked before the first file is written.

    Example:
        >>> import pathlib, nibabel, xcam_viz as xv
        >>> scan = pathlib.Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
        >>> ds = xv.data.load_nifti([scan], size=(16, 16, 16))
        >>> [path] = xv.data.save_nifti(ds.read([0])[0][:, 0], "maps", like=ds)   # or xv.explain(model, ds)
        >>> nibabel.load(path).shape
        (33, 41, 25)
    """
    if like.geometry is None:
        raise ValueError("`like` has no source geometry (it was not read from medical files); load it with "
                         "xv.data.load_nifti or xv.data.load_dicom so maps can be written onto the scans")
    if hasattr(maps, "dims") and "sample" in maps.dims:
        ids = [str(s) for s in maps.coords["sample"].values]
        values = torch.as_tensor(np.asarray(maps.transpose("sample", ...).values))
    else:
        values = torch.as_tensor(np.asarray(maps))
        ids = list(like.ids)
        if len(values) != len(ids):
            raise ValueError(f"{len(values)} maps for {len(ids)} samples: give one map per sample of `like`, in "
                             "its order (or a DataArray with sample ids)")
    positions = [like.index_of(sample_id) for sample_id in ids]
    if values.ndim - 1 != like.spatial_dims:
        raise ValueError(f"maps have shape {tuple(values.shape)} but `like` holds {like.spatial_dims}-D samples: "
                         f"give N×{'×'.join('DHW'[-like.spatial_dims:])} maps")
    folder = Path(folder)
    written = []
    for sample_id, position, map_ in zip(ids, positions, values):
        geometry = like.geometry[position]
        path = folder / f"{sample_id}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image(to_source(map_, geometry), np.asarray(geometry.affine, dtype=np.float64))
        image.header.set_xyzt_units("mm")
        nib.save(image, path)
        written.append(path)
    return written


def medical_kind(path: Path) -> str | None:
    """'nifti' for a .nii / .nii.gz file, a folder holding some or a CSV manifest listing them (`load_nifti`),
    'dicom' for a DICOM file or a folder holding one (by suffix or the DICM preamble; a folder is sampled, not
    walked whole), else None."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            first = next(csv.DictReader(f), None) or {}
        return "nifti" if is_nifti(Path(first.get("path") or "")) else None
    files = [path] if path.is_file() else [p for p, _ in zip((p for p in path.rglob("*") if p.is_file()), range(50))]
    if any(is_nifti(p) for p in files):
        return "nifti"
    return "dicom" if any(_is_dicom(p) for p in files) else None


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def load_medical(path: Path, size=None, window=None) -> ImageSet | None:
    """`load_nifti` / `load_dicom` of a path that holds medical files (see `medical_kind`), else None."""
    kind = medical_kind(path)
    if kind == "nifti":
        from .nifti import load_nifti
        return load_nifti(path, size=size, window=window)
    if kind == "dicom":
        from .dicom import load_dicom
        return load_dicom(path, size=size, window=window)
    return None
