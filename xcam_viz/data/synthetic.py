"""Synthetic dermoscopy-like lesions with a known shortcut (the embedded demo data).

Benign lesions are round, smooth-bordered and one-coloured; malignant ones are asymmetric,
irregular-bordered and multi-coloured (the ABCD rule). A purple surgical-marker stroke near
the image border (the confounder) goes with malignant images in `train`/`test` and with
benign ones in `flipped`, so a plainly trained model can learn the shortcut. Every image is
a pure function of (seed, split, index), generated in vectorised chunks.
"""
from __future__ import annotations

import numpy as np
import torch

from .imageset import ImageSet

SPLITS = ("train", "test", "flipped")
CLASS_NAMES = ["benign", "malignant"]
CONCEPTS = ("lesion", "lesion border", "marker ink", "skin", "dark blotch", "blue-grey veil")   # presets to name units
_SPLIT_CODE = {"train": 0, "test": 1, "flipped": 2}
_CHUNK = 256
_HARMONICS = np.arange(1, 15, dtype=np.float32)


def synthetic_lesions(
    n: int = 512,
    size: int = 64,
    split: str = "train",
    seed: int = 0,
    confounder: float = 0.9,
    task: str = "classification",
) -> ImageSet:
    """Generate `n` lesion images of `size`×`size` pixels.

    confounder: strength s in [0, 1] of the marker shortcut: (1 + s)/2 of the malignant images
        (benign in `flipped`) carry the marker and (1 - s)/2 of the others. 0 turns the shortcut
        off: the marker then appears in half of each class and says nothing about the label.
    task: "classification" (labels benign/malignant, lesion masks) or "segmentation"
        (per-pixel targets 0 background, 1 benign, 2 malignant; labels in that space).
    """
    check_arguments(n, size, split, confounder, task, (32, 224, "pixels"))
    rng = np.random.default_rng([seed, _SPLIT_CODE[split]])
    labels = rng.permutation(np.arange(n) % 2)
    goes_with = labels == (0 if split == "flipped" else 1)
    marked = rng.random(n) < np.where(goes_with, 1 + confounder, 1 - confounder) / 2
    images, masks, marks = render_lesions(rng, labels, marked, size)

    ids = [f"{split}-{seed}-{i:05d}" for i in range(n)]
    attrs = {"source": "synthetic_lesions", "split": split, "seed": seed, "confounder": confounder,
             "task": task, "concepts": CONCEPTS}
    regions = {"confounder": torch.from_numpy(marks)}
    lab = torch.from_numpy(labels)
    if task == "segmentation":
        targets = torch.from_numpy(masks.astype(np.int64) * (labels[:, None, None] + 1))
        return ImageSet(torch.from_numpy(images), lab + 1, torch.from_numpy(masks), ids,
                        ["background", *CLASS_NAMES], targets, regions, attrs)
    return ImageSet(torch.from_numpy(images), lab, torch.from_numpy(masks), ids, CLASS_NAMES,
                    None, regions, attrs)


