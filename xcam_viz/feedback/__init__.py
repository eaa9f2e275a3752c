"""Explanation feedback: the annotation store (SQLite), masks spread over a volume's slices, and
feedback simulated from ground truth."""
from .feedbackset import FeedbackSet
from .masks import union_masks
from .simulate import simulate
from .slices import extend, interpolate
from .store import Annotation, FeedbackStore

__all__ = ["Annotation", "FeedbackSet", "FeedbackStore", "extend", "interpolate", "simulate", "union_masks"]
