"""CAM engine speed, in one process: our Grad-CAM against a plain forward pass, against the floor (a forward
with autograd plus `autograd.grad` to the captured layer) and against pytorch-grad-cam, torchcam and captum
(CNNs; transformers get the peers' documented reshape_transform); five methods × three layers against one
method; Score-CAM against its peers.

Every contender runs once per round, rounds interleaved (background load hits all alike); the median of
the rounds after a warm-up is reported. Time is this process's CPU time with one thread by default: on
a shared machine wall-clock times mostly measure the other load (and with several threads, OpenMP
waiting); `--wall` times wall-clock instead. Prints a table and writes benchmarks/results/cam_speed.md.
    python benchmarks/cam_speed.py [--rounds 7] [--threads 1] [--wall]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pytorch_grad_cam as pgc
import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from results_table import write_result
from torchcam import methods as torchcam

import xcam_viz as xv
from xcam_viz.demo import demo_data, demo_model
from xcam_viz.explain import GRADIENT_METHODS, capture, finish, weigh

FIVE = [m for m in GRADIENT_METHODS if not m.startswith("seg-")]


def timed(contenders: dict, rounds: int, clock) -> dict[str, float]:
    """Median seconds per contender over interleaved rounds (the first round is a warm-up)."""
    times = {name: [] for name in contenders}
    for _ in range(rounds + 1):
        for name, fn in contenders.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def gradcam_contenders(model, x, layer, reshape=None):
    """Contenders for one row; `reshape` is the peers' reshape_transform for token / channels-last layers."""
    module = dict(model.named_modules())[layer]
    size = tuple(x.shape[-2:])

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
        with pgc.GradCAM(model, [module], reshape_transform=reshape) as cam:
            cam(x, None)

    def torchcam_():
        with torchcam.GradCAM(model, layer, input_shape=tuple(x.shape[1:]), reshape_transform=reshape) as cam:
            scores = model(x)
            cam(class_idx=scores.argmax(1).tolist(), scores=scores)

    def captum():
        with torch.no_grad():
            pred = model(x).argmax(1)
        attr = LayerGradCam(model, module).attribute(x, target=pred, relu_attributions=True)
        LayerAttribution.interpolate(attr, size, "bilinear")

    contenders = {"plain forward": plain, "floor": floor, "ours": ours, "pytorch-grad-cam": pytorch_grad_cam,
                  "torchcam": torchcam_}
    return contenders if reshape else {**contenders, "captum": captum}


def vit_tokens(t):
    """pytorch-grad-cam's documented ViT-B/16 reshape_transform (drop the class token, 14×14 grid)."""
    return t[:, 1:].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)


def channels_last(t):
    return t.permute(0, 3, 1, 2)


def transformers():
    torch.manual_seed(0)
    vit = torchvision.models.get_model("vit_b_16", weights=None).eval()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)
    swin = torchvision.models.get_model("swin_t", weights=None).eval()
    x = torch.rand(2, 3, 224, 224)
    return [("vit_b_16, 2×224², encoder_layer_11.ln_1", vit, x, "encoder.layers.encoder_layer_11.ln_1", vit_tokens),
            ("swin_t, 2×224², features.7 (channels-last)", swin, x, "features.7", channels_last)]


def many_contenders(model, x, layers):
    size = tuple(x.shape[-2:])

    def one_method():
        cap = capture(model, x, layers)
        for layer in layers:
            finish(weigh(cap, "gradcam", layer), size)

    def five_methods():
        cap = capture(model, x, layers)
        for method in FIVE:
            for layer in layers:
                finish(weigh(cap, method, layer), size)

    return {"gradcam, 3 layers": one_method, "5 methods, 3 layers": five_methods}


def scorecam_contenders(model, x, layer):
    module = dict(model.named_modules())[layer]

    def ours():
        xv.explain(model, x, method="scorecam", layer=layer, batch_size=len(x))

    def pytorch_grad_cam(batch_size=None):
        def run():
            with pgc.ScoreCAM(model, [module]) as cam:
                if batch_size:
                    cam.batch_size = batch_size
                cam(x, None)
        return run

    def torchcam_():
        with torchcam.ScoreCAM(model, layer, input_shape=tuple(x.shape[1:])) as cam:
            with torch.no_grad():
                pred = model(x).argmax(1).tolist()
            cam(class_idx=pred)

    return {"ours": ours, "pytorch-grad-cam (default batch 16)": pytorch_grad_cam(),
            "pytorch-grad-cam (batch 64)": pytorch_grad_cam(64), "torchcam (default batch 32)": torchcam_}


def scorecam_gap(model, x, layer) -> float:
    """Largest difference between our and pytorch-grad-cam's Score-CAM maps at layer resolution, both min-max scaled."""
    cap = capture(model, x, layer, gradients=False)
    original = pgc.base_cam.scale_cam_image
    pgc.base_cam.scale_cam_image = lambda cam, target_size=None: np.float32(cam)
    try:
        with pgc.ScoreCAM(model, [dict(model.named_modules())[layer]]) as cam:
            cam.batch_size = 64
            cam.aggregate_multi_layers = lambda per_layer: per_layer[0][:, 0]
            theirs = cam(x, [ClassifierOutputTarget(int(c)) for c in cap.target])
    finally:
        pgc.base_cam.scale_cam_image = original
    return float((finish(weigh(cap, "scorecam"), None) - finish(torch.from_numpy(theirs), None)).abs().max())


