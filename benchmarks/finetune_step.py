"""Cost of one fine-tuning step of each strategy (and of `auto`) against a plain cross-entropy step.

All run side by side (interleaved, the same batch of 64 demo images, half of them annotated, as
`xv.finetune`'s default feedback_share puts in each batch; same model, Adam), and the median of
the repeats is compared. A step includes building the batch's counterexamples. Goal: at most 3x a
plain step. Prints the table and writes benchmarks/results/finetune_step.md.
"""
import copy
import statistics
import time

import torch
from results_table import write_result

from xcam_viz.demo import demo_data, demo_model
from xcam_viz.feedback import simulate
from xcam_viz.finetune import AUTO, DEFAULTS, STRATEGIES, loop
from xcam_viz.finetune.counterexamples import Donors

BATCH, REPEATS = 64, 15


def run() -> str:
    data = demo_data("train", n=512)
    fb = simulate(data, fraction=0.25, kind="both")
    positions, fb = fb.align(data)
    model = demo_model(progress=False)
    n_fb = round(BATCH * DEFAULTS["feedback_share"])
    rows = torch.arange(n_fb)
    others = torch.tensor([i for i in range(len(data)) if i not in set(positions.tolist())][:BATCH - n_fb])
    donors = Donors(data.images[positions], fb.relevant & fb.has_relevant[:, None, None],
                    fb.irrelevant & fb.has_irrelevant[:, None, None], fb.has_relevant, fb.has_irrelevant)
    variants = {"plain cross-entropy": (), **{name: (s,) for name, s in STRATEGIES.items()},
                **{f"auto, {kind} feedback": tuple(STRATEGIES[n] for n in names) for kind, names in AUTO.items()}}
    settings = {"lam": DEFAULTS["lam"], "layer": "block4", "method": "gradcam"}
    states = {name: copy.deepcopy(model) for name in variants}
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in states.items()}
    times = {name: [] for name in variants}
    gen = torch.Generator().manual_seed(0)
    for rep in range(REPEATS + 2):
        for name, strategies in variants.items():
            m = states[name]
            loop.train_mode(m)
            start = time.perf_counter()
            batch = loop.make_batch(data, data.labels, positions, fb, rows, others)
            for s in strategies:
                if s.kind == "counterexample":
                    s.apply(batch, donors, gen)
            loss = loop.step_losses(m, batch, strategies, {}, settings, torch.device("cpu"))["loss"]
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if rep >= 2:                     # the first two are warm-up
                times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain cross-entropy"])
    lines = ["| step | median time | × plain |", "|---|---|---|"]
    for name, t in times.items():
        lines.append(f"| {name} | {statistics.median(t) * 1000:.0f} ms | {statistics.median(t) / plain:.2f} |")
    return (f"One optimisation step on a batch of {BATCH} demo images (64 px, smallcnn block4, CPU, "
            f"{torch.get_num_threads()} threads), median of {REPEATS} interleaved repeats; {n_fb} rows of "
            "the batch are annotated (feedback_share default). Loss strategies run on the whole batch.\n"
            "Goal: at most 3x a plain cross-entropy step.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    write_result("finetune_step", run())
