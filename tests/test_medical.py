"""Medical files: NIfTI and DICOM in (windows, slice order, orientation, laziness), maps out onto the scan,
and every bad input refused with what to do. Only files shipped inside nibabel and pydicom, or written here."""
import pickle
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import xarray as xr
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

import xcam_viz as xv
from xcam_viz.data import nifti as nifti_module

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def shipped(name: str) -> Path:
    """A DICOM test file inside the installed pydicom package (never downloaded)."""
    path = Path(get_testdata_file(name, download=False))
    assert path.resolve().is_relative_to(Path(pydicom.__file__).resolve().parent), path
    return path


def signed_window(hu: np.ndarray, ds: pydicom.Dataset, level: float, width: float) -> np.ndarray:
    """pydicom's own windowed numbers scaled to [0, 1] (its output range for signed stored values)."""
    ds.WindowCenter, ds.WindowWidth = level, width
    low = -(2 ** (ds.BitsStored - 1)) * ds.RescaleSlope + ds.RescaleIntercept
    high = (2 ** (ds.BitsStored - 1) - 1) * ds.RescaleSlope + ds.RescaleIntercept
    return (apply_voi_lut(hu, ds) - low) / (high - low)


def write_series(folder: Path, n: int = 6, orientation=(1, 0, 0, 0, 1, 0), step: float = 2.5, series_uid=None,
                 skip=()) -> list[np.ndarray]:
    """n slices made from CT_small.dcm (slice k = the image + 100·k), positions along the normal, saved under
    random file names; returns the stored slices in position order."""
    base = pydicom.dcmread(shipped("CT_small.dcm"))
    row, column = np.asarray(orientation, float).reshape(2, 3)
    normal = np.cross(row, column)
    uid = series_uid or pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    slices = []
    for k in range(n):
        ds = base.copy()
        pixels = (base.pixel_array + 100 * k).astype(base.pixel_array.dtype)
        ds.PixelData = pixels.tobytes()
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = list(np.asarray([-50.0, 20.0, 10.0]) + normal * step * k)
        ds.InstanceNumber, ds.SeriesInstanceUID = k + 1, uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        slices.append(pixels)
        if k not in skip:
            ds.save_as(folder / f"{uuid.uuid4().hex}.dcm", enforce_file_format=True)
    return slices


def write_volumes(folder: Path, n: int = 4, shape=(12, 10, 8)) -> tuple[list[Path], list[Path]]:
    """n small NIfTI volumes with an oblique axis order (i→S, j→R flipped, k→A) and label maps (0, 1, 2)."""
    affine = np.array([[0, -1.5, 0, 20], [0, 0, 3, -10], [2, 0, 0, 5], [0, 0, 0, 1]], float)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    images, masks = [], []
    for i in range(n):
        data = rng.normal(100, 20, shape).astype(np.float32)
        labels = np.zeros(shape, np.uint8)
        labels[2:5, 3:6, 1:4], labels[7:10, 1:3, 5:7] = 1, 2
        data[labels == 2] += 300
        for path, array in ((folder / f"vol{i}.nii.gz", data), (folder / f"vol{i}_seg.nii.gz", labels)):
            nib.save(nib.Nifti1Image(array, affine), path)
        images.append(folder / f"vol{i}.nii.gz")
        masks.append(folder / f"vol{i}_seg.nii.gz")
    return images, masks


# --- files shipped with nibabel and pydicom ---------------------------------------------------------------

