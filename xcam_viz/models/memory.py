"""Channels-last inputs, for models that take them: the same numbers (to float rounding), 1.4-3× faster
convolutions and pooling on CPU (benchmarks/results/cam_speed.md)."""
from __future__ import annotations

import weakref

import torch
from torch import nn

from .modes import eval_mode

_TAKES_CHANNELS_LAST: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def fast_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (N×C×H×W) in channels-last memory if the model runs on it, else as it is.

    Whether the model does is tried once per model on one image, in eval mode (call it before hooks go
    on): a forward that calls ``.view`` on its feature maps (common in hand-written models) refuses
    channels-last tensors, and keeps NCHW inputs.
    """
    if x.ndim != 4:         # volumes stay NCDHW: channels_last_3d made r3d_18 14 % slower on CPU (measured)
        return x
    takes = _TAKES_CHANNELS_LAST.get(model)
    if takes is None:
        try:
            with eval_mode(model), torch.no_grad():
                model(x[:1].contiguous(memory_format=torch.channels_last))
            takes = True
        except Exception:           # noqa: BLE001 - any refusal means: keep the model's own layout
            takes = False
        try:
            _TAKES_CHANNELS_LAST[model] = takes
        except TypeError:           # not weakly referenceable: probe again next time
            pass
    return x.contiguous(memory_format=torch.channels_last) if takes else x
