"""Data: `ImageSet` and its sources (synthetic lesions, arrays, folders, MedMNIST)."""
from .imageset import ImageSet, Sample, collate
from .sources import from_arrays, load_folder, load_medmnist
from .synthetic import synthetic_lesions

__all__ = ["ImageSet", "Sample", "collate", "from_arrays", "load_folder", "load_medmnist",
           "synthetic_lesions"]
