"""The embedded demos: models that have learned their example set's shortcut.

- 2-D: synthetic lesions (`demo_data`) and a smallcnn that learned the surgical-marker shortcut.
- 3-D: synthetic chest CT volumes (`demo_volumes`) and a smallcnn3d that learned the skin-marker
  shortcut.

The data (splits, sizes, seeds) come from the example registry `xcam_viz.data.examples.EXAMPLES`.
The trained models are cached as checkpoints (`data/demo_smallcnn.pt` and
`data/demo_volume_smallcnn3d.pt` in a source checkout, else `~/.cache/xcam-viz/`);
`XCAM_VIZ_CACHE` overrides the folder.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import models
from .data import ImageSet
from .data.examples import EXAMPLES

DEMO_SIZE = EXAMPLES["demo"].options["size"]
DEMO_TRAIN = EXAMPLES["demo"].sizes["train"]
DEMO_SEED = EXAMPLES["demo"].options["seed"]
DEMO_EPOCHS = 6
CHECKPOINT_NAME = "demo_smallcnn.pt"


@dataclass(frozen=True)
class Recipe:
    """How a demo model is built and trained on its example set's training split."""

    example: str
    model: str
    build: dict
    epochs: int
    batch_size: int
    checkpoint: str
    what: str                                   # the model in words, for summaries


LESIONS = Recipe("demo", "smallcnn", {"num_classes": 2}, DEMO_EPOCHS, 64, CHECKPOINT_NAME,
                 f"smallcnn on synthetic lesions ({DEMO_SIZE} px)")
VOLUMES = Recipe("volumes", "smallcnn3d", {"num_classes": 2, "in_channels": 1, "width": 8}, 5, 16,
                 "demo_volume_smallcnn3d.pt", "smallcnn3d on synthetic chest CT volumes (48³ voxels, lung window)")


def cache_dir() -> Path:
    """Where the demo models live: $XCAM_VIZ_CACHE, the checkout's data/, or ~/.cache/xcam-viz."""
    if os.environ.get("XCAM_VIZ_CACHE"):
        return Path(os.environ["XCAM_VIZ_CACHE"])
    checkout = Path(__file__).resolve().parents[1] / "data"
    if checkout.is_dir() and os.access(checkout, os.W_OK):
        return checkout
    return Path.home() / ".cache" / "xcam-viz"


def demo_data(split: str = "train", n: int | None = None, **kw) -> ImageSet:
    """The demo's synthetic lesions (64 px) for a split; 2,000 train or 400 test/flipped images.

    kw go to `synthetic_lesions` (e.g. confounder=0.0)."""
    return EXAMPLES["demo"].load(split, n, **kw)


def demo_volumes(split: str = "train", n: int | None = None, **kw) -> ImageSet:
    """The 3-D demo's chest CT volumes (48³, lung window) for a split; 400 train or 200 test/flipped.

    kw go to `xv.data.synthetic_nodules` (e.g. confounder=0.0, task="segmentation")."""
    return EXAMPLES["volumes"].load(split, n, **kw)


def train_recipe(recipe: Recipe, progress: bool = True, **data_kw):
    """Train a demo model from scratch on its example set's training split; returns (model, history).

    data_kw go to the example set's generator (e.g. confounder=0.0 for a model without the shortcut).
    """
    seed = EXAMPLES[recipe.example].options["seed"]
    torch.manual_seed(seed)
    model = models.build(recipe.model, **recipe.build)
    return models.train(model, EXAMPLES[recipe.example].load("train", **data_kw), epochs=recipe.epochs,
                        batch_size=recipe.batch_size, seed=seed, progress=progress)


def train_demo_model(progress: bool = True, **data_kw):
    """Train the demo smallcnn on the demo training split (under a minute on 2 cores)."""
    return train_recipe(LESIONS, progress, **data_kw)


def train_volume_model(progress: bool = True, **data_kw):
    """Train the 3-D demo smallcnn3d on the volumes' training split (under 3 CPU minutes)."""
    return train_recipe(VOLUMES, progress, **data_kw)


def cached_model(recipe: Recipe, progress: bool = True, retrain: bool = False):
    """Load a demo model's checkpoint, training and caching it first if it is missing."""
    path = cache_dir() / recipe.checkpoint
    if path.exists() and not retrain:
        return models.load(path)
    model, history = train_recipe(recipe, progress)
    models.save(model, path, meta={"name": recipe.example, "version": "v0", "epochs": recipe.epochs,
                                   "train_loss": float(history.loss[-1])})
    return model


def demo_model(progress: bool = True, retrain: bool = False):
    """The 2-D demo model (smallcnn on synthetic lesions), trained and cached if missing."""
    return cached_model(LESIONS, progress, retrain)


def demo_volume_model(progress: bool = True, retrain: bool = False):
    """The 3-D demo model (smallcnn3d on synthetic chest CT volumes), trained and cached if missing."""
    return cached_model(VOLUMES, progress, retrain)


def describe(recipe: Recipe, progress: bool = True) -> str:
    """Load (or train) a demo model and describe what it learned, split by split."""
    start = time.perf_counter()
    model = cached_model(recipe, progress)
    seconds = time.perf_counter() - start
    example = EXAMPLES[recipe.example]
    test = example.load("test")
    lines = [f"demo model: {recipe.what}, ready in {seconds:.1f} s",
             "blocks: " + ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in
                                    models.spatial_layers(model, test.image_shape) if "." not in name),
             "accuracy by split:",
             f"  {'test':8s} {models.accuracy(model, test):6.1%}",
             f"  {'flipped':8s} {models.accuracy(model, example.load('flipped')):6.1%}",
             "A high test but low flipped accuracy means the model learned the marker shortcut."]
    return "\n".join(lines)


def summary(progress: bool = True) -> str:
    """What the 2-D demo model learned."""
    return describe(LESIONS, progress)


def volume_summary(progress: bool = True) -> str:
    """What the 3-D demo model learned."""
    return describe(VOLUMES, progress)
