"""The CAM engine: capture once / weigh many, properties of the methods, API shape, hooks, errors."""
import gc

import numpy as np
import pytest
import torch

import xcam_viz as xv
from xcam_viz.explain import GRADIENT_METHODS, METHODS, capture, differentiable_cam, finish, weigh
from xcam_viz.explain.fold import inference_copy


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return xv.models.build("unet", num_classes=3).eval()


def test_explain_dataarray(demo_model, demo_test):
    ds = demo_test.subset(range(5))
    cams = xv.explain(demo_model, ds, method="gradcam", layer="block3")
    assert cams.dims == ("sample", "y", "x") and cams.shape == (5, 64, 64)
    assert list(cams.sample.values) == ds.ids
    assert float(cams.min()) == 0.0 and float(cams.max()) == 1.0
    pred = xv.models.predict(demo_model, ds).predicted.values
    np.testing.assert_array_equal(cams.target_class.values, pred)
    assert cams.target_name.values[0] == ds.class_names[pred[0]]
    assert cams.attrs["method"] == "gradcam" and cams.attrs["layer"] == "block3"
    assert cams.attrs["layer_resolution"] == [16, 16]
    assert cams.attrs["model_fingerprint"] == xv.models.fingerprint(demo_model)


def test_raw_maps_and_layer_grid(demo_model, demo_test):
    x = demo_test.images[:3]
    raw = xv.explain(demo_model, x, layer="block3", upsample=False, normalize=False)
    assert raw.shape == (3, 16, 16) and raw.y.values[0] == 1.5
    torch.testing.assert_close(torch.from_numpy(raw.values), weigh(capture(demo_model, x, "block3"), "gradcam"))
    assert xv.explain(demo_model, x[0], layer="block3").shape == (1, 64, 64)


@pytest.mark.parametrize("method", METHODS[:5] + ("scorecam", "eigencam"))
def test_every_classifier_method_gives_unit_maps(demo_model, demo_test, method):
    cams = xv.explain(demo_model, demo_test.images[:2], method=method, layer="block4")
    assert cams.shape == (2, 64, 64) and cams.attrs["method"] == method
    assert np.isfinite(cams.values).all() and cams.values.min() >= 0 and cams.values.max() <= 1


def test_capture_once_weigh_many(demo_model, demo_test):
    """One forward for the capture, none for weighing; parameters never get a .grad."""
    model, x = demo_model, demo_test.images[:4]
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        cap = capture(model, x, ["block2", "block3", "block4"])
        assert len(calls) == 1
        maps = {(m, layer): weigh(cap, m, layer)
                for m in list(GRADIENT_METHODS)[:5] + ["eigencam"] for layer in cap.layers}
        assert len(calls) == 1
    finally:
        handle.remove()
    assert all(p.grad is None for p in model.parameters())
    assert maps["gradcam", "block2"].shape == (4, 32, 32)
    single = capture(model, x, "block3")
    torch.testing.assert_close(maps["hirescam", "block3"], weigh(single, "hirescam"))


def test_multi_layer_explain(demo_model, demo_test):
    x = demo_test.images[:2]
    both = xv.explain(demo_model, x, layer=["block3", "block4"])
    assert both.dims == ("layer", "sample", "y", "x") and list(both.layer.values) == ["block3", "block4"]
    assert list(both.layer_height.values) == [16, 8]
    np.testing.assert_allclose(both.sel(layer="block4").values, xv.explain(demo_model, x, layer="block4").values)
    with pytest.raises(ValueError, match="upsample=True"):
        xv.explain(demo_model, x, layer=["block3", "block4"], upsample=False)


def test_targets(demo_model, demo_test):
    x = demo_test.images[:4]
    fixed = xv.explain(demo_model, x, layer="block4", target=0)
    assert (fixed.target_class.values == 0).all()
    per_sample = xv.explain(demo_model, x, layer="block4", target=[0, 1, 0, 1], batch_size=3)
    assert list(per_sample.target_class.values) == [0, 1, 0, 1]
    np.testing.assert_allclose(per_sample.values[0], fixed.values[0])
    by_callable = xv.explain(demo_model, x, layer="block4", target=lambda logits: logits[:, 0])
    np.testing.assert_allclose(by_callable.values, fixed.values, atol=1e-6)
    assert (by_callable.target_name.values == "custom").all()
    top = xv.explain(demo_model, x, layer="block4", target=("topk", 2))
    assert top.dims == ("sample", "rank", "y", "x") and top.target_class.shape == (4, 2)
    np.testing.assert_allclose(top.isel(rank=0).values, xv.explain(demo_model, x, layer="block4").values, atol=1e-6)


