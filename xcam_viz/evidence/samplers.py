"""Samplers for Prediction Difference Analysis: what a window looks like "without" its pixels.

Windows are cubes of side k over every spatial axis (k×k for images, k×k×k for volumes), given by
their first corner: `corners` is (windows, spatial axes). Both samplers draw values for the windows
of images at given corners and return them as (windows, draws, C, k, …, k) tensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SAMPLERS = ("marginal", "conditional")


def window_grid(corners: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """Index tensors, one per spatial axis, of the size^d cubes at `corners` (windows, d).

    Axis a's tensor has shape (windows, 1, …, size, …, 1) with `size` at position a + 1, so the
    tensors broadcast to (windows, size, …, size) when they index a tensor's spatial axes.
    """
    windows, d = corners.shape
    steps = torch.arange(size, device=corners.device)
    grids = []
    for a in range(d):
        shape = [1] * d
        shape[a] = size
        grids.append(corners[:, a].view(windows, *[1] * d) + steps.view(1, *shape))
    return tuple(grids)


def _batch_index(idx: torch.Tensor, d: int) -> torch.Tensor:
    """`idx` (windows,) shaped to broadcast against window_grid's tensors."""
    return idx.view(-1, *[1] * d)


class MarginalSampler:
    """Window values copied from random images of a reference set at the same location (Zintgraf 2017)."""

    def __init__(self, reference: torch.Tensor, window: int):
        self.reference = reference
        self.window = window

    def to(self, device) -> MarginalSampler:
        self.reference = self.reference.to(device)
        return self

    def _check(self, images: torch.Tensor) -> None:
        if images.shape[1:] != self.reference.shape[1:]:
            raise ValueError(f"the marginal sampler needs reference images of the inputs' shape "
                             f"{tuple(images.shape[1:])}, got {tuple(self.reference.shape[1:])}; "
                             "pass data= an ImageSet of that size, or use sampler='conditional'")

    def sample(self, images, idx, corners, draws: int, generator: torch.Generator) -> torch.Tensor:
        self._check(images)
        d = corners.shape[1]
        pick = torch.randint(len(self.reference), (len(corners), draws), generator=generator,
                             device=generator.device).to(self.reference.device)
        grids = tuple(g[:, None] for g in window_grid(corners, self.window))     # windows, 1, k, …
        out = self.reference[(pick.view(*pick.shape, *[1] * d), slice(None), *grids)]  # windows, draws, k…, C
        return out.movedim(-1, 2)


