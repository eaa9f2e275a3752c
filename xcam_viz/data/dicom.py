"""DICOM read with pydicom: single images at full bit depth, and series stacked into volumes by slice position.

Headers are read on opening (to sort slices and check the series); pixel data per batch. Stored values
become modality units (Hounsfield units for CT) through RescaleSlope / RescaleIntercept or the modality
LUT, then a window maps them to [0, 1]: the one given, else the file's own VOI LUT or window, else the
values' min..max. MONOCHROME1 images (bright = low values) are inverted so that bright is high.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder

from .imageset import Geometry, ImageSet
from .medical import MedicalReader, canonical_zyx, grid_order, medical_set
from .windows import apply_window, resolve_window

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_TOLERANCE = 0.05            # a step this much off the median one is a gap (scanners round positions)


def read_header(source: Path | BinaryIO) -> pydicom.Dataset | None:
    """A DICOM image's header (no pixel data) from a file or file object, or None for one that is not a DICOM
    image."""
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError):
        return None
    return ds if "Rows" in ds else None        # DICOMDIR, reports and structure sets carry no image


def check_decodable(ds: pydicom.Dataset, path: Path | str) -> None:
    """Refuse pixel data compressed in a transfer syntax no installed decoder reads, naming the packages."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is None:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ValueError(f"{path}: pixel data in transfer syntax {uid} ({uid.name}) cannot be decoded by pydicom; "
                         "convert the file (e.g. gdcmconv --raw) first") from None
    if not decoder.is_available:
        raise ValueError(f"{path}: pixel data is compressed as {uid.name} ({uid}) and no decoder for it is "
                         f"installed; install one of: {'; '.join(decoder.missing_dependencies)} (pip packages "
                         "pylibjpeg + pylibjpeg-libjpeg / pylibjpeg-openjpeg / pylibjpeg-rle, python-gdcm or "
                         "pyjpegls), or convert the files to uncompressed DICOM")


def modality_values(ds: pydicom.Dataset, path: str) -> np.ndarray:
    """The pixel data in modality units (HU for CT): stored values through the rescale or modality LUT."""
    try:
        pixels = ds.pixel_array
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as err:
        raise ValueError(f"cannot decode the pixel data of {path}: {err}") from None
    if ds.get("SamplesPerPixel", 1) != 1:
        return pixels
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)


def display_values(values: np.ndarray, ds: pydicom.Dataset, window) -> np.ndarray:
    """Modality values to [0, 1]: `window`, else the file's VOI LUT or window, else min..max; colour images by
    their bit depth. MONOCHROME1 is inverted."""
    if ds.get("SamplesPerPixel", 1) != 1:
        return (np.moveaxis(values, -1, 0) / (2 ** ds.BitsStored - 1)).astype(np.float32)
    if window is None and ds.get("VOILUTSequence"):
        unit = apply_voi(np.rint(values).astype(np.int64), ds) / (2 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1)
    else:
        unit = apply_window(values, window if window is not None else file_window(ds))
    unit = unit.astype(np.float32)
    return 1 - unit if ds.get("PhotometricInterpretation") == "MONOCHROME1" else unit


def file_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The file's first WindowCenter / WindowWidth, or None."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    first = lambda v: float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)  # noqa: E731
    return first(ds.WindowCenter), max(first(ds.WindowWidth), 1.0)


class DicomSample(NamedTuple):
    """One DICOM sample found on opening: its files (in slice order), first header, geometry and source zooms."""

    files: list[Path]
    head: pydicom.Dataset
    geometry: Geometry
    zooms: tuple[float, ...]


class DicomReader(MedicalReader):
    """DICOM samples (one file: a 2-D image; several: a volume, in slice order) read one at a time; holds paths."""

    def __init__(self, samples: Sequence[Sequence[Path]], geometry: Sequence[Geometry], shape, window):
        super().__init__(shape, window)
        self.samples = [[str(p) for p in files] for files in samples]
        self.affines = [g.affine for g in geometry]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i):
        files = self.samples[i]
        datasets = [pydicom.dcmread(p) for p in files]
        if len(self.shape) == 3:                                                # a 2-D image: (row, column)
            image = display_values(modality_values(datasets[0], files[0]), datasets[0], self.window)
            return (image if image.ndim == 3 else image[None]), None
        return series_volume(datasets, files, self.affines[i], self.window)[None], None


def series_volume(datasets: Sequence[pydicom.Dataset], names: Sequence[str], affine: np.ndarray, window) -> np.ndarray:
    """The slices of one series (in slice order, with pixel data) as a unit volume in ImageSet order (z, y, x)."""
    stack = np.stack([modality_values(ds, name) for ds, name in zip(datasets, names)])     # (slice, row, column)
    return canonical_zyx(display_values(stack, datasets[0], window).T, affine)


