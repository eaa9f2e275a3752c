"""What kind of model a network is: a classifier (image logits) or a segmenter (per-pixel logits)."""
from __future__ import annotations

import torch
from torch import nn

from .modes import eval_mode
from .outputs import is_dense, run_model
from .training import model_device


def is_segmenter(model: nn.Module, input_shape: tuple[int, int, int]) -> bool:
    """Whether `model` maps an image of `input_shape` (C, H, W) or (C, D, H, W) to per-pixel class scores (N×K×*S)
    rather than to one score per class (N×K). One forward pass on a blank image, in eval mode (every
    module's own mode is restored afterwards)."""
    with eval_mode(model), torch.no_grad():
        return is_dense(run_model(model, torch.zeros(1, *input_shape, device=model_device(model))))
