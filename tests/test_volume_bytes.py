"""Volumes from bytes (what an upload hands over): a .zip of a DICOM series reads as `load_dicom` reads its folder,
of several series the largest is taken and the others named, and every bad archive is refused with what to give."""
import io
import re
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_medical import write_series

import xcam_viz as xv
from xcam_viz.data.from_bytes import read_volume


def zipped(*entries: tuple[str, bytes | Path]) -> bytes:
    """A deflated zip of (member name, bytes or a file to copy)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data.read_bytes() if isinstance(data, Path) else data)
    return buf.getvalue()


def series_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def test_a_zipped_series_reads_as_its_folder_whatever_the_member_names(tmp_path, monkeypatch):
    write_series(tmp_path / "ct", n=5)
    files = series_files(tmp_path / "ct")
    names = ["../../escape.dcm", "/abs/slice.dcm", *[f"study/ct/{f.name}" for f in files[2:]]]
    content = zipped(*zip(names, files), ("study/README.txt", b"not an image"), ("study/", b""))
    monkeypatch.chdir(tmp_path)
    for window in (None, "ct-lung"):
        volume = read_volume(content, "scan.zip", window)
        expected = xv.data.load_dicom(tmp_path / "ct", window=window)[0].image[0].numpy()
        np.testing.assert_array_equal(volume.values, expected)
    assert volume.note == "DICOM series 1, 5 slices"                     # CT_small.dcm's SeriesNumber
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(f.name for f in files), \
        "nothing may be written, and no member name used as a path"


def test_of_several_series_the_largest_is_taken_and_the_others_named(tmp_path):
    write_series(tmp_path / "a", n=3, series_uid="1.2.3.1")
    write_series(tmp_path / "b", n=6, series_uid="1.2.3.2", orientation=(0, 1, 0, 0, 0, -1))
    write_series(tmp_path / "scout", n=1, series_uid="1.2.3.3")
    members = [(f"{folder}/{f.name}", f) for folder in ("a", "scout", "b") for f in series_files(tmp_path / folder)]
    volume = read_volume(zipped(*members), "study.zip")
    np.testing.assert_array_equal(volume.values, xv.data.load_dicom(tmp_path / "b")[0].image[0].numpy())
    assert "6 slices (the largest of 3 series in study.zip; left out:" in volume.note
    assert "left out: series 1, 3 slices; series 1, 1 slice; to explain another, zip its files alone)" in volume.note


def test_bad_archives_are_refused_with_what_to_give(tmp_path):
    write_series(tmp_path / "ct", n=4)
    files = series_files(tmp_path / "ct")
    good = zipped(*[(f.name, f) for f in files])
    cases = [
        (good[:len(good) // 2], "not a readable .zip file"),                              # truncated
        (zipped(("notes.txt", b"hello"), ("scan.nii.gz", b"\x1f\x8b")),
         "holds no DICOM images (2 files: notes.txt, scan.nii.gz)"),
        (zipped((files[0].name, files[0])), "single DICOM images only"),
        (b"PK\x05\x06" + b"\0" * 18, "holds no DICOM images (0 files: nothing)"),         # an empty zip
    ]
    for content, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            read_volume(content, "upload.zip")
    with pytest.raises(ValueError, match=r"65,536 voxels \(4×128×128\), more than 60,000"):
        read_volume(good, "upload.zip", max_voxels=60_000)
    write_series(tmp_path / "gap", n=5, skip=(2,))
    with pytest.raises(ValueError, match=r"upload.zip: series .*slices are missing"):
        read_volume(zipped(*[(f.name, f) for f in series_files(tmp_path / "gap")]), "upload.zip")


def test_a_zip_bomb_is_refused_before_it_is_inflated(monkeypatch):
    bomb = zipped(("slice.dcm", bytes(50 * 2**20)))                      # 50 MB of zeros in ~50 kB
    assert len(bomb) < 2**20

    def no_inflating(*args, **kwargs):
        raise AssertionError("a member was inflated")
    monkeypatch.setattr(zipfile.ZipFile, "open", no_inflating)
    with pytest.raises(ValueError, match=r"unpacks to 50 MB, more than the 5 MB a volume may take"):
        read_volume(bomb, "bomb.zip", max_voxels=1_000_000)


def test_nifti_bytes_gzipped_or_not_and_their_bombs():
    hu = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    raw = nib.Nifti1Image(hu, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes()
    import gzip

    plain, packed = read_volume(raw, "a.nii"), read_volume(gzip.compress(raw), "a.nii.gz")
    np.testing.assert_array_equal(plain.values, packed.values)
    assert plain.values.shape == (6, 5, 4) and plain.note == "NIfTI 4×5×6"
    with pytest.raises(ValueError, match="unpacks to more than"):
        read_volume(gzip.compress(bytes(2**22)), "bomb.nii.gz", max_voxels=1000)
    with pytest.raises(ValueError, match="120 voxels .*more than 100"):
        read_volume(raw, "a.nii", max_voxels=100)
