"""Our CAMs against pytorch-grad-cam, torchcam and captum on random-weight torchvision models."""
import functools

import numpy as np
import pytest
import torch
import torchvision

from xcam_viz.explain import capture, finish, weigh

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget  # noqa: E402

import xcam_viz as xv  # noqa: E402

# model, input size, two layers for the gradient methods, two (narrower) layers for Score-CAM
PEERS = {
    "resnet18": (96, ["layer2", "layer4"], ["layer1", "layer2"]),
    "vgg11_bn": (64, ["features.13", "features.27"], ["features.2", "features.6"]),
    "densenet121": (64, ["features.transition1", "features.denseblock4"], ["features.pool0", "features.transition1"]),
}
CLASSES = [3, 7]
LIB_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM",
               "xgradcam": "XGradCAM", "layercam": "LayerCAM", "scorecam": "ScoreCAM", "eigencam": "EigenCAM"}


@functools.cache
def random_model(name):
    """One random-weight torchvision model per name for the whole module (vgg11_bn alone takes seconds)."""
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


@pytest.fixture(scope="module", params=list(PEERS))
def peer(request):
    size, layers, score_layers = PEERS[request.param]
    model = random_model(request.param)          # the input in the layout our capture runs (see lib_cams)
    return model, xv.models.fast_input(model, torch.rand(len(CLASSES), 3, size, size)), layers, score_layers


@pytest.fixture(autouse=True)
def _raw_lib_maps(monkeypatch):
    """pytorch-grad-cam without its scaling (min-max with eps 1e-7, which is not small next to random-weight
    CAMs) and resizing, so both sides get the same normalisation in `assert_maps_close`."""
    monkeypatch.setattr(pgc.base_cam, "scale_cam_image", lambda cam, target_size=None: np.float32(cam))


def lib_cams(method, model, layers, x, targets, reshape_transform=None):
    """pytorch-grad-cam's raw maps (ReLU applied) per layer, one pass for all layers (no averaging).

    The peer gets the input in the memory layout our capture runs the model in (`fast_input`), so both
    sides run the same convolution kernels: the comparison measures the CAM, not oneDNN's kernel choice.
    (NCHW and channels-last kernels round differently; on an AMD EPYC host the random densenet121's
    Grad-CAM at transition1 moved by up to 0.5 % of its maximum between the two layouts.)
    """
    x = xv.models.fast_input(model, x)
    cls = getattr(pgc, LIB_CLASSES[method.removeprefix("seg-")])
    modules = dict(model.named_modules())
    with cls(model=model, target_layers=[modules[n] for n in layers], reshape_transform=reshape_transform) as cam:
        cam.aggregate_multi_layers = lambda per_layer: [torch.from_numpy(m[:, 0]) for m in per_layer]
        cam.batch_size = 64
        return cam(input_tensor=x, targets=targets)