def test_shipped_files_load_in_canonical_order():
    ds = xv.data.load_nifti([ANATOMICAL])
    source = nib.load(ANATOMICAL)
    canonical = nib.as_closest_canonical(source)
    assert nib.aff2axcodes(source.affine) == ("L", "A", "S")        # not canonical: the loader must flip x
    assert ds.lazy and ds.spatial_dims == 3 and ds.image_shape == (1, 25, 41, 33)
    expected = xv.data.apply_window(np.asarray(canonical.dataobj, np.float32).T, None)
    np.testing.assert_array_equal(ds[0].image[0].numpy(), expected)
    assert ds.spacing == (2.0, 2.0, 2.0) and ds.ids == ["anatomical"]
    assert ds.geometry[0].shape == source.shape and np.array_equal(ds.geometry[0].affine, source.affine)

    for name, rows in (("CT_small.dcm", 128), ("MR_small.dcm", 64)):
        image = xv.data.load_dicom(shipped(name))
        assert image.spatial_dims == 2 and image.image_shape == (1, rows, rows)
        assert 0 <= float(image[0].image.min()) and float(image[0].image.max()) <= 1
    assert xv.data.load_dicom(shipped("CT_small.dcm")).spacing == pytest.approx((0.661468, 0.661468))


def test_hounsfield_units_through_a_window_equal_pydicoms():
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert np.array_equal(hu, ds.pixel_array - 1024)      # RescaleIntercept -1024: Hounsfield units
    for window, (level, width) in (("ct-soft-tissue", (40, 400)), ("ct-bone", (400, 1800)),
                                   ((-600, 1500), (-600, 1500))):
        ours = xv.data.load_dicom(shipped("CT_small.dcm"), window=window)[0].image[0].numpy()
        np.testing.assert_allclose(ours, signed_window(hu, ds, level, width), atol=1e-6)
        assert 0 < ours.mean() < 1
    assert xv.data.WINDOWS["ct-lung"] == (-600, 1500) and xv.data.WINDOWS["ct-brain"] == (40, 80)


def test_a_files_own_window_and_voi_lut_are_pydicoms():
    ds = pydicom.dcmread(shipped("MR_small.dcm"))                  # carries WindowCenter 600
    low, high = -(2 ** 15), 2 ** 15 - 1
    np.testing.assert_allclose(xv.data.load_dicom(shipped("MR_small.dcm"))[0].image[0].numpy(),
                               (apply_voi_lut(ds.pixel_array, ds) - low) / (high - low), atol=1e-6)
    assert xv.data.load_dicom(shipped("MR_small.dcm")).attrs["window"] == "file"


def test_a_voi_lut_sequence_is_applied(tmp_path):
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [2048, 0, 16])
    item.add_new("LUTData", "US", [int(v) for v in np.sqrt(np.arange(2048) / 2047) * 65535])
    ds.VOILUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm")
    ours = xv.data.load_dicom(tmp_path / "lut.dcm")[0].image[0].numpy()
    np.testing.assert_allclose(ours, apply_voi_lut(ds.pixel_array, ds) / 65535, atol=1e-6)


def test_colour_images_keep_their_channels_and_monochrome1_is_inverted(tmp_path):
    colour = pydicom.dcmread(shipped("SC_rgb_small_odd.dcm"))
    image = xv.data.load_dicom(shipped("SC_rgb_small_odd.dcm"))[0].image.numpy()
    np.testing.assert_allclose(image, np.moveaxis(colour.pixel_array, -1, 0) / 255, atol=1e-6)
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"                  # an X-ray's convention: low values bright
    ds.save_as(tmp_path / "inverted.dcm")
    np.testing.assert_allclose(xv.data.load_dicom(tmp_path / "inverted.dcm", window=(600, 1200))[0].image,
                               1 - xv.data.load_dicom(shipped("MR_small.dcm"), window=(600, 1200))[0].image)


def test_mri_window_scales_percentiles():
    values = np.arange(1000, dtype=np.float32)
    unit = xv.data.apply_window(values, "mri")
    np.testing.assert_array_equal(xv.data.apply_window([100, 300, 500], None), [0, 0.5, 1])   # min..max
    assert (unit[:10] == 0).all() and (unit[990:] == 1).all() and 0.49 < unit[500] < 0.51 and unit[11] > 0
    assert xv.data.load_nifti([ANATOMICAL], window="mri").attrs["window"] == "mri"


# --- DICOM series ------------------------------------------------------------------------------------------