def run(rounds: int, threads: int, wall: bool) -> str:
    clock = time.perf_counter if wall else time.process_time
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    resnet = torchvision.models.get_model("resnet18", weights=None).eval()
    small = demo_model(progress=False)
    x224 = torch.rand(8, 3, 224, 224)
    x64 = demo_data("test", n=8).images

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [f"torch {torch.__version__}, {threads} thread(s) on {os.cpu_count()} cores (load average {load} at "
             f"the start), {'wall-clock' if wall else 'CPU'} time, median of {rounds} interleaved rounds after "
             "a warm-up.",
             "", "## Grad-CAM (explain: upsampled to the input and normalised, like the peers' outputs)", "",
             "floor: a forward with autograd plus `autograd.grad` to the captured layer (what any hook-based "
             "Grad-CAM must at least do).", "",
             "| model, input, layer | plain forward | floor | ours | ours / floor | pytorch-grad-cam / ours "
             "| torchcam / ours | captum / ours |", "|---|---|---|---|---|---|---|---|"]
    ratios = {}
    for label, model, x, layer, reshape in [("resnet18, 8×224², layer4", resnet, x224, "layer4", None),
                                            ("resnet18, 8×224², layer2", resnet, x224, "layer2", None),
                                            ("smallcnn demo, 8×64², block3", small, x64, "block3", None),
                                            ("smallcnn demo, 8×64², block4", small, x64, "block4", None),
                                            *transformers()]:
        t = timed(gradcam_contenders(model, x, layer, reshape), rounds, clock)
        ours = t["ours"]
        ratios[label] = (ours / t["floor"], t["pytorch-grad-cam"] / ours, t["torchcam"] / ours)
        captum = f"{t['captum'] / ours:.2f}×" if "captum" in t else "—"
        lines.append(f"| {label} | {t['plain forward'] * 1e3:.0f} ms | {t['floor'] * 1e3:.0f} ms | "
                     f"{ours * 1e3:.0f} ms | {ours / t['floor']:.2f}× | {t['pytorch-grad-cam'] / ours:.2f}× | "
                     f"{t['torchcam'] / ours:.2f}× | {captum} |")

    layers = ["layer2", "layer3", "layer4"]
    t = timed(many_contenders(resnet, x224[:1], layers), rounds, clock)
    many = t["5 methods, 3 layers"] / t["gradcam, 3 layers"]
    lines += ["", "## Capture once, weigh many (resnet18, one 224² image, layers layer2-4)", "",
              "| gradcam, 3 layers | gradcam, gradcam++, hirescam, xgradcam, layercam, 3 layers | ratio |",
              "|---|---|---|",
              f"| {t['gradcam, 3 layers'] * 1e3:.0f} ms | {t['5 methods, 3 layers'] * 1e3:.0f} ms | {many:.2f}× |"]

    lines += ["", "## Score-CAM", "",
              "| model, input, layer | ours | pytorch-grad-cam (batch 16, its default) / ours "
              "| pytorch-grad-cam (batch 64) / ours | torchcam / ours | max map difference vs pytorch-grad-cam |",
              "|---|---|---|---|---|---|"]
    score = {}
    for label, model, x, layer in [("smallcnn demo, 8×64², block4", small, x64, "block4"),
                                   ("resnet18, 1×112², layer4", resnet, torch.rand(1, 3, 112, 112), "layer4")]:
        t = timed(scorecam_contenders(model, x, layer), max(1, rounds // 2), clock)
        ours = t.pop("ours")
        score[label] = min(t.values()) / ours
        gap = scorecam_gap(model, x, layer)
        cells = " | ".join(f"{v / ours:.2f}×" for v in t.values())
        lines.append(f"| {label} | {ours:.2f} s | {cells} | {gap:.1e} |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines += ["", "## Goals", "",
              *[f"- {k}: ours / floor {f:.2f}× (<= 1.15: {verdict(f <= 1.15)}), pytorch-grad-cam / ours {p:.2f}× "
                f"(>= 2.5: {verdict(p >= 2.5)}), torchcam / ours {c:.2f}× (>= 1.1: {verdict(c >= 1.1)})"
                for k, (f, p, c) in ratios.items()],
              f"- five gradient methods × three layers <= 1.3× one of them: {many:.2f}× ({verdict(many <= 1.3)})",
              *[f"- Score-CAM >= 1.5× faster than the fastest peer, {k}: {v:.2f}× ({verdict(v >= 1.5)})"
                for k, v in score.items()]]
    return "# CAM engine speed\n\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="time wall-clock instead of CPU time")
    args = parser.parse_args()
    out = run(args.rounds, args.threads, args.wall)
    write_result("cam_speed", out)
