"""Two cameras: a shortcut spread over the whole image, with ground truth.

The synthetic lesions (`synthetic.py`, without the marker) photographed by two cameras that differ in
colour calibration, tone curve, vignetting and sensor noise, as two clinics' dermatoscopes do. Camera 1
goes with malignant lesions and camera 0 with benign ones in `train` and `test` (95 % of each class by
default), and the other way round in `flipped`, so a plainly trained model can learn the camera instead of
the lesion. `oracle` holds the training lesions with the cameras drawn independently of the class: a model
trained on it cannot use the shortcut. `test` and `flipped` hold the same lesions, as `train` and `oracle`
do; they differ only in which camera took each photograph. Every image is a pure function of (seed, split,
index) and the camera settings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .imageset import ImageSet
from .synthetic import CLASS_NAMES, CONCEPTS, check_arguments, render_lesions

SPLITS = ("train", "test", "flipped", "oracle")
_LESIONS = {"train": "train", "oracle": "train", "test": "test", "flipped": "test"}   # which lesions a split shows
_CODE = {"train": 0, "test": 1, "flipped": 2, "oracle": 3}


@dataclass(frozen=True)
class Camera:
    """How a camera turns a scene (RGB in [0, 1]) into a photograph.

    gains: white balance, a factor per channel (r, g, b); gamma: the tone curve's exponent (< 1 lifts the
    mid-tones); vignetting: the share of brightness lost in the image's corners (it grows with the squared
    distance from the centre); noise: sd of the sensor's noise per pixel and channel; banding: sd of the
    sensor's fixed offset per column (the same stripes on every photograph the camera takes).
    """

    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    vignetting: float = 0.0
    noise: float = 0.01
    banding: float = 0.0


# Camera 0 goes with benign lesions, camera 1 with malignant ones (in train and test).
CAMERAS = (Camera(vignetting=0.1, noise=0.01),
           Camera(gains=(1.06, 1.0, 0.9), gamma=0.9, vignetting=0.35, noise=0.03, banding=0.01))


def camera_lesions(n: int = 512, size: int = 64, split: str = "train", seed: int = 0, confounder: float = 0.9,
                   cameras: tuple[Camera, Camera] = CAMERAS, exposure: float = 0.05) -> ImageSet:
    """`n` lesion photographs of `size`×`size` pixels taken by two cameras, each going with one class.

    Args:
        n, size: how many images, and their side in pixels (32..224).
        split: "train" or "test" (camera 1 goes with malignant lesions), "flipped" (with benign ones; the
            test lesions) or "oracle" (the training lesions, each camera drawn independently of the class).
        seed: the lesions, the cameras drawn, the noise and each camera's fixed stripes.
        confounder: strength s in [0, 1] of the shortcut: a camera takes (1 + s)/2 of its class's images and
            (1 - s)/2 of the other's (0.9: 95 %); 0, as in `oracle`, makes the camera say nothing of the class.
        cameras: the two `Camera`s (camera 0 goes with benign lesions, camera 1 with malignant ones).
        exposure: sd of each photograph's brightness factor around 1, drawn alike for both cameras.

    Returns an ImageSet with `masks` (the lesion), `regions["confounder"]` (everything outside the lesion,
    where the camera shows) and `regions["corners"]` (the vignetted corners: outside the circle inscribed in
    the image, less the lesion). Each id ends in the camera that took the photograph ("...-camera1").

    Example:
        >>> import xcam_viz as xv
        >>> ds = xv.data.camera_lesions(n=8, split="flipped")
        >>> tuple(ds.images.shape), ds.class_names, ds.ids[0][:-1]
        ((8, 3, 64, 64), ['benign', 'malignant'], 'cameras-flipped-0-00000-camera')
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    check_arguments(n, size, _LESIONS[split], confounder, "classification", (32, 224, "pixels"))
    if len(cameras) != 2 or not all(isinstance(c, Camera) for c in cameras):
        raise ValueError(f"cameras must be two xv.data.Camera settings (benign's, malignant's), got {cameras!r}")
    if exposure < 0:
        raise ValueError(f"exposure is a standard deviation, >= 0; got {exposure}")
    rng = np.random.default_rng([seed, _CODE[_LESIONS[split]], 1])
    labels = rng.permutation(np.arange(n) % 2)
    scenes, masks, _ = render_lesions(rng, labels, np.zeros(n, bool), size)

    shots = np.random.default_rng([seed, _CODE[split], 2])
    strength = 0.0 if split == "oracle" else confounder
    goes_with = labels == (0 if split == "flipped" else 1)
    camera = (shots.random(n) < np.where(goes_with, 1 + strength, 1 - strength) / 2).astype(int)
    images = photograph(scenes, camera, cameras, exposure, shots, seed)

    grid = np.linspace(-1, 1, size, dtype=np.float32)
    outside_circle = np.add.outer(grid ** 2, grid ** 2) > 1
    ids = [f"cameras-{split}-{seed}-{i:05d}-camera{c}" for i, c in enumerate(camera)]
    regions = {"confounder": torch.from_numpy(~masks), "corners": torch.from_numpy(outside_circle & ~masks)}
    attrs = {"source": "camera_lesions", "split": split, "seed": seed, "confounder": confounder,
             "concepts": CONCEPTS}
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(masks), ids,
                    list(CLASS_NAMES), None, regions, attrs)


def photograph(scenes: np.ndarray, camera: np.ndarray, cameras, exposure: float, rng: np.random.Generator,
               seed: int) -> np.ndarray:
    """N×3×H×W scenes in [0, 1] as photographed by `cameras[camera[i]]`, each at a random exposure."""
    n, _, height, width = scenes.shape
    y, x = np.linspace(-1, 1, height, dtype=np.float32), np.linspace(-1, 1, width, dtype=np.float32)
    corner_distance = np.add.outer(y ** 2, x ** 2) / 2                  # 0 at the centre, 1 in the corners
    brightness = (1 + exposure * rng.standard_normal(n, np.float32))[:, None, None, None]
    out = np.empty_like(scenes)
    for index, cam in enumerate(cameras):
        rows = camera == index
        stripes = cam.banding * np.random.default_rng([seed, 3, index]).standard_normal(width, np.float32)
        shot = np.clip(scenes[rows] * brightness[rows] * np.float32(cam.gains)[:, None, None], 0, 1) ** cam.gamma
        shot = shot * (1 - cam.vignetting * corner_distance) + stripes
        out[rows] = np.clip(shot + cam.noise * rng.standard_normal(shot.shape, np.float32), 0, 1)
    return out
