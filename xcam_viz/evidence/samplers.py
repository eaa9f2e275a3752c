"""Samplers for Prediction Difference Analysis: what a window looks like "without" its pixels.

Both draw values for the inner k×k window of images at given positions and return them as
(windows, draws, C, k, k) tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SAMPLERS = ("marginal", "conditional")


def _grid(ys: torch.Tensor, xs: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (n, size, 1) and (n, 1, size) of size×size windows at (ys, xs)."""
    r = torch.arange(size, device=ys.device)
    return (ys[:, None] + r)[:, :, None], (xs[:, None] + r)[:, None, :]


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

    def sample(self, images, idx, ys, xs, draws: int, generator: torch.Generator) -> torch.Tensor:
        self._check(images)
        pick = torch.randint(len(self.reference), (len(ys), draws), generator=generator,
                             device=generator.device).to(self.reference.device)
        rows, cols = _grid(ys, xs, self.window)
        out = self.reference[pick[:, :, None, None], :, rows[:, None], cols[:, None]]  # n,draws,k,k,C
        return out.permute(0, 1, 4, 2, 3)


class ConditionalSampler:
    """The inner k×k window drawn from a Gaussian conditioned on its `padding`-px border.

    Fitted on (k+2p)²·C patch vectors (channel, row, column order) at random positions of the
    reference images: mean μ and covariance Σ (plus a small ridge). For the window a given the
    visible border b: μ_a|b = μ_a + Σ_ab Σ_bb⁻¹ (x_b − μ_b), Σ_a|b = Σ_aa − Σ_ab Σ_bb⁻¹ Σ_ba.
    Windows at the image edge condition on the part of the border inside the image.
    """

    def __init__(self, reference: torch.Tensor, window: int, padding: int, max_patches: int = 20000,
                 seed: int = 0, ridge: float = 1e-4, max_dims: int = 4096):
        n, c, h, w = reference.shape
        m = window + 2 * padding
        if m > min(h, w):
            raise ValueError(f"window + 2·padding = {m} px exceeds the {h}×{w} images")
        if c * m * m > max_dims:
            raise ValueError(f"the conditional sampler would fit a {c * m * m}-dimensional Gaussian "
                             "(C·(window + 2·padding)²); use a window of at most "
                             f"~{int((max_dims / c) ** 0.5) - 2 * padding} px or sampler='marginal'")
        self.window, self.padding, self.channels = window, padding, c
        gen = torch.Generator().manual_seed(seed)
        ny, nx = h - m + 1, w - m + 1
        pick = torch.randperm(n * ny * nx, generator=gen)[:max_patches]   # without replacement
        img, (rows, cols) = pick // (ny * nx), _grid(pick % (ny * nx) // nx, pick % nx, m)
        patches = reference.cpu()[img[:, None, None], :, rows, cols].permute(0, 3, 1, 2).reshape(len(pick), -1)
        patches = patches.double()
        self.mu = patches.mean(0)
        cov = torch.cov(patches.T)
        self.cov = cov + ridge * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
        self.device = torch.device("cpu")
        self._params: dict[tuple, tuple] = {}

    def to(self, device) -> ConditionalSampler:
        self.device = torch.device(device)
        self._params = {}
        return self

    def indices(self, cuts: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch-vector indices of the window and of its visible border, given the border rows/cols
        cut off by the image edge (top, bottom, left, right)."""
        m, p = self.window + 2 * self.padding, self.padding
        u = torch.arange(m)
        top, bottom, left, right = cuts
        inner = ((u >= p) & (u < m - p))
        rows_in, cols_in = (u >= top) & (u < m - bottom), (u >= left) & (u < m - right)
        inner2 = (inner[:, None] & inner[None, :]).repeat(self.channels, 1, 1).flatten()
        seen = (rows_in[:, None] & cols_in[None, :]).repeat(self.channels, 1, 1).flatten()
        return inner2.nonzero().flatten(), (seen & ~inner2).nonzero().flatten()

    def conditional(self, cuts: tuple[int, int, int, int]):
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

    def sample(self, images, idx, ys, xs, draws: int, generator: torch.Generator) -> torch.Tensor:
        p, k, c = self.padding, self.window, self.channels
        h, w = images.shape[-2:]
        rows, cols = _grid(ys, xs, k + 2 * p)
        patches = F.pad(images, (p, p, p, p))[idx[:, None, None], :, rows, cols]
        patches = patches.permute(0, 3, 1, 2).reshape(len(ys), -1)
        cuts = torch.stack([(p - ys).clamp(min=0), (ys + k + p - h).clamp(min=0),
                            (p - xs).clamp(min=0), (xs + k + p - w).clamp(min=0)], 1)
        out = torch.empty(len(ys), draws, c * k * k, device=images.device)
        for key in torch.unique(cuts, dim=0):    # windows grouped by the border they can see
            sel = (cuts == key).all(1).nonzero().flatten()
            b, mu_a, mu_b, gain, chol = self.conditional(tuple(key.tolist()))
            mean = mu_a + (patches[sel][:, b] - mu_b) @ gain.T
            z = torch.randn(len(sel), draws, c * k * k, generator=generator, device=generator.device)
            out[sel] = mean[:, None] + z.to(images.device) @ chol.T
        return out.view(len(ys), draws, c, k, k)
