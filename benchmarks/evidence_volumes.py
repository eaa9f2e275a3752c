"""Efficient evidence vs a coarse PDA on small volumes: speed-up and agreement of the maps.

Two generated data sets of 16³ volumes (one channel, two classes), a `smallcnn3d` (width 4)
trained on each with `xv.models.train`:
- shapes: a bright sphere (class 0) or cube (class 1) at a random place in noise;
- nodules: a textured background with a bright nodule (class 1) or without (class 0); a bright
  rod, the same for both classes, lies in half of the volumes.
Both methods get the same volumes, window, target (the predicted class) and reference set (the
training volumes, also the Laplace N). PDA: every k³ window (stride 1), 10 draws each. Efficient:
3 draws (the default) on a stride-3 and on a stride-2 grid (the default, `default_stride`, is 3
but at most half the window), the window field interpolated trilinearly. Each efficient setting
runs before and after PDA and its time is the mean of the two runs. Agreement per volume:
Spearman rank correlation over all voxels, and sign agreement on the voxels whose |WE| is in
PDA's top 20% (`evidence_speed.agreement`). Acceptance: median Spearman >= 0.8. About 15 minutes
on one busy CPU core (PDA: ~22k forwards per volume at k = 4).

    python benchmarks/evidence_volumes.py [--volumes N] [--windows K ...] [--datasets shapes nodules]
"""
import argparse
import os
import time

import numpy as np
import torch
from evidence_speed import agreement
from results_table import write_result
from torch import nn
from torch.nn import functional as F

import xcam_viz as xv
from xcam_viz.evidence.analysis import default_stride

SIZE = 16


def _grid(size: int = SIZE) -> torch.Tensor:
    return torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))


def shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes N×1×16³ with a sphere (label 0) or a cube (label 1) of radius 2.5–3.5 in noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    grid, volumes = _grid(), 0.2 + 0.05 * torch.randn(n, 1, SIZE, SIZE, SIZE, generator=gen)
    for i in range(n):
        radius = 2.5 + torch.rand((), generator=gen)
        centre = 4 + (SIZE - 9) * torch.rand(3, 1, 1, 1, generator=gen)
        offset = grid - centre
        inside = (offset.abs().amax(0) <= 0.85 * radius) if labels[i] else (offset.norm(dim=0) <= radius)
        volumes[i, 0][inside] = 0.8
    return volumes.clamp(0, 1), labels


def nodules(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes N×1×16³ of smooth texture; label 1 adds a bright nodule; half of each class has a rod."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    coarse = torch.rand(n, 1, 4, 4, 4, generator=gen)
    volumes = 0.25 + 0.3 * F.interpolate(coarse, size=SIZE, mode="trilinear") \
        + 0.04 * torch.randn(n, 1, SIZE, SIZE, SIZE, generator=gen)
    grid = _grid()
    for i in range(n):
        if labels[i]:
            centre = 4 + (SIZE - 9) * torch.rand(3, 1, 1, 1, generator=gen)
            radii = 1.5 + 1.5 * torch.rand(3, 1, 1, 1, generator=gen)
            volumes[i, 0][(((grid - centre) / radii) ** 2).sum(0) <= 1] = 0.95
        if (i // 2) % 2:
            axis, (a, b) = int(torch.randint(3, (), generator=gen)), torch.randint(2, SIZE - 3, (2,), generator=gen)
            rod = [slice(a, a + 2), slice(b, b + 2)]
            rod.insert(axis, slice(None))
            volumes[(i, 0, *rod)] = 0.9
    return volumes.clamp(0, 1), labels


DATASETS = {"shapes": shapes, "nodules": nodules}
EFFICIENT_STRIDES = (3, 2)      # the default for k >= 6, and for k = 4, 5 (at most half the window)


def volume_set(name: str, n: int, seed: int) -> xv.data.ImageSet:
    volumes, labels = DATASETS[name](n, seed)
    return xv.data.from_arrays(volumes.numpy(), labels.numpy(), spatial_dims=3)


def trained_model(train_set: xv.data.ImageSet, epochs: int = 15) -> nn.Module:
    torch.manual_seed(0)        # the initial weights (train seeds only the training)
    model = xv.models.build("smallcnn3d", num_classes=2, in_channels=1, width=4)
    return xv.models.train(model, train_set, epochs=epochs, batch_size=32, progress=False)[0].eval()


def timed(**kw):
    start = time.perf_counter()
    maps = xv.evidence(progress=False, **kw)
    return maps, time.perf_counter() - start


def run(name: str, volumes: int, windows: list[int], pda_samples: int) -> list[str]:
    """Table rows for one data set: train on 256 generated volumes, then per window one PDA run and
    each efficient setting (the defaults, and stride 2) on the first `volumes` test volumes."""
    train_set, test_set = volume_set(name, 256, seed=0), volume_set(name, 64, seed=1)
    model = trained_model(train_set)
    accuracy = xv.models.accuracy(model, test_set)
    rows = []
    for window in windows:
        kw = dict(model=model, inputs=test_set.subset(range(volumes)), data=train_set, window=window)
        before = {stride: timed(method="efficient", stride=stride, **kw) for stride in EFFICIENT_STRIDES}
        pda, t_pda = timed(method="pda", samples=pda_samples, **kw)
        for stride in EFFICIENT_STRIDES:
            fast, t1 = before[stride]
            t2 = timed(method="efficient", stride=stride, **kw)[1]
            assert (fast.target.values == pda.target.values).all()
            rho, sign = np.array([agreement(p, f) for p, f in zip(pda.values, fast.values)]).T
            t_fast = (t1 + t2) / 2
            label = f"{stride} (default)" if stride == default_stride(window) else str(stride)
            rows.append(
                f"| {name} | {accuracy:.2f} | {volumes} | {window} | {label} | "
                f"{t_pda / volumes:.1f} | {t_fast / volumes:.2f} | {t_pda / t_fast:.1f}× | "
                f"{pda.attrs['forwards'] / fast.attrs['forwards']:.1f}× | {np.median(rho):.3f} | {rho.min():.3f} | "
                f"{np.median(sign):.3f} | {sign.min():.3f} | {'yes' if np.median(rho) >= 0.8 else 'NO'} |")
            print(rows[-1], flush=True)
    return rows


def report(rows: list[str], pda_samples: int) -> str:
    table = "\n".join([
        "| data set | test accuracy | volumes | window k | efficient stride | PDA s/volume | efficient s/volume | "
        "speed-up (time) | forwards ratio | Spearman median | Spearman min | sign agreement median | "
        "sign agreement min | median >= 0.8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows])
    return (f"`smallcnn3d` (width 4), trained per data set on 256 generated {SIZE}³ volumes "
            f"(`benchmarks/evidence_volumes.py`); the first test volumes (alternating classes); target = "
            f"predicted class; reference = the 256 training volumes (Laplace N); marginal sampler. PDA: "
            f"stride 1, {pda_samples} draws per k³ window; efficient: 3 draws, the given stride, trilinear "
            f"window field. Sign agreement on PDA's top-20% |WE| voxels. torch threads: "
            f"{torch.get_num_threads()}; machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
            "cores when written.\nAcceptance (issue 20): median Spearman >= 0.8.\n\n" + table + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--windows", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--pda-samples", type=int, default=10)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for dataset in args.datasets for row in run(dataset, args.volumes, args.windows, args.pda_samples)]
    write_result("evidence_volumes", report(rows, args.pda_samples))