def assert_maps_close(ours, theirs):
    """Equal to 1e-4 after the same per-map min-max normalisation."""
    np.testing.assert_allclose(finish(ours, None).numpy(), finish(theirs, None).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam"])
def test_gradient_methods_match_pytorch_grad_cam(peer, method):
    model, x, layers, _ = peer
    cap = capture(model, x, layers, target=CLASSES)
    for layer, theirs in zip(layers, lib_cams(method, model, layers, x, [ClassifierOutputTarget(c) for c in CLASSES])):
        assert_maps_close(weigh(cap, method, layer), theirs)


def test_eigencam_matches_up_to_sign(peer):
    model, x, layers, _ = peer
    cap = capture(model, x, layers, gradients=False)
    for layer, theirs in zip(layers, lib_cams("eigencam", model, layers, x, None)):
        raw = weigh(cap, "eigencam", layer, relu=False)
        for i in range(len(x)):
            gaps = [(finish((sign * raw[i:i + 1]).clamp(min=0), None) - finish(theirs[i:i + 1], None)).abs().max()
                    for sign in (1, -1)]
            assert min(gaps) < 1e-4


@pytest.mark.slow
def test_scorecam_matches_pytorch_grad_cam(peer):
    model, _, _, layers = peer
    x = torch.rand(1, 3, 32, 32)
    cap = capture(model, x, layers, target=CLASSES[:1], gradients=False)
    for layer, theirs in zip(layers, lib_cams("scorecam", model, layers, x, [ClassifierOutputTarget(CLASSES[0])])):
        assert_maps_close(weigh(cap, "scorecam", layer), theirs)


def test_gradcam_matches_torchcam_and_captum(peer):
    from captum.attr import LayerGradCam
    from torchcam.methods import GradCAM

    model, x, layers, _ = peer
    cap = capture(model, x, layers, target=CLASSES)
    for layer in layers:
        mine = weigh(cap, "gradcam", layer)
        with GradCAM(model, layer, input_shape=tuple(x.shape[1:])) as extractor:
            scores = model(x)
            (tc,) = extractor(class_idx=CLASSES, scores=scores, normalized=False)
        torch.testing.assert_close(mine, tc, rtol=1e-4, atol=1e-4 * float(mine.max()))
        attr = LayerGradCam(model, dict(model.named_modules())[layer]).attribute(
            x, target=CLASSES, relu_attributions=True)
        torch.testing.assert_close(mine, attr[:, 0].detach(), rtol=1e-4, atol=1e-4 * float(mine.max()))


@pytest.mark.parametrize("name, layer", [("vgg11_bn", "features.12"), ("resnet18", "layer3.0.bn2"),
                                         ("densenet121", "features.norm5")])
def test_output_changed_in_place_downstream(name, layer):
    """A layer followed by ReLU(inplace=True) / `+=` / F.relu(inplace=True): we keep the layer's own output.

    captum hands the network a clone of the hooked output as we do, so it sees the same tensor.
    """
    from captum.attr import LayerGradCam

    model = random_model(name)
    x = xv.models.fast_input(model, torch.rand(2, 3, 64, 64))
    cap = capture(model, x, layer, target=CLASSES)
    assert (cap.activations[layer] < 0).any(), "the kept activation must be the pre-ReLU output"
    attr = LayerGradCam(model, dict(model.named_modules())[layer]).attribute(x, target=CLASSES)
    torch.testing.assert_close(weigh(cap, "gradcam", layer, relu=False), attr[:, 0].detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["seg-gradcam", "seg-hirescam"])
def test_segmentation_matches_semantic_segmentation_target(method):
    torch.manual_seed(0)
    model = xv.models.build("unet", num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    cap = capture(model, x, ["bottleneck", "dec2"], region="predicted")  # pgc wants execution order
    assert cap.region.flatten(1).any(1).all()
    targets = [SemanticSegmentationTarget(int(cap.target[i]), cap.region[i].numpy().astype(np.float32))
               for i in range(len(x))]
    for layer, theirs in zip(cap.layers, lib_cams(method, model, cap.layers, x, targets)):
        assert_maps_close(weigh(cap, method, layer), theirs)


def vit_tokens(grid, prefix=1):
    """pytorch-grad-cam's documented ViT reshape_transform: drop the class token(s), tokens -> N×C×h×w."""
    def reshape(t):
        return t[:, prefix:].reshape(t.size(0), *grid, t.size(2)).permute(0, 3, 1, 2)
    return reshape


def channels_last(t):
    """pytorch-grad-cam's documented Swin reshape_transform (N×h×w×C -> N×C×h×w)."""
    return t.permute(0, 3, 1, 2)


@functools.cache
def modern_model(name):
    """Random-weight transformers and modern CNNs (built once); torchvision's ViT head starts at zero, so it
    gets random weights to give non-zero CAMs."""
    torch.manual_seed(0)
    if name == "deit":
        import timm
        return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=112).eval()
    model = torchvision.models.get_model(name, weights=None).eval()
    if name == "vit_b_16":
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


# model, input size, layers (with their pytorch-grad-cam reshape_transform; our side detects the layout)
MODERN = {
    "vit_b_16": (224, ["encoder.layers.encoder_layer_11.ln_1"], vit_tokens((14, 14))),
    "swin_t": (224, ["features.5", "features.7.0"], channels_last),   # not features.7: the LayerNorm after it
    # makes sum_c G·A cancel to ~1e-7, where float32 rounding alone is 1 %
    "deit": (112, ["blocks.5.norm1", "blocks.11.norm1"], vit_tokens((7, 7))),
    "convnext_tiny": (96, ["features.5.2.block.2", "features.7.2.block.2"], channels_last),
    "efficientnet_b0": (96, ["features.6", "features.8"], None),
}


@pytest.fixture(scope="module", params=list(MODERN))
def modern(request):
    size, layers, reshape = MODERN[request.param]
    torch.manual_seed(1)
    return request.param, modern_model(request.param), torch.rand(len(CLASSES), 3, size, size), layers, reshape


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam"])
def test_modern_models_match_pytorch_grad_cam(modern, method):
    """Token, channels-last and plain layers, read by our layout detection, against the peer given its
    documented reshape_transform."""
    _, model, x, layers, reshape = modern
    cap = capture(model, x, layers, target=CLASSES, gradients=method != "eigencam")
    targets = None if method == "eigencam" else [ClassifierOutputTarget(c) for c in CLASSES]
    for layer, theirs in zip(layers, lib_cams(method, model, layers, x, targets, reshape)):
        assert cap.activations[layer].shape[-2:] == theirs.shape[-2:]
        ours = weigh(cap, method, layer, relu=method != "eigencam")
        if method == "eigencam":            # the principal component's sign is arbitrary, per image
            for i in range(len(x)):
                gaps = [(finish((sign * ours[i:i + 1]).clamp(min=0), None) - finish(theirs[i:i + 1], None)).abs().max()
                        for sign in (1, -1)]
                assert min(gaps) < 1e-4
        else:
            assert float(ours.max()) > 0
            assert_maps_close(ours, theirs)


@pytest.mark.slow
def test_scorecam_on_a_vision_transformer_matches_pytorch_grad_cam():
    model, layer = modern_model("deit"), "blocks.11.norm1"
    x = torch.rand(1, 3, 112, 112)
    cap = capture(model, x, layer, target=CLASSES[:1], gradients=False)
    (theirs,) = lib_cams("scorecam", model, [layer], x, [ClassifierOutputTarget(CLASSES[0])], vit_tokens((7, 7)))
    assert_maps_close(weigh(cap, "scorecam", layer), theirs)
