"""Concepts: unit dissection, ROI matching, progressive labelling and unit embedding."""
from .dissect import RULES, THRESHOLDS, StreamingQuantile, Units, dissect
from .embedding import embed_units
from .labels import PRESET_LABELS, LabelStore

__all__ = ["LabelStore", "PRESET_LABELS", "RULES", "THRESHOLDS", "StreamingQuantile", "Units", "dissect", "embed_units"]
