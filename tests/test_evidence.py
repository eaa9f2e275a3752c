"""Evidence (PDA and efficient) on hand-built models whose decision depends on known patches."""
import threading

import numpy as np
import pytest
import torch
from torch import nn

import xcam_viz as xv
from xcam_viz.evidence import ConditionalSampler, MarginalSampler, laplace_log2_odds

FOR, AGAINST = (slice(3, 6), slice(3, 6)), (slice(10, 13), slice(9, 12))


class PatchModel(nn.Module):
    """Class-1 logit = gain·(mean of the FOR patch − mean of the AGAINST patch) + bias; class 0 logit 0."""

    def __init__(self, gain=6.0, bias=0.0):
        super().__init__()
        self.gain, self.bias = gain, bias
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        z = self.gain * (x[:, :, FOR[0], FOR[1]].mean((1, 2, 3)) - x[:, :, AGAINST[0], AGAINST[1]].mean((1, 2, 3)))
        return torch.stack([torch.zeros_like(z), z + self.bias + self.dummy], 1)


def _reference(n=40, size=16, channels=1, seed=0):
    """Dim random images (values in [0, 0.3])."""
    return 0.3 * torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _distance_to(box, size=16):
    yy, xx = np.mgrid[:size, :size]
    dy = np.maximum(0, np.maximum(box[0].start - yy, yy - (box[0].stop - 1)))
    dx = np.maximum(0, np.maximum(box[1].start - xx, xx - (box[1].stop - 1)))
    return np.maximum(dy, dx)


@pytest.mark.parametrize("method", ["pda", "efficient"])
@pytest.mark.parametrize("sampler", ["marginal", "conditional"])
def test_evidence_for_and_against_known_patches(method, sampler):
    image = _reference(1, seed=1)
    image[:, :, FOR[0], FOR[1]] = 1.0
    image[:, :, AGAINST[0], AGAINST[1]] = 1.0
    ev = xv.evidence(PatchModel(), image, method=method, target=1, window=4, padding=1, samples=4,
                     sampler=sampler, data=_reference(), progress=False)
    assert ev.dims == ("sample", "y", "x") and ev.shape == (1, 16, 16)
    e = ev.values[0]
    assert (e[FOR] > 0.05).all()
    assert (e[AGAINST] < -0.05).all()
    # windows that touch neither patch change nothing: exactly zero WE (the efficient method
    # interpolates between windows `stride` px apart, which reaches stride − 1 px further)
    reach = 4 + ev.attrs["stride"] - 1
    far = (_distance_to(FOR) >= reach) & (_distance_to(AGAINST) >= reach)
    assert far.sum() >= 10 and np.abs(e[far]).max() < 1e-9
    assert ev.attrs["method"] == method and ev.attrs["sampler"] == sampler and ev.attrs["window"] == 4
    assert ev.target.values.tolist() == [1]


def test_target_flips_the_sign():
    image = _reference(1, seed=1)
    image[:, :, FOR[0], FOR[1]] = 1.0
    args = dict(method="efficient", window=4, padding=1, data=_reference(), progress=False)
    one = xv.evidence(PatchModel(), image, target=1, **args)
    zero = xv.evidence(PatchModel(), image, target=0, **args)
    np.testing.assert_allclose(zero.values, -one.values, atol=1e-4)   # two classes: odds invert


def test_laplace_correction_keeps_we_finite():
    n, k = 100, 2
    lo = laplace_log2_odds(torch.tensor([0.0, 1.0]), n, k)
    np.testing.assert_allclose(lo.numpy(), [-np.log2(n + 1), np.log2(n + 1)])
    image = torch.zeros(2, 1, 16, 16)
    image[:, :, FOR[0], FOR[1]] = 1.0          # p(class 1) = 1 exactly; 0 once the image is resampled
    ev = xv.evidence(PatchModel(gain=1e4, bias=-5e3), image, method="pda", target=[1, 0], window=16,
                     samples=2, data=_reference(n), progress=False)
    np.testing.assert_allclose(ev.values[0], 2 * np.log2(n + 1))
    np.testing.assert_allclose(ev.values[1], -2 * np.log2(n + 1))


def _smooth_reference(n=200, size=16, channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=g)
    return nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False) \
        + 0.05 * torch.rand(n, channels, size, size, generator=g)


