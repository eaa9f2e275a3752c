"""Volumes from bytes in memory (a file someone sent, e.g. an upload): a NIfTI file (.nii / .nii.gz) or a .zip
of a DICOM series, told apart by their content.

Every size is bounded before it is unpacked (gzip and zip bombs), nothing is written to disk and no name inside
an archive is ever used as a path (a member named '../x' is only named in messages). The volume is read as
`load_nifti` and `load_dicom` read files: closest canonical orientation, axes z, y, x, through a window to [0, 1].
"""
from __future__ import annotations

import io
import zipfile
import zlib
from collections import defaultdict
from typing import NamedTuple

import numpy as np

from .windows import apply_window

MAX_VOXELS = 100_000_000         # a 512×512×380 CT
NIFTI_BYTES_PER_VOXEL = 8        # a NIfTI file inflates to at most this per voxel (float64), plus its header
DICOM_BYTES_PER_VOXEL = 4        # stored DICOM pixels take at most 32 bits (CT, MR and PET: 16)
MAX_MEMBERS = 10_000             # files in a zip (a thin-slice CT series has ~1000)
HEADER_BYTES = 2**20             # room for headers on top of the pixels
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class FileVolume(NamedTuple):
    """A volume read from bytes: `values` D×H×W float32 in [0, 1] (z, y, x) and `note`, what was read in words
    (for a zip, which series; when it held several, the others too)."""

    values: np.ndarray
    note: str


def read_volume(content: bytes, name: str, window=None, max_voxels: int = MAX_VOXELS) -> FileVolume:
    """The volume in a file's bytes: a .zip of a DICOM series (`read_dicom_zip`), else a NIfTI file, gzipped or
    not (`read_nifti_bytes`). `name` is only used in messages; `window` as in `xv.data.load_nifti`."""
    if content[:4] in ZIP_MAGIC:
        return read_dicom_zip(content, name, window, max_voxels)
    return read_nifti_bytes(content, name, window, max_voxels)


def read_nifti_bytes(content: bytes, name: str, window=None, max_voxels: int = MAX_VOXELS) -> FileVolume:
    """A 3-D NIfTI file's bytes (gzip inflated at most to what `max_voxels` voxels can take)."""
    import nibabel as nib

    from .medical import canonical_zyx
    from .nifti import voxels

    raw = content
    if content[:2] == b"\x1f\x8b":
        limit = NIFTI_BYTES_PER_VOXEL * max_voxels + HEADER_BYTES
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(content, limit)
        except zlib.error as err:
            raise ValueError(f"{name} is not a readable .nii.gz file ({err})") from None
        if len(raw) >= limit:
            raise ValueError(f"{name} unpacks to more than {limit / 2**20:.0f} MB; give a smaller volume")
    try:
        image = nib.Nifti1Image.from_bytes(raw)
    except Exception as err:                     # noqa: BLE001 - nibabel raises many kinds for broken files
        raise ValueError(f"{name} is not a readable NIfTI volume ({type(err).__name__}); give a .nii or .nii.gz "
                         "file, or a .zip of one DICOM series") from None
    shape = image.shape
    if len(shape) < 3 or any(s > 1 for s in shape[3:]):
        raise ValueError(f"{name} has shape {shape}; give one 3-D volume")
    _check_voxels(name, shape[:3], max_voxels)
    try:
        values = voxels(image, None)
    except Exception as err:                     # noqa: BLE001 - a header promising more voxels than the file holds
        raise ValueError(f"{name} is not a readable NIfTI volume ({type(err).__name__}); give a .nii or .nii.gz "
                         "file, or a .zip of one DICOM series") from None
    size = "×".join(map(str, shape[:3]))
    return FileVolume(apply_window(canonical_zyx(values, image.affine), window), f"NIfTI {size}")


