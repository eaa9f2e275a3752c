"""Dashboard latency: server-side time from a selection change to new overlay data in the Bokeh models.

A Dashboard is rendered into a Bokeh document (as a served session would be) and its selection is
changed 100 times per kind of change. Work runs inline (no thread hand-off), and the time is taken
from setting the selection to the moment the last overlay whose map changes has new data in its
Bokeh models (model pass or cached capture, weighting, upsampling, HoloViews' in-place update).
"whole" is the p95 of the full change including the other views (thumbnail outline, caption, state
probe); "CPU" the p50 / p95 of the process CPU time of the whole change, which a busy machine inflates
far less than the wall time (the figures are wall times; the load average is printed with them).

Scenarios: the demo (smallcnn, 64 px), resnet18 and vit_b_16 (random weights) at 224 px, resnet18 on
4096×3328 grey PNG scans served as a user's folder (fitted to 224×182; an image change decodes the file once
for the full-resolution picture and the model input), and the 3-D demo model (smallcnn3d) on 128³ chest CT
volumes: a slice change (the axial slider), a crosshair move (a click on the axial plane: the coronal and
sagittal slices change), a window preset (the browser changes the picture itself; the row is the server
following the sliders) and an image change (a new 3-D CAM on both views).
Goals (p95): demo image / layer change <= 100 ms, method change on cached captures <= 20 ms;
resnet18 and vit_b_16 image / layer change <= 400 ms (vit_b_16: 40 changes each, every image new; the scans:
20 files); volumes: slice change <= 50 ms, crosshair move <= 100 ms, image change <= 600 ms (20 volumes).
Prints a table and writes benchmarks/results/dashboard_latency.md. `python dashboard_latency.py scans` measures
only the named scenarios (demo, resnet18, vit, scans, volumes) and replaces their rows in the file, noting the load.
"""
from __future__ import annotations

import asyncio
import os
import sys
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
from xcam_viz.dashboard.volume import PLANES
from xcam_viz.demo import demo_data, demo_model, demo_volume_model, demo_volumes

N = 100
VIT_N = 40
SCANS_N = 20
SCAN = (3328, 4096)
VOLUMES_N = 20
VOLUME_SIZE = 128
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
    dash, clock = rendered(workbench)
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


def rendered(workbench: Workbench) -> tuple[Dashboard, Clock]:
    dash = Dashboard(workbench=workbench, background=False)
    pn.panel(dash).get_root(Document())                # real Bokeh models, updated in place
    return dash, Clock(dash)


async def measure_volumes(workbench: Workbench, n: int = N, images: int = VOLUMES_N) -> dict[str, list[tuple]]:
    """(to overlay data, whole change, CPU time) in ms per slice change, crosshair move, window preset and
    image change of a volume dashboard."""
    dash, clock = rendered(workbench)
    sel, scene = dash.selection, dash.overlays.picture
    ids, (d, h, w), (_, sy, sx) = workbench.splits[sel.split].ids, scene.shape, scene.spacing
    rng = np.random.default_rng(0)
    presets = list(scene.presets)
    times = {"slice": [], "crosshair": [], "window": [], "image": []}
    for i in range(n):
        times["slice"].append(clock(lambda: setattr(scene, "z", (scene.z + 1 + int(rng.integers(d - 1))) % d)))
        times["crosshair"].append(clock(lambda: scene.click(PLANES[0], rng.uniform(0, w * sx), rng.uniform(0, h * sy))))
        times["window"].append(clock(lambda i=i: setattr(scene, "preset", presets[(i + 1) % len(presets)])))
        await asyncio.sleep(0)
    for i in range(images):                            # every volume new: a model pass per change
        times["image"].append(clock(lambda i=i: setattr(sel, "sample", ids[1 + i])))
        await asyncio.sleep(0)
    return times


def volume_rows() -> tuple[str, list[str]]:
    data = demo_volumes("test", VOLUMES_N + 1, size=VOLUME_SIZE)
    workbench = Workbench(demo_volume_model(progress=False), {"test": data}, Path(tempfile.mkdtemp()) / "volumes.db")
    title = f"3-D demo smallcnn3d, {VOLUME_SIZE}³ volumes"
    times = asyncio.run(measure_volumes(workbench))
    return title, [row(title, "slice change", times["slice"], 50),
                   row(title, "crosshair move", times["crosshair"], 100),
                   row(title, "window preset (server side)", times["window"], None),
                   row(title, "image (new 3-D CAM)", times["image"], 600)]


def row(scenario: str, change: str, ms: list[tuple], goal: float | None) -> str:
    overlay, whole, cpu = np.array(ms).T
    p50, p95 = np.percentile(overlay, [50, 95])
    verdict = "" if goal is None else ("yes" if p95 <= goal else "**no**")
    return (f"| {scenario} | {change} | {len(ms)} | {p50:.1f} | {p95:.1f} | {np.percentile(whole, 95):.1f} | "
            f"{np.percentile(cpu, 50):.1f} / {np.percentile(cpu, 95):.1f} | "
            f"{'—' if goal is None else f'<= {goal:.0f}'} | {verdict} |")


