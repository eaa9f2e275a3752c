"""Evidence for and against a decision: Prediction Difference Analysis and a fast variant."""
from .analysis import METHODS, evidence, laplace_log2_odds
from .samplers import SAMPLERS, ConditionalSampler, MarginalSampler

__all__ = ["METHODS", "SAMPLERS", "ConditionalSampler", "MarginalSampler", "evidence", "laplace_log2_odds"]