def read_dicom_zip(content: bytes, name: str, window=None, max_voxels: int = MAX_VOXELS) -> FileVolume:
    """The DICOM series in a .zip's bytes, as `load_dicom` reads a series folder. Files that are no DICOM image
    are skipped; of several series the one with the most slices is read, and the note says which and names
    the others."""
    import pydicom

    from .dicom import check_decodable, read_header, series_grid, series_volume

    members = _unzipped(content, name, DICOM_BYTES_PER_VOXEL * max_voxels + HEADER_BYTES)
    series = defaultdict(list)
    for member, data in members:
        head = read_header(io.BytesIO(data))
        if head is not None:
            series[head.get("SeriesInstanceUID", "")].append((member, data, head))
    if not series:
        found = ", ".join(member for member, _ in members[:3]) + ", …" * (len(members) > 3) or "nothing"
        raise ValueError(f"{name} holds no DICOM images ({_count(members, 'file')}: {found}); give a "
                         ".zip of the .dcm files of one series (a NIfTI volume: the .nii.gz itself)")
    ranked = sorted(series.values(), key=lambda files: -len(files))           # stable: ties keep the zip's order
    files = ranked[0]
    heads = [head for _, _, head in files]
    label = _series_label(heads[0])
    if len(files) < 2:
        raise ValueError(f"{name} holds single DICOM images only ({_count(members, 'file')}, {len(series)} series), no "
                         "series of slices; give a .zip of the files of one series (a volume)")
    _check_voxels(name, (len(files), heads[0].Rows, heads[0].Columns), max_voxels)
    names = [member for member, _, _ in files]
    check_decodable(heads[0], f"{name}: {names[0]}")
    order, geometry, _ = series_grid(f"{name}: series {label}", names, heads)
    datasets = [pydicom.dcmread(io.BytesIO(files[i][1])) for i in order]
    values = series_volume(datasets, [f"{name}: {names[i]}" for i in order], geometry.affine, window)
    note = f"DICOM series {label}, {_count(files, 'slice')}"
    if len(ranked) > 1:
        others = "; ".join(f"series {_series_label(rest[0][2])}, {_count(rest, 'slice')}" for rest in ranked[1:4])
        note += (f" (the largest of {len(ranked)} series in {name}; left out: {others}"
                 f"{' …' if len(ranked) > 4 else ''}; to explain another, zip its files alone)")
    return FileVolume(values, note)


def _unzipped(content: bytes, name: str, max_bytes: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file in a zip, its declared sizes checked before anything is inflated and the
    inflated bytes counted while reading."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
            if len(infos) > MAX_MEMBERS:
                raise ValueError(f"{name} holds {len(infos):,} files, more than {MAX_MEMBERS:,}; give the files of "
                                 "one series")
            declared = sum(info.file_size for info in infos)
            if declared > max_bytes:
                raise ValueError(f"{name} unpacks to {declared / 2**20:,.0f} MB, more than the "
                                 f"{max_bytes / 2**20:,.0f} MB a volume may take; give a smaller series")
            if any(info.flag_bits & 0x1 for info in infos):
                raise ValueError(f"{name} is encrypted; give a .zip without a password")
            members, total = [], 0
            for info in infos:
                with archive.open(info) as member:
                    data = member.read(max_bytes - total + 1)
                total += len(data)
                if total > max_bytes:
                    raise ValueError(f"{name} unpacks to more than {max_bytes / 2**20:,.0f} MB; give a smaller "
                                     "series")
                members.append((info.filename, data))
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError) as err:
        raise ValueError(f"{name} is not a readable .zip file ({err}); zip the files of one DICOM series "
                         "again (deflate or stored)") from None
    return members


def _series_label(head) -> str:
    """A series in words: its number and description, else the end of its UID."""
    number, text = head.get("SeriesNumber"), str(head.get("SeriesDescription", "")).strip()
    label = " ".join(part for part in (str(number) if number is not None else "", f"'{text}'" if text else "")
                     if part)
    return label or f"…{str(head.get('SeriesInstanceUID', '?'))[-12:]}"


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'s' * (len(items) != 1)}"


def _check_voxels(name: str, shape: tuple[int, ...], max_voxels: int) -> None:
    voxels = int(np.prod(shape))
    if voxels > max_voxels:
        raise ValueError(f"{name} has {voxels:,} voxels ({'×'.join(map(str, shape))}), more than {max_voxels:,}; "
                         "give a smaller volume")