@pytest.mark.parametrize("where", [(5, 6), (0, 0), (12, 9)])
def test_conditional_samples_match_the_fitted_gaussian(where):
    k, p, c = 3, 2, 2
    ref = _smooth_reference(channels=c)
    sampler = ConditionalSampler(ref, window=k, padding=p)
    image = ref[:1]
    y, x = where
    gen = torch.Generator().manual_seed(0)
    draws = sampler.sample(image, torch.tensor([0]), torch.tensor([[y, x]]), 40000, gen)
    draws = draws[0].reshape(40000, -1).double().numpy()

    # the same conditional, written out independently from the fitted μ and Σ
    m = k + 2 * p
    mu, cov = sampler.mu.numpy(), sampler.cov.numpy()
    index = np.arange(c * m * m).reshape(c, m, m)
    inside = np.zeros((m, m), bool)
    inside[max(0, p - y):m - max(0, y + k + p - 16), max(0, p - x):m - max(0, x + k + p - 16)] = True
    window = np.zeros((m, m), bool)
    window[p:p + k, p:p + k] = True
    a = index[:, window].ravel()
    b = index[:, inside & ~window].ravel()
    padded = np.pad(image[0].numpy(), ((0, 0), (p, p), (p, p)))
    xb = padded[:, y:y + m, x:x + m].reshape(-1)[b]
    gain = cov[np.ix_(a, b)] @ np.linalg.inv(cov[np.ix_(b, b)])
    want_mean = mu[a] + gain @ (xb - mu[b])
    want_cov = cov[np.ix_(a, a)] - gain @ cov[np.ix_(b, a)]

    scale = np.sqrt(np.diag(want_cov))
    assert np.abs(draws.mean(0) - want_mean).max() < 5 * scale.max() / np.sqrt(40000) + 1e-4
    np.testing.assert_allclose(np.cov(draws.T), want_cov, atol=0.05 * np.abs(want_cov).max())


def test_fitted_gaussian_matches_the_patches():
    ref = _smooth_reference(n=50, channels=1)
    sampler = ConditionalSampler(ref, window=2, padding=1, max_patches=10 ** 6)
    patches = ref.unfold(2, 4, 1).unfold(3, 4, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 16).double()
    np.testing.assert_allclose(sampler.mu.numpy(), patches.mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(sampler.cov.numpy(), torch.cov(patches.T).numpy(),
                               atol=2e-4 * float(sampler.cov.diagonal().mean()))


def test_marginal_sampler_copies_reference_windows():
    ref = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 2, 8, 8).clone()
    ref[:, 1] += 10
    sampler = MarginalSampler(ref, window=3)
    draws = sampler.sample(ref[:1], torch.tensor([0, 0]), torch.tensor([[0, 2], [5, 5]]), 50,
                           torch.Generator().manual_seed(0))
    assert draws.shape == (2, 50, 2, 3, 3)
    first = draws[:, :, 0, 0, 0]
    assert (draws[:, :, 0] == first[..., None, None]).all() and (draws[:, :, 1] == first[..., None, None] + 10).all()
    assert set(first.flatten().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}


def test_inputs_and_targets():
    from xcam_viz.data import from_arrays
    images = _reference(3, seed=2)
    ds = from_arrays(images.numpy(), [0, 1, 1], ids=["a", "b", "c"])
    ev = xv.evidence(PatchModel(), ds, method="efficient", target=[0, 1, 0], window=4, padding=1,
                     progress=False)
    assert ev.sample.values.tolist() == ["a", "b", "c"] and ev.target.values.tolist() == [0, 1, 0]
    assert ev.attrs["target"] == "per-sample" and ev.attrs["samples"] == 3 and ev.attrs["stride"] == 2
    pred = xv.evidence(PatchModel(), images, method="efficient", window=4, padding=1, data=ds, progress=False)
    assert pred.attrs["target"] == "predicted" and pred.sample.values.tolist() == ["0", "1", "2"]


def test_clear_errors_and_cancel():
    images, model = _reference(2), PatchModel()
    kw = dict(window=4, padding=1, progress=False)
    with pytest.raises(ValueError, match="unknown evidence method 'lime'"):
        xv.evidence(model, images, method="lime", **kw)
    with pytest.raises(ValueError, match="unknown sampler 'uniform'"):
        xv.evidence(model, images, sampler="uniform", **kw)
    with pytest.raises(ValueError, match="unknown target 'label'"):
        xv.evidence(model, images, target="label", **kw)
    with pytest.raises(ValueError, match="0..1"):
        xv.evidence(model, images, target=5, **kw)
    with pytest.raises(ValueError, match="marginal sampler needs reference images"):
        xv.evidence(model, images, data=_reference(4, size=20), **kw)
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError, match="cancelled after 0 of"):
        xv.evidence(model, images, should_stop=stop, **kw)
    calls = []
    with pytest.raises(InterruptedError):
        xv.evidence(model, images, batch_size=8, should_stop=lambda: calls.append(1) or len(calls) > 3, **kw)
    assert len(calls) == 4 and model.training   # the model's mode is restored


def test_window_field_interpolation():
    from xcam_viz.evidence.analysis import _axis, _interpolation
    assert _axis(16, 4, 5).tolist() == [0, 5, 10, 12]          # the last window is always there
    points = _axis(16, 4, 5)
    field = 2.0 * points.double() + 1                          # linear: reproduced exactly
    np.testing.assert_allclose((_interpolation(points, torch.arange(13)) @ field).numpy(),
                               2.0 * np.arange(13) + 1)
