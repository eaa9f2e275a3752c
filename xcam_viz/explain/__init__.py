"""Explain: hook capture, the gradient CAM family, Eigen-CAM, Score-CAM, segmentation CAMs, batch runs.

Capture once, weigh many: `capture` records activations and gradients of several layers in one
forward and one gradient pass; `weigh` turns a capture into any method's map without a model pass.
"""
from .api import explain, model_fingerprint
from .capture import Capture, LayerHooks, capture
from .differentiable import differentiable_cam
from .methods import GRADIENT_METHODS, METHODS, SEGMENTATION_METHODS, finish, weigh

__all__ = ["Capture", "GRADIENT_METHODS", "LayerHooks", "METHODS", "SEGMENTATION_METHODS", "capture",
           "differentiable_cam", "explain", "finish", "model_fingerprint", "weigh"]
