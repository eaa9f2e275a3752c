"""Workshop priority: how much a fine-tuning run slows the maps of the other participants.

The demo Workbench computes maps (Grad-CAM of block4, every image new: a model pass each, on one
torch thread, as the dashboard's workers do) while a fine-tuning run of the demo trains: none; a run in
a thread of the same process (how the dashboard ran them before the queue: `xv.finetune(...,
background=True)`, torch's own thread count); a run as the server's queue starts it (`RunQueue.process_job`:
a process of its own, nice +10, `threads` torch threads). The scenarios run in blocks of N maps in the
order A B C C B A, so a machine whose load drifts weighs on each alike. Prints p50 / p95 map times and the
run's training steps meanwhile, and writes benchmarks/results/workshop_priority.md.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
from results_table import write_result

from xcam_viz.dashboard import MapRequest, Workbench
from xcam_viz.dashboard.splits import demo_splits
from xcam_viz.demo import demo_model
from xcam_viz.finetune import finetune
from xcam_viz.finetune.runqueue import NICE, RunQueue

N = 60                       # new test images per block; blocks A B C C B A (the demo has 400 test images)


def map_times(workbench: Workbench, samples: list[str]) -> list[float]:
    """Milliseconds per new map (nothing cached: each sample is new)."""
    times = []
    for sample in samples:
        start = time.perf_counter()
        workbench.saliency(MapRequest(version=workbench.base_version, split="test", sample=sample,
                                      method="gradcam", layer="block4"))
        times.append((time.perf_counter() - start) * 1000)
    return times


def run_arguments(workbench: Workbench) -> dict:
    """A long run of the demo from v0 on the saved feedback (stopped once the maps are measured)."""
    data = workbench.training_data("train")
    return dict(model=None, ds=data, feedback=workbench.feedback.feedback(data), base_version=workbench.base_version,
                versions_dir=workbench.registry.directory, eval_data=workbench.evaluation_data("train"), epochs=50)


def training(job):
    """Wait until the run trains (past scoring the base version), then hand it back."""
    while job.progress["phase"] != "training":
        if job.done:
            job.result()                         # its error
        time.sleep(0.2)
    return job


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    folder = tempfile.mkdtemp()
    workbench = Workbench(demo_model(progress=False), demo_splits(), f"{folder}/feedback.db")
    train = workbench.splits["train"]
    for i in range(10):
        workbench.feedback.add(train.ids[i], relevant=train.masks[i].numpy(), author="benchmark")
    ids = workbench.splits["test"].ids
    queue = RunQueue()
    scenarios = [("no fine-tuning run", None),
                 (f"a run in a thread of the server, {torch.get_num_threads()} torch threads",
                  lambda: finetune(**run_arguments(workbench), background=True)),
                 (f"a run as the queue starts it: its own process, nice +{NICE}, {queue.threads} torch thread"
                  f"{'s' * (queue.threads != 1)}", lambda: queue.process_job(run_arguments(workbench)).start())]
    map_times(workbench, ids[-20:])                              # warm up
    times = {name: [] for name, _ in scenarios}
    steps = {name: 0 for name, _ in scenarios}
    for block, (name, start) in enumerate(scenarios + scenarios[::-1]):
        job = training(start()) if start else None
        before = job.progress["step"] if job else 0
        times[name] += map_times(workbench, ids[block * N:(block + 1) * N])
        if job:
            steps[name] += job.progress["step"] - before
            job.cancel()
            job.wait()
    rows = [(name, np.percentile(times[name], 50), np.percentile(times[name], 95), steps[name] if start else None)
            for name, start in scenarios]
    base = rows[0][1]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"Map time (ms) of the demo while a fine-tuning run of the demo trains ({2 * N} new maps each; "
             f"{os.cpu_count()} CPUs, load average {load} at the end).", "",
             "| beside the maps | p50 ms | p95 ms | p50 vs no run | the run's steps meanwhile |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {p50:.1f} | {p95:.1f} | {p50 / base:.2f}× | {'—' if steps is None else steps} |"
              for name, p50, p95, steps in rows]
    write_result("workshop_priority", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
