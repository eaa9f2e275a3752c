"""Explain: hook capture, the gradient CAM family, Eigen-CAM, Score-CAM, segmentation CAMs, batch runs.

Capture once, weigh many: `capture` records activations and gradients of several layers in one
forward and one gradient pass; `weigh` turns a capture into any method's map without a model pass
(Score-CAM excepted: it runs masked forward passes). `explain` wraps both into an xarray.DataArray,
`explain_dataset` streams a whole data set into a zarr / netCDF store, `differentiable_cam` keeps
the CAM in the autograd graph for fine-tuning.
"""
from .api import explain, model_fingerprint
from .batch import explain_dataset
from .capture import Capture, LayerHooks, capture
from .differentiable import differentiable_cam
from .methods import GRADIENT_METHODS, METHODS, REGISTRY, SEGMENTATION_METHODS, Method, finish, methods_for, weigh

__all__ = ["Capture", "GRADIENT_METHODS", "LayerHooks", "METHODS", "Method", "REGISTRY", "SEGMENTATION_METHODS",
           "capture", "differentiable_cam", "explain", "explain_dataset", "finish", "methods_for",
           "model_fingerprint", "weigh"]
