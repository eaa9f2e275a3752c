"""Unit embedding: standardised activation profiles, PCA to 2-D, KMeans with the best silhouette."""
from __future__ import annotations

import numpy as np
import xarray as xr
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from .dissect import Units


def embed_units(units: Units, k_range=range(2, 10), seed: int = 0) -> xr.Dataset:
    """2-D PCA coordinates of each unit's standardised profile (mean activation per image), a KMeans
    cluster (k in `k_range` chosen by silhouette) and the unit's current label ('' if none)."""
    profiles = units.mean.T.numpy().astype(np.float64)           # units × images
    std = profiles.std(1, keepdims=True)
    z = (profiles - profiles.mean(1, keepdims=True)) / np.where(std > 0, std, 1)
    xy = PCA(n_components=2, random_state=seed).fit_transform(z)
    ks = [k for k in k_range if 2 <= k < len(z)]
    if not ks:
        raise ValueError(f"need at least 3 units to cluster, the layer has {len(z)}")
    fits = {k: KMeans(k, n_init=10, random_state=seed).fit(z) for k in ks}
    scores = {k: silhouette_score(z, f.labels_) for k, f in fits.items()}
    best = max(scores, key=scores.get)
    current = units.labels.current(units.layer)
    return xr.Dataset(
        {"pc1": ("unit", xy[:, 0]), "pc2": ("unit", xy[:, 1]), "cluster": ("unit", fits[best].labels_),
         "label": ("unit", [current.get(u, ("", 0))[0] for u in range(len(z))]),
         "silhouette": ("k", [scores[k] for k in ks])},
        coords={"unit": np.arange(len(z)), "k": ks}, attrs={"layer": units.layer, "best_k": best})
