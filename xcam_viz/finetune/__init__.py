"""Fine-tuning on explanation feedback: losses, the (background) job and model versions."""
import sys
import types

from .core import FinetuneResult, finetune
from .job import FinetuneJob
from .losses import centred_logit, irrelevant_loss, relevant_loss, rrr_loss
from .strategies import AUTO, DEFAULTS, STRATEGIES, VOLUME_DEFAULTS, Strategy
from .versions import ModelVersions

__all__ = ["AUTO", "DEFAULTS", "FinetuneJob", "FinetuneResult", "ModelVersions", "STRATEGIES", "Strategy",
           "VOLUME_DEFAULTS", "centred_logit", "finetune", "irrelevant_loss", "relevant_loss", "rrr_loss"]


class _CallableModule(types.ModuleType):
    """Importing `xcam_viz.finetune` binds the module as `xv.finetune`; calling it runs `finetune`."""

    def __call__(self, *args, **kw):
        return finetune(*args, **kw)


sys.modules[__name__].__class__ = _CallableModule
