"""Data: `ImageSet` and its sources (synthetic lesions, decoy digits, arrays, folders, MedMNIST)."""
from .decoy import decoy_digits
from .imageset import ImageSet, Sample, collate
from .sources import from_arrays, load_folder, load_medmnist
from .synthetic import synthetic_lesions

__all__ = ["ImageSet", "Sample", "collate", "decoy_digits", "from_arrays", "load_folder", "load_medmnist",
           "synthetic_lesions"]
