"""Demo start-up: cold (train the demo model from scratch) vs warm (load the cached checkpoint).

Goals (issue 2): cold under 90 s, warm under 5 s on 2 CPU cores. Also times the whole
`xcam-viz demo --quiet` command warm, interpreter start and imports included.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> str:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XCAM_VIZ_CACHE"] = cache
        from xcam_viz.demo import demo_model
        start = time.perf_counter()
        demo_model(progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        demo_model(progress=False)
        warm = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("xcam-viz")), "demo", "--quiet", "--no-serve"], check=True,
                       capture_output=True, env={**os.environ, "XCAM_VIZ_CACHE": cache})
        command = time.perf_counter() - start
    rows = [("cold: train + cache the demo model", cold, 90), ("warm: load the cached model", warm, 5),
            ("warm: whole `xcam-viz demo --quiet` command", command, None)]
    lines = ["| step | seconds | goal |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.1f} | {'<= ' + str(goal) + ' s' if goal else '-'} |" for name, sec, goal in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    table = main()
    print(table)
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "demo_startup.md").write_text(table)
