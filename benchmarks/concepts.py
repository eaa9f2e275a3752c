"""Progressive concept labelling on the demo model, and how well the "marker" label finds the shortcut.

Ten test images that carry the marker get two simulated regions each, their ground-truth lesion mask
("lesion") and their marker region ("marker"), labelled one image after the other in block3 and
block4 (Units.label, IoU threshold 0.2). Then, on the flipped split (where the marker goes with the
other class, so a model that learned the shortcut errs), each image is scored by the activation of
its marker-labelled units: does that score predict the model's errors? Prints a markdown table and
writes benchmarks/results/concepts.md. Run: nice -n 19 .venv/bin/python benchmarks/concepts.py
"""
import os
import time

import numpy as np
from results_table import write_result
from sklearn.metrics import roc_auc_score

import xcam_viz as xv
from xcam_viz.concepts import LabelStore, dissect
from xcam_viz.demo import demo_data, demo_model

LAYERS = ("block3", "block4")
IMAGES = 10
CHECKPOINTS = (1, 3, 5, 10)          # progress rows: after this many images


def error_split(score: np.ndarray, errors: np.ndarray) -> tuple[float, float, float]:
    """AUC of the score for predicting errors; error rate above and at-or-below the median score."""
    high = score > np.median(score)
    return roc_auc_score(errors, score), errors[high].mean(), errors[~high].mean()


def run() -> str:
    model = demo_model(progress=False)
    test, flipped = demo_data("test"), demo_data("flipped")
    marked = test.regions["confounder"].flatten(1).any(1)
    chosen = [i for i in marked.nonzero().flatten().tolist() if test.masks[i].any()][:IMAGES]
    errors = (~xv.models.predict(model, flipped).correct.values).astype(int)
    flipped_marked = flipped.regions["confounder"].flatten(1).any(1).numpy()

    progress, labelled, scores, seconds = [], [], [], []
    for layer in LAYERS:
        units = dissect(model, test, layer, labels=LabelStore(), progress=False)
        best = {"lesion": [], "marker": []}
        for k, i in enumerate(chosen, 1):
            sid = test.ids[i]
            for name, roi in (("lesion", test.masks[i]), ("marker", test.regions["confounder"][i])):
                best[name].append(float(units.match(sid, roi)[0]))
                start = time.perf_counter()
                units.label(sid, roi, name)
                seconds.append(time.perf_counter() - start)
            if k in CHECKPOINTS:
                current = [n for n, _ in units.labels.current(layer).values()]
                progress.append(f"| {layer} | {k} | {current.count('lesion')} | {current.count('marker')} |")
        current = units.labels.current(layer)
        on_flipped = dissect(model, flipped, layer, progress=False)
        for name in ("lesion", "marker"):
            which = [u for u, (n, _) in current.items() if n == name]
            iou = np.mean([current[u][1] for u in which]) if which else float("nan")
            labelled.append(f"| {layer} | {name} | {len(which)} of {len(units)} | {iou:.2f} | "
                            f"{np.median(best[name]):.2f} |")
            if not which:
                scores.append(f"| {layer} | {name} units (none labelled) | – | – | – | – |")
                continue
            for stat in ("mean", "peak"):
                score = getattr(on_flipped, stat)[:, which].mean(1).numpy()
                auc, high, low = error_split(score, errors)
                what = f"{stat} activation of the {len(which)} {name} unit{'s' * (len(which) != 1)}"
                scores.append(f"| {layer} | {what} | {auc:.3f} | {roc_auc_score(flipped_marked, score):.3f} | "
                              f"{high:.1%} | {low:.1%} |")
    auc, high, low = error_split(flipped_marked.astype(float), errors)
    scores.append(f"| – | marker present (ground truth, reference) | {auc:.3f} | 1 | {flipped_marked.sum()} marked: "
                  f"{errors[flipped_marked].mean():.1%} | unmarked: {errors[~flipped_marked].mean():.1%} |")

    return "\n".join([
        f"Demo smallcnn; units dissected over the 400 test images (0.99 quantile). {IMAGES} marked test images, "
        f"two regions each (lesion mask, marker region), labelled in order; IoU threshold 0.2. "
        f"Labelling cost: {np.median(seconds) * 1000:.0f} ms per region (median of {len(seconds)}).",
        "", "**Units labelled as the regions accumulate**", "",
        "| layer | images labelled | lesion units | marker units |", "|---|---|---|---|", *progress,
        "", "**Final dictionary**", "",
        "| layer | concept | units | mean IoU at labelling | best unit's IoU per region (median) |",
        "|---|---|---|---|---|", *labelled,
        "", f"**Does the concept predict the shortcut?** Flipped split: {len(errors)} images, "
        f"{errors.mean():.1%} misclassified. Score per image; its AUC for predicting a misclassification and "
        "for detecting the marker, and the error rate of the images above / at-or-below the median score.", "",
        "| layer | score | AUC: error | AUC: marker present | error rate, high score | error rate, low score |",
        "|---|---|---|---|---|---|",
        *scores, ""])


if __name__ == "__main__":
    start = time.perf_counter()
    out = run()
    out += (f"\nTotal run time {time.perf_counter() - start:.0f} s (nice -n 19; load average "
            f"{os.getloadavg()[0]:.1f} at the end).\n")
    write_result("concepts", out)
