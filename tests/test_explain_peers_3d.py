"""Our CAMs on volumes (N×C×D×H×W) against pytorch-grad-cam, MONAI, torchcam and captum on random-weight 3-D networks
(MONAI DenseNet121 and UNet, torchvision r3d_18); every method on volumes; layer discovery on 3-D networks.

Maps are compared raw: at layer resolution, ReLU applied, to 1e-4 of the map's maximum. The peers resize
volumes each their own way (pytorch-grad-cam: min-max, then scipy's cubic zoom; MONAI: trilinear, then a
normaliser that inverts the map; torchcam: not at all), so resizing and scaling are left out on both sides.
"""
import copy
import functools
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torchvision
from monai.networks.nets import DenseNet121, UNet
from monai.visualize import GradCAM as MonaiGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget
from torch.nn import functional as F
from torchcam import methods as torchcam

import xcam_viz as xv
from xcam_viz.explain import REGISTRY, capture, methods_for, weigh

LIB_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM",
               "xgradcam": "XGradCAM", "layercam": "LayerCAM"}
# name: input (N×C×D×H×W), two layers in execution order (pytorch-grad-cam pairs its gradients with its
# activations by order), one class per sample, the default layer
PEERS = {
    "r3d_18": ((2, 3, 8, 40, 40), ["layer3", "layer4"], [3, 7], "layer4"),                    # 2×5×5, 1×3×3
    "densenet121": ((2, 1, 64, 64, 64), ["features.denseblock3", "class_layers.relu"], [1, 0],  # 4³, 2³
                    "class_layers.relu"),
}