def load_dicom(path, window=None, size: tuple[int, ...] | None = None, labels: Sequence[int] | None = None,
               class_names: Sequence[str] | None = None) -> ImageSet:
    """A lazy ImageSet of DICOM images or volumes.

    Args:
        path: a DICOM file (one 2-D image, e.g. an X-ray or mammogram, at full bit depth), a folder holding one
            series (one volume, slices sorted by ImagePositionPatient along the slice normal, whatever the file
            names), or a folder of series folders (one volume each; a folder of single-image series gives
            one 2-D image per file).
        window: a preset of `xv.data.WINDOWS` ("ct-lung", "ct-soft-tissue", ...) or (level, width) in modality
            units (HU for CT); default the file's own VOI LUT or window, else min..max.
        size: (D, H, W) for volumes or (H, W) for images to resample to; default the first sample's grid.
        labels: one integer class per sample (default all 0); class_names: their names.

    Volumes are D×H×W = (z, y, x) in RAS canonical orientation (see data/medical.py); each sample's geometry
    (affine from ImagePositionPatient / ImageOrientationPatient / PixelSpacing, LPS turned to RAS) lets
    `save_nifti` write maps onto the scan.

    Example:
        >>> import xcam_viz as xv
        >>> from pydicom.data import get_testdata_file
        >>> ct = xv.data.load_dicom(get_testdata_file("CT_small.dcm", download=False), window="ct-soft-tissue")
        >>> ct.image_shape, ct.attrs["window"]
        ((1, 128, 128), 'ct-soft-tissue')
    """
    root = Path(path).absolute()
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; give a DICOM file, a series folder or a folder of them")
    resolve_window(window)
    samples, ids = ([_file_sample(root)], [root.stem]) if root.is_file() else _folder_samples(root)
    for sample in samples:
        check_decodable(sample.head, sample.files[0])
    geometry = [sample.geometry for sample in samples]
    if len({len(g.shape) for g in geometry}) > 1:
        raise ValueError(f"{root} holds both single images and series (volumes); one data set holds one kind: "
                         "load them from separate folders")
    grid = tuple(size) if size else grid_order(geometry[0].shape, geometry[0])
    if len(grid) != len(geometry[0].shape):
        raise ValueError(f"size {size} must have {len(geometry[0].shape)} sizes for these "
                         f"{'volumes' if len(geometry[0].shape) == 3 else 'images'}")
    if labels is not None and len(labels) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(labels)} labels: give one label per sample")
    channels = samples[0].head.get("SamplesPerPixel", 1)
    reader = DicomReader([sample.files for sample in samples], geometry, (channels, *grid), window)
    return medical_set(reader, geometry, [sample.zooms for sample in samples], labels, ids, class_names, size,
                       str(root), default_window="file")


def _file_sample(path: Path) -> DicomSample:
    """One DICOM image file as a sample."""
    head = read_header(path)
    if head is None:
        raise ValueError(f"{path} is not a DICOM image (pydicom cannot read it, or it holds no pixel data); give "
                         "a DICOM file or folder (NIfTI: xv.data.load_nifti)")
    if int(head.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"{path} is a multi-frame file ({head.NumberOfFrames} frames); xcam-viz reads "
                         "single-frame files: export the frames as one file per slice")
    return DicomSample([path], head, *_image_geometry(head))


def _folder_samples(root: Path):
    """The samples of every folder under root that holds DICOM images, and their ids."""
    by_folder, skipped = defaultdict(list), []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        head = read_header(file)
        if head is None:
            skipped.append(file)
        else:
            by_folder[file.parent].append((file, head))
    if not by_folder:
        raise ValueError(f"{root} holds no DICOM images; give a DICOM file or a folder of series "
                         "(NIfTI: xv.data.load_nifti)")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} files under {root} that are no DICOM images (e.g. {skipped[0]})",
                      stacklevel=3)
    samples, ids = [], []
    for folder, entries in by_folder.items():
        prefix = folder.relative_to(root).as_posix() if folder != root else ""
        series = defaultdict(list)
        for file, head in entries:
            series[head.get("SeriesInstanceUID", "")].append((file, head))
        if len(series) > 1 and any(len(v) > 1 for v in series.values()):
            raise ValueError(f"{folder} mixes {len(series)} series (SeriesInstanceUID "
                             f"{', '.join(sorted(series))}); move each series into its own folder (a folder of "
                             "series folders gives one volume each)")
        for files in series.values():
            samples.append(_file_sample(files[0][0]) if len(files) == 1 else _stack(folder, files))
            ids.append(f"{prefix}/{files[0][0].stem}".lstrip("/") if len(series) > 1 else prefix or root.name)
    return samples, ids


