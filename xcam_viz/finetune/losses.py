"""Explanation losses: how far a differentiable CAM (or input gradient) is from the user's feedback.

Each returns one value per sample (N,), differentiable with respect to the model's parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import logits_of

EPS = 1e-8


def centred_logit(labels: torch.Tensor):
    """A CAM target: the labelled class's logit minus the mean logit.

    Softmax ignores a shift of all logits, so a plain logit can hide a shortcut by moving the
    evidence of every class alike (e.g. make the marker count against both classes, more against
    one): its ReLU'd CAM goes dark while the decision still rests on the marker. The centred
    logit moves only when the decision does, so its CAM cannot hide the shortcut that way.
    """
    def score(logits: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, labels.view(-1, 1))[:, 0] - logits.mean(1)
    return score


def mass_inside(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each CAM's mass (N×H×W, >= 0) that falls inside its mask (0 for an all-zero CAM)."""
    cam = cam.flatten(1)
    return (cam * mask.flatten(1)).sum(1) / (cam.sum(1) + EPS)


def relevant_loss(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """"Look here": 1 − the share of the CAM's mass inside the relevant mask (0 when all of it is)."""
    return 1 - mass_inside(cam, mask)


def irrelevant_loss(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """"Not there" (Grad-CAM form of Right for the Right Reasons): the share of the CAM's mass
    inside the irrelevant mask."""
    return mass_inside(cam, mask)


def rrr_loss(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right for the Right Reasons (Ross et al. 2017): the squared input gradients of the summed
    log-probabilities, summed over channels and the irrelevant pixels.

    Returns (loss per sample, logits of the same forward) so the caller adds cross-entropy on them.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_of(model(x))
        (g,) = torch.autograd.grad(logits.log_softmax(1).sum(), x, create_graph=True)
    return (g.pow(2).sum(1) * mask).flatten(1).sum(1), logits