def check_arguments(n: int, size: int, split: str, confounder: float, task: str, sizes: tuple[int, int, str]):
    """The checks every synthetic generator makes; sizes: (smallest, largest, unit) of `size`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if not sizes[0] <= size <= sizes[1]:
        raise ValueError(f"size must be between {sizes[0]} and {sizes[1]} {sizes[2]}, got {size}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= confounder <= 1:
        raise ValueError(f"confounder must lie in [0, 1], got {confounder}")
    if task not in ("classification", "segmentation"):
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")


def render_lesions(rng: np.random.Generator, labels: np.ndarray, marked: np.ndarray,
                   size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N×3×size×size images of lesions of `labels` (0 benign, 1 malignant) drawn with `rng`, their lesion
    masks and their marker masks; `marked` says which images carry the marker."""
    n = len(labels)
    params = _draw_params(rng, labels, marked)
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.empty((n, size, size), bool)
    marks = np.empty((n, size, size), bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        images[sl], masks[sl], marks[sl] = _render({k: v[sl] for k, v in params.items()}, size)
    return images, masks, marks


def _draw_params(rng: np.random.Generator, labels: np.ndarray, marked: np.ndarray) -> dict:
    n = len(labels)
    mal = labels[:, None] == 1
    f32 = np.float32
    # Border harmonics: k=2 an ellipse for both; malignant adds asymmetry (k=1) and irregularity.
    amp = np.zeros((n, len(_HARMONICS)), f32)
    amp[:, 1] = rng.uniform(0.0, 0.12, n)
    amp += np.where(mal, rng.uniform(0.02, 0.06, (n, len(_HARMONICS))) / np.sqrt(_HARMONICS), 0.0)
    amp[:, 0] += np.where(labels == 1, rng.uniform(0.08, 0.16, n), 0.0)
    side = rng.integers(0, 4, n)
    along = rng.uniform(-0.45, 0.45, n)
    return {
        "label": labels,
        "centre": rng.uniform(-0.15, 0.15, (n, 2)).astype(f32),
        "radius": rng.uniform(0.26, 0.36, n).astype(f32),
        "amp": amp,
        "phase": rng.uniform(0, 2 * np.pi, (n, len(_HARMONICS))).astype(f32),
        "skin": (np.array([0.87, 0.70, 0.60]) + rng.normal(0, 0.04, (n, 3))).astype(f32),
        "lesion": (np.array([0.52, 0.33, 0.22]) + rng.normal(0, 0.04, (n, 3))).astype(f32),
        "waves": rng.normal(0, 1, (n, 2, 4, 2)).astype(f32) * np.array([3.0, 3.0], f32)[None, :, None, None],
        "wave_phase": rng.uniform(0, 2 * np.pi, (n, 2, 4)).astype(f32),
        "marked": marked,
        # The marker: a stroke near one border, from a to b, a few pixels thick.
        "mark_a": _edge_point(side, along - rng.uniform(0.15, 0.25, n), rng.uniform(0.80, 0.86, n)),
        "mark_b": _edge_point(side, along + rng.uniform(0.15, 0.25, n), rng.uniform(0.80, 0.86, n)),
        "mark_width": rng.uniform(0.05, 0.07, n).astype(f32),
        "noise_seed": rng.integers(0, 2**31, n),
    }


def _edge_point(side: np.ndarray, along: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Points near the border given by side (0 top, 1 right, 2 bottom, 3 left) in [-1, 1]² (y, x)."""
    sign = np.where(side < 2, -1.0, 1.0) * np.where(side % 2 == 0, 1.0, -1.0)
    y = np.where(side % 2 == 0, sign * depth, along)
    x = np.where(side % 2 == 0, along, -sign * depth)
    return np.stack([y, x], 1).astype(np.float32)


def _render(p: dict, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    pos = np.stack([yy, xx])[None]                                         # 1,2,H,W
    # Two smooth random fields per image (plane-wave sums): skin texture and lesion colour.
    proj = np.einsum("nfkc,chw->nfkhw", p["waves"], pos[0]) + p["wave_phase"][..., None, None]
    fields = np.cos(proj).sum(2) / 2.0                                    # n,2,H,W in ~[-1, 1]

    rel = pos - p["centre"][:, :, None, None]
    dist = np.hypot(rel[:, 0], rel[:, 1])
    theta = np.arctan2(rel[:, 0], rel[:, 1])
    wobble = np.cos(_HARMONICS[None, :, None, None] * theta[:, None] + p["phase"][..., None, None])
    border = p["radius"][:, None, None] * (1 + (p["amp"][..., None, None] * wobble).sum(1))
    softness = np.float32(1.5 / size)
    alpha = 1 / (1 + np.exp(np.clip((dist - border) / softness, -30, 30)))
    mask = dist < border

    skin = p["skin"][..., None, None] * (1 + 0.04 * fields[:, None, 0])
    shade = 1 - 0.25 * np.clip(1 - dist / border, 0, 1)[:, None]          # darker towards the centre
    base = p["lesion"][..., None, None] * shade
    mal = (p["label"] == 1)[:, None, None, None]
    # Malignant: a dark blotch and a blue-grey veil where the colour field is high / low.
    dark = np.array([0.28, 0.17, 0.13], np.float32)[None, :, None, None]
    veil = np.array([0.45, 0.42, 0.48], np.float32)[None, :, None, None]
    w_dark = np.clip((fields[:, None, 1] - 0.3) * 2, 0, 0.8)
    w_veil = np.clip((-fields[:, None, 1] - 0.4) * 2, 0, 0.8)
    multi = base * (1 - w_dark - w_veil).clip(0, 1) + dark * w_dark + veil * w_veil
    lesion = np.where(mal, multi, base)
    img = skin * (1 - alpha[:, None]) + lesion * alpha[:, None]

    ab = (p["mark_b"] - p["mark_a"])[:, :, None, None]
    t = (((pos - p["mark_a"][:, :, None, None]) * ab).sum(1) / (ab**2).sum(1)).clip(0, 1)
    closest = p["mark_a"][:, :, None, None] + t[:, None] * ab
    d_mark = np.hypot(*(pos - closest).transpose(1, 0, 2, 3))
    marks = (d_mark < p["mark_width"][:, None, None]) & p["marked"][:, None, None]
    ink = np.array([0.38, 0.22, 0.55], np.float32)[None, :, None, None]
    img = np.where(marks[:, None], ink, img)

    noise = np.random.default_rng(p["noise_seed"][0]).standard_normal(img.shape, np.float32)
    img = (img + 0.02 * noise).clip(0, 1)
    return img.astype(np.float32), mask, marks
