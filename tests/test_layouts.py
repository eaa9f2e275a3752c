"""Layer layouts (N×C×h×w, channels-last, tokens), the default layer and model outputs of any shape."""
import logging

import pytest
import torch
import torchvision
from torch import nn

import xcam_viz as xv
from xcam_viz.explain import capture, weigh
from xcam_viz.models import Layout, default_layer, detect, spatial_layers


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)      # torchvision starts the head at zero
    return model


def test_channels_last_layer_is_never_read_as_channels_first(swin):
    """swin_t's features.7 outputs N×7×7×768; read as N×C×H×W it would be a 7×768 map."""
    x = torch.rand(2, 3, 224, 224)
    cam = xv.explain(swin, x, layer="features.7", upsample=False, normalize=False)
    assert cam.attrs["layer_resolution"] == [7, 7]
    explicit = xv.explain(swin, x, layer="features.7", upsample=False, normalize=False, reshape=Layout("nhwc"))
    torch.testing.assert_close(torch.from_numpy(cam.values), torch.from_numpy(explicit.values))
    assert dict(spatial_layers(swin, (3, 224, 224)))["features.7"] == (768, 7, 7)


class Square(nn.Module):
    """A layer whose output is C×h×w = 16×16×16, which reads either way; `last` decides its layout."""

    def __init__(self, last: nn.Module | None):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.last = last

    def forward(self, x):
        y = self.conv(x)
        return y if self.last is None else self.last(y.permute(0, 2, 3, 1))


@pytest.mark.parametrize("last, expected", [(nn.LayerNorm(16), "nhwc"), (None, "nchw")])
def test_a_square_output_is_decided_by_the_module(last, expected):
    module = Square(last)
    out = module(torch.rand(1, 3, 64, 64))
    assert detect(out, (64, 64), module).kind == expected


def test_a_square_output_without_a_clue_asks(monkeypatch):
    out = torch.rand(1, 16, 16, 16)
    with pytest.raises(ValueError, match=r"channels-first N×C×… or as channels-last N×…×C.*"
                                         r"Layout\('nchw'\) or Layout\('nhwc'\)"):
        detect(out, (64, 64), nn.Identity())


def test_token_layouts():
    assert detect(torch.rand(2, 197, 768), (224, 224), patch=(16, 16)) == Layout("tokens", (14, 14), 1)
    assert detect(torch.rand(2, 198, 192), (224, 224), patch=(16, 16)) == Layout("tokens", (14, 14), 2)
    assert detect(torch.rand(2, 196, 768), (224, 224)) == Layout("tokens", (14, 14), 0)
    with pytest.raises(ValueError, match=r"several token grids fit.*grid=\(4, 4\), prefix=1.*grid=\(3, 3\), prefix=8"):
        detect(torch.rand(2, 17, 64), (64, 64))            # 1+4×4, 8+3×3 or 13+2×2: say which
    tokens = torch.arange(2 * 5 * 3.0).view(2, 5, 3)
    grid = Layout("tokens", (2, 2), 1)(tokens)
    assert grid.shape == (2, 3, 2, 2) and float(grid[0, 0, 0, 0]) == float(tokens[0, 1, 0])


def test_vit_explains_without_a_layer_name(vit, caplog):
    x = torch.rand(2, 3, 224, 224)
    with caplog.at_level(logging.INFO, logger="xcam_viz"):
        cam = xv.explain(vit, x, target=3)
        xv.explain(vit, x, target=3)
    assert cam.attrs["layer"] == "encoder.layers.encoder_layer_11.ln_1"
    assert cam.attrs["layer_source"] == "default" and cam.attrs["layer_resolution"] == [14, 14]
    assert cam.shape == (2, 224, 224) and float(cam.max()) == 1.0
    assert sum("default layer" in r.message for r in caplog.records) == 1, "said once"
    given = xv.explain(vit, x, layer=cam.attrs["layer"], target=3)
    assert given.attrs["layer_source"] == "given"
    torch.testing.assert_close(torch.from_numpy(given.values), torch.from_numpy(cam.values))
    assert dict(spatial_layers(vit))["encoder.layers.encoder_layer_11.ln_1"] == (768, 14, 14)


