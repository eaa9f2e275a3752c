"""Decoy digits: real handwriting with a decoy patch that encodes the class (after Ross et al.'s Decoy-MNIST).

A second shortcut data set beside the synthetic lesions, with another kind of object (handwritten
digits from scikit-learn's `load_digits`, shipped with scikit-learn, so nothing is downloaded) and
another kind of confounder (grey squares in the four corners whose grey level names a class), so that
explanation feedback is shown to repair a shortcut beyond the demo data. In `train` and `test` the
patch encodes the image's own label; in `flipped` it encodes 9 - label, which exposes a model that
reads the patch instead of the digit. `test` and `flipped` hold the same held-out digits with the
same noise: they differ only in their decoy patches.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from .imageset import ImageSet

SPLITS = ("train", "test", "flipped")
CLASS_NAMES = [str(c) for c in range(10)]
N_TRAIN = 1200
_SPLIT_CODE = {"train": 0, "test": 1, "flipped": 2}


def decoy_level(c):
    """The grey level of the decoy patch that encodes class `c` (0..9): 0.25 + 0.75 c / 9."""
    return 0.25 + 0.75 * c / 9


def decoy_digits(n: int | None = None, size: int = 32, split: str = "train", seed: int = 0,
                 confounder: float = 1.0) -> ImageSet:
    """Handwritten digits (light on dark, 3 grey channels) with a decoy in the four corners.

    The 8×8 digit is upscaled (bilinear) into the centre of the canvas, leaving a margin of size // 4
    pixels on every side; the decoy is a size // 4 square in each corner of that margin, so it never
    touches the digit. `masks` holds the digit's ink and `regions["confounder"]` the decoy.
    Why four large squares: a plain smallcnn ignores one small square in a random corner (flipped
    accuracy 0.86-0.99, measured), so that decoy would be no shortcut to repair.

    Args:
        n: number of images; None gives all of the split's digits (1200 train, 597 test/flipped).
        size: image side in pixels, 24..224 (need not be a multiple of 8).
        split: "train", "test" or "flipped". `seed` splits the 1797 digits into 1200 train and 597
            held-out ones; `test` and `flipped` share the held-out digits, and the patch encodes
            the label in `train`/`test` and 9 - label in `flipped`.
        seed: the train/held-out split, the decoys and the noise.
        confounder: probability in [0, 1] that a patch follows the split's rule; otherwise it
            encodes a uniformly random class. 0 gives patches that say nothing about the label.

    Example:
        >>> import xcam_viz as xv
        >>> ds = xv.data.decoy_digits(n=8, split="flipped")
        >>> tuple(ds.images.shape), ds.class_names[:3], ds.ids[0]
        ((8, 3, 32, 32), ['0', '1', '2'], 'digits-flipped-0-00000')
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if not 24 <= size <= 224:
        raise ValueError(f"size must be between 24 and 224 pixels, got {size}")
    if not 0 <= confounder <= 1:
        raise ValueError(f"confounder must lie in [0, 1], got {confounder}")
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    pool = order[:N_TRAIN] if split == "train" else order[N_TRAIN:]
    n = len(pool) if n is None else n
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n > len(pool):
        raise ValueError(f"split {split!r} has {len(pool)} digits, asked for n={n}; give n <= {len(pool)} or None")

    # Decoys are drawn for the whole split and then cut, so the first k images never depend on n.
    rng = np.random.default_rng([seed, 1, _SPLIT_CODE[split]])
    follows = (rng.random(len(pool)) < confounder)[:n]
    other = rng.integers(0, 10, len(pool))[:n]
    idx = pool[:n]
    labels = digits.target[idx]
    code = np.where(follows, 9 - labels if split == "flipped" else labels, other)

    m = size // 4
    small = torch.from_numpy(digits.images[idx] / 16).float()[:, None]
    canvas = torch.zeros(n, size, size)
    canvas[:, m:size - m, m:size - m] = torch.nn.functional.interpolate(
        small, size=(size - 2 * m, size - 2 * m), mode="bilinear", align_corners=False)[:, 0]
    masks = canvas > 0.25 * canvas.amax((1, 2), keepdim=True)

    edge = (torch.arange(size) < m) | (torch.arange(size) >= size - m)
    patch = (edge[:, None] & edge[None, :]).expand(n, size, size).clone()
    img = torch.where(patch, torch.from_numpy(decoy_level(code)).float()[:, None, None], canvas)
    # Noise seeded by the source digit: test and flipped images agree outside their patches.
    noise = np.stack([np.random.default_rng([seed, 2, int(i)]).standard_normal((size, size), np.float32)
                      for i in idx])
    img = (img + 0.02 * torch.from_numpy(noise)).clamp(0, 1)

    ids = [f"digits-{split}-{seed}-{i:05d}" for i in range(n)]
    attrs = {"source": "decoy_digits", "split": split, "seed": seed, "confounder": confounder, "labelled": True}
    return ImageSet(img[:, None].repeat(1, 3, 1, 1), torch.from_numpy(labels), masks, ids, CLASS_NAMES,
                    None, {"confounder": patch}, attrs)