@functools.cache
def peer_model(name: str) -> torch.nn.Module:
    """Random-weight 3-D networks, built once per name."""
    torch.manual_seed(0)
    if name == "densenet121":
        return DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()
    if name == "monai-unet":
        return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2),
                    num_res_units=1).eval()
    return torchvision.models.get_model(name, weights=None).eval()


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to 1e-4 (relative, and of the map's maximum), and not trivially: the maps have positive mass."""
    theirs = torch.as_tensor(theirs, dtype=ours.dtype)
    assert ours.shape == theirs.shape
    assert float(theirs.max()) > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def pgc_maps(model, x, layers, targets, methods=tuple(LIB_CLASSES)) -> dict[str, list[torch.Tensor]]:
    """pytorch-grad-cam's raw maps {method: [N×d×h×w per layer]} from one of its passes.

    Its GradCAM runs as a user calls it (its hooks, its `loss.backward()`, its `compute_cam_per_layer`), but
    without `scale_cam_image` (per-map min-max, then for volumes scipy's cubic `zoom` to the input size), so
    it returns each layer's map as `np.maximum(get_cam_image(...), 0)` at layer resolution. The other methods share
    BaseCAM's forward and differ only in `get_cam_image` / `get_cam_weights`, so each method's own class
    applies its `get_cam_image` to the activations and gradients of that pass, followed by the ReLU that
    `compute_cam_per_layer` applies: one backward pass instead of one per method.
    """
    modules = [model.get_submodule(n) for n in layers]
    with pytest.MonkeyPatch.context() as patch, pgc.GradCAM(model, modules) as cam:
        patch.setattr(pgc.base_cam, "scale_cam_image", lambda maps, target_size=None: np.float32(maps))
        cam.aggregate_multi_layers = lambda per_layer: [torch.from_numpy(m[:, 0]) for m in per_layer]
        maps = {"gradcam": cam(x, targets)}
        captured = [(a.numpy(), g.numpy()) for a, g in zip(cam.activations_and_grads.activations,
                                                            cam.activations_and_grads.gradients)]
    for method in methods:
        if method != "gradcam":
            with getattr(pgc, LIB_CLASSES[method])(model, []) as lib:       # no target layers: no hooks
                maps[method] = [torch.from_numpy(np.maximum(lib.get_cam_image(x, module, targets, a, g, False), 0))
                                for module, (a, g) in zip(modules, captured)]
    return maps


@pytest.fixture(scope="module", params=["r3d_18", pytest.param("densenet121", marks=pytest.mark.slow)])
def peer(request):
    """A 3-D classifier, a volume batch, our capture of both layers and pytorch-grad-cam's maps, computed once."""
    shape, layers, classes, default = PEERS[request.param]
    model = peer_model(request.param)
    torch.manual_seed(1)
    x = torch.rand(shape)
    cap = capture(model, x, layers, target=classes)
    lib = pgc_maps(model, x, layers, [ClassifierOutputTarget(c) for c in classes])
    return SimpleNamespace(name=request.param, model=model, x=x, layers=layers, classes=classes,
                           default=default, cap=cap, lib=lib)


@pytest.mark.parametrize("method", list(LIB_CLASSES))
def test_gradient_methods_match_pytorch_grad_cam(peer, method):
    for layer, theirs in zip(peer.layers, peer.lib[method]):
        assert peer.cap.activations[layer].ndim == 5
        close(weigh(peer.cap, method, layer), theirs)


def test_explain_raw_maps_at_the_default_layer_match_pytorch_grad_cam(peer):
    """`xv.explain` end to end: the default layer of a 3-D network, (sample, z, y, x) maps at its grid."""
    cams = xv.explain(peer.model, peer.x, "gradcam", target=peer.classes, upsample=False, normalize=False)
    assert cams.attrs["layer"] == peer.default
    assert cams.dims == ("sample", "z", "y", "x")
    grid = peer.cap.activations[peer.default].shape[2:]
    assert cams.shape[1:] == grid and cams.attrs["layer_resolution"] == list(grid)
    close(torch.from_numpy(cams.values), peer.lib["gradcam"][peer.layers.index(peer.default)])


def test_gradcam_pp_is_pytorch_grad_cams_formula(peer):
    """Our Grad-CAM++ in 3-D against pytorch-grad-cam's own `get_cam_weights` on our captured tensors.

    It puts (ΣA)·g³ in the denominator (eq. 19 of the paper as printed); torchcam and MONAI put Σ(A·g³)
    there (docs/methods.md, "Grad-CAM++: three formulas"). Its Grad-CAM++ crashed on 5-D input (issue #583,
    axes (2, 3) hard-coded); 1.5.7 (constraints.txt) sums over `range(2, ndim)`, so it also runs in
    `test_gradient_methods_match_pytorch_grad_cam`.
    """
    for layer in peer.layers:
        a, g = peer.cap.activations[layer].numpy(), peer.cap.gradients[layer].numpy()
        with pgc.GradCAMPlusPlus(peer.model, []) as lib:
            weights = lib.get_cam_weights(None, None, None, a, g)
        close(weigh(peer.cap, "gradcam++", layer), np.maximum(np.einsum("nc,ncdhw->ndhw", weights, a), 0))


def test_gradcam_matches_monai(peer):
    """MONAI's GradCAM without its upsampler and its default normaliser (which maps max -> 0, min -> 1).

    MONAI takes one class for the whole batch (`class_idx` int) and keeps its hooks on the model for good
    (and turns off `inplace` of the hooked module), so it gets a copy.
    """
    cls = peer.classes[0]
    cam = MonaiGradCAM(copy.deepcopy(peer.model), peer.default, upsampler=lambda size: lambda t: t,
                       postprocessing=lambda t: t)
    theirs = cam(peer.x, class_idx=cls)[:, 0].detach()
    close(weigh(capture(peer.model, peer.x, peer.default, target=cls), "gradcam"), theirs)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "xgradcam"])
def test_matches_torchcam(peer, method):
    """torchcam's extractors at feature resolution, where its formula is ours (its GradCAMpp is not: see
    `test_gradcam_pp_is_pytorch_grad_cams_formula`)."""
    extractor = {"gradcam": torchcam.GradCAM, "layercam": torchcam.LayerCAM, "xgradcam": torchcam.XGradCAM}[method]
    with extractor(peer.model, peer.layers, input_shape=tuple(peer.x.shape[1:])) as cam:
        scores = peer.model(peer.x)
        theirs = cam(class_idx=peer.classes, scores=scores, normalized=False)
    for layer, their_map in zip(peer.layers, theirs):
        close(weigh(peer.cap, method, layer), their_map)


