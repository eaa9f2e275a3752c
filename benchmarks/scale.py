"""Scale-out: the CAMs of 5,000 demo images, single process vs a Dask LocalCluster of 1 and 2 workers.

Every mode runs the same `explain_dataset` call (`xcam-viz explain`): the demo checkpoint, Grad-CAM and
HiRes-CAM at block3 and block4, batches of 32, into a fresh zarr store. The images (the demo's test
split, n=5000) are written once to a MedMNIST-style .npz that every process loads itself, as workers of
a real cluster would from a shared filesystem. Each mode runs in a fresh Python process; throughput
counts the whole call (planning, data loading, worker checkpoint loads, writing), cluster start-up is
listed apart. Peak memory is each process's high-water mark of resident memory (VmHWM). Modes run
interleaved, `--rounds` times; the table shows the best round.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGES = 5000
RUN = dict(methods=["gradcam", "hirescam"], layers=["block3", "block4"], batch_size=32, progress=False)
MODES = {"serial": "single process (no Dask)", "1": "LocalCluster, 1 worker", "2": "LocalCluster, 2 workers"}


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(mode: str, npz: str, out: str) -> dict:
    """One mode in this (fresh) process: seconds, cluster start-up, peak MB of the driver and of each worker."""
    import torch

    from xcam_viz.demo import CHECKPOINT_NAME, cache_dir
    from xcam_viz.explain.batch import DataSpec, explain_dataset
    from xcam_viz.explain.distributed import dask_client
    spec, checkpoint = DataSpec(npz, "test"), cache_dir() / CHECKPOINT_NAME
    if mode == "serial":
        start = time.perf_counter()
        explain_dataset(checkpoint, spec, out, **RUN)
        return {"seconds": time.perf_counter() - start, "startup": 0.0, "driver_mb": peak_mb(), "workers_mb": [],
                "threads": torch.get_num_threads()}
    start = time.perf_counter()
    with dask_client(workers=int(mode)) as client:
        client.wait_for_workers(int(mode))
        startup = time.perf_counter() - start
        start = time.perf_counter()
        explain_dataset(checkpoint, spec, out, client=client, **RUN)
        seconds = time.perf_counter() - start
        workers = client.run(peak_mb)
        threads = set(client.run(torch.get_num_threads).values())
    return {"seconds": seconds, "startup": startup, "driver_mb": peak_mb(), "workers_mb": sorted(workers.values()),
            "threads": threads.pop() if len(threads) == 1 else sorted(threads)}


def main(rounds: int) -> str:
    from xcam_viz.demo import demo_data
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        data = demo_data("test", n=IMAGES)
        npz = Path(tmp) / "demo5000.npz"
        images = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        np.savez(npz, test_images=images, test_labels=data.labels.numpy()[:, None])
        for r in range(rounds):
            for mode in MODES:
                out = Path(tmp) / f"cams-{mode}-{r}.zarr"
                proc = subprocess.run([sys.executable, __file__, "--run", mode, str(npz), str(out)], check=True,
                                      capture_output=True, text=True)
                results[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                subprocess.run(["rm", "-rf", str(out)], check=True)
                print(mode, results[mode][-1], file=sys.stderr, flush=True)
    best = {mode: min(rs, key=lambda r: r["seconds"]) for mode, rs in results.items()}
    serial = IMAGES / best["serial"]["seconds"]
    lines = [f"CAMs of {IMAGES} demo images (64 px; Grad-CAM + HiRes-CAM at block3 + block4, batches of 32) "
             f"into one zarr store; best of {rounds} interleaved rounds, 2-core machine.", "",
             "| mode | torch threads / process | images/s | vs single process | cluster start-up s "
             "| peak RSS per worker MB | driver peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for mode, label in MODES.items():
        b = best[mode]
        rate = IMAGES / b["seconds"]
        workers = ", ".join(f"{mb:.0f}" for mb in b["workers_mb"]) or "-"
        lines.append(f"| {label} | {b['threads']} | {rate:.0f} | {rate / serial:.2f}x | {b['startup']:.1f} "
                     f"| {workers} | {b['driver_mb']:.0f} |")
    lines += ["", "Seconds per round (the machine was shared; compare rounds side by side): " + "; ".join(
        f"{label}: " + ", ".join(f"{r['seconds']:.1f}" for r in results[mode]) for mode, label in MODES.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--run", nargs=3, metavar=("MODE", "NPZ", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(*args.run)))
    else:
        table = main(args.rounds)
        print(table)
        out = Path(__file__).with_name("results")
        out.mkdir(exist_ok=True)
        (out / "scale.md").write_text(table)
