"""Evidence (PDA and efficient) on volumes N×C×D×H×W: cubic windows, the same code path as images."""
import numpy as np
import pytest
import torch
from torch import nn

import xcam_viz as xv
from xcam_viz.evidence import ConditionalSampler, MarginalSampler
from xcam_viz.evidence.analysis import _per_pixel

SIZE = 12
FOR = (slice(2, 4), slice(2, 4), slice(2, 4))
AGAINST = (slice(8, 10), slice(7, 9), slice(8, 10))


class CubeModel(nn.Module):
    """Class-1 logit = gain·(mean of the FOR cube − mean of the AGAINST cube) + bias; class 0 logit 0."""

    def __init__(self, gain=6.0, bias=0.0, cubes=(FOR, AGAINST)):
        super().__init__()
        self.gain, self.bias, self.cubes = gain, bias, cubes
        self.dummy = nn.Parameter(torch.zeros(()))
        self.batches = []

    def forward(self, x):
        self.batches.append(len(x))
        means = [x[(slice(None), slice(None), *cube)].mean((1, 2, 3, 4)) for cube in self.cubes]
        z = self.gain * (means[0] - means[1])
        return torch.stack([torch.zeros_like(z), z + self.bias + self.dummy], 1)


def _reference(n=30, size=SIZE, channels=1, seed=0):
    """Dim random volumes (values in [0, 0.3])."""
    return 0.3 * torch.rand(n, channels, size, size, size, generator=torch.Generator().manual_seed(seed))


def _distance_to(box, size=SIZE):
    """Chebyshev distance (voxels) of every voxel to a box."""
    grid = np.indices((size,) * 3)
    gaps = [np.maximum(0, np.maximum(b.start - g, g - (b.stop - 1))) for g, b in zip(grid, box)]
    return np.maximum.reduce(gaps)


@pytest.mark.parametrize("method", ["pda", "efficient"])
@pytest.mark.parametrize("sampler", ["marginal", "conditional"])
def test_volume_evidence_for_and_against_known_cubes(method, sampler):
    volume = _reference(1, seed=1)
    volume[(slice(None), slice(None), *FOR)] = 1.0
    volume[(slice(None), slice(None), *AGAINST)] = 1.0
    ev = xv.evidence(CubeModel(), volume, method=method, target=1, window=3, padding=1, samples=3,
                     stride=1 if method == "pda" else 2, sampler=sampler, data=_reference(), progress=False)
    assert ev.dims == ("sample", "z", "y", "x") and ev.shape == (1, SIZE, SIZE, SIZE)
    assert ev.z.values.tolist() == list(range(SIZE))
    e = ev.values[0]
    assert (e[FOR] > 0.05).all() and (e[AGAINST] < -0.05).all()
    # windows that touch neither cube change nothing; interpolation reaches stride − 1 voxels further
    reach = 3 + ev.attrs["stride"] - 1
    far = (_distance_to(FOR) >= reach) & (_distance_to(AGAINST) >= reach)
    assert far.sum() >= 100 and np.abs(e[far]).max() < 1e-9
    per_axis = (SIZE - 3) // ev.attrs["stride"] + 1 + ((SIZE - 3) % ev.attrs["stride"] > 0)
    assert ev.attrs["forwards"] == per_axis ** 3 * 3     # cubic windows on a grid along each axis


def test_volume_imageset_keeps_ids_and_refuses_a_window_larger_than_the_volume():
    ds = xv.data.from_arrays(_reference(3, seed=2).numpy(), [0, 1, 1], ids=["a", "b", "c"], spatial_dims=3)
    ev = xv.evidence(CubeModel(), ds, method="efficient", window=4, progress=False)
    assert ev.dims == ("sample", "z", "y", "x") and ev.sample.values.tolist() == ["a", "b", "c"]
    assert ev.attrs["stride"] == 2 and ev.attrs["forwards"] == 5 ** 3 * 3    # at most half the window apart
    with pytest.raises(ValueError, match=r"need 1 <= window <= 12 \(image size\).*window=13"):
        xv.evidence(CubeModel(), ds, window=13, progress=False)


def test_whole_volume_window_gives_the_laplace_bound():
    n = 20
    cube = (slice(2, 4),) * 3
    volumes = torch.zeros(2, 1, 6, 6, 6)
    volumes[(slice(None), slice(None), *cube)] = 1.0     # p(class 1) = 1 exactly; 0 once resampled
    model = CubeModel(gain=1e4, bias=-5e3, cubes=(cube, (slice(0, 1),) * 3))
    ev = xv.evidence(model, volumes, method="pda", target=[1, 0], window=6, samples=2,
                     data=_reference(n, size=6), progress=False)
    np.testing.assert_allclose(ev.values[0], 2 * np.log2(n + 1))
    np.testing.assert_allclose(ev.values[1], -2 * np.log2(n + 1))


@pytest.mark.parametrize("shape", [(9, 7), (5, 6, 7)])
def test_per_voxel_mean_matches_a_loop_over_windows(shape):
    window = 3
    field = torch.randn(2, *(s - window + 1 for s in shape), dtype=torch.float64)
    total, count = np.zeros((2, *shape)), np.zeros(shape)
    for corner in np.ndindex(*field.shape[1:]):
        cube = tuple(slice(c, c + window) for c in corner)
        total[(slice(None), *cube)] += field[(slice(None), *corner)].numpy().reshape(2, *[1] * len(shape))
        count[cube] += 1
    np.testing.assert_allclose(_per_pixel(field, window).numpy(), total / count, rtol=1e-5, atol=1e-6)


