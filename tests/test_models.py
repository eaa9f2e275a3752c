"""Model zoo, spatial layers, training/prediction and safe checkpoints."""
import os
import pickle

import pytest
import torch
from torch import nn

import xcam_viz as xv
from xcam_viz.data import synthetic_lesions
from xcam_viz.models import build, fingerprint, load, predict, save, spatial_layers, train


def test_smallcnn_layers_and_shapes():
    model = build("smallcnn", num_classes=2)
    layers = dict(spatial_layers(model, (3, 64, 64)))
    assert [n for n in layers if "." not in n] == ["block1", "block2", "block3", "block4"]
    assert layers["block3"] == (64, 16, 16) and layers["block4"] == (128, 8, 8)
    assert "input_norm" not in layers and "pool" not in layers
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "densenet121", "mobilenet_v3_small",
                                  "efficientnet_b0", "resnet34", "resnet50", "vgg16_bn"])
def test_torchvision_models_adapt_classes_and_channels(name):
    model = build(name, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 64, 64))
    assert out.shape == (1, 3)
    assert spatial_layers(model, (1, 64, 64)), "a CNN has spatial layers"


def test_torchvision_model_normalises_its_input():
    model = build("resnet18", num_classes=2).eval()
    seen = {}
    model.conv1.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    x = torch.full((1, 3, 32, 32), 0.5)
    with torch.no_grad():
        model(x)
    expected = (0.5 - torch.tensor(xv.models.zoo.IMAGENET_MEAN)) / torch.tensor(xv.models.zoo.IMAGENET_STD)
    assert torch.allclose(seen["x"][0, :, 0, 0], expected)


def test_unet_outputs_pixel_logits_and_trains_on_targets():
    ds = synthetic_lesions(n=16, size=32, task="segmentation")
    model = build("unet", num_classes=3, width=8)
    model, hist = train(model, ds, epochs=1, batch_size=8, progress=False)
    assert model(ds.images[:2]).shape == (2, 3, 32, 32)
    assert hist.loss.dims == ("epoch",) and len(hist.loss) == 1
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.rand(1, 3, 30, 30))


def test_unknown_model_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'lenet'.*smallcnn"):
        build("lenet")
    with pytest.raises(TypeError, match="no extra arguments"):
        build("resnet18", width=3)


def test_train_learns_and_predict_reports(demo_test):
    small = demo_test.subset(range(32))
    model = build("smallcnn", num_classes=2, width=8)
    model, hist = train(model, small, epochs=3, batch_size=16, progress=False)
    assert hist.loss.values[-1] < hist.loss.values[0]
    pred = predict(model, small)
    assert pred.probability.dims == ("sample", "class") and list(pred["class"].values) == ["benign", "malignant"]
    assert torch.allclose(torch.tensor(pred.probability.sum("class").values), torch.ones(32), atol=1e-5)
    assert list(pred.sample.values) == small.ids and pred.correct.dtype == bool
    with pytest.raises(ValueError, match="at least 1"):
        train(model, small, epochs=0)
    with pytest.raises(ValueError, match="no pixel targets"):
        train(build("unet", num_classes=2, width=4), small, epochs=1, progress=False)


def test_demo_model_has_learned_the_shortcut(demo_model):
    from xcam_viz.demo import demo_data
    test = xv.models.accuracy(demo_model, demo_data("test"))
    flipped = xv.models.accuracy(demo_model, demo_data("flipped"))
    assert test >= 0.95 and flipped <= 0.70


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = build("smallcnn", num_classes=2)
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32))   # BN buffers still at init; change weights a bit
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save(model, tmp_path / "m.pt", meta={"version": "v0"})
    back = load(path)
    assert fingerprint(back) == fingerprint(model)
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    assert back.xcam_meta == {"version": "v0"} and back.xcam_arch == model.xcam_arch
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), back(x))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_torchvision_checkpoint_round_trip(tmp_path):
    model = build("resnet18", num_classes=3, in_channels=1)
    back = load(save(model, tmp_path / "r.pt"))
    assert fingerprint(back) == fingerprint(model) and back.conv1.in_channels == 1


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARK']}",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "xcam-viz/1", "payload": _Evil()}, evil)
    with pytest.raises(ValueError, match="not a safe xcam-viz checkpoint"):
        load(evil)
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(ValueError, match="not a safe"):
        load(tmp_path / "raw.pkl")
    assert not mark.exists(), "the pickle's code ran"


def test_foreign_or_missing_checkpoints(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an xcam-viz checkpoint"):
        load(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="was not made by xv.models.build"):
        save(nn.Linear(2, 2), tmp_path / "x.pt")


def test_build_with_local_weights_file(tmp_path):
    src = build("smallcnn", num_classes=2)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    model = build("smallcnn", num_classes=2, weights=tmp_path / "w.pt")
    assert fingerprint(model) == fingerprint(src)
    with pytest.raises(ValueError, match="does not fit"):
        build("smallcnn", num_classes=5, weights=tmp_path / "w.pt")


def test_get_layer_suggests_close_names():
    model = build("smallcnn")
    assert xv.models.get_layer(model, "block3") is model.block3
    with pytest.raises(KeyError, match="close names.*block3"):
        xv.models.get_layer(model, "blok3")


@pytest.mark.parametrize("conv", [
    nn.Conv3d(1, 4, 3, padding=1),
    nn.Conv3d(4, 6, (3, 1, 3), stride=(1, 2, 1), padding=(1, 0, 2), dilation=(1, 1, 2), groups=2, bias=False),
    nn.Conv3d(2, 3, 3, padding="same"),                     # string padding: PyTorch's own path
])
def test_onednn_conv3d_gives_the_same_values_and_gradients(conv):
    from xcam_viz.models.memory import onednn_conv3d

    torch.manual_seed(0)
    x = torch.randn(1, conv.in_channels, 9, 10, 11, requires_grad=True)
    results = []
    for context in (onednn_conv3d(x), torch.enable_grad()):
        with context:
            y = conv(x)
        grad_x, grad_w = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(),
                                             [x, conv.weight])
        results.append((y.detach(), grad_x, grad_w))
    for ours, plain in zip(*results):
        assert ours.shape == plain.shape
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    with torch.profiler.profile() as prof, onednn_conv3d(x):
        conv(x)
    kernels = {event.key for event in prof.key_averages()}
    assert ("aten::mkldnn_convolution" in kernels) == (conv.padding != "same")
    assert type(onednn_conv3d(x[0])).__name__ == "nullcontext"        # not a volume batch: untouched
