"""Running a model fast on CPU with the same numbers (to float rounding): channels-last inputs for models that
take them (1.4-3× faster convolutions and pooling, benchmarks/results/cam_speed.md), and 3-D convolutions of
single volumes on oneDNN (`onednn_conv3d`)."""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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


def _triple(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value] * 3


class _OneDnnConv3d(TorchFunctionMode):
    """`torch.conv3d` of CPU float32 tensors through oneDNN, the same kernel PyTorch picks for batches.

    For one volume PyTorch falls back to its reference kernel (`slow_conv3d`) whenever N·C·D·H of the input
    is under 20480, a rule written for images (1×1×128×128×128 gives 16384): 2.5-4.5× slower per layer
    on the 3-D demo model (measured on one thread). oneDNN's backward gives the same gradients.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv3d:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            call = dict(zip(names, args), **kwargs)
            x, padding = call["input"], call.get("padding", 0)
            if x.device.type == "cpu" and x.dtype == torch.float32 and not isinstance(padding, str):
                return torch.ops.aten.mkldnn_convolution(
                    x, call["weight"], call.get("bias"), _triple(padding), _triple(call.get("stride", 1)),
                    _triple(call.get("dilation", 1)), call.get("groups", 1))
        return func(*args, **kwargs)


def onednn_conv3d(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context in which a model's 3-D convolutions of `x` run on oneDNN (when x is a CPU volume and
    PyTorch has oneDNN); otherwise it changes nothing."""
    if x.ndim == 5 and x.device.type == "cpu" and torch.backends.mkldnn.is_available():
        return _OneDnnConv3d()
    return contextlib.nullcontext()
