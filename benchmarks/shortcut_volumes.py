"""The 3-D shortcut recipe: a plainly trained smallcnn3d learns the skin marker; one trained without it
(the oracle) learns the nodule.

Prints accuracy on test and flipped for both models with their training wall and CPU seconds (one
thread) and writes benchmarks/results/shortcut_volumes.md.
"""
import time

import torch
from results_table import write_result
from shortcut import table

from xcam_viz.data.examples import EXAMPLES
from xcam_viz.demo import VOLUMES, demo_volumes, train_volume_model


def run() -> str:
    torch.set_num_threads(1)
    start, cpu = time.perf_counter(), time.process_time()
    test, flipped = demo_volumes("test"), demo_volumes("flipped")
    generated, cpu = time.perf_counter() - start, time.process_time() - cpu
    sizes = EXAMPLES["volumes"].sizes
    return (f"smallcnn3d (width {VOLUMES.build['width']}), {VOLUMES.epochs} epochs (batch {VOLUMES.batch_size}) on "
            f"{sizes['train']} synthetic chest CT volumes (48³, one thread); test and flipped: {sizes['test']} "
            f"volumes each (the same patients, the markers moved), both generated in {generated:.1f} s "
            f"({cpu:.1f} CPU s).\n"
            "Goal: shortcut high on test and < 50% on flipped; oracle >= 90% on both; each run <= 180 CPU s.\n\n"
            + table(train_volume_model, test, flipped) + "\n")


if __name__ == "__main__":
    out = run()
    write_result("shortcut_volumes", out)
