"""The shortcut recipe: a plainly trained smallcnn learns the marker; one trained without it does not.

Prints accuracy on test and flipped for both models and writes benchmarks/results/shortcut.md.
"""
import time

from results_table import write_result

import xcam_viz as xv
from xcam_viz.demo import DEMO_EPOCHS, demo_data, train_demo_model


def run() -> str:
    rows = []
    for name, confounder in (("with marker shortcut (demo)", None), ("without marker", 0.0)):
        kw = {} if confounder is None else {"confounder": confounder}
        start = time.perf_counter()
        model, _ = train_demo_model(progress=False, **kw)
        seconds = time.perf_counter() - start
        test = xv.models.accuracy(model, demo_data("test"))
        flipped = xv.models.accuracy(model, demo_data("flipped"))
        rows.append(f"| {name} | {test:.1%} | {flipped:.1%} | {seconds:.0f} s |")
    table = "\n".join(["| training data | test acc. | flipped acc. | train time |",
                       "|---|---|---|---|", *rows])
    return (f"smallcnn, {DEMO_EPOCHS} epochs on 2,000 synthetic lesions (64 px); test and flipped: "
            f"400 images each.\nGoal: shortcut >= 95% test and <= 70% flipped; no marker >= 90% on both.\n\n"
            + table + "\n")


if __name__ == "__main__":
    out = run()
    write_result("shortcut", out)
