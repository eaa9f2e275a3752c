"""Weigh many: every CAM method as a weighting of a Capture's activations A and gradients G.

Each gradient method is a function (A, G) -> N×h×w map before the ReLU, following the formulas of
pytorch-grad-cam (which the tests compare against). A and G are N×C×*s: every formula reads the
spatial axes from the tensor, so the same line serves images (h×w) and volumes (d×h×w). Eigen-CAM
needs A only; Score-CAM runs masked forward passes of the captured model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models import eval_mode, is_dense
from ..spatial import axes, grid_of, per_map, resize
from .capture import Capture
from .fold import inference_copy

SCORECAM_PIXELS = 2 ** 17   # masked images per Score-CAM chunk: this many input pixels (32 at 64²), at least 16


def weighted_sum(weights: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Σ_c weights[n, c] · A[n, c] for A N×C×*s: the map N×*s."""
    return torch.einsum("nc,ncs->ns", weights, a.flatten(2)).view(a.shape[0], *grid_of(a))


def _gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return weighted_sum(g.flatten(2).mean(2), a)


def _hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g * a).sum(1)


def _gradcam_pp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    g2 = g * g
    alpha = g2 / (2 * g2 + a.sum(axes(a), keepdim=True) * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return weighted_sum((g.clamp(min=0) * alpha).flatten(2).sum(2), a)


def _xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    weights = (g * a).flatten(2).sum(2) / (a.flatten(2).sum(2) + 1e-7)
    return weighted_sum(weights, a)


def _layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g.clamp(min=0) * a).sum(1)


@dataclass(frozen=True)
class Method:
    """One CAM method and what it needs: the registry entry that explain, the dashboard and fine-tuning read.

    formula: (A, G) -> N×h×w for gradient methods (None for the others); explains: "classifier",
    "segmenter" or "any" (what kind of model output it weighs); differentiable: whether the map can stay in
    the autograd graph (`differentiable_cam`, the fine-tuning losses).
    """

    name: str
    label: str
    formula: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    explains: str = "classifier"
    differentiable: bool = False

    @property
    def gradients(self) -> bool:
        """Whether the method needs the gradient pass."""
        return self.formula is not None

    def fits(self, segmenter: bool) -> bool:
        return self.explains == "any" or self.explains == ("segmenter" if segmenter else "classifier")


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("gradcam", "Grad-CAM", _gradcam, differentiable=True),
    Method("gradcam++", "Grad-CAM++", _gradcam_pp, differentiable=True),
    Method("hirescam", "HiResCAM", _hirescam, differentiable=True),
    Method("xgradcam", "XGrad-CAM", _xgradcam, differentiable=True),
    Method("layercam", "LayerCAM", _layercam, differentiable=True),
    Method("seg-gradcam", "Seg-Grad-CAM", _gradcam, "segmenter", differentiable=True),
    Method("seg-hirescam", "Seg-HiResCAM", _hirescam, "segmenter", differentiable=True),
    Method("scorecam", "Score-CAM", None),
    Method("eigencam", "Eigen-CAM", None, "any"),
)}
METHODS = tuple(REGISTRY)
GRADIENT_METHODS = {name: m.formula for name, m in REGISTRY.items() if m.gradients}
SEGMENTATION_METHODS = tuple(name for name, m in REGISTRY.items() if m.explains == "segmenter")


def methods_for(segmenter: bool) -> list[str]:
    """The methods that explain a segmenter (True) or a classifier (False), in registry order."""
    return [name for name, m in REGISTRY.items() if m.fits(segmenter)]


def check_method(method: str, segmentation: bool | None = None) -> str:
    """The method name, or an error listing the methods (and saying which fit a classifier / segmenter)."""
    if method not in REGISTRY:
        import difflib
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown CAM method {method!r}{hint}; choose one of {', '.join(METHODS)}")
    if segmentation is not None and not REGISTRY[method].fits(segmentation):
        kind = "per-pixel logits N×K×H×W" if segmentation else "class logits N×K (a classifier)"
        raise ValueError(f"{method} explains a {REGISTRY[method].explains}, but this model outputs {kind}: "
                         f"use {' or '.join(methods_for(segmentation))}")
    return method


def needs_gradients(method: str) -> bool:
    return REGISTRY[check_method(method)].gradients


