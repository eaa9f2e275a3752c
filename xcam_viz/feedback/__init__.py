"""Explanation feedback: the annotation store (SQLite) and feedback simulated from ground truth."""
from .feedbackset import FeedbackSet
from .masks import union_masks
from .simulate import simulate
from .store import Annotation, FeedbackStore

__all__ = ["Annotation", "FeedbackSet", "FeedbackStore", "simulate", "union_masks"]
