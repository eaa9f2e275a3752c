"""NIfTI volumes (.nii / .nii.gz) read with nibabel: headers on opening, voxels per batch."""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .imageset import Geometry, ImageSet
from .medical import MedicalReader, canonical_zyx, grid_order, is_nifti, medical_set, nifti_stem
from .windows import apply_window, resolve_window

AFFINE_TOLERANCE_MM = 1e-3


def open_nifti(path: Path, volume: int | None = None) -> nib.Nifti1Image:
    """The header of a 3-D NIfTI file (voxels stay on disk); 4-D files need `volume`."""
    try:
        image = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable NIfTI file ({err}); give .nii / .nii.gz files "
                         "(DICOM: xv.data.load_dicom)") from None
    shape = image.shape
    if len(shape) < 3:
        raise ValueError(f"{path} is {len(shape)}-D (shape {shape}); load_nifti reads volumes")
    extra = [s for s in shape[3:] if s > 1]
    if len(extra) > 1 or len(shape) > 5:
        raise ValueError(f"{path} has shape {shape}; only 3-D files and 4-D series of volumes are read")
    if extra and volume is None:
        raise ValueError(f"{path} is 4-D: {extra[0]} volumes of {shape[:3]}; pick one with "
                         f"load_nifti(..., volume=i) (0 <= i < {extra[0]}), or save one with nibabel "
                         "(nib.save(img.slicer[..., i], 'one.nii.gz'))")
    if volume is not None and not 0 <= volume < (extra[0] if extra else 1):
        raise ValueError(f"volume={volume} but {path} holds {extra[0] if extra else 1} volume(s)")
    return image


def voxels(image: nib.Nifti1Image, volume: int | None) -> np.ndarray:
    """The 3-D voxel array (i, j, k) of an opened file, scaled by its header (only that volume is read)."""
    index = (slice(None),) * 3 + tuple((volume or 0) if size > 1 else 0 for size in image.shape[3:])
    return np.asarray(image.dataobj[index], dtype=np.float32)


class NiftiReader(MedicalReader):
    """NIfTI files (and label-map masks) read one volume at a time; holds paths only."""

    def __init__(self, paths: Sequence[Path], geometry: Sequence[Geometry], shape: tuple[int, ...], window,
                 masks: Sequence[Path] | None = None, mask_label: int | None = None, volume: int | None = None):
        super().__init__(shape, window)
        self.paths = [str(p) for p in paths]
        self.affines = [g.affine for g in geometry]
        self.masks = None if masks is None else [str(p) for p in masks]
        self.mask_label, self.volume = mask_label, volume

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def load(self, i):
        values = voxels(nib.load(self.paths[i]), self.volume)
        image = apply_window(canonical_zyx(values, self.affines[i]), self.window)[None]
        if self.masks is None:
            return image, None
        labels = voxels(nib.load(self.masks[i]), None)
        mask = labels != 0 if self.mask_label is None else labels == self.mask_label
        return image, canonical_zyx(mask, self.affines[i])


def load_nifti(images, masks=None, labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
               window=None, size: tuple[int, int, int] | None = None, mask_label: int | None = None,
               volume: int | None = None) -> ImageSet:
    """A lazy ImageSet of NIfTI volumes (C=1, D×H×W = z, y, x in RAS canonical orientation; see data/medical.py).

    Args:
        images: a list of .nii / .nii.gz paths (ids: the file names), a folder of them (searched recursively;
            ids: the paths relative to it), or a CSV manifest with columns `path,label[,mask]` (paths relative
            to the CSV; labels integers or class names).
        masks: label-map files, one per image (a list, or a folder with the images' relative paths); each
            must share its image's grid (shape and affine).
        labels: one integer class per image (default all 0); class_names: their names.
        window: a preset of `xv.data.WINDOWS` ("ct-lung", "mri", ...) or (level, width); default each
            volume's min..max.
        size: (D, H, W) to resample every volume to (trilinear), e.g. the model's input; default the first
            volume's grid (others are resampled to it).
        mask_label: the label value that makes the mask (default: any non-zero value).
        volume: which volume of 4-D files to read.

    Only headers are read here; voxels are read batch by batch, and the set pickles as paths.

    Example:
        >>> import pathlib, nibabel, xcam_viz as xv
        >>> scan = pathlib.Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
        >>> ds = xv.data.load_nifti([scan], window="mri", size=(16, 16, 16))
        >>> ds.image_shape, ds.geometry[0].shape
        ((1, 16, 16, 16), (33, 41, 25))
    """
    paths, masks, labels, class_names, root = _entries(images, masks, labels, class_names)
    resolve_window(window)
    heads = [open_nifti(p, volume) for p in paths]
    geometry = [Geometry(np.asarray(h.affine, dtype=np.float64), tuple(h.shape[:3])) for h in heads]
    for path, mask, head in zip(paths, masks or (), heads):
        _check_mask_grid(path, head, open_nifti(mask))
    grid = tuple(size) if size else grid_order(geometry[0].shape, geometry[0])
    if len(grid) != 3:
        raise ValueError(f"size {size} must be (D, H, W)")
    ids = [nifti_stem(p) for p in paths]
    if isinstance(images, (str, os.PathLike)) or len(set(ids)) < len(ids):      # a folder or CSV: relative paths
        ids = [(relative.parent / nifti_stem(relative)).as_posix() for relative in (Path(os.path.relpath(p, root))
                                                                                     for p in paths)]
    reader = NiftiReader(paths, geometry, (1, *grid), window, masks, mask_label, volume)
    return medical_set(reader, geometry, [h.header.get_zooms()[:3] for h in heads], labels, ids, class_names,
                       size, str(root))


