"""Faithfulness and localisation of every CAM method and both evidence methods on the demo.

For the demo smallcnn and the first 100 demo test images (target: the predicted class):
deletion and insertion AUC (Petsiuk 2018; 32 steps; blur and per-image-mean baselines), pointing game (argmax in
the lesion mask) and energy pointing game (share of positive map mass in the lesion mask).
CAMs at layer block3; evidence with window 10, padding 2, marginal sampler fitted on the 2,000
demo training images. Faithful PDA costs ~30,000 forwards per image, so it runs on the first
`--pda-images` (default 10) images, evenly spaced among them (the test set starts with a run of
benign images); a second table compares every method on that subset.

    python benchmarks/faithfulness.py [--images 100] [--pda-images 10]
"""
import argparse
import os
import time

import xarray as xr
from results_table import write_result

import xcam_viz as xv
from xcam_viz.demo import demo_data, demo_model

BASELINES = ("blur", "mean")
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "scorecam", "eigencam")


def scores(model, data, maps, seconds: float) -> xr.Dataset:
    """Per-sample scores of one method's maps."""
    m = xv.metrics
    return xr.Dataset({
        **{f"{kind}_{b}": getattr(m, f"{kind}_auc")(model, data, maps, baseline=b)
           for b in BASELINES for kind in ("deletion", "insertion")},
        "pointing_game": m.pointing_game(maps, data),
        "energy_pointing_game": m.energy_pointing_game(maps, data),
    }).assign_attrs(seconds_per_image=seconds / len(data))


def timed(fn, **kw):
    start = time.perf_counter()
    return fn(**kw), time.perf_counter() - start


def table(results: dict[str, xr.Dataset], samples=None) -> str:
    head = ["| method | " + " | ".join(f"{k} AUC {b} {a}" for b in BASELINES
                                      for k, a in (("deletion", "↓"), ("insertion", "↑")))
            + " | pointing game ↑ | energy pointing game ↑ | s/image |", "|---" * 8 + "|"]
    rows = []
    for name, ds in results.items():
        ds = (ds if samples is None else ds.sel(sample=samples)).mean()
        rows.append(f"| {name} | " + " | ".join(f"{float(ds[f'{k}_{b}']):.3f}" for b in BASELINES
                                                for k in ("deletion", "insertion"))
                    + f" | {float(ds.pointing_game):.2f} | {float(ds.energy_pointing_game):.3f} | "
                    f"{ds.attrs['seconds_per_image']:.3f} |")
    return "\n".join(head + rows)


def run(images: int, pda_images: int) -> str:
    model, data, reference = demo_model(progress=False), demo_data("test").subset(range(images)), demo_data("train")
    results = {}
    for method in CAM_METHODS:
        maps, seconds = timed(xv.explain, model=model, data=data, method=method, layer="block3")
        results[method] = scores(model, data, maps, seconds)
        print(method, "done", flush=True)
    spaced = list(range(0, images, images // pda_images))[:pda_images]
    for method, subset in (("efficient", data), ("pda", data.subset(spaced))):
        maps, seconds = timed(xv.evidence, model=model, inputs=subset, method=method, data=reference,
                              progress=True)
        results[f"evidence {method}"] = scores(model, subset, maps, seconds)
    everything = {k: v for k, v in results.items() if k != "evidence pda"}
    return (f"Demo smallcnn, demo test images {data.ids[0]}…{data.ids[-1]}, target = predicted class; "
            f"deletion/insertion: 32 steps, baselines blur (Gaussian, 11 px, σ 5) and mean (per image and "
            f"channel); pointing games against the lesion masks (tolerance 0). CAMs: layer block3. "
            f"Evidence: window 10, padding 2, marginal sampler on 2,000 training images; PDA on "
            f"{pda_images} of the images only (~30k forwards each). "
            f"Machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end.\n\n"
            f"All {images} images (every method but PDA):\n\n{table(everything)}\n\n"
            f"The {pda_images} images {', '.join(data.ids[i] for i in spaced)} (every method, PDA included):"
            f"\n\n{table(results, [data.ids[i] for i in spaced])}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--pda-images", type=int, default=10)
    args = parser.parse_args()
    out = run(args.images, args.pda_images)
    write_result("faithfulness", out)
