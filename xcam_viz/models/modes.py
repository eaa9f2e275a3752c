"""Train / eval mode for a block of code, restoring every module's own flag afterwards."""
from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module, train: bool = False):
    """Put the model in eval (or train) mode for the block; afterwards each module gets back its own
    `training` flag, so a model with frozen (eval-mode) batch-norm layers inside stays as it was."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training