def _entries(images, masks, labels, class_names):
    """(absolute image paths, mask paths or None, labels, class names, root of the ids) of a list, folder or CSV."""
    if isinstance(images, (str, os.PathLike)):
        source = Path(images).absolute()
        if source.suffix.lower() == ".csv":
            return _manifest(source, class_names)
        if not source.exists():
            raise FileNotFoundError(f"{source} does not exist; give NIfTI files, a folder of them or a CSV manifest")
        paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file() and is_nifti(p))
        root = source.parent if source.is_file() else source
    else:
        paths = [Path(p).absolute() for p in images]
        root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path.cwd()
    if not paths:
        raise ValueError(f"no .nii / .nii.gz files in {images}")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} does not exist ({len(missing)} of {len(paths)} files missing)")
    if masks is not None:
        masks = _mask_paths(masks, paths, root)
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(paths)} volumes but {len(labels)} labels: give one label per volume")
    return paths, masks, labels, class_names, root


def _mask_paths(masks, paths: list[Path], root: Path) -> list[Path]:
    if isinstance(masks, (str, os.PathLike)):
        folder = Path(masks).absolute()
        masks = [folder / p.relative_to(root) for p in paths]
    masks = [Path(m).absolute() for m in masks]
    if len(masks) != len(paths):
        raise ValueError(f"{len(paths)} volumes but {len(masks)} masks: give one mask per volume")
    for image, mask in zip(paths, masks):
        if not mask.is_file():
            raise FileNotFoundError(f"mask {mask} for {image} does not exist")
    return masks


def _manifest(path: Path, class_names):
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a CSV manifest with columns path,label[,mask]")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise ValueError(f"{path} must be a CSV with a header 'path,label[,mask]' and at least one row")
    raw = [r["label"].strip() for r in rows]
    if all(v.isdigit() for v in raw):
        labels = [int(v) for v in raw]
    else:
        class_names = class_names or sorted(set(raw))
        labels = [list(class_names).index(v) for v in raw]
    paths = [path.parent / r["path"] for r in rows]
    if len({bool(r.get("mask")) for r in rows}) > 1:
        raise ValueError(f"{path}: some rows have a mask and some do not; give a mask for every volume or none")
    masks = [path.parent / r["mask"] for r in rows] if rows[0].get("mask") else None
    paths, masks, labels, class_names, _ = _entries(paths, masks, labels, class_names)
    return paths, masks, labels, class_names, path.parent


def _check_mask_grid(path: Path, image: nib.Nifti1Image, mask: nib.Nifti1Image) -> None:
    """Refuse a mask whose voxel grid (shape, affine) is not its image's."""
    if mask.shape[:3] != image.shape[:3] or not np.allclose(mask.affine, image.affine, atol=AFFINE_TOLERANCE_MM):
        raise ValueError(
            f"mask {mask.get_filename()} does not lie on the grid of {path}: shape {mask.shape[:3]} vs "
            f"{image.shape[:3]}, affine\n{np.round(mask.affine, 3)}\nvs\n{np.round(image.affine, 3)}\n"
            "resample the mask onto its image (nibabel.processing.resample_from_to(mask, image, order=0)) and "
            "save it, or give the mask that belongs to this image")
