"""Rebalancing: draw the training batches as if the shortcut said nothing of the class.

A shortcut spread over the whole image (a camera's noise and colour calibration, a background texture,
vignetting) cannot be cut out and pasted like a marker, and a counterexample that changes one statistic
leaves the next for the model to find. But a confounded training set still holds the images where the
shortcut disagrees with the class (the 5 % that a 95 % confounder leaves), and the annotated images say
where the shortcut lives. Each annotated image gives a *shortcut view*: the image with its evidence
inpainted (the painted relevant region) or with all but the painted irrelevant region inpainted. A
logistic probe on the model's penultimate features learns what these views say of the class; applied to
every training image it gives each a vote, and batches are drawn so that every (class, vote) cell weighs
the same. This is group-balanced sampling (Sagawa et al. 2020) with the groups inferred from the feedback
instead of labelled (cf. JTT, Liu et al. 2021, and DFR, Kirichenko et al. 2023, which need group labels
or a model's own mistakes). Where the views say nothing of the class, the votes are noise and the weights
stay near one.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from .. import models, spatial
from ..data import ImageSet
from .counterexamples import inpaint

COMPOSITES = 4          # composites per annotated image the probe also learns from
PROBE_C = 0.1           # the probe's inverse regularisation: few views (tens), many features


def shortcut_views(images: torch.Tensor, relevant: torch.Tensor, irrelevant: torch.Tensor,
                   has_relevant: torch.Tensor, has_irrelevant: torch.Tensor, seed: int = 0):
    """Each annotated image with its evidence inpainted: the (dilated) relevant region where one was
    painted, else everything outside the irrelevant region. Returns the views N×C×*S (rows without masks
    left as they are) and the evidence masks N×*S."""
    shape = (-1, *(1,) * (relevant.ndim - 1))
    evidence = torch.where(has_relevant.view(shape), spatial.dilate(relevant, 2),
                           ~irrelevant & has_irrelevant.view(shape))
    return inpaint(images, evidence, torch.Generator().manual_seed(seed)), evidence


def probe_examples(images: torch.Tensor, views: torch.Tensor, evidence: torch.Tensor, labels: torch.Tensor,
                   per_image: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """What the probe learns from: the views, labelled with their images' classes, and `per_image`
    composites per annotated image i: its evidence on the view of a random other image j, labelled with
    j's class, so the probe learns what the shortcut says whatever object sits in front of it."""
    gen = torch.Generator().manual_seed(seed)
    donor = torch.randint(len(views), (len(views), per_image), generator=gen)
    own = torch.arange(len(views))[:, None].expand_as(donor)
    own, donor = own.flatten(), donor.flatten()
    keep = evidence[own][:, None]
    composites = torch.where(keep, images[own], views[donor])
    return torch.cat([views, composites]), torch.cat([labels, labels[donor]])


@torch.no_grad()
def penultimate(model: nn.Module, images: ImageSet | torch.Tensor) -> torch.Tensor:
    """The features entering the model's last linear layer (its logits if it has none), N×F."""
    head = models.last_linear(model)
    seen = []
    hook = head.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].flatten(1))) if head else None
    shape = images.image_shape if isinstance(images, ImageSet) else images.shape[1:]
    batches = images.batches(spatial.batch_for(shape, 128)) if isinstance(images, ImageSet) else \
        images.split(spatial.batch_for(shape, 128))
    device, out = models.model_device(model), []
    try:
        with models.eval_mode(model):
            for batch in batches:
                logits = models.run_model(model, batch.to(device))
                out.append((seen.pop() if head else logits.flatten(1)).float().cpu())
    finally:
        if hook:
            hook.remove()
    return torch.cat(out)


def shortcut_probe(model: nn.Module, examples: torch.Tensor,
                   labels: torch.Tensor) -> Callable[[ImageSet | torch.Tensor], torch.Tensor] | None:
    """A probe fitted once on what the shortcut examples say of the class: called on a data set, it gives
    the class each image is voted. None when the examples hold a single class (nothing to learn from)."""
    if len(torch.unique(labels)) < 2:
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=2000))
    probe.fit(penultimate(model, examples).numpy(), labels.numpy())
    return lambda data: torch.from_numpy(probe.predict(penultimate(model, data).numpy()).astype(np.int64))


def _cells(labels: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
    """Each image's (label, vote) cell as one index."""
    return labels * (int(max(labels.max(), votes.max())) + 1) + votes


def balanced_weights(labels: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
    """A sampling weight per image, 1 / the size of its (label, vote) cell, scaled to mean 1."""
    cells = _cells(labels, votes)
    counts = torch.bincount(cells).double()
    weights = 1 / counts[cells]
    return weights / weights.mean()


def balanced_mean(values: torch.Tensor, labels: torch.Tensor, votes: torch.Tensor) -> float:
    """The mean of `values` (one per image) in each (label, vote) cell that holds images, averaged over the cells."""
    cells = _cells(labels, votes)
    return float(torch.stack([values[cells == c].double().mean() for c in torch.unique(cells)]).mean())
