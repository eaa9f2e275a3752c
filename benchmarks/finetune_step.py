"""Cost of one fine-tuning step with the explanation loss against a plain cross-entropy step.

Both run side by side (interleaved, same batch of 64 demo images, same model, Adam) and the
median of the repeats is compared. Goal: at most 3x a plain step.
Prints the table and writes benchmarks/results/finetune_step.md.
"""
import copy
import importlib
import statistics
import time
from pathlib import Path

import torch

from xcam_viz.demo import demo_data, demo_model
from xcam_viz.feedback import simulate

core = importlib.import_module("xcam_viz.finetune.core")
BATCH, REPEATS = 64, 15


def run() -> str:
    data = demo_data("train", n=512)
    fb = simulate(data, fraction=0.25, kind="both")
    positions, fb = fb.align(data)
    model = demo_model(progress=False)
    n_fb = BATCH // 4
    rows = torch.arange(n_fb)
    others = torch.tensor([i for i in range(len(data)) if i not in set(positions.tolist())][:BATCH - n_fb])
    batch = torch.cat([positions[rows], others])
    variants = {"plain cross-entropy": None}
    for layer in ("block4", "block3"):
        variants[f"+ relevant, Grad-CAM {layer}"] = dict(lam=1.0, terms=("relevant",), layer=layer)
        variants[f"+ irrelevant, Grad-CAM {layer}"] = dict(lam=1.0, terms=("irrelevant",), layer=layer)
    variants["+ rrr, input gradients"] = dict(lam=0.01, terms=("rrr",), layer="block4")
    states = {name: copy.deepcopy(model) for name in variants}
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in states.items()}
    times = {name: [] for name in variants}
    for rep in range(REPEATS + 2):
        for name, v in variants.items():
            m = states[name]
            core._train_mode(m)
            start = time.perf_counter()
            if v is None:
                loss = torch.nn.functional.cross_entropy(m(data.images[batch]), data.labels[batch])
            else:
                loss = core._step(m, data, data.labels, positions[rows], fb.subset(rows), others, v["terms"],
                                  {"lam": v["lam"], "layer": v["layer"], "method": "gradcam"})["loss"]
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if rep >= 2:                     # the first two are warm-up
                times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain cross-entropy"])
    lines = ["| step | median time | × plain |", "|---|---|---|"]
    for name, t in times.items():
        lines.append(f"| {name} | {statistics.median(t) * 1000:.0f} ms | {statistics.median(t) / plain:.2f} |")
    return (f"One optimisation step on a batch of {BATCH} demo images (64 px, smallcnn, CPU, "
            f"{torch.get_num_threads()} threads), median of {REPEATS} interleaved repeats. The explanation "
            "loss runs on the 16 rows with feedback that xv.finetune puts in each batch (feedback_share=0.25); "
            "the other rows get cross-entropy only.\nGoal: at most 3x a plain cross-entropy step.\n\n"
            + "\n".join(lines) + "\n")


if __name__ == "__main__":
    out = run()
    print(out)
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    Path(__file__).with_name("results").joinpath("finetune_step.md").write_text(out)