def test_hirescam_equals_gradcam_before_global_average_pooling(demo_model, demo_test):
    """smallcnn's block4 is followed only by global average pooling and a linear layer."""
    cap = capture(demo_model, demo_test.images[:8], "block4", target=("topk", 2))
    for c in cap:
        torch.testing.assert_close(weigh(c, "hirescam", relu=False), weigh(c, "gradcam", relu=False),
                                   rtol=1e-5, atol=1e-7)


def test_seg_hirescam_is_linear_in_the_region(unet):
    x = torch.rand(1, 3, 16, 16)
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[5:8, 9:11] = True
    whole = weigh(capture(unet, x, "dec2", target=2, region=region), "seg-hirescam", relu=False)
    pixels = [weigh(capture(unet, x, "dec2", target=2, region=(int(y), int(x_))), "seg-hirescam", relu=False)
              for y, x_ in region.nonzero()]
    torch.testing.assert_close(whole, torch.stack(pixels).sum(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("region", ["predicted", "all", (3, 4)])
def test_segmentation_regions(unet, region):
    x = torch.rand(2, 3, 16, 16)
    cams = xv.explain(unet, x, method="seg-gradcam", layer="bottleneck", region=region, target=1)
    assert cams.shape == (2, 16, 16) and cams.attrs["region"] in ("predicted", "all", "point (3, 4)")
    mask = capture(unet, x, "bottleneck", target=1, region=region).region
    assert mask.shape == (2, 16, 16) and (region != (3, 4) or mask.sum() == 2)


def test_segmentation_mask_regions(unet):
    x = torch.rand(2, 3, 16, 16)
    one = torch.zeros(16, 16, dtype=torch.bool)
    one[2:6, 2:6] = True
    a = xv.explain(unet, x, method="seg-hirescam", layer="dec2", target=0, region=one)
    b = xv.explain(unet, x, method="seg-hirescam", layer="dec2", target=0, region=one.expand(2, 16, 16).numpy(),
                   batch_size=1)
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)
    with pytest.raises(ValueError, match="bool mask"):
        xv.explain(unet, x, method="seg-gradcam", layer="dec2", region=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside"):
        xv.explain(unet, x, method="seg-gradcam", layer="dec2", region=(16, 0))


def test_differentiable_cam_backpropagates_to_parameters(fresh_demo_model, demo_test):
    model = fresh_demo_model.train()
    x, y = demo_test.images[:4], demo_test.labels[:4]
    logits, cam = differentiable_cam(model, x, layer="block3", target=y, method="gradcam")
    assert cam.shape == (4, 64, 64) and cam.requires_grad and model.training
    assert float(cam.detach().max()) <= 1 and float(cam.detach().min()) >= 0
    loss = torch.nn.functional.cross_entropy(logits, y) + (cam * ~demo_test.masks[:4]).mean()
    loss.backward()
    for name in ("block1.0.weight", "block3.1.weight", "block4.1.weight", "head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert hook_count(model) == 0


def test_differentiable_cam_cam_alone_reaches_early_layers(fresh_demo_model, demo_test):
    model = fresh_demo_model.eval()
    _, cam = differentiable_cam(model, demo_test.images[:2], "block3", target=1, method="hirescam")
    (g,) = torch.autograd.grad(cam.sum(), model.block1[0].weight)
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match="gradient method"):
        differentiable_cam(model, demo_test.images[:2], "block3", method="scorecam")


def test_mode_and_requires_grad_are_restored(fresh_demo_model, demo_test):
    model = fresh_demo_model.train()
    model.block1[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    for method in ("gradcam", "scorecam", "eigencam"):
        xv.explain(model, demo_test.images[:2], method=method, layer="block4")
        assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_no_grad_caller_is_fine(demo_model, demo_test):
    x = demo_test.images[:2]
    with torch.no_grad():
        inside = xv.explain(demo_model, x, layer="block3")
        assert not torch.is_grad_enabled()
    np.testing.assert_allclose(inside.values, xv.explain(demo_model, x, layer="block3").values)


def test_hooks_removed_and_not_stacked(fresh_demo_model, demo_test):
    model, x = fresh_demo_model, demo_test.images[:2]
    first = xv.explain(model, x, layer=["block3", "block4"])
    with pytest.raises(ValueError):
        xv.explain(model, x, layer=["block3", "pool"])
    with pytest.raises(ValueError):
        xv.explain(model, x, layer="block3", target=7)
    assert hook_count(model) == 0
    np.testing.assert_array_equal(first.values, xv.explain(model, x, layer=["block3", "block4"]).values)
    assert hook_count(model) == 0


def test_no_memory_growth_over_500_calls():
    psutil = pytest.importorskip("psutil")
    torch.manual_seed(0)
    model = xv.models.build("smallcnn", num_classes=2, width=4).eval()
    x = torch.rand(1, 3, 16, 16)
    proc = psutil.Process()
    for _ in range(50):
        xv.explain(model, x, layer="block3")
    gc.collect()
    before = proc.memory_info().rss
    for _ in range(450):
        xv.explain(model, x, layer="block3")
        assert hook_count(model) == 0
    gc.collect()
    assert proc.memory_info().rss - before < 20 * 2 ** 20


# --- errors that say what to do -------------------------------------------------------------

def test_error_inference_mode(demo_model, demo_test):
    with torch.inference_mode():
        x = demo_test.images[:1].clone()
        with pytest.raises(RuntimeError, match="outside the inference_mode"):
            xv.explain(demo_model, x)
    with pytest.raises(ValueError, match="create it outside inference_mode"):
        xv.explain(demo_model, x)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"layer": "blok3"}, KeyError, r"close names: \['block3'"),
    ({"layer": "pool"}, ValueError, "not a spatial map.*spatial_layers"),
    ({"layer": "head"}, ValueError, "not a spatial map"),
    ({"method": "gradcam+"}, ValueError, "did you mean 'gradcam\\+\\+'.*scorecam"),
    ({"method": "seg-gradcam"}, ValueError, "use gradcam"),
    ({"target": 2}, ValueError, r"out of range: the model has 2 classes \(0..1\)"),
    ({"target": [0, 1, 0]}, ValueError, "one index per sample"),
    ({"target": "best"}, ValueError, "'predicted', a class index"),
    ({"target": ("topk", 3)}, ValueError, "1 <= k <= 2"),
    ({"target": lambda logits: logits}, ValueError, "one score per sample"),
])
def test_errors_say_what_to_do(demo_model, demo_test, kwargs, error, message):
    with pytest.raises(error, match=message):
        xv.explain(demo_model, demo_test.images[:2], **{"layer": "block3", **kwargs})
    assert hook_count(demo_model) == 0


