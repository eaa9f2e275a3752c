"""What an overlay asks for and gets: map requests and results, and a failed map in words with its fix.

Every error of model work for a map (a channel or size mismatch, a layer that cannot be read, a class the
model does not have, NaN outputs) becomes one message that says what went wrong and what to change.
"""
from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MapRequest:
    """What one overlay shows. target: "predicted" or a class index; region (segmenters):
    "predicted", "all", a point (y, x) or a painted mask as ("mask", packed bits, shape)."""

    version: str
    split: str
    sample: str
    method: str
    layer: str
    target: str | int = "predicted"
    region: Hashable = None


@dataclass
class MapResult:
    """A map at input resolution (H×W float32; [0, 1], or signed bits for evidence) and its provenance."""

    request: MapRequest
    values: np.ndarray
    signed: bool
    target_class: int
    seconds: float

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha1(self.values.tobytes()).hexdigest()[:12]


class NotFinite(ValueError):
    """A map (or the model output it comes from) holds NaN or infinite values."""


def mask_region(mask: np.ndarray) -> tuple:
    """A painted bool mask as a hashable region for a `MapRequest`."""
    mask = np.asarray(mask, bool)
    return ("mask", np.packbits(mask).tobytes(), mask.shape)


def region_value(region):
    """The region of a request as `capture` takes it (a painted mask unpacked)."""
    if isinstance(region, tuple) and region and region[0] == "mask":
        _, bits, shape = region
        return torch.from_numpy(np.unpackbits(np.frombuffer(bits, np.uint8))[:int(np.prod(shape))]
                                .reshape(shape).astype(bool))
    return region


def map_problem(err: BaseException, image_size: tuple[int, int]) -> str:
    """What went wrong with a map and how to fix it, for a notification."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = text.splitlines()[0][:240] if text else type(err).__name__
    takes = re.search(r"takes (\d+)-channel", text)
    if takes:
        fix = f"serve the data with --channels {takes.group(1)} (xv.data.load_folder(..., channels={takes.group(1)}))"
    elif isinstance(err, NotFinite):
        fix = "check the checkpoint (NaN weights, e.g. from a diverged training run) and the images"
    elif "out of range" in text and "class" in text:
        fix = ("choose a class the model has under Explain class, or serve a checkpoint with one output per class "
               "of the data")
    elif isinstance(err, KeyError) or "layer" in text.lower() or "Layout(" in text:
        fix = "choose another layer in the sidebar"
    elif isinstance(err, (RuntimeError, AssertionError)) and re.search(r"size|shape|[Ee]xpected|mat1", text):
        h, w = image_size
        fix = f"the model cannot run on {h}×{w} images: serve them with --size H W, the size it was trained at"
    else:
        fix = "see the server log for the traceback"
    return f"No map: {text}. Fix: {fix}."
