"""Start-up and memory: wall time of whole `fvexp` commands and the peak memory of a default run.

Command to first step: from just before the process is started to the end of the first
optimization step, read in the child by a hook on the loop's `on_step` (the child is
`python -c` running `fvexp`'s command line with that hook; it adds no import). A 1-step run's
whole wall time (which also includes saving the image and the final metrics, and waits for
MLflow to finish) is printed beside it. The peak resident memory of a 224 px, batch 1 run is read
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


FIRST_STEP = """
import sys, time
import fvexp.optvis.render
render = sys.modules["fvexp.optvis.render"]  # the package's `render` is the function
loop = render.render
def hooked(*args, on_step=None, **kwargs):
    def first(step, value):
        if step == 1:
            print(f"first step at {time.time()!r}", file=sys.stderr, flush=True)
        if on_step:
            on_step(step, value)
    return loop(*args, on_step=first, **kwargs)
render.render = hooked
from fvexp.app.cli import main
sys.argv[0] = "fvexp"
main()
"""


def command(*overrides: str, cwd: str, root: Path = ROOT) -> tuple[float, float]:
    """Seconds from the command to the end of its first step, and to its end, running fvexp from `root`."""
    started = time.time()
    done = subprocess.run([sys.executable, "-c", FIRST_STEP, "progress=false", *overrides], cwd=cwd, check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    ended = time.time()
    first = next(float(line.split()[-1]) for line in done.stderr.splitlines() if line.startswith("first step at"))
    return first - started, ended - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another source tree (`git archive COMMIT | tar -x -C DIR`) "
                                                    "timed in the same rounds, e.g. the commit before a change")
    args = parser.parse_args()
    roots = {"": ROOT, **({"before: ": args.before.resolve()} if args.before else {})}
    with tempfile.TemporaryDirectory() as tmp:
        command("render.steps=1", "tracking=mlflow", f"hydra.run.dir={tmp}/warm", cwd=tmp)  # fill the OS file cache
        times: dict[tuple[str, str], list[tuple[float, float]]] = {
            (label, tracking): [] for label in roots for tracking in ("none", "mlflow")}
        for i in range(args.repeats):  # interleaved, so that other load hits every arm alike
            for (label, tracking), found in times.items():
                found.append(command("render.steps=1", f"tracking={tracking}",
                                     f"hydra.run.dir={tmp}/{tracking}{i}{len(label)}", cwd=tmp, root=roots[label]))
        for (label, tracking), found in times.items():
            first, whole = (statistics.median(column) for column in zip(*found, strict=True))
            print(f"{label}tracking={tracking}: command to first step median {first:.2f} s "
                  f"(goal <= {3 if tracking == 'none' else 3.5} s); to the end of the 1-step run {whole:.2f} s")
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        command("render.steps=64", "tracking=mlflow", f"hydra.run.dir={tmp}/memory", cwd=tmp)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"peak resident memory of a 224 px, batch 1 run: {max(peak, before) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
