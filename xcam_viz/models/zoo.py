"""The model zoo: `smallcnn`, torchvision and timm classifiers (never downloaded weights) and a small U-Net.

Every model `build` makes takes images in [0, 1] as they come out of an `ImageSet`: its first
layer, `input_norm`, normalises them. That is the one place normalisation happens.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..spatial import check_dims

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_NAMES = ("resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16_bn", "densenet121",
                     "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "swin_t", "vit_b_16")
TIMM_PREFIX = "timm:"
MODEL_NAMES = ("smallcnn", "unet", "smallcnn3d", "unet3d", *TORCHVISION_NAMES)


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean/std of length 1 broadcast over any channel count."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, in_channels: int = 3):
        super().__init__()
        if in_channels != len(mean):
            mean, std = (sum(mean) / len(mean),) * in_channels, (sum(std) / len(std),) * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *[1] * (x.ndim - 2))        # images N×C×H×W and volumes N×C×D×H×W alike
        return (x - self.mean.view(shape)) / self.std.view(shape)


class Layers:
    """The layer classes for images (spatial_dims=2) or volumes (3): one constructor serves both, as MONAI's."""

    def __init__(self, spatial_dims: int):
        check_dims(spatial_dims, "a model")
        self.conv, self.norm, self.up = (getattr(nn, f"{name}{spatial_dims}d") for name in
                                         ("Conv", "BatchNorm", "ConvTranspose"))
        self.max_pool = getattr(nn, f"MaxPool{spatial_dims}d")
        self.avg_pool = getattr(nn, f"AdaptiveAvgPool{spatial_dims}d")


def _conv_block(kind: Layers, c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers = [kind.max_pool(2)] if pool else []
    layers += [kind.conv(c_in, c_out, 3, padding=1, bias=False), kind.norm(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SmallCNN(nn.Sequential):
    """Four conv blocks (full, 1/2, 1/4, 1/8 resolution), global average pooling, a linear head.
    spatial_dims=3 makes the same network for volumes ("smallcnn3d")."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, width: int = 16, spatial_dims: int = 2):
        w, kind = width, Layers(spatial_dims)
        super().__init__(OrderedDict(
            input_norm=Normalize(in_channels=in_channels),
            block1=_conv_block(kind, in_channels, w, pool=False),
            block2=_conv_block(kind, w, 2 * w, pool=True),
            block3=_conv_block(kind, 2 * w, 4 * w, pool=True),
            block4=_conv_block(kind, 4 * w, 8 * w, pool=True),
            pool=kind.avg_pool(1),
            flatten=nn.Flatten(),
            head=nn.Linear(8 * w, num_classes),
        ))


class UNet(nn.Module):
    """A small U-Net (three levels) producing per-pixel class logits N×K×H×W; spatial_dims=3 makes the
    volume version ("unet3d", per-voxel logits N×K×D×H×W)."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: int = 16, spatial_dims: int = 2):
        super().__init__()
        w, kind = width, Layers(spatial_dims)
        self.input_norm = Normalize(in_channels=in_channels)
        self.enc1 = _double_conv(kind, in_channels, w)
        self.enc2 = _double_conv(kind, w, 2 * w)
        self.bottleneck = _double_conv(kind, 2 * w, 4 * w)
        self.up2 = kind.up(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _double_conv(kind, 4 * w, 2 * w)
        self.up1 = kind.up(2 * w, w, 2, stride=2)
        self.dec1 = _double_conv(kind, 2 * w, w)
        self.head = kind.conv(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(size % 4 for size in x.shape[2:]):
            raise ValueError(f"the U-Net needs every spatial size divisible by 4, got {tuple(x.shape[2:])}")
        e1 = self.enc1(self.input_norm(x))
        pool = getattr(nn.functional, f"max_pool{x.ndim - 2}d")
        e2 = self.enc2(pool(e1, 2))
        b = self.bottleneck(pool(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def _double_conv(kind: Layers, c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(kind.conv(c_in, c_out, 3, padding=1, bias=False), kind.norm(c_out),
                         nn.ReLU(inplace=True), kind.conv(c_out, c_out, 3, padding=1, bias=False),
                         kind.norm(c_out), nn.ReLU(inplace=True))


OWN_MODELS = {"smallcnn": (SmallCNN, 2), "unet": (UNet, 2), "smallcnn3d": (SmallCNN, 3), "unet3d": (UNet, 3)}


def _normalize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_norm(args[0]), *args[1:])


def _torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return _with_input_norm(model, Normalize(in_channels=in_channels))


def _timm(name: str, num_classes: int, in_channels: int, **kw) -> nn.Module:
    """A timm model with random weights: `pretrained=False` always, so nothing is downloaded."""
    try:
        import timm
    except ImportError:
        raise ImportError("timm models need timm: pip install 'xcam-viz[timm]' (or pip install timm)") from None
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kw)
    except RuntimeError as err:
        raise ValueError(f"timm has no model {name!r} ({err}); list them with timm.list_models('*pattern*')") from None
    cfg = model.pretrained_cfg
    return _with_input_norm(model, Normalize(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                                             in_channels))


def _with_input_norm(model: nn.Module, norm: Normalize) -> nn.Module:
    """Foreign models have their own forward: normalisation runs as a registered first step."""
    model.input_norm = norm
    model.register_forward_pre_hook(_normalize_input)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(in_channels, child.out_channels, child.kernel_size,
                                                child.stride, child.padding, child.dilation,
                                                child.groups, child.bias is not None))
                return


def build(name: str, num_classes: int = 2, in_channels: int = 3, weights=None, **kw) -> nn.Module:
    """A fresh model by name. Nothing is ever downloaded: weights are random unless `weights` is given.

    Args:
        name: one of MODEL_NAMES ("smallcnn", "unet", their volume versions "smallcnn3d", "unet3d",
            torchvision classifiers such as "resnet18",
            "convnext_tiny", "swin_t", "vit_b_16"), or "timm:<name>" for any timm model.
        num_classes, in_channels: the head's classes and the input's channels.
        weights: a local state-dict file (a `torch.save`d dict, or {"state_dict": ...}).
        **kw: smallcnn / unet (and 3d): `width`; timm: its create_model arguments (e.g. img_size).

    Returns:
        The model; it normalises its [0, 1] input in its first step (`input_norm`).

    Example:
        >>> import torch, xcam_viz as xv
        >>> model = xv.models.build("timm:deit_tiny_patch16_224", num_classes=3)
        >>> model(torch.rand(1, 3, 224, 224)).shape
        torch.Size([1, 3])
    """
    if name in OWN_MODELS:
        network, spatial_dims = OWN_MODELS[name]
        model = network(num_classes, in_channels, spatial_dims=spatial_dims, **kw)
    elif name in TORCHVISION_NAMES:
        if kw:
            raise TypeError(f"{name} takes no extra arguments, got {sorted(kw)}")
        model = _torchvision(name, num_classes, in_channels)
    elif name.startswith(TIMM_PREFIX):
        model = _timm(name.removeprefix(TIMM_PREFIX), num_classes, in_channels, **kw)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}, 'timm:<name>', or pass your own "
                         "nn.Module")
    model.xcam_arch = {"name": name, "num_classes": num_classes, "in_channels": in_channels, **kw}
    if weights is not None:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ValueError(f"weights file {weights} does not fit {name} with {num_classes} classes and "
                             f"{in_channels} channels: {str(err).splitlines()[-1].strip()}") from None
        missing = [k for k in missing if not k.startswith("input_norm.")]
        if missing or unexpected:
            raise ValueError(f"weights file {weights} does not fit {name}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model
