"""Models: the zoo, layer layouts and discovery, the default layer, training/prediction and safe checkpoints."""
from .checkpoint import fingerprint, load, save
from .layers import default_layer, find_layers, get_layer, input_shape_of, spatial_layers
from .layout import Layout, detect, patch_size
from .memory import fast_input
from .modes import eval_mode
from .outputs import is_dense, last_linear, logits_of, run_model
from .training import accuracy, model_device, predict, prediction_dataset, probabilities, train
from .zoo import MODEL_NAMES, TIMM_PREFIX, Normalize, build

__all__ = ["accuracy", "build", "default_layer", "detect", "eval_mode", "fast_input", "find_layers", "fingerprint",
           "get_layer", "input_shape_of", "is_dense", "last_linear", "Layout", "load", "logits_of", "model_device",
           "MODEL_NAMES", "Normalize", "patch_size", "predict", "prediction_dataset", "probabilities", "run_model",
           "save", "spatial_layers", "TIMM_PREFIX", "train"]
