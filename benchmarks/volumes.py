"""3-D CAM speed and memory, in one run: our Grad-CAM on volumes against a plain forward pass, the floor (a forward
with autograd plus `autograd.grad` to the captured layer), pytorch-grad-cam's 3-D GradCAM, MONAI's GradCAM and
torchcam's GradCAM; then the peak memory of a 100-volume batch run at 128³ against the same run on its first 10.

Contenders run once per round, rounds interleaved, median after a warm-up; CPU time of this process with one
thread (see cam_speed.py for why). The memory runs are separate processes (peak RSS from getrusage).
Prints a table and writes benchmarks/results/volumes.md.
    python benchmarks/volumes.py [--rounds 5] [--threads 1] [--skip-memory]
The repair table on the 3-D demo is benchmarks/volume_repair.py (results/volume_repair.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_grad_cam as pgc
import torch
import torchvision
from cam_speed import timed
from monai.visualize import GradCAM as MonaiGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from results_table import write_result
from torchcam import methods as torchcam

import xcam_viz as xv


def contenders(model: torch.nn.Module, x: torch.Tensor, layer: str) -> dict:
    """Every way to get the predicted class's Grad-CAM of `layer`, upsampled to the input as each library does."""
    module = dict(model.named_modules())[layer]

    def plain():
        with torch.inference_mode():
            model(x)

    def floor():
        kept = []
        handle = module.register_forward_hook(lambda _m, _i, out: kept.append(out))
        try:
            scores = model(x)
        finally:
            handle.remove()
        torch.autograd.grad(scores.max(1).values.sum(), kept[0])

    def ours():
        xv.explain(model, x, method="gradcam", layer=layer, batch_size=len(x))

    def pytorch_grad_cam():
        with pgc.GradCAM(model, [module]) as cam:
            with torch.no_grad():
                pred = model(x).argmax(1).tolist()
            cam(x, [ClassifierOutputTarget(c) for c in pred])

    monai_cam = MonaiGradCAM(copy.deepcopy(model), layer)    # MONAI's hooks stay on its model: give it a copy

    def monai():
        monai_cam(x)

    def torchcam_():
        with torchcam.GradCAM(model, layer, input_shape=tuple(x.shape[1:])) as cam:
            scores = model(x)
            maps = cam(class_idx=scores.argmax(1).tolist(), scores=scores)[0]
        torch.nn.functional.interpolate(maps[:, None], size=x.shape[2:], mode="trilinear")

    return {"forward": plain, "floor": floor, "ours": ours, "pytorch-grad-cam": pytorch_grad_cam,
            "MONAI": monai, "torchcam": torchcam_}


def speed_rows(rounds: int) -> list[str]:
    torch.manual_seed(0)
    cases = [("r3d_18 layer4, 2 × 3×16×112×112", torchvision.models.video.r3d_18(num_classes=2).eval(),
              torch.rand(2, 3, 16, 112, 112), "layer4")]
    try:
        from xcam_viz.demo import demo_volume_model, demo_volumes
        model, data = demo_volume_model(progress=False), demo_volumes("test", n=2)
        cases.append((f"3-D demo smallcnn3d, 2 × {'×'.join(map(str, data.image_shape))}", model.eval(),
                      data.read([0, 1])[0], xv.models.default_layer(model, data.image_shape)))
    except ImportError:        # the 3-D demo is not there yet: a random smallcnn3d at the same size
        model = xv.models.build("smallcnn3d", num_classes=2, in_channels=1).eval()
        cases.append(("random smallcnn3d block4, 2 × 1×48×48×48", model, torch.rand(2, 1, 48, 48, 48), "block4"))
    rows = []
    for label, model, x, layer in cases:
        t = timed(contenders(model, x, layer), rounds, time.process_time)
        rows.append(f"| {label} | {t['forward']:.3f} | {t['floor']:.3f} | {t['ours']:.3f} | "
                    f"{t['ours'] / t['floor']:.2f}× | {t['pytorch-grad-cam'] / t['ours']:.2f}× | "
                    f"{t['MONAI'] / t['ours']:.2f}× | {t['torchcam'] / t['ours']:.2f}× |")
        print(rows[-1], flush=True)
    return rows


MEMORY_CHILD = r"""
import json, re, sys, torch
import xcam_viz as xv
from xcam_viz.explain.batch import explain_dataset
torch.set_num_threads(1)
store, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = xv.data.load_zarr(store, spatial_dims=3)
data = data.subset(range(n))
torch.manual_seed(0)
model = xv.models.build("smallcnn3d", num_classes=2, in_channels=1)
explain_dataset(model, data, out, methods=["gradcam"], progress=False)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over fork + exec)
peak_kb = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"peak_mb": peak_kb / 1024}))
"""


def memory_rows(size: int = 128, count: int = 100) -> list[str]:
    """Peak RSS of a batch run (lazy zarr volumes -> zarr CAM store) of `count` volumes and of its first 10."""
    import zarr
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "volumes.zarr"
        group = zarr.open_group(store, mode="w")
        images = group.create_array("images", shape=(count, size, size, size), chunks=(1, size, size, size),
                                    dtype="uint8")
        rng = np.random.default_rng(0)
        for i in range(count):
            images[i] = rng.integers(0, 256, (size, size, size), dtype=np.uint8)
        group.create_array("labels", data=np.arange(count) % 2)
        for n in (10, count):
            start = time.perf_counter()
            command = [sys.executable, "-c", MEMORY_CHILD, str(store), str(n), str(Path(tmp) / f"c{n}.zarr")]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
            rows.append((n, peak, time.perf_counter() - start))
            print(rows[-1], flush=True)
    first = rows[0][1]
    return [f"| {n} volumes of {size}³ | {peak:.0f} MB | {peak / first:.2f}× | {wall:.0f} s |"
            for n, peak, wall in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    speed = speed_rows(args.rounds)
    text = ["# 3-D CAMs: speed and memory", "",
            f"CPU seconds per call (median of {args.rounds} interleaved rounds after a warm-up, {args.threads} "
            "thread). `floor` = a forward with autograd plus autograd.grad to the layer; the last three columns are "
            "how many times longer each peer takes than ours (each with its own upsampling: pytorch-grad-cam "
            "cubic scipy zoom, MONAI trilinear, torchcam feature resolution + trilinear).", "",
            "| model, input | forward s | floor s | ours s | ours / floor | pytorch-grad-cam / ours | MONAI / ours | "
            "torchcam / ours |", "|---|---|---|---|---|---|---|---|", *speed, ""]
    if not args.skip_memory:
        memory = memory_rows()
        text += ["Peak RSS of `explain_dataset` (Grad-CAM of a random smallcnn3d, default batch size, lazy uint8 zarr "
                 "volumes in, zarr CAM store out), one process per run:", "",
                 "| run | peak RSS | vs first 10 | wall |", "|---|---|---|---|", *memory, ""]
    write_result("volumes", "\n".join(text))


if __name__ == "__main__":
    main()