def test_gradcam_matches_captum(peer):
    """captum's LayerGradCam on 5-D layers (its own upsampling, nearest-neighbour, left out)."""
    from captum.attr import LayerGradCam

    for layer in peer.layers:
        attr = LayerGradCam(peer.model, peer.model.get_submodule(layer)).attribute(
            peer.x, target=peer.classes, relu_attributions=True)
        close(weigh(peer.cap, "gradcam", layer), attr[:, 0].detach())


# ---- segmentation: a MONAI 3-D UNet and our unet3d, region summed as pytorch-grad-cam's SemanticSegmentationTarget


def box_region(shape) -> torch.Tensor:
    """A painted 3-D region: a box in the middle of the volume."""
    region = torch.zeros(shape, dtype=torch.bool)
    region[tuple(slice(s // 3, s // 3 + max(2, s // 4)) for s in shape)] = True
    return region


@functools.cache
def segmenter(name: str) -> tuple[torch.nn.Module, torch.Tensor, list[str]]:
    """A 3-D segmenter, a volume batch and two layers in execution order."""
    if name == "monai-unet":        # the bottom skip connection (48×8³), the decoder before the top one (8×16³)
        model, layers = peer_model(name), ["model.1.submodule.1", "model.1.submodule"]
        shape = (2, 1, 32, 32, 32)
    else:
        torch.manual_seed(0)
        model = xv.models.build("unet3d", num_classes=3, in_channels=1).eval()
        shape = (2, 1, 12, 16, 20)
        layers = [xv.models.default_layer(model, shape[1:])]
    torch.manual_seed(2)
    return model, torch.rand(shape), layers


@pytest.mark.parametrize("name", ["monai-unet", "unet3d"])
@pytest.mark.parametrize("region", ["predicted", "box"])
def test_segmentation_matches_semantic_segmentation_target(name, region):
    model, x, layers = segmenter(name)
    spec = box_region(x.shape[2:]) if region == "box" else region
    cap = capture(model, x, layers, target=1 if region == "box" else "predicted", region=spec)
    assert cap.region.shape == (len(x), *x.shape[2:]) and cap.region.flatten(1).any(1).all()
    targets = [SemanticSegmentationTarget(int(cap.target[i]), cap.region[i].numpy().astype(np.float32))
               for i in range(len(x))]
    lib = pgc_maps(model, x, layers, targets, methods=["gradcam", "hirescam"])
    for method, formula in (("seg-gradcam", "gradcam"), ("seg-hirescam", "hirescam")):
        for layer, theirs in zip(layers, lib[formula]):
            close(weigh(cap, method, layer), theirs)
    cams = xv.explain(model, x, "seg-hirescam", layer=layers[-1], target=cap.target.tolist(), region=spec,
                      upsample=False, normalize=False)
    close(torch.from_numpy(cams.values), lib["hirescam"][-1])


@pytest.mark.parametrize("layer", ["bottleneck", "dec1"])
def test_seg_hirescam_is_linear_in_the_region(layer):
    """Before the ReLU, a region's Seg-HiRes map is the sum of its voxels' maps (docs/methods.md)."""
    model, _, _ = segmenter("unet3d")
    torch.manual_seed(3)
    x = torch.rand(1, 1, 12, 16, 20)
    region = torch.zeros(12, 16, 20, dtype=torch.bool)
    region[5:7, 7:9, 9:11] = True                      # 8 voxels, across all three axes
    whole = weigh(capture(model, x, layer, target=1, region=region), "seg-hirescam", relu=False)[0]
    voxels = region.nonzero()
    one = torch.zeros(len(voxels), *region.shape, dtype=torch.bool)
    one[torch.arange(len(voxels)), voxels[:, 0], voxels[:, 1], voxels[:, 2]] = True
    parts = weigh(capture(model, x.expand(len(voxels), -1, -1, -1, -1), layer, target=1, region=one),
                  "seg-hirescam", relu=False)
    scale = float(whole.abs().max())
    assert whole.ndim == 3 and scale > 0
    assert (parts[0] - parts[-1]).abs().max() > 0.01 * scale       # each voxel has its own map
    torch.testing.assert_close(whole, parts.sum(0), rtol=1e-4, atol=1e-4 * scale)


# ---- every method on volumes


SHAPE = (16, 24, 32)    # D×H×W, all different, so a swapped axis shows; smallcnn3d grid 2×3×4


@functools.cache
def small_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return xv.models.build("smallcnn3d", num_classes=2, in_channels=1, width=4).eval()   # 32 channels for Score-CAM


def volumes(n: int = 2, shape=SHAPE) -> xv.data.ImageSet:
    rng = np.random.default_rng(4)
    return xv.data.from_arrays(rng.random((n, *shape), dtype=np.float32), labels=[0, 1][:n], spatial_dims=3)


def trilinear_minmax(raw: np.ndarray, shape) -> np.ndarray:
    """The reference finish for volumes: trilinear upsampling (half-pixel centres), then per-map min-max."""
    up = F.interpolate(torch.from_numpy(raw)[:, None], size=shape, mode="trilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).amin(1).view(-1, 1, 1, 1)
    span = up.flatten(1).amax(1).view(-1, 1, 1, 1) - lo
    return torch.where(span > 0, (up - lo) / span.clamp(min=1e-30), 0).numpy()


def check_volume_maps(model, data, method, **kw):
    """(sample, z, y, x) maps at the input size, in [0, 1], the trilinear upsampling of the raw maps, whose
    raw maps are `weigh` of one `capture` (cell-centre coordinates in input voxels)."""
    cams = xv.explain(model, data, method, **kw)
    raw = xv.explain(model, data, method, upsample=False, normalize=False, **kw)
    assert cams.dims == raw.dims == ("sample", "z", "y", "x")
    assert cams.shape == (len(data), *SHAPE) and cams.attrs["input_size"] == list(SHAPE)
    values = cams.values
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert all(m.max() == 1 or m.max() == 0 for m in values) and values.max() == 1
    np.testing.assert_allclose(values, trilinear_minmax(raw.values, SHAPE), atol=1e-5)
    grid = raw.shape[1:]
    for axis, size, cells in zip("zyx", SHAPE, grid):
        np.testing.assert_allclose(raw[axis].values, (np.arange(cells) + 0.5) * size / cells - 0.5)
    layer = cams.attrs["layer"]
    inputs = data.images if isinstance(data, xv.data.ImageSet) else data
    cap = capture(model, inputs, layer, target=kw.get("target", "predicted"), region=kw.get("region"),
                  gradients=REGISTRY[method].gradients)
    np.testing.assert_allclose(raw.values, weigh(cap, method, layer).numpy(), rtol=1e-5,
                               atol=1e-5 * float(np.abs(raw.values).max()))
    return cams


@pytest.mark.parametrize("method", methods_for(False))
def test_every_classifier_method_runs_on_volumes(method):
    cams = check_volume_maps(small_classifier(), volumes(), method)
    assert list(cams.sample.values) == volumes().ids


def test_scorecam_on_volumes_matches_a_hand_written_reference():
    """pytorch-grad-cam's Score-CAM is 2-D only (`UpsamplingBilinear2d`); its recipe in 3-D: each channel
    upsampled trilinearly with corners aligned, min-max scaled, times the input, scored; softmax over channels."""
    model, x = small_classifier(), volumes().images
    layer = xv.models.default_layer(model, tuple(x.shape[1:]))
    cap = capture(model, x, layer, target=[0, 1], gradients=False)
    a = cap.activations[layer]
    n, c = a.shape[:2]
    up = F.interpolate(a.flatten(0, 1)[:, None], size=SHAPE, mode="trilinear", align_corners=True).view(n, c, *SHAPE)
    lo, hi = up.flatten(2).amin(2)[..., None, None, None], up.flatten(2).amax(2)[..., None, None, None]
    up = (up - lo) / (hi - lo + 1e-8)
    with torch.no_grad():
        scores = torch.stack([model(x[i][None] * up[i][:, None])[:, i] for i in range(n)])   # target i = sample i
    expected = torch.einsum("nc,ncdhw->ndhw", scores.softmax(1), a).clamp(min=0)
    close(weigh(cap, "scorecam", layer), expected)


@functools.cache
def small_segmenter() -> torch.nn.Module:
    torch.manual_seed(0)
    return xv.models.build("unet3d", num_classes=3, in_channels=1).eval()


REGIONS = {"predicted": "predicted", "point": (6, 11, 13), "painted": box_region(SHAPE)}
# "predicted" is scored on the class predicted at most voxels (never an empty region), the others on class 1


@pytest.mark.parametrize("region", list(REGIONS))
@pytest.mark.parametrize("method", [m for m in methods_for(True) if m != "eigencam"])
def test_every_segmentation_method_runs_on_volumes(method, region):
    target = "predicted" if region == "predicted" else 1
    cams = check_volume_maps(small_segmenter(), volumes(), method, target=target, region=REGIONS[region])
    assert cams.attrs["region"] == {"predicted": "predicted", "point": "point (6, 11, 13)", "painted": "mask"}[region]


def test_a_point_region_is_z_y_x():
    """A point (z, y, x) is that one voxel: the same maps as a one-voxel mask."""
    model, data = small_segmenter(), volumes()
    voxel = torch.zeros(SHAPE, dtype=torch.bool)
    voxel[6, 11, 13] = True
    point = xv.explain(model, data, "seg-hirescam", target=1, region=(6, 11, 13), upsample=False, normalize=False)
    mask = xv.explain(model, data, "seg-hirescam", target=1, region=voxel, upsample=False, normalize=False)
    assert np.abs(point.values).max() > 0
    np.testing.assert_array_equal(point.values, mask.values)
    with pytest.raises(ValueError, match="outside"):
        xv.explain(model, data, "seg-hirescam", target=1, region=(SHAPE[0], 0, 0))


def test_eigencam_runs_on_a_volume_segmenter():
    check_volume_maps(small_segmenter(), volumes(), "eigencam")


# ---- layer discovery on 3-D networks


@pytest.mark.parametrize("name, input_shape, expected, grid", [
    pytest.param("densenet121", (1, 64, 64, 64), "class_layers.relu", (1024, 2, 2, 2),   # MONAI's CAM layer
                 marks=pytest.mark.slow),
    ("r3d_18", (3, 8, 56, 56), "layer4", (512, 1, 4, 4)),                     # the last residual stage
    ("mc3_18", (3, 8, 56, 56), "layer4", (512, 8, 4, 4)),                     # 2-D convolutions keep time
])
def test_default_layer_of_3d_classifiers(name, input_shape, expected, grid):
    model = peer_model(name)
    layers = dict(xv.models.spatial_layers(model, input_shape=input_shape))
    assert all(len(shape) == 4 for shape in layers.values())        # C×d×h×w
    assert xv.models.default_layer(model, input_shape) == expected
    assert layers[expected] == grid
    assert "class_layers.pool" not in layers and "avgpool" not in layers    # 1×1×1 is no map


def test_default_layer_of_a_monai_unet():
    """A segmenter's default is the last layer of the up path with more channels than classes, never the logits."""
    model, shape = peer_model("monai-unet"), (1, 32, 32, 32)
    found = {layer.name: layer for layer in xv.models.find_layers(model, shape)}
    default = xv.models.default_layer(model, shape)
    assert not found[default].is_output and found["model"].is_output
    # the last layer with features: model.2's layers carry only the 3 class scores (before a residual add),
    # whose gradient is one-hot in the class channel
    assert default == "model.1" and found[default].shape == (16, 16, 16, 16)
    assert found["model.1"].layout.kind == "nchw"  # 16 channels on a 16³ grid: its conv / norm parts decide
