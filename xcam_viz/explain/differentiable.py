"""A CAM that stays in the autograd graph, for losses on explanations during fine-tuning."""
from __future__ import annotations

import torch
from torch import nn

from ..models import is_dense
from ..spatial import grid_of, per_map
from .capture import LayerHooks, Target, check_input, resolve_region, resolve_targets, run_model, target_scores
from .methods import REGISTRY, check_method, finish


def differentiable_cam(model: nn.Module, x: torch.Tensor, layer: str, target: Target = "predicted",
                       method: str = "gradcam", region=None, eps: float = 1e-8, reshape=None,
                       output=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, cam) from one forward pass, with the CAM differentiable w.r.t. the model's parameters.

    The model keeps its mode (train mode is fine: use it inside the training loop). The gradient G is
    taken with create_graph=True, so a loss on `cam` backpropagates to the parameters; compute the
    classification loss on the returned `logits` (same forward, no second pass). `cam` is N×H×W (volumes
    N×D×H×W) at the input size: ReLU of the method's map, bi/trilinear upsampling, each map divided by its max + eps
    (so in [0, 1), all-zero where the map is). In train mode, batch-norm couples the samples of a batch,
    so each sample's gradient also carries the others' scores (as in pytorch-grad-cam).
    Methods: those the registry marks differentiable (the gradient family). Layers of any layout, as in
    `capture` (`reshape`, `output` likewise).
    """
    if not REGISTRY[check_method(method)].differentiable:
        usable = [name for name, m in REGISTRY.items() if m.differentiable]
        raise ValueError(f"differentiable_cam needs a differentiable gradient method, one of {', '.join(usable)}; "
                         f"{method} is not differentiable through its gradients")
    x = check_input(x, model)
    with torch.enable_grad():
        with LayerHooks(model, [layer], grid_of(x), enable_grad=False, reshape=reshape) as hooks:
            logits = run_model(model, x, output)
        if layer not in hooks.outputs:
            raise ValueError(f"layer {layer!r} did not run in the model's forward pass")
        check_method(method, segmentation=is_dense(logits))
        a = hooks.maps(layer)
        t = resolve_targets(target, logits.detach())
        if len(t) != 1:
            raise ValueError("differentiable_cam takes one target per sample, not ('topk', k)")
        reg = resolve_region(region, logits.detach(), t[0]) if is_dense(logits) and not callable(t[0]) else None
        (g,) = torch.autograd.grad(target_scores(logits, t[0], reg).sum(), hooks.outputs[layer], create_graph=True)
        g = hooks.maps(layer, g)
        cam = finish(REGISTRY[method].formula(a, g).clamp(min=0), grid_of(x), normalize=False)
        cam = cam / (per_map(cam, "amax") + eps)
    return logits, cam