def test_efficient_interpolation_is_exact_for_a_linear_window_field():
    """WE (nearly) linear in the window's corner: stride 3 plus trilinear interpolation gives the stride-1 map."""
    weights = torch.linspace(0.5, 1.5, SIZE)
    ramp = weights.view(-1, 1, 1) + 2 * weights.view(1, -1, 1) + 3 * weights.view(1, 1, -1)

    class Ramp(nn.Module):
        def forward(self, x):     # logit 0 for the volume of ones; emptying a window lowers it linearly
            z = 1e-4 * (x[:, 0] * ramp).sum((1, 2, 3)) - 1e-4 * ramp.sum()
            return torch.stack([torch.zeros_like(z), z], 1)

    volume = torch.ones(1, 1, SIZE, SIZE, SIZE)
    reference = torch.zeros(5, 1, SIZE, SIZE, SIZE)      # every draw empties the window exactly
    kw = dict(method="pda", target=1, window=4, samples=1, data=reference, progress=False)
    fine, coarse = xv.evidence(Ramp(), volume, **kw), xv.evidence(Ramp(), volume, stride=3, **kw)
    assert coarse.attrs["forwards"] == 4 ** 3 and fine.attrs["forwards"] == 9 ** 3
    assert np.ptp(fine.values) > 0.1 * np.abs(fine.values).max()      # the map is not flat
    # log-odds are odd around p = 1/2, so WE is linear up to a third-order term (~1e-5 here)
    np.testing.assert_allclose(coarse.values, fine.values, rtol=1e-3)


def test_volume_batches_stay_within_the_voxel_budget(monkeypatch):
    from xcam_viz.evidence import analysis
    monkeypatch.setattr(analysis, "VOXEL_BUDGET", 10 * SIZE ** 3)
    model = CubeModel()
    ev = xv.evidence(model, _reference(2, seed=3), method="efficient", window=4, progress=False)
    assert max(model.batches) <= 10 and sum(model.batches[1:]) == 2 * ev.attrs["forwards"]


def test_marginal_sampler_copies_reference_cubes():
    ref = torch.arange(5.0).view(5, 1, 1, 1, 1).expand(5, 2, 6, 6, 6).clone()
    ref[:, 1] += 10
    ref[:, :, 4] += 100                                   # slice z = 4 is marked
    draws = MarginalSampler(ref, window=2).sample(ref[:1], torch.tensor([0, 0]),
                                                  torch.tensor([[0, 0, 1], [3, 4, 4]]), 50,
                                                  torch.Generator().manual_seed(0))
    assert draws.shape == (2, 50, 2, 2, 2, 2)
    first = draws[:, :, 0, 0, 0, 0]
    assert set(first.flatten().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}
    assert (draws[:, :, 1] == draws[:, :, 0] + 10).all()
    # the second window spans z = 3, 4: its second slice carries the mark, the first window's does not
    assert (draws[1, :, :, 1] == draws[1, :, :, 0] + 100).all() and (draws[0, :, :, 1] == draws[0, :, :, 0]).all()


def test_conditional_sampler_on_volumes_matches_its_gaussian():
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(300, 1, 3, 3, 3, generator=g)
    ref = nn.functional.interpolate(coarse, size=8, mode="trilinear") + 0.05 * torch.rand(300, 1, 8, 8, 8, generator=g)
    k, p = 2, 1
    sampler = ConditionalSampler(ref, window=k, padding=p, max_patches=10 ** 6)
    patches = ref.unfold(2, 4, 1).unfold(3, 4, 1).unfold(4, 4, 1).reshape(-1, 64).double()
    np.testing.assert_allclose(sampler.mu.numpy(), patches.mean(0).numpy(), atol=1e-6)

    corner = (0, 3, 6)              # the window touches the volume's first z and last x face
    draws = sampler.sample(ref[:1], torch.tensor([0]), torch.tensor([corner]), 40000, g)[0]
    draws = draws.reshape(40000, -1).double().numpy()
    m = k + 2 * p
    inside, window = np.zeros((m,) * 3, bool), np.zeros((m,) * 3, bool)
    inside[1:, :, :3] = True        # z −1 and x 8 lie outside the 8³ volume
    window[p:p + k, p:p + k, p:p + k] = True
    a, b = np.flatnonzero(window), np.flatnonzero(inside & ~window)
    padded = np.pad(ref[0, 0].numpy(), p)
    xb = padded[corner[0]:corner[0] + m, corner[1]:corner[1] + m, corner[2]:corner[2] + m].ravel()[b]
    mu, cov = sampler.mu.numpy(), sampler.cov.numpy()
    gain = cov[np.ix_(a, b)] @ np.linalg.inv(cov[np.ix_(b, b)])
    want_mean, want_cov = mu[a] + gain @ (xb - mu[b]), cov[np.ix_(a, a)] - gain @ cov[np.ix_(b, a)]
    assert np.abs(draws.mean(0) - want_mean).max() < 5 * np.sqrt(np.diag(want_cov)).max() / 200 + 1e-4
    np.testing.assert_allclose(np.cov(draws.T), want_cov, atol=0.05 * np.abs(want_cov).max())


def test_conditional_sampler_refuses_a_gaussian_too_large_for_volumes():
    with pytest.raises(ValueError, match=r"6859-dimensional.*\^3\); use a window of at most ~14 px"):
        ConditionalSampler(torch.rand(3, 1, 20, 20, 20), window=17, padding=1, max_dims=4096)
