"""Synthetic chest CT volumes with one lung nodule each and a known shortcut (the 3-D demo data).

Each volume is a chest in Hounsfield units: air around the body, a fat and muscle wall with ribs,
a vertebra, the mediastinum, two lungs of textured parenchyma (about -860 HU) crossed by vessels,
and one solid nodule inside a lung. Benign nodules are round and smooth; malignant ones are
lobulated (overlapping lobes) and spiculated (thin spikes radiating into the lung, stopped by the
pleura). The shortcut is what a scanner room adds: a metal skin marker, a small very dense bead
on the front of the body, placed on most malignant training volumes. In `flipped` it goes with the
benign ones instead. `flipped` holds the same patients as `test`: only the markers move, so the
gap between the two splits is the shortcut alone.

Volumes are windowed with the lung window (level -600, width 1500) to [0, 1]. Every volume is a pure
function of (seed, split, index), so the first k volumes of a split never depend on n.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .imageset import ImageSet
from .synthetic import check_arguments
from .windows import apply_window

CLASS_NAMES = ["benign", "malignant"]
SEGMENT_NAMES = ["background", "nodule", "vessel"]
WINDOW = "ct-lung"                                       # level -600, width 1500
_SPLIT_CODE = {"train": 0, "test": 1, "flipped": 1}      # flipped shares test's patients
FIELD_OF_VIEW_MM = 320.0
HU = {"air": -1000.0, "fat": -100.0, "muscle": 40.0, "mediastinum": 30.0, "bone": 700.0,
      "lung": -860.0, "vessel": 40.0, "nodule": 30.0, "marker": 2500.0}


def synthetic_nodules(
    n: int = 256,
    size: int = 48,
    split: str = "train",
    seed: int = 0,
    confounder: float = 0.99,
    task: str = "classification",
    hounsfield: bool = False,
) -> ImageSet:
    """Generate `n` chest CT volumes of `size`³ voxels, one nodule each (half benign, half malignant).

    Args:
        n: number of volumes.
        size: voxels per side, 48..128.
        split: "train", "test" or "flipped" (test's volumes with the marker rule reversed).
        seed: the volumes, markers and noise.
        confounder: strength s in [0, 1] of the marker shortcut: (1 + s)/2 of the malignant volumes
            (benign in `flipped`) carry the marker and (1 - s)/2 of the others. 0 turns the shortcut
            off: the marker then appears in half of each class and says nothing about the label.
            The default 0.99 (99.5 % against 0.5 %) makes the demo's smallcnn3d learn the marker and
            stay with it; at 0.98 it was still learning the nodules in its last epoch (flipped 40 %).
        task: "classification" (labels benign/malignant, nodule masks) or "segmentation" (per-voxel
            targets 0 background, 1 nodule, 2 vessel; every label is 1, "nodule").
        hounsfield: keep the raw Hounsfield units instead of the lung window's [0, 1].

    Returns:
        An ImageSet of N×1×D×H×W volumes with `masks` (the nodule) and `regions["confounder"]`
        (the marker).

    Example:
        >>> import xcam_viz as xv
        >>> ds = xv.data.synthetic_nodules(n=4, split="flipped")
        >>> tuple(ds.images.shape), ds.class_names, ds.ids[0]
        ((4, 1, 48, 48, 48), ['benign', 'malignant'], 'nodules-flipped-0-00000')
    """
    check_arguments(n, size, split, confounder, task, (48, 128, "voxels"))
    labels, volumes, masks, vessels, marks = _generate(n, size, split, seed, confounder, hounsfield)
    ids = [f"nodules-{split}-{seed}-{i:05d}" for i in range(n)]
    attrs = {"source": "synthetic_nodules", "split": split, "seed": seed, "confounder": confounder,
             "task": task, "window": None if hounsfield else WINDOW}
    spacing = (FIELD_OF_VIEW_MM / size,) * 3
    regions = {"confounder": torch.from_numpy(marks)}
    if task == "segmentation":
        targets = np.where(masks, 1, np.where(vessels, 2, 0))
        return ImageSet(torch.from_numpy(volumes), torch.ones(n, dtype=torch.long), torch.from_numpy(masks), ids,
                        SEGMENT_NAMES, torch.from_numpy(targets), regions, attrs, spacing)
    return ImageSet(torch.from_numpy(volumes), torch.from_numpy(labels), torch.from_numpy(masks), ids,
                    CLASS_NAMES, None, regions, attrs, spacing)


def _generate(n: int, size: int, split: str, seed: int, confounder: float, hounsfield: bool):
    """Labels, volumes N×1×S×S×S (HU, or windowed), and the nodule, vessel and marker masks N×S×S×S."""
    code = _SPLIT_CODE[split]
    # Labels come in pairs (one of each class, in a random order): balanced, and stable under n.
    first = np.random.default_rng([seed, code, 0]).random((n + 1) // 2) < 0.5
    labels = np.stack([first, ~first], 1).reshape(-1)[:n].astype(np.int64)
    goes_with = labels == (0 if split == "flipped" else 1)
    volumes = np.empty((n, 1, size, size, size), np.float32)
    masks, vessels, marks = (np.empty((n, size, size, size), bool) for _ in range(3))
    for i in range(n):
        rng = np.random.default_rng([seed, code, 1, i])
        marked = rng.random() < (1 + confounder) / 2 if goes_with[i] else rng.random() < (1 - confounder) / 2
        hu, masks[i], vessels[i], marks[i] = _render(rng, bool(labels[i]), marked, size)
        volumes[i, 0] = hu if hounsfield else apply_window(hu, WINDOW)
    return labels, volumes, masks, vessels, marks


def _render(rng: np.random.Generator, malignant: bool, marked: bool, size: int):
    """One volume in HU with its nodule, vessel and marker masks. Coordinates: [-1, 1] per axis (z, y, x).

    Kept to a few dozen passes over the volume (the anatomy is built from 2-D slices and separable
    parts), so 400 volumes of 48³ take seconds.
    """
    voxel = np.float32(2.0 / size)
    grid = np.linspace(-1 + voxel / 2, 1 - voxel / 2, size, dtype=np.float32)
    z, y, x = grid[:, None, None], grid[None, :, None], grid[None, None, :]

    # Body: an elliptic cylinder; from outside in: fat, muscle (with ribs), the cavity, a vertebra.
    ax, ay, cy = (np.float32(v) for v in (rng.uniform(0.88, 0.95), rng.uniform(0.66, 0.74), rng.uniform(-0.06, 0)))
    rho = np.sqrt((x[0] / ax) ** 2 + ((y[0] - cy) / ay) ** 2)                    # S×S
    body = np.select([rho < 0.84, rho < 0.93, rho < 1], [HU["mediastinum"], HU["muscle"], HU["fat"]], HU["air"])
    body[np.hypot((y[0] - cy - 0.72 * ay) / 0.12, x[0] / 0.12) < 1] = 0.6 * HU["bone"]
    hu = np.repeat(body.astype(np.float32)[None], size, 0)
    band = np.nonzero((rho > 0.85) & (rho < 0.91))
    rib_phase = 1.2 * np.abs(np.arctan2(y[0] - cy, x[0]))[band]
    ribs = np.cos(2 * np.pi * (rng.uniform(2.2, 2.8) * grid[:, None] + rng.random()) + rib_phase) > 0.55
    hu[:, band[0], band[1]] = np.where(ribs, HU["bone"], hu[:, band[0], band[1]])

    # Lungs: two ellipsoids inside the cavity, textured parenchyma.
    lz, lx, lax, lay = rng.uniform(-0.1, 0.2), rng.uniform(0.44, 0.47), rng.uniform(0.40, 0.43), 0.8 * ay
    ly = cy - 0.04
    along_z = ((grid - lz) / 1.25)[:, None, None] ** 2
    lung = np.zeros(hu.shape, bool)
    for side in (-1, 1):
        across = ((x[0] - side * lx) / lax) ** 2 + ((y[0] - ly) / lay) ** 2
        lung |= (across[None] + along_z < 1) & (rho < 0.83)[None]
    hu[lung] = HU["lung"] + 35 * _smooth_noise(rng, size, 6)[lung]

    # The nodule's place and size, inside one lung.
    lobes = ((lz, ly, -lx), (lz, ly, lx))
    semi_axes = (1.25, lay, lax)
    centre = _inside_lung(rng, lobes[rng.random() < 0.5], semi_axes, 0.0, 0.3)
    radius = (rng.uniform(4.5, 6.0) if malignant else rng.uniform(4.0, 5.5)) * voxel * size / 48

    # Vessels: from each hilum, trunks to the periphery and branches off them (thicker trunks), kept
    # clear of the nodule so that spicules are the only lines that touch it.
    segments = []
    for side in (-1, 1):
        hilum = np.array([lz + rng.uniform(-0.1, 0.1), ly, side * (lx - 0.7 * lax)])
        for _ in range(rng.integers(4, 6)):
            end = _inside_lung(rng, lobes[side > 0], semi_axes, 0.55, 0.9)
            start = hilum + rng.uniform(0.35, 0.7) * (end - hilum)
            segments += [(hilum, end, True), (start, _inside_lung(rng, lobes[side > 0], semi_axes, 0.5, 0.9), False)]
    vessel = _tubes(segments, size, (centre, 3 * radius)) * lung
    hu += (HU["vessel"] - hu) * vessel

    # The nodule: smooth, or lobulated and spiculated.
    distance, box = _nodule_distance(rng, malignant, centre, radius, size, grid)
    inside_lung = ndimage.binary_dilation(lung[box], iterations=1)
    alpha = inside_lung / (1 + np.exp(np.clip(distance / (0.5 * voxel), -30, 30)))
    nodule_hu = HU["nodule"] + 20 * _smooth_noise(rng, size, 8)[box]
    hu[box] = hu[box] * (1 - alpha) + nodule_hu * alpha
    nodule = np.zeros(hu.shape, bool)
    # The mask is the lesion connected to its core (a spicule cut by the pleura can leave a speck).
    parts = ndimage.label((distance < 0) & inside_lung, np.ones((3, 3, 3)))[0]
    nodule[box] = parts == parts[tuple(int((c + 1) / 2 * size) - b.start for c, b in zip(centre, box))]

    # The marker: a metal bead on the skin at the front of the body (drawn always, so that test and
    # flipped volumes differ in their markers only).
    marker = np.zeros(hu.shape, bool)
    theta = rng.uniform(-np.pi + 0.4, -0.4)                               # the front half (negative y)
    normal = np.array([np.sin(theta) / ay, np.cos(theta) / ax])
    bead_r = rng.uniform(2.4, 3.0) * voxel
    zyx = np.array([rng.uniform(-0.7, 0.7), cy + ay * np.sin(theta), ax * np.cos(theta)])
    zyx[1:] += normal / np.linalg.norm(normal) * 0.8 * bead_r                # resting on the skin
    if marked:
        index = np.clip(((zyx + 1) / 2 * size).astype(int), 4, size - 5)
        near = tuple(slice(i - 4, i + 5) for i in index)
        marker[near] = (z[near[0]] - zyx[0]) ** 2 + (y[:, near[1]] - zyx[1]) ** 2 + (x[..., near[2]] - zyx[2]) ** 2 \
            < bead_r ** 2
        hu[marker] = HU["marker"]

    hu += rng.standard_normal(hu.shape, np.float32) * np.float32(18)
    return hu, nodule, vessel > 0.5, marker


def _smooth_noise(rng: np.random.Generator, size: int, coarse: int) -> np.ndarray:
    """A smooth random field in about [-1, 1]: coarse³ normal noise interpolated (trilinear, separably)."""
    field = rng.standard_normal((coarse,) * 3).astype(np.float32)
    weights = _linear_weights(coarse, size)                                   # size×coarse
    field = (weights @ field.reshape(coarse, -1)).reshape(size, coarse, coarse) @ weights.T
    return np.matmul(weights, field)                                          # (S×c) @ (S, c, S)


def _linear_weights(coarse: int, size: int) -> np.ndarray:
    """size×coarse matrix of linear interpolation weights (corners aligned)."""
    at = np.linspace(0, coarse - 1, size)
    return np.maximum(0, 1 - np.abs(at[:, None] - np.arange(coarse)[None])).astype(np.float32)


def _inside_lung(rng, centre, semi_axes, low: float, high: float) -> np.ndarray:
    """A random point at normalised radius low..high inside the ellipsoid (z, y, x)."""
    return np.asarray(centre) + _unit(rng) * rng.uniform(low, high) * np.asarray(semi_axes)


def _tubes(segments, size: int, keep_out) -> np.ndarray:
    """Opacity in [0, 1] of tubes along `segments` ((z, y, x) start, end, thick?): points splatted
    every half voxel (a thick tube also on its 6 neighbours), then blurred for the partial volume.
    keep_out: (centre, radius) of a ball the tubes stop at."""
    points = []
    for a, b, thick in segments:
        line = np.linspace(a, b, max(2, int(np.linalg.norm(b - a) * size)))
        line = line[np.linalg.norm(line - keep_out[0], axis=1) > keep_out[1]]
        idx = np.clip(((line + 1) / 2 * size).astype(int), 0, size - 1) + 1
        points.append((idx[:, None] + (_CROSS if thick else _CROSS[:1])[None]).reshape(-1, 3))
    splat = np.zeros((size + 2,) * 3, np.float32)
    points = np.concatenate(points)
    splat[points[:, 0], points[:, 1], points[:, 2]] = 1.0
    return np.clip(ndimage.gaussian_filter(splat[1:-1, 1:-1, 1:-1], 0.6, truncate=2.0) * 2.2, 0, 1)


_CROSS = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


def _nodule_distance(rng, malignant: bool, centre, radius: float, size: int, grid: np.ndarray):
    """Signed distance (negative inside) to the nodule's surface in a box around it, and the box."""
    voxel = 2.0 / size
    reach = int(np.ceil((2.6 if malignant else 1.1) * radius / voxel)) + 2
    index = np.clip(((centre + 1) / 2 * size).astype(int), reach, size - reach - 1)
    box = tuple(slice(i - reach, i + reach + 1) for i in index)
    centre = centre.astype(np.float32)
    q = np.stack(np.meshgrid(grid[box[0]], grid[box[1]], grid[box[2]], indexing="ij"), -1) - centre
    if not malignant:
        # Smooth: an ellipsoid within ±8 % of a sphere (distance approximated in scaled space).
        return np.linalg.norm(q / rng.uniform(0.92, 1.08, 3).astype(np.float32), axis=-1) - radius, box
    # Lobulated: a core and 3-5 lobes bulging out of it.
    distance = np.linalg.norm(q, axis=-1) - 0.75 * radius
    for _ in range(rng.integers(3, 6)):
        lobe = _unit(rng) * rng.uniform(0.5, 0.8) * radius
        distance = np.minimum(distance, np.linalg.norm(q - lobe.astype(np.float32), axis=-1)
                              - rng.uniform(0.5, 0.7) * radius)
    # Spiculated: 10-16 tapering spikes from the centre out to 1.8-2.6 radii.
    squared = (q ** 2).sum(-1)
    for _ in range(rng.integers(10, 17)):
        length = np.float32(rng.uniform(1.8, 2.6) * radius)
        s = q @ _unit(rng).astype(np.float32)
        t = np.clip(s / length, 0, 1)
        along = np.sqrt(np.maximum(squared - 2 * t * length * s + (t * length) ** 2, 0))
        distance = np.minimum(distance, along - voxel * (1.3 - 0.6 * t))
    return distance, box


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)