class ConditionalSampler:
    """The inner window drawn from a Gaussian conditioned on its `padding`-px border.

    Fitted on C·(k+2p)^d patch vectors (channel, then spatial axes in order) at random positions
    of the reference images: mean μ and covariance Σ (plus a small ridge). For the window a given
    the visible border b: μ_a|b = μ_a + Σ_ab Σ_bb⁻¹ (x_b − μ_b), Σ_a|b = Σ_aa − Σ_ab Σ_bb⁻¹ Σ_ba.
    Windows at the image edge condition on the part of the border inside the image.
    """

    def __init__(self, reference: torch.Tensor, window: int, padding: int, max_patches: int = 20000,
                 seed: int = 0, ridge: float = 1e-4, max_dims: int = 4096):
        n, c, *spatial = reference.shape
        d, m = len(spatial), window + 2 * padding
        if m > min(spatial):
            raise ValueError(f"window + 2·padding = {m} px exceeds the {'×'.join(map(str, spatial))} images")
        if c * m ** d > max_dims:
            widest = round((max_dims / c) ** (1 / d))
            widest -= c * widest ** d > max_dims          # the float root may round up
            raise ValueError(f"the conditional sampler would fit a {c * m ** d}-dimensional Gaussian "
                             f"(C·(window + 2·padding)^{d}); use a window of at most "
                             f"~{widest - 2 * padding} px or sampler='marginal'")
        self.window, self.padding, self.channels, self.spatial_dims = window, padding, c, d
        gen = torch.Generator().manual_seed(seed)
        counts = [size - m + 1 for size in spatial]     # patch positions along each axis
        per_image = math.prod(counts)
        pick = torch.randperm(n * per_image, generator=gen)[:max_patches]   # without replacement
        corners = torch.stack(torch.unravel_index(pick % per_image, counts), 1)
        patches = reference.cpu()[(_batch_index(pick // per_image, d), slice(None), *window_grid(corners, m))]
        patches = patches.movedim(-1, 1).reshape(len(pick), -1).double()
        self.mu = patches.mean(0)
        cov = torch.cov(patches.T)
        self.cov = cov + ridge * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
        self.device = torch.device("cpu")
        self._params: dict[tuple, tuple] = {}

    def to(self, device) -> ConditionalSampler:
        self.device = torch.device(device)
        self._params = {}
        return self

    def indices(self, cuts: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch-vector indices of the window and of its visible border, given how many border
        px the image edge cuts off before and after the window along each axis
        (before, after of axis 0, before, after of axis 1, …)."""
        m, p, d = self.window + 2 * self.padding, self.padding, self.spatial_dims
        u = torch.arange(m)
        inner = torch.ones((m,) * d, dtype=torch.bool)
        seen = torch.ones((m,) * d, dtype=torch.bool)
        for a in range(d):
            shape = [1] * d
            shape[a] = m
            before, after = cuts[2 * a], cuts[2 * a + 1]
            inner = inner & ((u >= p) & (u < m - p)).view(shape)
            seen = seen & ((u >= before) & (u < m - after)).view(shape)
        inner, seen = (t.repeat(self.channels, *[1] * d).flatten() for t in (inner, seen))
        return inner.nonzero().flatten(), (seen & ~inner).nonzero().flatten()

    def conditional(self, cuts: tuple[int, ...]):
        """(b, μ_a, μ_b, Σ_ab Σ_bb⁻¹, Cholesky factor of Σ_a|b) for a border pattern, cached."""
        if cuts not in self._params:
            a, b = self.indices(cuts)
            s_ab, s_bb = self.cov[a][:, b], self.cov[b][:, b]
            gain = torch.linalg.solve(s_bb, s_ab.T).T if len(b) else s_ab[:, :0]
            cond = self.cov[a][:, a] - gain @ s_ab.T
            chol = torch.linalg.cholesky(0.5 * (cond + cond.T))
            self._params[cuts] = tuple(t.to(self.device) for t in (
                b, self.mu[a].float(), self.mu[b].float(), gain.float(), chol.float()))
        return self._params[cuts]

    def sample(self, images, idx, corners, draws: int, generator: torch.Generator) -> torch.Tensor:
        p, k, c = self.padding, self.window, self.channels
        spatial = images.shape[2:]
        d = len(spatial)
        patches = F.pad(images, (p, p) * d)[(_batch_index(idx, d), slice(None), *window_grid(corners, k + 2 * p))]
        patches = patches.movedim(-1, 1).reshape(len(corners), -1)
        cuts = torch.stack([cut for a, size in enumerate(spatial)        # border px cut off before, after
                            for cut in ((p - corners[:, a]).clamp(min=0),
                                        (corners[:, a] + k + p - size).clamp(min=0))], 1)
        out = torch.empty(len(corners), draws, c * k ** d, device=images.device)
        for key in torch.unique(cuts, dim=0):    # windows grouped by the border they can see
            sel = (cuts == key).all(1).nonzero().flatten()
            b, mu_a, mu_b, gain, chol = self.conditional(tuple(key.tolist()))
            mean = mu_a + (patches[sel][:, b] - mu_b) @ gain.T
            z = torch.randn(len(sel), draws, c * k ** d, generator=generator, device=generator.device)
            out[sel] = mean[:, None] + z.to(images.device) @ chol.T
        return out.view(len(corners), draws, c, *[k] * d)
