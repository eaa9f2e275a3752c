"""xcam-viz: see why an image CNN decides what it decides, correct it, fine-tune it.

Top-level names are loaded on first use, so `import xcam_viz` stays quick and the core never
pulls in the dashboard's libraries.
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> "module:attribute" (attribute empty for a module)
_LAZY = {
    "data": "xcam_viz.data:",
    "models": "xcam_viz.models:",
    "demo": "xcam_viz.demo:",
    "explain": "xcam_viz.explain:explain",
    "evidence": "xcam_viz.evidence:evidence",
    "metrics": "xcam_viz.metrics:",
    "feedback": "xcam_viz.feedback:",
    "FeedbackStore": "xcam_viz.feedback:FeedbackStore",
    "finetune": "xcam_viz.finetune:finetune",
    "concepts": "xcam_viz.concepts:",
    "report": "xcam_viz.report:report",
    "Dashboard": "xcam_viz.dashboard:Dashboard",
}
__all__ = sorted(_LAZY)


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
