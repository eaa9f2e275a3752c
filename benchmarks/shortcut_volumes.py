"""The 3-D shortcut recipe: a plainly trained smallcnn3d learns the skin marker; one trained without it
(the oracle) learns the nodule.

Prints accuracy on test and flipped for both models with their training CPU seconds (one thread) and
writes benchmarks/results/shortcut_volumes.md.
"""
import time

import torch
from results_table import write_result

import xcam_viz as xv
from xcam_viz.data.examples import EXAMPLES
from xcam_viz.demo import VOLUMES, demo_volumes, train_volume_model


def run() -> str:
    torch.set_num_threads(1)
    start = time.perf_counter()
    test, flipped = demo_volumes("test"), demo_volumes("flipped")
    generate = time.perf_counter() - start
    rows = []
    for name, confounder in (("with marker shortcut (demo)", None), ("without marker (oracle)", 0.0)):
        kw = {} if confounder is None else {"confounder": confounder}
        cpu = time.process_time()
        model, _ = train_volume_model(progress=False, **kw)
        cpu = time.process_time() - cpu
        rows.append(f"| {name} | {xv.models.accuracy(model, test):.1%} | {xv.models.accuracy(model, flipped):.1%} "
                    f"| {cpu:.0f} s |")
    table = "\n".join(["| training data | test acc. | flipped acc. | training CPU time (1 thread) |",
                       "|---|---|---|---|", *rows])
    sizes = EXAMPLES["volumes"].sizes
    return (f"smallcnn3d (width {VOLUMES.build['width']}), {VOLUMES.epochs} epochs on {sizes['train']} synthetic "
            f"chest CT volumes (48³); test and flipped: {sizes['test']} volumes each (the same patients, the "
            f"markers moved), generated in {generate:.1f} s.\n"
            "Goal: shortcut high on test and < 50% on flipped; oracle >= 90% on both; each run <= 180 CPU s.\n\n"
            + table + "\n")


if __name__ == "__main__":
    out = run()
    write_result("shortcut_volumes", out)