def scans(folder: Path, n: int = SCANS_N) -> Path:
    """n grey 4096×3328 PNG scans (a smooth body, a bright disc, mild noise) in two class folders."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    h, w = SCAN
    yy, xx = np.mgrid[0:h, 0:w]
    body = 60 + 110 * np.exp(-(((xx - w * 0.3) / 1500) ** 2 + ((yy - h / 2) / 1300) ** 2))
    for i in range(n):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        scan = Image.fromarray((body + rng.normal(0, 2, body.shape)).clip(0, 255).astype(np.uint8), "L")
        x, y = (int(v) for v in rng.integers(800, 2400, 2))
        ImageDraw.Draw(scan).ellipse([x, y, x + 300, y + 300], fill=230)
        scan.save(folder / f"class{i % 2}" / f"scan{i:02d}.png")
    return folder


def scenario(name: str, folder: Path):
    """(title, workbench, layers, goals, changes) of a scenario, built when measured."""
    if name == "demo":
        return ("demo smallcnn 64 px", Workbench(demo_model(progress=False), {"test": demo_data("test")},
                                                 folder / "demo.db"), ["block3", "block2", "block4", "block1"],
                (100, 100, 20), N)
    torch.manual_seed(0)
    if name == "resnet18":
        return ("resnet18 224 px", Workbench(xv.models.build("resnet18", num_classes=2),
                                             {"test": xv.data.synthetic_lesions(n=N + 20, size=224, split="test")},
                                             folder / "resnet.db"), ["layer3", "layer2", "layer4", "layer1"],
                (400, 400, None), N)
    if name == "vit":
        return ("vit_b_16 224 px", Workbench(xv.models.build("vit_b_16", num_classes=2),
                                             {"test": xv.data.synthetic_lesions(n=2 * VIT_N + 10, size=224,
                                                                                split="test")}, folder / "vit.db"),
                [f"encoder.layers.encoder_layer_{i}.ln_1" for i in (8, 9, 10, 11)], (400, 400, None), VIT_N)
    model = xv.models.build("resnet18", num_classes=2)
    splits = xv.data.load_splits(str(scans(folder / "scans")), model=model)
    return ("resnet18, 4096×3328 grey PNG scans at 224×182", Workbench(model, splits, folder / "scans.db"),
            ["layer3", "layer2", "layer4", "layer1"], (400, 400, None), SCANS_N)


SCENARIOS = ("demo", "resnet18", "vit", "scans", "volumes")
HEADER = ("| scenario | change | n | p50 ms | p95 ms | whole p95 ms | CPU p50 / p95 ms | goal p95 ms | met |\n"
          "|---|---|---|---|---|---|---|---|---|\n")


def run(names=SCENARIOS) -> dict[str, list[str]]:
    """Table rows per scenario measured."""
    folder = Path(tempfile.mkdtemp())
    rows = {}
    for name in names:
        if name == "volumes":
            title, rows[title] = volume_rows()
            continue
        title, wb, layers, goals, n = scenario(name, folder)
        times = asyncio.run(measure(wb, layers, n))
        rows[title] = [row(title, "image", times["image"], goals[0]), row(title, "layer", times["layer"], goals[1]),
                       row(title, "method (cached capture)", times["method"], goals[2])]
    return rows


def load_average() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())          # 1, 5 and 15 minutes


def report(rows: dict[str, list[str]], notes: list[str]) -> str:
    return (f"Server-side latency of a selection change, until the new overlay data is in the Bokeh models "
            f"(ms; {N} changes each unless n says; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
            f"load average {notes[0]}).\n\n" + HEADER + "\n".join(r for group in rows.values() for r in group)
            + "\n" + "".join(f"\n{note}\n" for note in notes[1:]))


def merged(measured: dict[str, list[str]]) -> str:
    """The results file with the measured scenarios' rows replaced (or added) and their load noted."""
    from results_table import RESULTS

    lines = (RESULTS / "dashboard_latency.md").read_text().splitlines()
    title = lines[0]
    kept: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("| ") and not line.startswith(("| scenario", "|---")):
            kept.setdefault(line.split(" | ")[0][2:], []).append(line)
    notes = [line for line in lines[1:] if line and not line.startswith("|")]
    notes += [f"Rows of {', '.join(measured)}: measured {time.strftime('%Y-%m-%d')}, load average {load_average()}."]
    return title + "\n\n" + HEADER + "\n".join(r for group in {**kept, **measured}.values() for r in group) + \
        "\n" + "".join(f"\n{note}\n" for note in notes)


if __name__ == "__main__":
    chosen = sys.argv[1:]
    if unknown := set(chosen) - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    write_result("dashboard_latency", merged(run(chosen)) if chosen else report(run(), [load_average()]))
