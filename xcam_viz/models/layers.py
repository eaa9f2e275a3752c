"""Find the modules of a model whose output is a spatial map (the layers a CAM can use)."""
from __future__ import annotations

import torch
from torch import nn

from .zoo import Normalize


def spatial_layers(model: nn.Module, input_shape=(3, 64, 64)) -> list[tuple[str, tuple[int, int, int]]]:
    """Every named module whose output is a C×h×w tensor (h·w > 1), with that shape, found by one dummy forward.

    Listed in execution order; the input normalisation layer is left out.
    """
    found: list[tuple[str, tuple[int, int, int]]] = []
    names = {m: n for n, m in model.named_modules() if n}

    def record(module, _inputs, output):
        if (isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2] * output.shape[-1] > 1
                and not isinstance(module, Normalize)):
            found.append((names[module], tuple(output.shape[1:])))

    handles = [m.register_forward_hook(record) for m in names]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        x = torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    seen, ordered = set(), []
    for name, shape in found:          # a module called twice keeps its first output
        if name not in seen:
            seen.add(name)
            ordered.append((name, shape))
    return ordered


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; a KeyError listing close names if there is none."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    import difflib
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
    raise KeyError(f"model has no layer {name!r}; close names: {close or 'none'}. "
                   "List spatial layers with xv.models.spatial_layers(model, input_shape)")
