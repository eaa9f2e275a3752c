"""Data: `ImageSet` and its sources (synthetic lesions and nodule volumes, two-camera lesions, decoy digits,
the named example sets, arrays, folders, MedMNIST, zarr, torch Datasets, NIfTI and DICOM volumes), lazy where
they come from files, display windows, and the one transform to a model's input."""
from .cameras import CAMERAS, Camera, camera_lesions
from .decoy import decoy_digits
from .dicom import load_dicom
from .imageset import Geometry, ImageSet, Sample, collate
from .inputs import Inputs, inputs_of
from .lazy import memory_budget
from .loading import load_data, load_splits
from .medical import save_nifti
from .nifti import load_nifti
from .nodules import synthetic_nodules
from .sources import from_array_store, from_arrays, from_dataset, load_folder, load_medmnist, load_zarr
from .synthetic import synthetic_lesions
from .transform import check_images, fit
from .windows import WINDOWS, Percentiles, apply_window

__all__ = ["CAMERAS", "WINDOWS", "Camera", "Geometry", "ImageSet", "Inputs", "Percentiles", "Sample", "apply_window",
           "camera_lesions", "check_images", "collate", "decoy_digits", "fit", "from_array_store", "from_arrays",
           "from_dataset", "inputs_of", "load_data", "load_dicom", "load_folder", "load_medmnist", "load_nifti",
           "load_splits", "load_zarr", "memory_budget", "save_nifti", "synthetic_lesions", "synthetic_nodules"]