@pytest.mark.parametrize("x, message", [
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
    (torch.rand(64, 64), "N×C×H×W"),
    (torch.rand(1, 1, 3, 64, 64), "N×C×H×W"),
    (torch.rand(2, 1, 64, 64), "takes 3-channel images.*channel count"),
    (torch.rand(1, 3, 2, 2), "rejected an input of shape"),
    (np.zeros((1, 3, 64, 64)), "from_arrays"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "divide uint8"),
])
def test_bad_inputs(demo_model, x, message):
    with pytest.raises((ValueError, TypeError), match=message):
        xv.explain(demo_model, x)


def test_segmenter_rejects_classifier_methods(unet):
    with pytest.raises(ValueError, match="seg-gradcam or seg-hirescam"):
        xv.explain(unet, torch.rand(1, 3, 16, 16), method="gradcam", layer="dec2")


def test_finish_handles_flat_maps():
    out = finish(torch.zeros(2, 4, 4), (8, 8))
    assert out.shape == (2, 8, 8) and (out == 0).all()


def test_score_cam_inference_copy(demo_model, demo_test):
    """BatchNorm folded into the convolutions only when the copy reproduces the model."""
    x = demo_test.images[:2]
    fused = inference_copy(demo_model, x)
    assert fused is not demo_model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in demo_model.modules()) == 4

    class ConvOutputUsedTwice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
            self.bn.running_mean.fill_(0.5)

        def forward(self, x):
            y = self.conv(x)
            return (self.bn(y) + y).mean((2, 3))

    odd = ConvOutputUsedTwice().eval()
    assert inference_copy(odd, x) is odd


def test_folded_copy_is_cached_and_follows_the_model(fresh_demo_model, demo_test):
    """Score-CAM's folded copy is built once per model state and rebuilt when a parameter changes."""
    model, x = fresh_demo_model.eval(), demo_test.images[:4]
    first = inference_copy(model, x, keep=["block4"])
    assert first is not model and inference_copy(model, x, keep=["block4"]) is first
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    second = inference_copy(model, x, keep=["block4"])
    assert second is not first
    with torch.inference_mode():
        torch.testing.assert_close(second(x.contiguous(memory_format=torch.channels_last)), model(x),
                                   rtol=1e-4, atol=1e-4)
