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


@functools.lru_cache(maxsize=None)
def random_model(name):
    """One random-weight torchvision model per name for the whole module (vgg11_bn alone takes seconds)."""
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


@pytest.fixture(scope="module", params=list(PEERS))
def peer(request):
    size, layers, score_layers = PEERS[request.param]
    return random_model(request.param), torch.rand(len(CLASSES), 3, size, size), layers, score_layers


@pytest.fixture(autouse=True)
def _raw_lib_maps(monkeypatch):
    """pytorch-grad-cam without its scaling (min-max with eps 1e-7, which is not small next to random-weight
    CAMs) and resizing, so both sides get the same normalisation in `assert_maps_close`."""
    monkeypatch.setattr(pgc.base_cam, "scale_cam_image", lambda cam, target_size=None: np.float32(cam))


def lib_cams(method, model, layers, x, targets):
    """pytorch-grad-cam's raw maps (ReLU applied) per layer, one pass for all layers (no averaging)."""
    cls = getattr(pgc, LIB_CLASSES[method.removeprefix("seg-")])
    modules = dict(model.named_modules())
    with cls(model=model, target_layers=[modules[n] for n in layers]) as cam:
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
    x = torch.rand(2, 3, 64, 64)
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
    targets = [SemanticSegmentationTarget(int(cap.target[i]), cap.region[i].numpy().astype(np.float32)) for i in range(len(x))]
    for layer, theirs in zip(cap.layers, lib_cams(method, model, cap.layers, x, targets)):
        assert_maps_close(weigh(cap, method, layer), theirs)
