"""Concepts: unit dissection, ROI matching, progressive labelling and unit embedding."""
from .dissect import RULES, THRESHOLDS, StreamingQuantile, Units, best_slice, dissect
from .embedding import embed_units
from .labels import LabelStore

__all__ = ["LabelStore", "RULES", "THRESHOLDS", "StreamingQuantile", "Units", "best_slice", "dissect", "embed_units"]
