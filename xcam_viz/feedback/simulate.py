"""Feedback simulated from ground-truth masks, as an annotator with perfect or imperfect strokes."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..data import ImageSet
from .feedbackset import NO_LABEL, FeedbackSet
from .slices import extend

KINDS = ("relevant", "irrelevant", "both")
IMPERFECTIONS = ("dilate", "erode", "partial", "slices", "extend")


def simulate(ds: ImageSet, fraction: float = 0.1, kind: str = "relevant", seed: int = 0,
             imperfection: dict | None = None, store=None, author: str = "simulated"):
    """Feedback for a random `fraction` of the images of `ds`, drawn from its ground-truth masks.

    Only samples with a non-empty lesion mask are chosen. relevant = the lesion mask ("look
    here"); irrelevant = the `confounder` region ("not there": an annotator paints the shortcut
    where they see it, so with kind="irrelevant" only samples that carry it are chosen), or, in a
    data set without confounder regions, everything but the lesion; both = the two (a sample
    without the confounder then gets only its relevant mask). imperfection, e.g. {"dilate": 2} / {"erode": 1} /
    {"partial": 0.5}: grow or shrink each mask by that many pixels (voxels), or keep only that
    share of it (the part on one side of a random line or plane). For volumes, {"slices": 3,
    "extend": 2} paints each mask on at most 3 of its slices (spread evenly through it, along z)
    and spreads each stroke to 2 slices either side with `xv.feedback.extend`, as a user who
    paints a few slices does. Masks are H×W for images, D×H×W for volumes. Returns a
    `FeedbackSet`, or, with `store=`, writes one annotation per sample into that `FeedbackStore`
    and returns the store.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    imperfection = dict(imperfection or {})
    unknown = set(imperfection) - set(IMPERFECTIONS)
    if unknown:
        raise ValueError(f"unknown imperfection {sorted(unknown)}; use {IMPERFECTIONS}")
    if not 0 < imperfection.get("partial", 1) <= 1:
        raise ValueError(f"imperfection partial must lie in (0, 1], got {imperfection['partial']}")
    for key in ("slices", "extend"):
        if key in imperfection and (ds.spatial_dims != 3 or int(imperfection[key]) < int(key == "slices")):
            raise ValueError(f"imperfection {key} is for volumes (D×H×W masks) and must be a whole number >= "
                             f"{int(key == 'slices')}, got {imperfection[key]!r} on data of shape {ds.image_shape}")
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
    masks = {"relevant": lesion, "irrelevant": irrelevant}
    flags = {"relevant": torch.full((k,), kind in ("relevant", "both"), dtype=torch.bool),
             "irrelevant": irrelevant.flatten(1).any(1) & (kind in ("irrelevant", "both"))}
    out = {name: torch.from_numpy(np.stack([_imperfect(m, imperfection, rng) if flag else np.zeros_like(m)
                                            for m, flag in zip(masks[name].numpy(), flags[name].tolist())]))
           for name in masks}
    fb = FeedbackSet([ds.ids[i] for i in chosen.tolist()], out["relevant"], out["irrelevant"],
                     flags["relevant"], flags["irrelevant"], torch.full((k,), NO_LABEL, dtype=torch.long))
    if store is None:
        return fb
    fb.write(store, author=author)
    return store


def _imperfect(mask: np.ndarray, imperfection: dict, rng: np.random.Generator) -> np.ndarray:
    """One mask made imperfect as `simulate` describes; never returns an empty mask."""
    out = mask
    if imperfection.get("dilate"):
        out = ndimage.binary_dilation(out, iterations=int(imperfection["dilate"]))
    if imperfection.get("erode"):
        eroded = ndimage.binary_erosion(out, iterations=int(imperfection["erode"]))
        depth = ndimage.distance_transform_edt(out)
        out = eroded if eroded.any() else depth == depth.max()   # too thin to erode: keep its core
    if imperfection.get("partial", 1) < 1:
        where = np.nonzero(out)
        direction = rng.normal(size=out.ndim)
        along = sum(c * d for c, d in zip(where, direction))
        keep = along <= np.quantile(along, imperfection["partial"])
        out = np.zeros_like(out)
        out[tuple(c[keep] for c in where)] = True
    if "slices" in imperfection:
        painted = np.flatnonzero(out.any((1, 2)))
        chosen = painted[np.unique(np.linspace(0, len(painted) - 1, int(imperfection["slices"])).round().astype(int))]
        strokes = np.zeros_like(out)
        strokes[chosen] = out[chosen]
        out = strokes
    if imperfection.get("extend"):
        out = extend(out, slices=int(imperfection["extend"]))
    return out
