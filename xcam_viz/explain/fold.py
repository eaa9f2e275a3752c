"""A faster inference copy of a model for Score-CAM's many masked forward passes.

Each BatchNorm2d that directly follows a Conv2d (the conv's output tensor is the norm's input) is
folded into that convolution, and the weights are made channels-last. The copy is checked against
the model's own logits on the real input; if copying fails or the outputs differ, the model itself
is used, so the result never depends on this shortcut.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _conv_bn_pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, norm) pairs where the norm's input is exactly the conv's output, found by one forward pass."""
    last, pairs = {}, []

    def keep(module, _inputs, output):
        last["conv"] = (module, output)

    def match(module, inputs):
        conv, output = last.get("conv", (None, None))
        if output is inputs[0] and conv.out_channels == module.num_features:
            pairs.append((conv, module))

    handles = [m.register_forward_hook(keep) for m in model.modules() if type(m) is nn.Conv2d]
    handles += [m.register_forward_pre_hook(match) for m in model.modules() if type(m) is nn.BatchNorm2d]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return pairs


def inference_copy(model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> nn.Module:
    """An eval-mode copy with BatchNorm folded into the preceding convolutions, or `model` itself.

    `logits` are the model's eval-mode output for `x`; the copy must reproduce them (relative 1e-4).
    """
    try:
        fused = copy.deepcopy(model).eval()
    except Exception:                       # models holding uncopyable state: use them as they are
        return model
    pairs = _conv_bn_pairs(fused, x[:1])
    if not pairs:
        return model
    parents = {id(child): (parent, name) for parent in fused.modules() for name, child in parent.named_children()}
    with torch.no_grad():
        for conv, bn in pairs:
            if bn.running_var is None or id(bn) not in parents:
                return model
            scale = (bn.weight if bn.affine else 1) / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
            conv.bias = nn.Parameter(bias, requires_grad=False)
            parent, name = parents[id(bn)]
            setattr(parent, name, nn.Identity())
        fused = fused.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = fused(x)
    scale = logits.abs().max().clamp(min=1e-12)
    return fused if torch.allclose(out, logits, rtol=1e-4, atol=1e-4 * float(scale)) else model
