"""Efficient evidence vs faithful PDA on the demo: speed-up and agreement of the maps.

Both methods get the same images, window (10), padding (2), target (the predicted class) and
reference set (the 2,000 demo training images, also the Laplace N). The efficient method runs
before and after PDA and its time is the mean of the two runs, so a change of machine load
during the long PDA run does not favour either side. Agreement per image: Spearman rank
correlation of the two maps over all pixels, and sign agreement on the pixels whose |WE| is in
PDA's top 20%. Goals: speed-up >= 10× (stretch 20×) at median Spearman >= 0.8.

    python benchmarks/evidence_speed.py [--images N] [--samplers marginal conditional]

Full PDA costs 55²·10 = 30,250 forwards per 64 px image (~1.5–4 min on 2 CPU cores), so the
default protocol uses 4 images to stay under ~10 minutes; `--images 20` is the full protocol.
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import xcam_viz as xv
from xcam_viz.demo import demo_data, demo_model
from xcam_viz.evidence import SAMPLERS


def agreement(pda: np.ndarray, fast: np.ndarray) -> tuple[float, float]:
    """Spearman correlation over pixels; sign agreement on PDA's top-20% |WE| pixels."""
    rho = spearmanr(pda.ravel(), fast.ravel())[0]
    top = np.abs(pda) >= np.quantile(np.abs(pda), 0.8)
    return rho, float((np.sign(pda[top]) == np.sign(fast[top])).mean())


def timed(**kw):
    start = time.perf_counter()
    maps = xv.evidence(progress=False, **kw)
    return maps, time.perf_counter() - start


def run(images: int, samplers: list[str], out: Path | None = None) -> str:
    """The table for each sampler in turn; `out` is rewritten after each row."""
    test = demo_data("test")    # evenly spaced: the test set starts with a run of benign images
    data = test.subset(range(0, len(test), len(test) // images)[:images])
    model, reference = demo_model(progress=False), demo_data("train")
    rows = []
    for sampler in samplers:
        kw = dict(model=model, inputs=data, sampler=sampler, data=reference, window=10, padding=2)
        fast, t1 = timed(method="efficient", **kw)
        pda, t_pda = timed(method="pda", **kw)
        _, t2 = timed(method="efficient", **kw)
        assert (fast.target.values == pda.target.values).all()
        rho, sign = np.array([agreement(p, f) for p, f in zip(pda.values, fast.values)]).T
        speedup = t_pda / ((t1 + t2) / 2)
        rows.append(f"| {sampler} | {images} | {t_pda / images:.1f} | {(t1 + t2) / 2 / images:.2f} | "
                    f"{speedup:.1f}× | {pda.attrs['forwards'] / fast.attrs['forwards']:.1f}× | "
                    f"{np.median(rho):.3f} ({rho.min():.3f}–{rho.max():.3f}) | {np.median(sign):.3f} | "
                    f"{'yes' if speedup >= 10 and np.median(rho) >= 0.8 else 'NO'} / "
                    f"{'yes' if speedup >= 20 and np.median(rho) >= 0.8 else 'no'} |")
        print(rows[-1], flush=True)
        if out is not None:
            out.write_text(report(data, images, rows))
    return report(data, images, rows)


def report(data, images: int, rows: list[str]) -> str:
    table = "\n".join([
        "| sampler | images | PDA s/image | efficient s/image | speed-up (time) | forwards ratio | "
        "Spearman median (min–max) | sign agreement on PDA's top-20% abs(WE) pixels, median | goal 10× / 20× |",
        "|---|---|---|---|---|---|---|---|---|", *rows])
    return (f"Demo smallcnn, {images} of the 400 test images (64 px, evenly spaced: {data.ids[0]}, "
            f"{data.ids[1]}, …); window 10, padding 2, target = predicted class; reference = 2,000 demo "
            f"training images (Laplace N). PDA: stride 1, 10 samples; efficient: stride 3, 3 samples, "
            f"interpolated window field. torch threads: {torch.get_num_threads()}; machine load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores when written.\n"
            "Goals: speed-up >= 10× (stretch 20×) with median Spearman >= 0.8.\n\n" + table + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--samplers", nargs="+", default=["marginal"], choices=SAMPLERS)
    args = parser.parse_args()
    results = Path(__file__).with_name("results")
    results.mkdir(exist_ok=True)
    print(run(args.images, args.samplers, results / "evidence_speed.md"))
