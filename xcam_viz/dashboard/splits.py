"""Which data split does what in the dashboard: where a session opens, what fine-tuning trains on and
what it is scored on. The rules live here once; the Workbench applies them to its splits."""
from __future__ import annotations

import torch

from ..data import ImageSet

TRAIN_SPLIT = "train"          # the split users paint on and fine-tuning trains on, when there is one
TEST_SPLIT = "test"            # never trained on


def demo_splits(demo: str = "demo") -> dict[str, ImageSet]:
    """A demo's splits (its example set's): for "demo" 2,000 training images (to browse and paint on),
    400 test and 400 flipped; for "volumes" 400, 200 and 200 chest CT volumes."""
    from ..data.examples import EXAMPLES

    return {split: EXAMPLES[demo].load(split) for split in EXAMPLES[demo].splits}


UPFRONT_CELLS = 2 ** 24        # pixels or voxels of a split predicted whole when the server starts (~4,000 images
#                                of 64², ~300 of 224², ~150 volumes of 48³); a larger split is predicted page by page


def predicted_upfront(data: ImageSet) -> bool:
    """Whether a split is predicted whole when the server starts (sessions then open with every outcome known):
    only an in-memory split with at most UPFRONT_CELLS pixels or voxels, so no session waits for a long pass."""
    cells = len(data)
    for size in data.image_shape[1:]:
        cells *= int(size)
    return not data.lazy and cells <= UPFRONT_CELLS


def opening_split(splits: dict[str, ImageSet]) -> str:
    """The split a session opens on: the training split, where users paint, else the first one."""
    return TRAIN_SPLIT if TRAIN_SPLIT in splits else next(iter(splits))


def labelled_splits(splits: dict[str, ImageSet]) -> list[str]:
    """Splits with true labels (uploads have none)."""
    return [name for name, data in splits.items() if data.attrs.get("labelled", True)]


def training_splits(splits: dict[str, ImageSet]) -> list[str]:
    """The splits fine-tuning may train on: "train" when there is one, else every labelled split not
    named "test"."""
    labelled = labelled_splits(splits)
    if TRAIN_SPLIT in labelled:
        return [TRAIN_SPLIT]
    return [name for name in labelled if name != TEST_SPLIT]


def evaluation_splits(splits: dict[str, ImageSet], train: str | None) -> list[str]:
    """The splits a run on `train` is scored on before and after: the other labelled splits."""
    return [name for name in labelled_splits(splits) if name != train]


HELD_OUT = "held-out"          # the evaluation split carved from the training split when there is no other


def held_out_positions(splits: dict[str, ImageSet], train: str, exclude: set[str]) -> torch.Tensor | None:
    """Positions in `train` to hold out for scoring when no other labelled split can score a run on it: a
    stratified share of its images outside `exclude` (those with feedback), by the rule of fine-tuning's
    validation split (`finetune.core.held_out`); None when another split scores it."""
    from ..finetune.core import held_out

    if evaluation_splits(splits, train):
        return None
    data = splits[train]
    pool = torch.tensor([sid not in exclude for sid in data.ids], dtype=torch.bool)
    return held_out(data.labels, pool, seed=0)