def test_a_shuffled_series_reads_back_in_slice_order(tmp_path):
    slices = write_series(tmp_path / "ct")
    ds = xv.data.load_dicom(tmp_path / "ct", window="ct-soft-tissue")
    assert ds.image_shape == (1, 6, 128, 128) and ds.ids == ["ct"]
    assert ds.spacing == pytest.approx((2.5, 0.661468, 0.661468))
    # rows run toward posterior and columns toward the patient's left (LPS): RAS canonical flips both
    expected = xv.data.apply_window(apply_modality_lut(np.stack(slices), pydicom.dcmread(shipped("CT_small.dcm"))),
                                    "ct-soft-tissue")[:, ::-1, ::-1]
    np.testing.assert_allclose(ds[0].image[0].numpy(), expected, atol=1e-6)


def test_a_folder_of_series_folders_gives_one_volume_each(tmp_path):
    write_series(tmp_path / "study" / "a")
    write_series(tmp_path / "study" / "b", n=4, orientation=(0, 1, 0, 0, 0, -1))     # sagittal
    ds = xv.data.load_dicom(tmp_path / "study", size=(8, 32, 32))
    assert ds.ids == ["a", "b"] and ds.image_shape == (1, 8, 32, 32) and ds.spacing is None
    assert ds.attrs["size"] == "8×32×32" and [g.shape for g in ds.geometry] == [(128, 128, 6), (128, 128, 4)]
    assert xv.data.load_data(tmp_path / "study" / "a").image_shape == (1, 6, 128, 128)
    assert xv.data.load_data(shipped("CT_small.dcm")).image_shape == (1, 128, 128)


def test_a_series_affine_puts_each_slice_at_its_position(tmp_path):
    write_series(tmp_path / "ct", orientation=(0, 1, 0, 0, 0, -1))
    ds = xv.data.load_dicom(tmp_path / "ct")
    heads = sorted((pydicom.dcmread(p) for p in (tmp_path / "ct").iterdir()), key=lambda h: h.InstanceNumber)
    affine = ds.geometry[0].affine
    for k, head in enumerate(heads):
        np.testing.assert_allclose(affine[:3] @ [0, 0, k, 1], LPS_TO_RAS @ np.asarray(head.ImagePositionPatient, float))


# --- maps back onto the scan -------------------------------------------------------------------------------

def test_a_saved_map_has_the_source_shape_and_affine(tmp_path):
    source = nib.load(ANATOMICAL)
    ds = xv.data.load_nifti([ANATOMICAL])
    [path] = xv.data.save_nifti(ds.images[:, 0], tmp_path, like=ds)
    saved = nib.load(path)
    assert path == tmp_path / "anatomical.nii.gz"
    assert saved.shape == source.shape and np.array_equal(saved.affine, source.affine)
    np.testing.assert_array_equal(saved.get_fdata(), xv.data.apply_window(source.get_fdata(), None))

    resampled = xv.data.load_nifti([ANATOMICAL], size=(16, 16, 16))
    assert resampled.spacing == pytest.approx((50 / 16, 82 / 16, 66 / 16)) and resampled.attrs["size"] == "16×16×16"
    centre = np.array([5.0, 10.0, 3.0])                                   # (z, y, x) on the 16³ grid
    grid = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1)
    blob = np.exp(-((grid - centre) ** 2).sum(-1) / 2)[None].astype(np.float32)
    maps = xr.DataArray(blob, dims=("sample", "z", "y", "x"), coords={"sample": resampled.ids})
    saved = nib.load(xv.data.save_nifti(maps, tmp_path / "small", like=resampled)[0])
    assert saved.shape == source.shape and np.array_equal(saved.affine, source.affine)
    values = saved.get_fdata()
    mass = np.array([(values * index).sum() for index in np.indices(values.shape)]) / values.sum()
    canonical = nib.as_closest_canonical(source)                    # where nibabel puts that voxel in the world
    ijk = ((centre + 0.5) * np.array(canonical.shape[::-1]) / 16 - 0.5)[::-1]
    np.testing.assert_allclose(nib.affines.apply_affine(saved.affine, mass),
                               nib.affines.apply_affine(canonical.affine, ijk), atol=0.5)


