"""Feedback simulated from ground-truth masks, as an annotator with perfect or imperfect strokes."""
from __future__ import annotations

import numpy as np
import torch

from ..data import ImageSet
from .feedbackset import NO_LABEL, FeedbackSet
from .strokes import paint, stroke_settings

KINDS = ("relevant", "irrelevant", "both")


def simulate(ds: ImageSet, fraction: float = 0.1, kind: str = "relevant", seed: int = 0,
             stroke: str | dict | None = None, store=None, author: str = "simulated"):
    """Feedback for a random `fraction` of the images of `ds`, drawn from its ground-truth masks.

    Only samples with a non-empty lesion mask are chosen. relevant = the lesion mask ("look
    here"); irrelevant = the `confounder` region ("not there": an annotator paints the shortcut
    where they see it, so with kind="irrelevant" only samples that carry it are chosen), or, in a
    data set without confounder regions, everything but the lesion; both = the two (a sample
    without the confounder then gets only its relevant mask). stroke: how the annotator paints
    (`xv.feedback.STROKES`; None: the exact masks), a kind's name or {name: amount}, e.g.
    {"dilate": 3}, {"shift": 3}, {"incomplete": 0.5}, "brush" (the Feedback tab's default brush
    width), {"wrong": 4} (the same shape 4 pixels away from the sample's ground truth), and for
    volumes {"slices": 3, "extend": 2}: each mask painted on at most 3 of its slices (spread
    evenly through it, along z) and spread 2 slices either side with `xv.feedback.extend`, as a
    user who paints a few slices does. Masks are H×W for images, D×H×W for volumes. Returns a
    `FeedbackSet`, or, with `store=`, writes one annotation per sample into that `FeedbackStore`
    and returns the store.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    stroke_settings(stroke, ds.spatial_dims)
    if ds.masks is None:
        raise ValueError("the data set has no ground-truth masks to simulate feedback from; "
                         "use a data set with masks (e.g. xv.data.synthetic_lesions)")
    conf = ds.regions.get("confounder")
    eligible = ds.masks.flatten(1).any(1)
    if kind == "irrelevant" and conf is not None:
        eligible &= conf.flatten(1).any(1)
    candidates = eligible.nonzero().flatten()
    if len(candidates) == 0:
        raise ValueError("no image of the data set has a non-empty ground-truth mask (and, for irrelevant "
                         "feedback, a confounder region); nothing to simulate feedback from")
    k = min(len(candidates), max(1, round(fraction * len(ds))))
    rng = np.random.default_rng(seed)
    chosen = candidates[torch.from_numpy(np.sort(rng.permutation(len(candidates))[:k]))]

    lesion = ds.masks[chosen]
    irrelevant = ~lesion if conf is None else conf[chosen]
    truth = (lesion | irrelevant).numpy()                 # what a "wrong" stroke keeps away from
    masks = {"relevant": lesion, "irrelevant": irrelevant}
    flags = {"relevant": torch.full((k,), kind in ("relevant", "both"), dtype=torch.bool),
             "irrelevant": irrelevant.flatten(1).any(1) & (kind in ("irrelevant", "both"))}
    out = {name: torch.from_numpy(np.stack([paint(m, stroke, rng, avoid) if flag else np.zeros_like(m)
                                            for m, flag, avoid in zip(masks[name].numpy(), flags[name].tolist(),
                                                                      truth)]))
           for name in masks}
    fb = FeedbackSet([ds.ids[i] for i in chosen.tolist()], out["relevant"], out["irrelevant"],
                     flags["relevant"], flags["irrelevant"], torch.full((k,), NO_LABEL, dtype=torch.long))
    if store is None:
        return fb
    fb.write(store, author=author)
    return store
