"""What a model returns, reduced to its logits: tensors, tuples and lists, dicts and ModelOutput-like objects."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from .memory import onednn_conv3d


def logits_of(out, output: Callable | None = None) -> torch.Tensor:
    """The logits in a model's output: `output(out)` if given, else the tensor itself, the first element of a
    tuple or list, or the ``logits`` entry of a dict or attribute of an object (Hugging Face's ModelOutput)."""
    if output is not None:
        out = output(out)
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    elif isinstance(out, Mapping):
        if "logits" not in out:
            raise ValueError(f"the model returns a dict with keys {sorted(out)} and no 'logits': pass "
                             "output=lambda out: out['<key>'] to say which entry holds the logits")
        out = out["logits"]
    elif not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
        out = out.logits
    if not isinstance(out, torch.Tensor) or out.ndim not in (2, 4, 5):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits N×K (classifier) or N×K×H×W / N×K×D×H×W (segmenter), got "
                         f"{shape}; pass output=callable to pick the logits from what it returns")
    return out


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last linear layer (its classification head, usually), or None if it has none."""
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def is_dense(logits: torch.Tensor) -> bool:
    """Whether logits are a segmenter's, one score per class and pixel (N×K×H×W) or voxel (N×K×D×H×W)."""
    return logits.ndim > 2


def run_model(model: nn.Module, x: torch.Tensor, output: Callable | None = None) -> torch.Tensor:
    """The logits of model(x) (see `logits_of`), turning the model's complaint about a wrong input into an
    error that says what to give."""
    try:
        with onednn_conv3d(x):
            out = model(x)
    except (RuntimeError, ValueError) as err:     # torch raises both for inputs of the wrong shape
        if "Inference tensors" in str(err):
            raise RuntimeError("the model holds tensors made under torch.inference_mode(); build or load "
                               "it outside inference_mode to compute CAMs") from err
        raise ValueError(f"the model rejected an input of shape {tuple(x.shape)} ({str(err).splitlines()[0]}); "
                         "give images N×C×H×W (volumes N×C×D×H×W) with the channel count and size the model was "
                         "built for") from err
    return logits_of(out, output)