def test_oblique_volumes_and_masks_round_trip_exactly(tmp_path):
    images, masks = write_volumes(tmp_path / "vols")
    ds = xv.data.load_nifti(images, masks=masks, labels=[0, 1, 0, 1], class_names=["a", "b"], mask_label=2)
    image = nib.load(images[0])
    canonical = nib.as_closest_canonical(image)
    assert ds.image_shape == (1, *canonical.shape[::-1]) and ds.spacing == (2.0, 3.0, 1.5)
    np.testing.assert_array_equal(ds[0].mask.numpy(), (np.asarray(nib.as_closest_canonical(nib.load(masks[0])).dataobj)
                                                       == 2).T)
    assert ds[0].image[0][ds[0].mask].min() > ds[0].image[0][~ds[0].mask].max()
    maps = torch.stack([s.image[0] for s in ds]) * 2
    paths = xv.data.save_nifti(maps, tmp_path / "maps", like=ds)
    for path, source in zip(paths, images):
        saved, src = nib.load(path), nib.load(source)
        assert saved.shape == src.shape and np.allclose(saved.affine, src.affine)
        np.testing.assert_allclose(saved.get_fdata(), 2 * xv.data.apply_window(src.get_fdata(), None), atol=1e-6)
    series = xv.data.load_dicom(write_series(tmp_path / "ct") and tmp_path / "ct", size=(4, 32, 32))
    saved = nib.load(xv.data.save_nifti(torch.ones(1, 4, 32, 32), tmp_path / "ctmaps", like=series)[0])
    assert saved.shape == (128, 128, 6) and np.allclose(saved.affine, series.geometry[0].affine, atol=1e-4)


def test_csv_manifest_and_folders(tmp_path):
    images, masks = write_volumes(tmp_path / "vols", n=3)
    rows = [f"vols/{p.name},{c},vols/{m.name}" for p, m, c in zip(images, masks, ["tumour", "normal", "tumour"])]
    (tmp_path / "set.csv").write_text("path,label,mask\n" + "\n".join(rows) + "\n")
    ds = xv.data.load_nifti(tmp_path / "set.csv")
    assert ds.class_names == ["normal", "tumour"] and ds.labels.tolist() == [1, 0, 1] and ds.has_masks
    assert ds.ids == ["vols/vol0", "vols/vol1", "vols/vol2"]
    assert int(ds[0].mask.sum()) == 27 + 12                            # both labels: any non-zero value
    assert len(xv.data.load_nifti(tmp_path / "vols")) == 6             # a folder: every .nii / .nii.gz in it
    assert len(xv.data.load_data(tmp_path / "vols")) == 6
    assert xv.data.load_data(images[0]).ids == ["vol0"]


def test_a_lazy_nifti_set_pickles_small_and_reads_per_batch(tmp_path, monkeypatch):
    images, _ = write_volumes(tmp_path, n=4, shape=(40, 40, 40))
    ds = xv.data.load_nifti(images, size=(16, 16, 16))
    assert ds.lazy and len(pickle.dumps(ds)) < 4000                 # a volume alone is 256 kB
    opened = []
    real = nifti_module.nib.load
    monkeypatch.setattr(nifti_module.nib, "load", lambda p, *a, **k: opened.append(Path(p).name) or real(p, *a, **k))
    batch, _ = ds.read([2, 3])
    assert batch.shape == (2, 1, 16, 16, 16) and opened == ["vol2.nii.gz", "vol3.nii.gz"]
    assert [tuple(b.shape) for b in pickle.loads(pickle.dumps(ds)).batches(3)] == [(3, 1, 16, 16, 16),
                                                                                     (1, 1, 16, 16, 16)]
    assert ds.lazy


# --- bad input ----------------------------------------------------------------------------------------------

