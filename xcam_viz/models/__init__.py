"""Models: the zoo, spatial-layer discovery, training/prediction and safe checkpoints."""
from .checkpoint import fingerprint, load, save
from .layers import get_layer, spatial_layers
from .training import accuracy, model_device, predict, train
from .zoo import MODEL_NAMES, Normalize, build

__all__ = ["MODEL_NAMES", "Normalize", "accuracy", "build", "fingerprint", "get_layer", "load",
           "model_device", "predict", "save", "spatial_layers", "train"]
