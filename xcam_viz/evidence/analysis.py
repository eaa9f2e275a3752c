"""Prediction Difference Analysis (Zintgraf et al. 2017) and a fast approximation of it.

Weight of evidence of a window w for class c, in bits:
    WE = log2 odds(c | x) − log2 odds(c | x without w),   odds(p) = p' / (1 − p'),
with the Laplace correction p' = (p·N + 1)/(N + K) (N reference images, K classes), which keeps
WE finite when a probability is exactly 0 or 1. p(c | x without w) is the mean of p(c | x̃) over
images x̃ whose window is resampled. A pixel's value is the mean WE of the windows that contain it.
"""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from ..models import model_device
from .samplers import SAMPLERS, ConditionalSampler, MarginalSampler

METHODS = ("pda", "efficient")


def evidence(model: nn.Module, inputs, method: str = "pda", target="predicted", window: int = 10,
             padding: int = 2, samples: int = 10, sampler: str = "marginal", data=None,
             stride: int | None = None, batch_size: int = 256, progress: bool = True,
             should_stop=None, seed: int = 0) -> xr.DataArray:
    """Signed weight of evidence (bits) per pixel for `target`: > 0 for the class, < 0 against it.

    method: "pda" — faithful PDA: every k×k window (stride 1) resampled `samples` times.
        "efficient" — each window replaced once by its expected value under the sampler (the
        conditional mean given its border, or the reference set's mean window) instead of
        `samples` random draws, on a stride-`stride` grid of windows (default 2) whose WE is
        averaged into the pixels as in PDA. Why: the cost of PDA is windows × samples forwards;
        one forward with the expected window removes the factor `samples` and estimates the same
        "window without its information" (exact for a model that is linear in the window), and
        with stride s each pixel still lies in (k/s)² windows, so the map keeps PDA's smoothing
        at 1/s² of the windows. 10 samples at stride 1 vs 1 draw at stride 2 is ~40× fewer
        forwards; benchmarks/evidence_speed.py measures speed and agreement with PDA.
    target: "predicted", a class index, or one class index per image.
    sampler: "marginal" (window copied from random reference images, same place) or
        "conditional" (Gaussian of the window given its `padding`-px border, fitted on patches).
    data: the reference ImageSet or N×C×H×W tensor (default: the inputs); its size is the
        Laplace N.
    should_stop: a threading.Event or a callable; when it turns true, InterruptedError is raised.
    Returns DataArray (sample, y, x) with coord target(sample) and attrs method, window, padding,
    stride, samples, sampler, target.
    """
    if method not in METHODS:
        raise ValueError(f"unknown evidence method {method!r}; choose one of {METHODS}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    images, ids = as_images(inputs, "inputs")
    reference = images if data is None else as_images(data, "data")[0]
    if len(reference) < 2:
        raise ValueError("the sampler needs at least 2 reference images: pass data= an ImageSet")
    h, w = images.shape[-2:]
    if not 1 <= window <= min(h, w) or padding < 0 or samples < 1:
        raise ValueError(f"need 1 <= window <= {min(h, w)} (image size), padding >= 0 and samples >= 1; "
                         f"got window={window}, padding={padding}, samples={samples}")
    stride = stride or (1 if method == "pda" else 2)
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        images = images.to(device)
        fitted = (MarginalSampler(reference, window) if sampler == "marginal"
                  else ConditionalSampler(reference, window, padding, seed=seed)).to(device)
        gen = torch.Generator(device=device).manual_seed(seed)
        draw = ((lambda *a: fitted.sample(*a, samples, gen)) if method == "pda" else fitted.mean)
        draws = samples if method == "pda" else 1
        with torch.inference_mode():
            probs = class_probabilities(model, images, batch_size)
            targets = resolve_targets(target, probs)
            positions = _positions(h, w, window, stride)
            with tqdm(total=len(images) * len(positions) * draws, desc=f"evidence ({method})",
                      unit="img", disable=not progress) as bar:
                without = _window_probs(model, images, targets, positions, window, draw, draws,
                                        batch_size, bar, should_stop)
    finally:
        model.train(was_training)
    n, k = len(reference), probs.shape[1]
    p = probs[torch.arange(len(images)), targets]
    we = laplace_log2_odds(p, n, k)[:, None] - laplace_log2_odds(without, n, k)
    maps = _per_pixel(we, positions, window, h, w)
    return xr.DataArray(
        maps.numpy(), dims=("sample", "y", "x"), name="evidence",
        coords={"sample": ids, "y": np.arange(h), "x": np.arange(w), "target": ("sample", targets.cpu().numpy())},
        attrs={"method": method, "window": window, "padding": padding, "stride": stride,
               "samples": draws, "sampler": sampler, "units": "bit",
               "target": target if isinstance(target, (str, int)) else "per-sample"})


def laplace_log2_odds(p: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """log2 odds of the Laplace-corrected probability (p·n + 1)/(n + k), in float64."""
    p = (p.double().cpu() * n + 1) / (n + k)
    return torch.log2(p) - torch.log2(1 - p)


def as_images(x, name: str) -> tuple[torch.Tensor, list[str]]:
    """Images (N×C×H×W float) and sample ids of an ImageSet or a tensor."""
    if isinstance(x, ImageSet):
        return x.images, list(x.ids)
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return x.float(), [str(i) for i in range(len(x))]
    raise TypeError(f"{name} must be an ImageSet or an N×C×H×W tensor, got "
                    f"{type(x).__name__}{tuple(x.shape) if hasattr(x, 'shape') else ''}")


def class_probabilities(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Softmax class probabilities N×K of a classifier, batched (call under inference_mode)."""
    out = torch.cat([model(b) for b in images.split(batch_size)])
    if out.ndim != 2:
        raise ValueError(f"evidence needs a classifier (N×K logits); the model returned {tuple(out.shape)}")
    return out.float().softmax(1)


def resolve_targets(target, probs: torch.Tensor) -> torch.Tensor:
    """One class index per image from "predicted", an int, or a sequence of ints."""
    n, k = probs.shape
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(f"unknown target {target!r}; use 'predicted', a class index or one per image")
        return probs.argmax(1)
    t = torch.as_tensor(target, device=probs.device).long().flatten()
    t = t.expand(n) if t.numel() == 1 else t
    if len(t) != n:
        raise ValueError(f"{len(t)} targets for {n} images: give one class index per image")
    if t.min() < 0 or t.max() >= k:
        raise ValueError(f"target classes must lie in 0..{k - 1}, got {t.unique().tolist()}")
    return t


def _positions(h: int, w: int, window: int, stride: int) -> torch.Tensor:
    """Top-left corners of the windows: a stride grid that always includes the last row/column."""
    def axis(size):
        steps = list(range(0, size - window + 1, stride))
        return steps if steps[-1] == size - window else steps + [size - window]
    ys, xs = axis(h), axis(w)
    return torch.tensor([(y, x) for y in ys for x in xs])


def _window_probs(model, images, targets, positions, window, draw, draws, batch_size, bar,
                  should_stop) -> torch.Tensor:
    """Mean target probability with each window resampled: (images, windows), batched over both."""
    n, c = len(images), images.shape[1]
    device = images.device
    positions = positions.to(device)
    total = n * len(positions)
    out = torch.empty(total, device=device)
    chunk = max(1, batch_size // draws)
    for start in range(0, total, chunk):
        if should_stop is not None and (should_stop.is_set() if hasattr(should_stop, "is_set") else should_stop()):
            raise InterruptedError(f"evidence cancelled after {start} of {total} windows")
        item = torch.arange(start, min(total, start + chunk), device=device)
        idx, (ys, xs) = item // len(positions), positions[item % len(positions)].T
        patches = draw(images, idx, ys, xs)                                   # m, draws, C, k, k
        batch = images[idx.repeat_interleave(draws)]
        r = torch.arange(window, device=device)
        rows = ys.repeat_interleave(draws)[:, None, None] + r[None, :, None]
        cols = xs.repeat_interleave(draws)[:, None, None] + r[None, None, :]
        batch[torch.arange(len(batch), device=device)[:, None, None], :, rows, cols] = \
            patches.reshape(-1, c, window, window).permute(0, 2, 3, 1)
        p = model(batch.contiguous(memory_format=torch.channels_last)).float().softmax(1)[torch.arange(len(batch), device=device),
                                              targets[idx].repeat_interleave(draws)]
        out[item] = p.view(-1, draws).mean(1)
        bar.update(len(batch))
    return out.view(n, len(positions))


def _per_pixel(we: torch.Tensor, positions: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Mean over the windows containing each pixel of the per-window values (images, windows)."""
    total = torch.zeros(len(we), h, w, dtype=we.dtype)
    count = torch.zeros(h, w, dtype=we.dtype)
    for j, (y, x) in enumerate(positions.tolist()):
        total[:, y:y + window, x:x + window] += we[:, j, None, None]
        count[y:y + window, x:x + window] += 1
    return (total / count).float()