def test_a_folder_mixing_series_is_refused(tmp_path):
    write_series(tmp_path / "mixed", series_uid="1.2.3.4")
    write_series(tmp_path / "mixed", n=3, series_uid="1.2.3.5")
    with pytest.raises(ValueError, match=r"mixes 2 series.*1\.2\.3\.4, 1\.2\.3\.5.*own folder"):
        xv.data.load_dicom(tmp_path / "mixed")


def test_missing_and_repeated_slices_are_refused(tmp_path):
    write_series(tmp_path / "gap", skip=(3,))
    with pytest.raises(ValueError, match=r"2\.5 mm apart but 5 mm between .*missing"):
        xv.data.load_dicom(tmp_path / "gap")
    write_series(tmp_path / "twice", series_uid="1.2.3.6")
    write_series(tmp_path / "twice", n=2, series_uid="1.2.3.6")
    with pytest.raises(ValueError, match="same position.*one per folder"):
        xv.data.load_dicom(tmp_path / "twice")


def test_undecodable_compressed_pixel_data_names_the_decoder():
    with pytest.raises(ValueError, match=r"JPEG-LS Lossless.*pylibjpeg-libjpeg.*pip"):
        xv.data.load_dicom(shipped("MR_small_jpeg_ls_lossless.dcm"))


def test_a_4d_file_says_how_to_pick_a_volume(tmp_path):
    data = np.stack([np.full((6, 5, 4), v, np.float32) for v in (1.0, 2.0, 3.0)], -1)
    data[0, 0, 0] = 0
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "fmri.nii.gz")
    with pytest.raises(ValueError, match=r"4-D: 3 volumes.*volume=i.*slicer"):
        xv.data.load_nifti([tmp_path / "fmri.nii.gz"])
    with pytest.raises(ValueError, match="volume=5 but .* holds 3"):
        xv.data.load_nifti([tmp_path / "fmri.nii.gz"], volume=5)
    picked = xv.data.load_nifti([tmp_path / "fmri.nii.gz"], volume=2, window=(1.5, 2))
    assert picked.image_shape == (1, 4, 5, 6) and float(picked[0].image.max()) == 1.0


def test_a_mask_off_its_images_grid_is_refused(tmp_path):
    images, masks = write_volumes(tmp_path, n=1)
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 9), np.uint8), nib.load(images[0]).affine), tmp_path / "short.nii")
    short = r"(?s)does not lie on the grid.*\(12, 10, 9\) vs \(12, 10, 8\).*resample_from_to"
    with pytest.raises(ValueError, match=short):
        xv.data.load_nifti(images, masks=[tmp_path / "short.nii"])
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 8), np.uint8), np.eye(4)), tmp_path / "moved.nii")
    with pytest.raises(ValueError, match="(?s)does not lie on the grid.*affine.*resample"):
        xv.data.load_nifti(images, masks=[tmp_path / "moved.nii"])


def test_files_that_are_neither_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="not a DICOM image.*load_nifti"):
        xv.data.load_dicom(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="no DICOM images"):
        xv.data.load_dicom(tmp_path)
    (tmp_path / "fake.nii").write_text("not a volume")
    with pytest.raises(ValueError, match="not a readable NIfTI file.*load_dicom"):
        xv.data.load_nifti([tmp_path / "fake.nii"])
    with pytest.raises(ValueError, match="unknown window 'lung'.*ct-lung"):
        xv.data.load_nifti([ANATOMICAL], window="lung")
    with pytest.raises(ValueError, match="no source geometry.*load_nifti"):
        xv.data.save_nifti(torch.zeros(4, 32, 32), tmp_path, like=xv.data.synthetic_lesions(n=4, size=32))
    ds = xv.data.load_nifti([ANATOMICAL])
    with pytest.raises(ValueError, match="2 maps for 1 samples"):
        xv.data.save_nifti(torch.zeros(2, 25, 41, 33), tmp_path / "out", like=ds)
    assert not (tmp_path / "out").exists()                      # nothing written by a refused call