@pytest.mark.parametrize("name, size, expected", [
    ("resnet18", 224, "layer4"), ("convnext_tiny", 96, "features"), ("swin_t", 224, "permute"),
    ("efficientnet_b0", 96, "features"), ("timm:deit_tiny_patch16_224", 224, "blocks.11.norm1"),
    ("timm:convnext_atto", 96, "norm_pre"), ("unet", 32, "dec1"), ("smallcnn", 64, "block4"),
])
def test_default_layer_of_many_models(name, size, expected):
    torch.manual_seed(0)
    model = xv.models.build(name, num_classes=3).eval()
    x = torch.rand(1, 3, size, size)
    assert default_layer(model, x.shape[1:]) == expected
    method = "seg-gradcam" if name == "unet" else "gradcam"
    cam = xv.explain(model, x, method=method)
    assert cam.attrs["layer"] == expected and cam.shape == (1, size, size)


def test_spatial_layers_ask_for_an_input_shape():
    with pytest.raises(ValueError, match=r"pass input_shape=\(C, H, W\)"):
        spatial_layers(xv.models.build("smallcnn"))
    assert spatial_layers(xv.models.build("timm:deit_tiny_patch16_224"))[-1][1] == (192, 14, 14)


class DictOutput(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"logits": self.inner(x), "features": x.mean()}


class TupleOutput(DictOutput):
    def forward(self, x):
        return self.inner(x), x.mean()


class Renamed(DictOutput):
    def forward(self, x):
        return {"scores": self.inner(x)}


@pytest.mark.parametrize("wrapper", [DictOutput, TupleOutput])
def test_dict_and_tuple_outputs(demo_model, demo_test, wrapper):
    wrapped = wrapper(demo_model)
    plain = xv.explain(demo_model, demo_test.images[:4], layer="block3")
    ours = xv.explain(wrapped, demo_test.images[:4], layer="inner.block3")
    torch.testing.assert_close(torch.from_numpy(ours.values), torch.from_numpy(plain.values))
    assert (xv.models.predict(wrapped, demo_test.images[:4]).predicted.values
            == xv.models.predict(demo_model, demo_test.images[:4]).predicted.values).all()


def test_output_callable_picks_the_logits(demo_model, demo_test):
    wrapped = Renamed(demo_model)
    with pytest.raises(ValueError, match=r"keys \['scores'\].*output=lambda out"):
        xv.explain(wrapped, demo_test.images[:2], layer="inner.block3")
    cam = xv.explain(wrapped, demo_test.images[:2], layer="inner.block3", output=lambda out: out["scores"])
    plain = xv.explain(demo_model, demo_test.images[:2], layer="block3")
    torch.testing.assert_close(torch.from_numpy(cam.values), torch.from_numpy(plain.values))
    cap = capture(wrapped, demo_test.images[:1], "inner.block3", gradients=False, output=lambda out: out["scores"])
    assert weigh(cap, "scorecam").shape == (1, 16, 16)


def test_timm_models_build_offline_and_refuse_unknown_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = xv.models.build("timm:resnet10t", num_classes=4, in_channels=1)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 4)
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        xv.models.build("timm:no_such_net")


def test_eval_mode_restores_each_module(demo_model):
    model = xv.models.build("smallcnn").train()
    model.block2[2].eval()                     # a frozen batch-norm inside a training model
    with xv.models.eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.block2[2].training and model.block3[2].training


class ViewsItsFeatures(nn.Module):
    """A hand-written CNN that flattens with .view, which refuses channels-last tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8 * 16 * 16, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y.view(y.size(0), -1))


def test_models_that_refuse_channels_last_inputs_get_their_own_layout():
    torch.manual_seed(0)
    model = ViewsItsFeatures().eval()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(RuntimeError, match="view"):
        model(x.contiguous(memory_format=torch.channels_last))
    assert xv.models.fast_input(model, x).is_contiguous()
    cam = xv.explain(model, x, layer="conv", target=1, upsample=False, normalize=False)
    y = model.conv(x).detach()
    w = model.head.weight[1].view(8, 16, 16).detach()            # d logit_1 / d conv output
    expected = torch.relu(torch.einsum("c,nchw->nhw", w.mean((1, 2)), y))
    torch.testing.assert_close(torch.from_numpy(cam.values), expected, rtol=1e-4, atol=1e-6)
    assert not xv.models.fast_input(xv.models.build("smallcnn"), x).is_contiguous(), "CNNs get channels-last"
