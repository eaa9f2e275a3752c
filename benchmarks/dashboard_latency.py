"""Dashboard latency: server-side time from a selection change to new overlay data in the Bokeh models.

A Dashboard is rendered into a Bokeh document (as a served session would be) and its selection is
changed 100 times per kind of change. Work runs inline (no thread hand-off), and the time is taken
from setting the selection to the moment the last overlay whose map changes has new data in its
Bokeh models (model pass or cached capture, weighting, upsampling, HoloViews' in-place update).
"whole" is the p95 of the full change including the other views (thumbnail outline, caption, state
probe); "CPU" the p50 / p95 of the process CPU time of the whole change, which a busy machine inflates
far less than the wall time (the figures are wall times; the load average is printed with them).

Scenarios: the demo (smallcnn, 64 px), resnet18 and vit_b_16 (random weights) at 224 px.
Goals (p95): demo image / layer change <= 100 ms, method change on cached captures <= 20 ms;
resnet18 and vit_b_16 image / layer change <= 400 ms (vit_b_16: 40 changes each, every image new).
Prints a table and writes benchmarks/results/dashboard_latency.md.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import panel as pn
import torch
from bokeh.document import Document
from results_table import write_result

import xcam_viz as xv
from xcam_viz.dashboard import Dashboard, Workbench
from xcam_viz.demo import demo_data, demo_model

N = 100
VIT_N = 40
GRADIENT_METHODS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam"]


class Clock:
    """Times selection changes: until the last overlay update, until every watcher has run, CPU time."""

    def __init__(self, dash: Dashboard):
        self.stamps: list[float] = []
        for view in dash.overlays.views.values():       # a view's digest is set once its data is sent
            view.param.watch(lambda _: self.stamps.append(time.perf_counter()), "digest")

    def __call__(self, change) -> tuple[float, float, float]:
        self.stamps.clear()
        start, cpu = time.perf_counter(), time.process_time()
        change()
        end, cpu = time.perf_counter(), time.process_time() - cpu
        return (max(self.stamps, default=end) - start) * 1000, (end - start) * 1000, cpu * 1000


async def measure(workbench: Workbench, layers: list[str], n: int = N) -> dict[str, list[tuple]]:
    """(to overlay data, whole change, CPU time) in ms per image change, layer change (new capture) and
    method change (cached capture)."""
    dash = Dashboard(workbench=workbench, background=False)
    pn.panel(dash).get_root(Document())                # real Bokeh models, updated in place
    clock = Clock(dash)
    sel, ids = dash.selection, workbench.splits[dash.selection.split].ids
    order = np.random.default_rng(0).permutation(len(ids))
    times = {"image": [], "layer": [], "method": []}
    for i in range(n):                                 # every image new: a model pass per change
        times["image"].append(clock(lambda i=i: setattr(sel, "sample", ids[order[i % len(ids)]])))
        await asyncio.sleep(0)
    for i in range(n):                                 # a layer not yet captured for this image
        sel.sample = ids[order[(n + i) % len(ids)]]
        times["layer"].append(clock(lambda i=i: setattr(sel, "layer", layers[i % len(layers)])))
        await asyncio.sleep(0)
    for i in range(n):                                 # capture cached, map not: weighting only
        workbench.maps.clear()
        times["method"].append(clock(lambda i=i: setattr(sel, "method", GRADIENT_METHODS[i % len(GRADIENT_METHODS)])))
        await asyncio.sleep(0)
    return times


def row(scenario: str, change: str, ms: list[tuple], goal: float | None) -> str:
    overlay, whole, cpu = np.array(ms).T
    p50, p95 = np.percentile(overlay, [50, 95])
    verdict = "" if goal is None else ("yes" if p95 <= goal else "**no**")
    return (f"| {scenario} | {change} | {len(ms)} | {p50:.1f} | {p95:.1f} | {np.percentile(whole, 95):.1f} | "
            f"{np.percentile(cpu, 50):.1f} / {np.percentile(cpu, 95):.1f} | "
            f"{'—' if goal is None else f'<= {goal:.0f}'} | {verdict} |")


def run() -> str:
    folder = Path(tempfile.mkdtemp())
    demo = Workbench(demo_model(progress=False), {"test": demo_data("test")}, folder / "demo.db")
    torch.manual_seed(0)
    resnet = Workbench(xv.models.build("resnet18", num_classes=2),
                       {"test": xv.data.synthetic_lesions(n=N + 20, size=224, split="test")}, folder / "resnet.db")
    vit = Workbench(xv.models.build("vit_b_16", num_classes=2),
                    {"test": xv.data.synthetic_lesions(n=2 * VIT_N + 10, size=224, split="test")}, folder / "vit.db")
    blocks = [f"encoder.layers.encoder_layer_{i}.ln_1" for i in (8, 9, 10, 11)]
    rows = []
    for name, wb, layers, goals, n in (
            ("demo smallcnn 64 px", demo, ["block3", "block2", "block4", "block1"], (100, 100, 20), N),
            ("resnet18 224 px", resnet, ["layer3", "layer2", "layer4", "layer1"], (400, 400, None), N),
            ("vit_b_16 224 px", vit, blocks, (400, 400, None), VIT_N)):
        times = asyncio.run(measure(wb, layers, n))
        rows += [row(name, "image", times["image"], goals[0]),
                 row(name, "layer", times["layer"], goals[1]),
                 row(name, "method (cached capture)", times["method"], goals[2])]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())          # 1, 5 and 15 minutes
    return (f"Server-side latency of a selection change, until the new overlay data is in the Bokeh models "
            f"(ms; {N} changes each; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
            f"load average {load}).\n\n"
            "| scenario | change | n | p50 ms | p95 ms | whole p95 ms | CPU p50 / p95 ms | goal p95 ms | met |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


if __name__ == "__main__":
    out = run()
    write_result("dashboard_latency", out)
