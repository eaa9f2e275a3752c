"""The shortcut recipe: a plainly trained smallcnn learns the marker; one trained without it does not.

Prints accuracy on test and flipped for both models and writes benchmarks/results/shortcut.md.
"""
import time

from results_table import write_result

import xcam_viz as xv
from xcam_viz.demo import DEMO_EPOCHS, demo_data, train_demo_model


def table(train, test, flipped) -> str:
    """Test and flipped accuracy, wall and CPU seconds of `train(progress, **data_kw)` with the demo's
    shortcut and without it (confounder=0)."""
    rows = []
    for name, kw in (("with marker shortcut (demo)", {}), ("without marker (oracle)", {"confounder": 0.0})):
        start, cpu = time.perf_counter(), time.process_time()
        model, _ = train(progress=False, **kw)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append(f"| {name} | {xv.models.accuracy(model, test):.1%} | {xv.models.accuracy(model, flipped):.1%} "
                    f"| {seconds:.0f} s | {cpu:.0f} s |")
    return "\n".join(["| training data | test acc. | flipped acc. | train time | train CPU time |",
                      "|---|---|---|---|---|", *rows])


def run() -> str:
    return (f"smallcnn, {DEMO_EPOCHS} epochs on 2,000 synthetic lesions (64 px); test and flipped: "
            f"400 images each.\nGoal: shortcut >= 95% test and <= 70% flipped; no marker >= 90% on both.\n\n"
            + table(train_demo_model, demo_data("test"), demo_data("flipped")) + "\n")


if __name__ == "__main__":
    out = run()
    write_result("shortcut", out)
