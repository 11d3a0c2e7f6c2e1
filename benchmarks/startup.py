"""Start-up and memory: wall time of whole `fvexp` commands and the peak memory of a default run.

A 1-step run's wall time bounds the time from command to first step from above (it also includes
saving the image and the final metrics). The peak resident memory of a 224 px, batch 1 run is read
from the operating system for the child process.

    .venv/bin/python benchmarks/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(*overrides: str, cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fvexp", "progress=false", *overrides], cwd=cwd, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        command("render.steps=1", "tracking=none", f"hydra.run.dir={tmp}/warm", cwd=tmp)  # fill the OS file cache
        for tracking in ("none", "mlflow"):
            times = [command("render.steps=1", f"tracking={tracking}", f"hydra.run.dir={tmp}/{tracking}{i}", cwd=tmp)
                     for i in range(args.repeats)]
            print(f"command to end of a 1-step run, tracking={tracking}: median {statistics.median(times):.2f} s"
                  "  (goal for command to first step <= 3 s)")
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        command("render.steps=64", "tracking=mlflow", f"hydra.run.dir={tmp}/memory", cwd=tmp)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"peak resident memory of a 224 px, batch 1 run: {max(peak, before) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