def _stack(folder: Path, files: list[tuple[Path, pydicom.Dataset]]) -> DicomSample:
    """One series as a volume, its slices sorted by position along their normal (see `series_grid`)."""
    order, geometry, zooms = series_grid(folder, [file.name for file, _ in files], [head for _, head in files])
    return DicomSample([files[i][0] for i in order], files[order[0]][1], geometry, zooms)


def series_grid(folder, names: Sequence[str], heads: Sequence[pydicom.Dataset]) -> tuple[np.ndarray, Geometry, tuple]:
    """(slice order, geometry, source zooms) of one series' headers, sorted by position along the slices' normal;
    refuses mixed orientations or sizes, colour, repeated positions and gaps. `folder` and `names` (of the
    files) are only named in the errors."""
    if heads[0].get("SamplesPerPixel", 1) != 1:
        raise ValueError(f"{folder}: colour series are not read as volumes; load each file with load_dicom(file)")
    if any("ImagePositionPatient" not in h or "ImageOrientationPatient" not in h for h in heads):
        raise ValueError(f"{folder}: slices without ImagePositionPatient / ImageOrientationPatient cannot be "
                         "stacked into a volume; load each file with load_dicom(file)")
    orientations = {tuple(np.round(np.asarray(h.ImageOrientationPatient, float), 4)) for h in heads}
    sizes = {(h.Rows, h.Columns) for h in heads}
    if len(orientations) > 1 or len(sizes) > 1:
        raise ValueError(f"{folder}: the slices have {len(orientations)} orientations and {len(sizes)} sizes; a "
                         "series must be one stack: move the other images into their own folders")
    row, column = np.asarray(heads[0].ImageOrientationPatient, float).reshape(2, 3)
    normal = np.cross(row, column)
    positions = np.asarray([h.ImagePositionPatient for h in heads], float)
    order = np.argsort(positions @ normal, kind="stable")
    distance = (positions @ normal)[order]
    names = [names[i] for i in order]
    steps = np.diff(distance)
    median = float(np.median(steps))
    if median <= 0:
        raise ValueError(f"{folder}: most slices lie at the same position ({distance[0]:g} mm along the normal): "
                         "several acquisitions in one folder? keep one per folder")
    for k in np.flatnonzero(np.abs(steps - median) > SPACING_TOLERANCE * median):
        what = ("two slices at the same position: is it two acquisitions in one folder? keep one per folder"
                if steps[k] < SPACING_TOLERANCE * median else "slices are missing there, or the spacing is uneven")
        raise ValueError(f"{folder}: slices lie {median:g} mm apart but {steps[k]:g} mm between {names[k]} (at "
                         f"{distance[k]:g} mm) and {names[k + 1]} (at {distance[k + 1]:g} mm): {what}; add the "
                         "missing files or load the evenly spaced part from its own folder")
    step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    pixel = _pixel_spacing(heads[0])
    affine = _affine(row * pixel[1], column * pixel[0], step, positions[order[0]])
    return order, Geometry(affine, (heads[0].Columns, heads[0].Rows, len(order))), (pixel[1], pixel[0], median)


def _image_geometry(head: pydicom.Dataset) -> tuple[Geometry, tuple[float, float]]:
    """(Geometry, zooms) of one 2-D image: grid (column, row), affine from its position and orientation (or its
    pixel spacing alone when it has none, as projection X-rays)."""
    pixel = _pixel_spacing(head)
    if "ImageOrientationPatient" in head and "ImagePositionPatient" in head:
        row, column = np.asarray(head.ImageOrientationPatient, float).reshape(2, 3)
        origin = np.asarray(head.ImagePositionPatient, float)
    else:
        row, column, origin = np.eye(3)[0], np.eye(3)[1], np.zeros(3)
    thickness = float(head.get("SliceThickness") or 1.0)
    affine = _affine(row * pixel[1], column * pixel[0], np.cross(row, column) * thickness, origin)
    return Geometry(affine, (head.Columns, head.Rows)), (pixel[1], pixel[0])


def _pixel_spacing(head: pydicom.Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm: PixelSpacing, else ImagerPixelSpacing, else 1 mm."""
    spacing = head.get("PixelSpacing") or head.get("ImagerPixelSpacing") or (1.0, 1.0)
    return float(spacing[0]), float(spacing[1])


def _affine(column_step, row_step, slice_step, origin) -> np.ndarray:
    """The RAS affine of a (column, row, slice) grid from its DICOM (LPS) steps and first voxel's position."""
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = column_step, row_step, slice_step, origin
    return LPS_TO_RAS @ lps
