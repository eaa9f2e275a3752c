"""xcam-viz: see why an image CNN decides what it decides, correct it, fine-tune it.

The core is imported here; the dashboard (Panel, HoloViews, Bokeh) only on first use of
`xv.Dashboard`, so scripts and batch jobs never load it. Function names that share a
sub-package's name (`explain`, `evidence`, `finetune`, `report`) are bound after their
sub-package is imported, so `xv.explain(...)` is always the function.
"""
from importlib import import_module

from . import concepts, data, demo, feedback, metrics, models
from .evidence import evidence
from .explain import explain
from .feedback import FeedbackStore
from .finetune import finetune
from .report import report

__version__ = "0.1.0"

_LAZY = {"Dashboard": "xcam_viz.dashboard:Dashboard"}
__all__ = [*_LAZY, "FeedbackStore", "concepts", "data", "demo", "evidence", "explain", "feedback", "finetune",
           "metrics", "models", "report"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'xcam_viz' has no attribute {name!r}")
    module, _, attr = _LAZY[name].partition(":")
    value = import_module(module)
    value = getattr(value, attr) if attr else value
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
