"""Find the layers of a model a CAM can use, and the one to use when nobody says."""
from __future__ import annotations

import difflib
import logging
import weakref
from dataclasses import dataclass, replace

import torch
from torch import nn

from .layout import Layout, detect, patch_size
from .modes import eval_mode
from .outputs import is_dense, run_model
from .training import model_device
from .zoo import Normalize

log = logging.getLogger("xcam_viz")
_DEFAULTS: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SpatialLayer:
    name: str
    shape: tuple[int, ...]          # C×h×w (volumes C×d×h×w) as a CAM reads it
    layout: Layout
    module: nn.Module
    is_output: bool = False         # its output is the model's own output (a segmenter's logits layer)
    is_scores: bool = False         # a segmenter's class scores: no more channels than it has classes


def input_shape_of(model: nn.Module, input_shape=None) -> tuple[int, int, int]:
    """`input_shape` (C, H, W) or (C, D, H, W), else the one the model declares (timm's pretrained_cfg,
    torchvision ViT's image_size); a ValueError asking for it otherwise."""
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    if isinstance(getattr(model, "image_size", None), int):
        return (3, model.image_size, model.image_size)
    raise ValueError("the model does not say what input size it takes: pass input_shape=(C, H, W) (volumes "
                     "(C, D, H, W)), e.g. the shape of one of your images (ds.image_shape)")


def find_layers(model: nn.Module, input_shape=None) -> list[SpatialLayer]:
    """Every named module whose output reads as a spatial map (see `layout.detect`), by one dummy forward.

    Listed in the order their outputs complete; the input normalisation layer is left out, and a module
    run twice keeps its first output.
    """
    shape = input_shape_of(model, input_shape)
    found: dict[str, SpatialLayer] = {}
    outputs: dict[str, weakref.ref] = {}     # weak: holding every layer's output of a 128³ volume costs ~0.4 GB
    names = {m: n for n, m in model.named_modules() if n}
    patch = patch_size(model)

    def record(module, _inputs, output):
        name = names[module]
        if name in found or isinstance(module, Normalize):
            return
        try:
            layout = detect(output, shape[1:], module, patch, name)
        except ValueError:
            return
        found[name] = SpatialLayer(name, tuple(layout(output).shape[1:]), layout, module)
        outputs[name] = weakref.ref(output)

    handles = [m.register_forward_hook(record) for m in names]
    try:
        with eval_mode(model), torch.no_grad():
            logits = run_model(model, torch.zeros(1, *shape, device=model_device(model)))
    finally:
        for h in handles:
            h.remove()
    classes = logits.shape[1] if is_dense(logits) else 0
    return [replace(layer, is_output=outputs[layer.name]() is logits, is_scores=layer.shape[0] <= classes)
            for layer in found.values()]


def spatial_layers(model: nn.Module, input_shape=None) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, C×h×w or C×d×h×w) of every layer a CAM can use, in execution order (see `find_layers`).

    Token and channels-last layers are listed with the grid a CAM reads, e.g. a ViT block's
    ('encoder.layers.encoder_layer_11.ln_1', (768, 14, 14)).
    """
    return [(layer.name, layer.shape) for layer in find_layers(model, input_shape)]


def default_layer(model: nn.Module, input_shape=None) -> str:
    """The layer used when none is given, decided once per model and input shape (and logged).

    The last layer with a grid above 1×1 that is not the model's output, nor (for a segmenter) a layer
    with no more channels than classes: class scores, e.g. the logits before a residual add, whose
    gradient is one-hot in the class channel, so their maps only repeat the logit. When
    that layer is a token sequence (a vision transformer), the last normalisation layer whose patch
    tokens reach the head (the last block's input norm): layers
    after the last attention see only their own token, so their patch gradients are zero.
    """
    shape = input_shape_of(model, input_shape)
    cache = _DEFAULTS.setdefault(model, {})
    if shape not in cache:
        layers = [layer for layer in find_layers(model, shape) if not (layer.is_output or layer.is_scores)]
        if not layers:
            raise ValueError(f"no layer of {type(model).__name__} outputs a spatial map for a {shape} input; "
                             "CAMs need a convolutional or token layer")
        tokens = [layer for layer in layers if layer.layout.kind == "tokens"]
        last = layers[-1]
        cache[shape] = _last_informed_norm(model, tokens, shape) if last.layout.kind == "tokens" else last.name
        log.info("layer=None: using %r, the default layer of %s for %s inputs", cache[shape],
                 type(model).__name__, "×".join(map(str, shape)))
    return cache[shape]


def _last_informed_norm(model: nn.Module, tokens: list[SpatialLayer], shape: tuple) -> str:
    """The last token layer (preferring normalisation layers) whose patch tokens reach the model's head.

    "Reach" is read from the gradient of a random projection of the head's input (the input of the last
    module to run), so a head with zero weights, as torchvision initialises a ViT's, still tells.
    """
    kept: dict[str, torch.Tensor] = {}
    last: list[torch.Tensor] = []
    leaves = [m for m in model.modules() if not list(m.children())]

    def keep(name, output):
        kept.setdefault(name, output)

    def head_input(_module, inputs, _output):
        if inputs and isinstance(inputs[0], torch.Tensor):
            last[:] = [inputs[0]]

    handles = [t.module.register_forward_hook(lambda m, i, o, n=t.name: keep(n, o)) for t in tokens]
    handles += [m.register_forward_hook(head_input) for m in leaves]
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(1, *shape, generator=generator).to(model_device(model))
        with eval_mode(model), torch.enable_grad():
            model(x)
            head = last[0]
            projection = torch.randn(head.shape, generator=generator).to(head)
            grads = torch.autograd.grad((head * projection).sum(), [kept[t.name] for t in tokens], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    informed = [t for t, g in zip(tokens, grads) if g is not None and t.layout(g).abs().sum() > 0]
    norms = [t for t in informed if "norm" in type(t.module).__name__.lower()]
    if not (norms or informed):
        raise ValueError("no token layer of the model reaches its output; pass layer= explicitly")
    return (norms or informed)[-1].name


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; a KeyError listing close names if there is none."""
    if name:
        try:
            return model.get_submodule(name)
        except AttributeError:
            pass
    modules = dict(model.named_modules())
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
    raise KeyError(f"model has no layer {name!r}; close names: {close or 'none'}. "
                   "List spatial layers with xv.models.spatial_layers(model, input_shape)")
