"""Capture once: one forward and one gradient pass give every requested layer's activations A and gradients G.

The gradient goes to the captured activations only (`torch.autograd.grad`, never `.backward()`), so no
parameter ever receives a `.grad`, and the layers before the first captured one run without an autograd
graph: a capture costs little more than a plain forward pass.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..models import detect, eval_mode, fast_input, get_layer, is_dense, logits_of, patch_size, run_model
from ..spatial import grid_of

Reshape = Callable[[torch.Tensor], torch.Tensor]


class LayerHooks:
    """Forward hooks that keep the first output of each named layer; removed on exit, also after an error.

    The rest of the network receives a clone of the kept tensor, so in-place operations downstream
    (``ReLU(inplace=True)``, ``out += identity``) cannot change what was kept. An output that does not
    require grad (the forward so far ran without a graph) becomes a leaf that does; with
    ``enable_grad=True`` grad mode is switched on from there, so only the part of the network after the
    first captured layer records a graph. Each output's layout (N×C×h×w, channels-last or tokens) is
    detected for an input of `input_size` (see `xv.models.layout.detect`) unless `reshape` (a callable,
    e.g. a `Layout`, applied to every layer) says how to read it; `maps` gives it as N×C×h×w.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], input_size: tuple[int, ...],
                 enable_grad: bool = True, reshape: Reshape | None = None):
        self.modules = {name: get_layer(model, name) for name in layers}
        self.enable_grad = enable_grad
        self.input_size = tuple(input_size)
        self.reshape = reshape
        self.patch = patch_size(model) if reshape is None else None
        self.outputs: dict[str, torch.Tensor] = {}
        self.layouts: dict[str, Reshape] = {}
        self._handles: list = []

    def __enter__(self) -> LayerHooks:
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(partial(self._keep, name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def maps(self, name: str, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """The kept output of `name` (or a tensor shaped like it, e.g. its gradient) read as N×C×h×w."""
        return self.layouts[name](self.outputs[name] if tensor is None else tensor)

    def _keep(self, name: str, module, _inputs, output):
        if name in self.outputs:            # a module run twice keeps its first output
            return None
        layout = self.reshape or detect(output, self.input_size, module, self.patch, f"layer {name!r}")
        spatial = layout(output) if isinstance(output, torch.Tensor) else None
        if spatial is None or spatial.ndim != len(self.input_size) + 2 or torch.Size(grid_of(spatial)).numel() <= 1:
            shape = tuple(spatial.shape) if isinstance(spatial, torch.Tensor) else type(output).__name__
            grid = "d×h×w" if len(self.input_size) == 3 else "h×w"
            raise ValueError(f"layer {name!r} reads as {shape}, not a spatial map N×C×{grid} with more than one "
                             "cell; pick one of xv.models.spatial_layers(model, input_shape) or fix reshape=")
        if not output.requires_grad:
            output = output.detach().requires_grad_()
        self.outputs[name] = output
        self.layouts[name] = layout
        if self.enable_grad:
            torch.set_grad_enabled(True)
        return output.clone()


def layer_list(layer: str | Sequence[str]) -> list[str]:
    """One layer name or several, as a list without repeats (order kept)."""
    names = [layer] if isinstance(layer, str) else list(layer)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"layer must be a layer name or a list of names, got {layer!r}; "
                        "list them with xv.models.spatial_layers(model, input_shape)")
    return list(dict.fromkeys(names))


def check_input(x, model: nn.Module) -> torch.Tensor:
    """The input as an N×C×H×W (volumes N×C×D×H×W) float tensor on the model's device, refusing what cannot be
    explained."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("CAMs need gradients, but torch.inference_mode() is active: call xv.explain "
                           "(or capture) outside the inference_mode block (torch.no_grad() is fine)")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected an ImageSet or a tensor N×C×H×W / C×H×W / N×C×D×H×W, got {type(x).__name__}; "
                        "wrap arrays with xv.data.from_arrays or torch.as_tensor")
    if x.is_inference():
        raise ValueError("the input tensor was created under torch.inference_mode() and cannot take part in "
                         "autograd: create it outside inference_mode (or pass x.clone() made outside it)")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim not in (4, 5) or min(x.shape) == 0:
        raise ValueError(f"input must be images N×C×H×W (or one image C×H×W) or volumes N×C×D×H×W, got shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a float tensor with values in [0, 1], got dtype {x.dtype}; "
                        "divide uint8 images by 255")
    channels = getattr(model, "xcam_arch", {}).get("in_channels")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"the model takes {channels}-channel images, got {x.shape[1]} channels (shape "
                         f"{tuple(x.shape)}): give images N×C×H×W (volumes N×C×D×H×W) with the channel count the "
                         "model was built for")
    if not torch.isfinite(x).all():
        raise ValueError("input contains NaN or inf values: clean or drop those images first")
    p = next(model.parameters(), None)
    return x.detach().to(p.device if p is not None else x.device)


Target = int | str | tuple | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def is_topk(target) -> bool:
    """Whether the target is ("topk", k)."""
    return isinstance(target, tuple) and len(target) == 2 and target[0] == "topk"


def resolve_targets(target: Target, logits: torch.Tensor) -> list[torch.Tensor | Callable]:
    """Target spec -> list of per-sample class index tensors (N,), one per rank, or [callable].

    "predicted": the arg-max class (for a segmenter, the class predicted at the most pixels);
    an int: that class for every sample; a list/tensor: one class per sample; ("topk", k): the k
    highest-scoring classes (k targets); a callable(logits) -> scores (N,) is used as it is.
    """
    n, k = logits.shape[:2]
    if callable(target):
        return [target]
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(f"unknown target {target!r}: use 'predicted', a class index, one index per "
                             "sample, ('topk', k) or a callable(logits) -> scores")
        pred = logits.argmax(1)
        return [pred if logits.ndim == 2 else pred.flatten(1).mode(1).values]
    if is_topk(target):
        top = int(target[1])
        if logits.ndim != 2 or not 1 <= top <= k:
            raise ValueError(f"('topk', {target[1]}) needs a classifier and 1 <= k <= {k} (number of classes)")
        return list(logits.topk(top, dim=1).indices.T)
    t = torch.as_tensor(target, device=logits.device)
    if t.is_floating_point() or t.ndim > 1 or (t.ndim == 1 and len(t) != n):
        raise ValueError(f"target must be a class index or one index per sample ({n}), got {target!r}")
    if ((t < 0) | (t >= k)).any():
        raise ValueError(f"target {target!r} out of range: the model has {k} classes (0..{k - 1})")
    return [t.long().expand(n).clone()]


def resolve_region(region, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The region M (N×*S bool: N×H×W, or N×D×H×W for volumes) whose class-c logits a segmentation CAM sums.

    "predicted" (default): pixels predicted as the target class; "all": every pixel; a point (y, x), or
    (z, y, x) for volumes: one pixel; a bool mask *S or N×*S.
    """
    n, _, *grid = logits.shape
    grid = tuple(grid)
    size = "×".join(map(str, grid))
    if region is None or (isinstance(region, str) and region == "predicted"):
        return logits.argmax(1) == target.view(-1, *[1] * len(grid))
    if isinstance(region, str) and region == "all":
        return torch.ones(n, *grid, dtype=torch.bool, device=logits.device)
    if isinstance(region, tuple) and all(isinstance(v, int) for v in region):
        if len(region) != len(grid) or not all(0 <= v < s for v, s in zip(region, grid)):
            point = "(z, y, x)" if len(grid) == 3 else "(y, x)"
            raise ValueError(f"region point {region} lies outside the {size} output or is not a point {point}")
        mask = torch.zeros(n, *grid, dtype=torch.bool, device=logits.device)
        mask[(slice(None), *region)] = True
        return mask
    mask = torch.as_tensor(region, device=logits.device)
    if mask.dtype != torch.bool or tuple(mask.shape) not in (grid, (n, *grid)):
        raise ValueError(f"region must be 'predicted', 'all', a point or a bool mask {size} or {n}×{size}, got "
                         f"{getattr(mask, 'dtype', type(region).__name__)} {tuple(mask.shape)}")
    return mask.expand(n, *grid)


def target_scores(logits: torch.Tensor, target: torch.Tensor | Callable,
                  region: torch.Tensor | None = None) -> torch.Tensor:
    """One score per sample: the target logit, a callable's score, or the target logits summed over the region."""
    if callable(target):
        scores = target(logits)
        if not isinstance(scores, torch.Tensor) or scores.shape != logits.shape[:1]:
            raise ValueError(f"a target callable must return one score per sample, shape ({len(logits)},), got "
                             f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
        return scores
    picked = logits.gather(1, target.view(-1, *[1] * (logits.ndim - 1)).expand(-1, 1, *logits.shape[2:]))[:, 0]
    return picked if region is None else (picked * region).flatten(1).sum(1)


@dataclass
class Capture:
    """What one forward (+ one gradient pass) recorded, enough to weigh any CAM method without the model.

    activations / gradients: layer -> N×C×h×w or N×C×d×h×w (detached; gradients empty if not computed);
    logits: the forward's output; target: (N,) class indices (-1 for a callable target);
    region: N×*S bool for segmentation targets, else None; input: N×C×*S (for Score-CAM);
    model, score_fn and output: what Score-CAM needs for its masked forward passes.
    """

    layers: list[str]
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    logits: torch.Tensor
    target: torch.Tensor
    region: torch.Tensor | None
    input: torch.Tensor
    model: nn.Module
    score_fn: Callable | None = None
    output: Callable | None = None

    def scores(self, out, rows: torch.Tensor) -> torch.Tensor:
        """Target scores of a model output whose rows belong to samples `rows` (for masked forward passes)."""
        logits = logits_of(out, self.output)
        if self.score_fn is not None:
            return self.score_fn(logits)
        return logits.gather(1, self.target[rows].view(-1, 1))[:, 0]


def capture(model: nn.Module, x: torch.Tensor, layers: str | Sequence[str], target: Target = "predicted",
            region=None, gradients: bool = True, reshape: Reshape | None = None,
            output: Callable | None = None) -> Capture | list[Capture]:
    """Record activations A and target gradients G of `layers` for input x (N×C×H×W, C×H×W or N×C×D×H×W).

    One forward pass in eval mode (every module's mode is restored afterwards), then one `autograd.grad`
    pass to the captured activations per target. A segmenter (N×K×H×W logits) is scored on the target
    class summed over `region` (see `resolve_region`). Returns a Capture, or for target=("topk", k)
    a list of k Captures sharing one forward. `gradients=False` skips the gradient pass
    (Eigen-CAM and Score-CAM need none). Layers are read as N×C×h×w whatever their layout (token
    sequences, channels-last; see `LayerHooks`), or through `reshape`; `output` picks the logits from
    what the model returns (default: `xv.models.logits_of`).
    """
    names = layer_list(layers)
    x = fast_input(model, check_input(x, model))
    with (eval_mode(model), torch.no_grad(),
          LayerHooks(model, names, grid_of(x), enable_grad=gradients, reshape=reshape) as hooks):
        logits = run_model(model, x, output)
    missing = [n for n in names if n not in hooks.outputs]
    if missing:
        raise ValueError(f"layers {missing} did not run in the model's forward pass; pick layers from "
                         "xv.models.spatial_layers(model, input_shape)")
    kept = [hooks.outputs[n] for n in names]
    activations = {n: hooks.maps(n).detach() for n in names}
    captures = []
    targets = resolve_targets(target, logits.detach())
    for i, t in enumerate(targets):
        reg = resolve_region(region, logits.detach(), t) if is_dense(logits) and not callable(t) else None
        grads = {}
        if gradients:
            with torch.enable_grad():
                score = target_scores(logits, t, reg).sum()
            if not score.requires_grad:
                raise ValueError(f"the target score does not depend on layers {names}; choose layers that the "
                                 "model's output depends on")
            found = torch.autograd.grad(score, kept, retain_graph=i < len(targets) - 1, allow_unused=True)
            grads = {n: torch.zeros_like(activations[n]) if g is None else hooks.maps(n, g)
                     for n, g in zip(names, found)}
        idx = torch.full((len(x),), -1, dtype=torch.long, device=x.device) if callable(t) else t
        captures.append(Capture(names, activations, grads, logits.detach(), idx, reg, x, model,
                                t if callable(t) else None, output))
    return captures if is_topk(target) else captures[0]