def eigencam(a: torch.Tensor) -> torch.Tensor:
    """Projection of each position's channel vector on the first principal component of A.

    Sign convention (SVD leaves it open): the map is flipped to correlate positively with the
    channel-summed activation, so it points where the layer is active.
    """
    n = a.shape[0]
    x = a.double().flatten(2).transpose(1, 2)            # N × cells × C
    x = x - x.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = x @ vh[:, 0, :, None]                          # N × cells × 1
    total = a.double().sum(1).flatten(1)[..., None]
    sign = torch.sign(((total - total.mean(1, keepdim=True)) * proj).sum((1, 2)))
    proj = proj * torch.where(sign == 0, torch.ones_like(sign), sign).view(n, 1, 1)
    return proj.view(n, *grid_of(a)).to(a.dtype)


def scorecam_weights(cap: Capture, layer: str, chunk: int | None = None) -> torch.Tensor:
    """Score-CAM channel weights N×C as pytorch-grad-cam computes them.

    Each channel's map is upsampled (bi/trilinear, corners aligned) to the input size, min-max normalised,
    multiplied with the input, and scored by the target; the scores are softmaxed over channels.
    The masked inputs go through the model in chunks of `chunk` images (default: SCORECAM_PIXELS input
    pixels but at least 16 images; small chunks stay in cache, memory stays bounded), channels-last,
    under inference mode, through a copy with BatchNorm folded into the convolutions (see
    `fold.inference_copy`; checked against the model's logits); channels whose map is all zero give an
    all-zero input, scored once per batch.
    """
    a, x, model = cap.activations[layer], cap.input, cap.model
    n, c = a.shape[:2]
    chunk = chunk or max(16, SCORECAM_PIXELS // x[0, 0].numel())
    scores = torch.empty(n, c, dtype=torch.float32, device=a.device)
    flat = a.flatten(2)
    dead = (flat == 0).all(-1)
    with eval_mode(model):
        runner = inference_copy(model, x, keep=cap.layers)
        with torch.inference_mode():
            if dead.any():
                zero_scores = cap.scores(runner(torch.zeros_like(x)), torch.arange(n, device=a.device))
                scores[dead] = zero_scores[dead.nonzero()[:, 0]].float()
            rows, chans = (~dead).nonzero(as_tuple=True)
            for r, ch in zip(rows.split(chunk), chans.split(chunk)):
                up = resize(a[r, ch][:, None], grid_of(x), align_corners=True)
                lo = up.amin(axes(up), keepdim=True)
                up = (up - lo) / (up.amax(axes(up), keepdim=True) - lo + 1e-8)
                masked = (x[r] * up).contiguous(memory_format=_channels_last(x))
                scores[r, ch] = cap.scores(runner(masked), r).float()
    return scores.softmax(1)


def weigh(cap: Capture, method: str, layer: str | None = None, relu: bool = True,
          chunk: int | None = None) -> torch.Tensor:
    """The `method` map N×h×w at `layer` (default: the capture's only layer), ReLU applied unless relu=False.

    Gradient methods and Eigen-CAM use the capture alone (no model pass); Score-CAM runs its masked
    forward passes (in chunks of `chunk` images; see `scorecam_weights`).
    """
    check_method(method, segmentation=is_dense(cap.logits))
    if layer is None:
        if len(cap.layers) != 1:
            raise ValueError(f"the capture holds layers {cap.layers}: say which one with layer=")
        layer = cap.layers[0]
    if layer not in cap.activations:
        raise KeyError(f"layer {layer!r} was not captured; this capture holds {cap.layers}")
    a = cap.activations[layer]
    if method == "eigencam":
        cam = eigencam(a)
    elif method == "scorecam":
        cam = weighted_sum(scorecam_weights(cap, layer, chunk).to(a.dtype), a)
    else:
        if layer not in cap.gradients:
            raise ValueError(f"{method} needs gradients, but this capture has none: capture with gradients=True")
        cam = REGISTRY[method].formula(a, cap.gradients[layer])
    return cam.clamp(min=0) if relu else cam


def _channels_last(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.ndim == 4 else torch.channels_last_3d


def finish(cam: torch.Tensor, size: tuple[int, ...] | None = None, normalize: bool = True) -> torch.Tensor:
    """Bilinear (volumes: trilinear) upsampling of N×*s maps to `size` (if given), then per-map min-max scaling
    to [0, 1]."""
    if size is not None:
        cam = resize(cam[:, None], size)[:, 0]
    if normalize:
        lo = per_map(cam, "amin")
        span = per_map(cam, "amax") - lo
        cam = torch.where(span > 0, (cam - lo).div_(span.clamp(min=torch.finfo(cam.dtype).tiny)), 0.0)
    return cam
