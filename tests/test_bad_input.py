"""Property-based bad input: whatever arrays, labels, layers or targets a user gives, the answer is a
valid result or a ValueError / TypeError / KeyError whose message names the problem — never a crash
from deep inside numpy or torch."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import xcam_viz as xv

CLEAR = (ValueError, TypeError, KeyError)
DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_])
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def image_arrays(draw):
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=9))
    elements = None
    if np.issubdtype(dtype, np.floating):
        elements = st.one_of(st.floats(-2, 2, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _assert_clear(err: Exception):
    msg = str(err)
    assert len(msg) > 20, f"message too terse: {msg!r}"


@FAST
@given(images=image_arrays(), n_labels=st.integers(0, 6), n_classes=st.integers(1, 4))
def test_from_arrays_accepts_or_explains(images, n_labels, n_classes):
    labels = np.arange(n_labels) % n_classes
    try:
        ds = xv.data.from_arrays(images, labels)
    except CLEAR as err:
        _assert_clear(err)
        return
    assert ds.images.ndim == 4 and ds.images.dtype == torch.float32
    assert torch.isfinite(ds.images).all() and 0 <= ds.images.min() and ds.images.max() <= 1
    assert len(ds) == n_labels


@FAST
@given(masks=image_arrays())
def test_masks_accepted_or_explained(masks):
    images = np.zeros((3, 8, 8), np.uint8)
    try:
        ds = xv.data.from_arrays(images, [0, 1, 0], masks=masks)
    except CLEAR as err:
        _assert_clear(err)
        return
    assert ds.masks.shape == (3, 8, 8) and ds.masks.dtype == torch.bool


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return xv.models.build("smallcnn", num_classes=3, width=4).eval()


@FAST
@given(shape=hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=40),
       fill=st.sampled_from([0.5, np.nan, np.inf, 0.0]),
       method=st.sampled_from(["gradcam", "hirescam", "eigencam", "gradcam++", "nope", "seg-gradcam"]),
       layer=st.sampled_from(["block2", "block4", "head", "pool", "nope", ""]),
       target=st.sampled_from(["predicted", 0, 2, 3, -1, [0, 1], "top", ("topk", 2), ("topk", 9)]))
def test_explain_accepts_or_explains(tiny_model, shape, fill, method, layer, target):
    x = torch.full(shape, fill)
    try:
        cams = xv.explain(tiny_model, x, method=method, layer=layer, target=target)
    except (*CLEAR, RuntimeError) as err:
        assert not isinstance(err, RuntimeError) or "inference_mode" in str(err), f"raw RuntimeError: {err}"
        _assert_clear(err)
        return
    assert cams.dims[-2:] == ("y", "x") and np.isfinite(cams.values).all()
    assert cams.values.min() >= 0 and cams.values.max() <= 1


def test_constant_and_one_pixel_images_explain_without_nan(tiny_model):
    for x in (torch.zeros(2, 3, 32, 32), torch.ones(1, 3, 32, 32)):
        cams = xv.explain(tiny_model, x, layer="block3")
        assert np.isfinite(cams.values).all()
    with pytest.raises(CLEAR, match="N×C×H×W|spatial|size"):
        xv.explain(tiny_model, torch.rand(1, 3, 1, 1), layer="block4")


def test_explain_under_no_grad_and_inference_mode(tiny_model):
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        cams = xv.explain(tiny_model, x, layer="block3")
    assert np.isfinite(cams.values).all()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside"):
        xv.explain(tiny_model, x, layer="block3")


@FAST
@given(out_shape=st.sampled_from([(2,), (2, 3, 4), (2, 3, 4, 5, 6), ()]))
def test_models_with_unexpected_output_shapes(out_shape):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            a = self.conv(x)
            return a.mean() * torch.ones(out_shape) if out_shape else a.mean()

    with pytest.raises(CLEAR, match="logits"):
        xv.explain(Odd(), torch.rand(2, 3, 16, 16), layer="conv")
