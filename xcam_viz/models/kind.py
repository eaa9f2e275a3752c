"""What kind of model a network is: a classifier (image logits) or a segmenter (per-pixel logits)."""
from __future__ import annotations

import torch
from torch import nn


def is_segmenter(model: nn.Module, input_shape: tuple[int, int, int]) -> bool:
    """Whether `model` maps an image of `input_shape` (C, H, W) to per-pixel class scores (N×K×H×W)
    rather than to one score per class (N×K). One forward pass on a blank image, in eval mode; each
    module's own `training` flag is restored afterwards (frozen batch norm stays frozen)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            return model(torch.zeros(1, *input_shape, device=device)).ndim == 4
    finally:
        for module, training in flags:
            module.training = training
