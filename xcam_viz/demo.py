"""The embedded demo: synthetic lesions and a smallcnn that has learned their shortcut.

The trained model is cached as a checkpoint (`data/demo_smallcnn.pt` in a source checkout,
else `~/.cache/xcam-viz/`); `XCAM_VIZ_CACHE` overrides the folder.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from . import models
from .data import ImageSet, synthetic_lesions

DEMO_SIZE = 64
DEMO_TRAIN = 2000
DEMO_EPOCHS = 6
DEMO_SEED = 0
CHECKPOINT_NAME = "demo_smallcnn.pt"


def cache_dir() -> Path:
    """Where the demo model lives: $XCAM_VIZ_CACHE, the checkout's data/, or ~/.cache/xcam-viz."""
    if os.environ.get("XCAM_VIZ_CACHE"):
        return Path(os.environ["XCAM_VIZ_CACHE"])
    checkout = Path(__file__).resolve().parents[1] / "data"
    if checkout.is_dir() and os.access(checkout, os.W_OK):
        return checkout
    return Path.home() / ".cache" / "xcam-viz"


def demo_data(split: str = "train", n: int | None = None, **kw) -> ImageSet:
    """The demo's synthetic lesions (64 px) for a split; 2,000 train or 400 test/flipped images."""
    n = n or (DEMO_TRAIN if split == "train" else 400)
    return synthetic_lesions(n=n, size=DEMO_SIZE, split=split, seed=DEMO_SEED, **kw)


def train_demo_model(progress: bool = True, **data_kw):
    """Train the demo smallcnn from scratch on the demo training split (under a minute on 2 cores).

    data_kw go to `synthetic_lesions` (e.g. confounder=0.0 for a model without the shortcut).
    """
    torch.manual_seed(DEMO_SEED)
    model = models.build("smallcnn", num_classes=2)
    return models.train(model, demo_data("train", **data_kw), epochs=DEMO_EPOCHS, seed=DEMO_SEED,
                        progress=progress)


def demo_model(progress: bool = True, retrain: bool = False):
    """Load the cached demo model, training and caching it first if it is missing."""
    path = cache_dir() / CHECKPOINT_NAME
    if path.exists() and not retrain:
        return models.load(path)
    model, history = train_demo_model(progress)
    models.save(model, path, meta={"name": "demo", "version": "v0", "epochs": DEMO_EPOCHS,
                                   "train_loss": float(history.loss[-1])})
    return model


def summary(progress: bool = True) -> str:
    """Load (or train) the demo model and describe what it learned, split by split."""
    start = time.perf_counter()
    model = demo_model(progress)
    seconds = time.perf_counter() - start
    lines = [f"demo model: smallcnn on synthetic lesions ({DEMO_SIZE} px), ready in {seconds:.1f} s",
             "blocks: " + ", ".join(f"{n} {s[0]}x{s[1]}x{s[2]}" for n, s in
                                    models.spatial_layers(model, (3, DEMO_SIZE, DEMO_SIZE)) if "." not in n),
             "accuracy by split:"]
    for split in ("test", "flipped"):
        lines.append(f"  {split:8s} {models.accuracy(model, demo_data(split)):6.1%}")
    lines.append("A high test but low flipped accuracy means the model learned the marker shortcut.")
    return "\n".join(lines)
