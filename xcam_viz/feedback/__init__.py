"""Explanation feedback: the annotation store (SQLite), masks spread over a volume's slices, and
feedback simulated from ground truth with strokes as people paint them."""
from .feedbackset import FeedbackSet
from .masks import union_masks
from .simulate import simulate
from .slices import extend, interpolate
from .store import Annotation, FeedbackStore
from .strokes import BRUSH_WIDTH, STROKES, paint

__all__ = ["BRUSH_WIDTH", "STROKES", "Annotation", "FeedbackSet", "FeedbackStore", "extend", "interpolate", "paint",
           "simulate", "union_masks"]
