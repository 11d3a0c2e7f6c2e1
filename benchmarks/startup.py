"""Start-up and memory: wall time of whole `fvexp` commands and the peak memory of a default run.

Command to first step: from just before the process is started to the end of the first
optimization step, read in the child by a hook on the loop's `on_step` (the child is
`python -c` running `fvexp`'s command line with that hook; it adds no import). A 1-step run's
whole wall time (which also includes saving the image and the final metrics, and waits for
MLflow to finish) is printed beside it. The peak resident memory of a 224 px, batch 1 run is read
from the operating system for the child process.

    .venv/bin/python benchmarks/startup.py [--repeats 3] [--without adam compose-once]

`--without` times, instead, `tracking=none` with and without fvexp's tricks on private APIs, in
the same rounds: without `adam` the loop steps torch.optim.Adam itself (which imports
torch._dynamo), without `compose-once` Hydra composes the config a first time only to read
`hydra.mode` (`fvexp.app.cli.compose_once`).
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
# UNDO
from fvexp.app.cli import main
sys.argv[0] = "fvexp"
main()
"""


WITHOUT = {  # fvexp's tricks on private APIs, each undone in the child for `--without`
    "adam": "render.create = lambda factory, params: factory(params)  # torch.optim.Adam itself",
    "compose-once": "import fvexp.app.cli\nfvexp.app.cli.compose_once = lambda: None  # Hydra composes twice",
}


def cpu_seconds() -> float:
    """CPU time of this process's ended children: less moved by other load on the machine than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def command(*overrides: str, cwd: str, root: Path = ROOT, undo: str = "") -> tuple[float, float, float]:
    """Seconds from the command to the end of its first step, and to its end, running fvexp from `root`; CPU seconds."""
    started, cpu = time.time(), cpu_seconds()
    done = subprocess.run([sys.executable, "-c", FIRST_STEP.replace("# UNDO", undo), "progress=false", *overrides],
                          cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    ended = time.time()
    if done.returncode:
        raise SystemExit(f"{' '.join(overrides)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    first = next(float(line.split()[-1]) for line in done.stderr.splitlines() if line.startswith("first step at"))
    return first - started, ended - started, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another source tree (`git archive COMMIT | tar -x -C DIR`) "
                                                    "timed in the same rounds, e.g. the commit before a change")
    parser.add_argument("--without", nargs="+", choices=WITHOUT, default=[],
                        help="time `tracking=none` with each of these tricks undone, in the same rounds as without "
                             "undoing them (and nothing else)")
    args = parser.parse_args()
    roots = {"": ROOT, **({"before: ": args.before.resolve()} if args.before else {})}
    trackings = ("none",) if args.without else ("none", "mlflow")
    arms = {(label, tracking): (root, "") for label, root in roots.items() for tracking in trackings}
    arms.update({(f"without {name}: ", "none"): (ROOT, WITHOUT[name]) for name in args.without})
    with tempfile.TemporaryDirectory() as tmp:
        command("render.steps=1", "tracking=mlflow", f"hydra.run.dir={tmp}/warm", cwd=tmp)  # fill the OS file cache
        times: dict[tuple[str, str], list[tuple[float, float, float]]] = {arm: [] for arm in arms}
        for i in range(args.repeats):  # interleaved, so that other load hits every arm alike
            for n, ((label, tracking), found) in enumerate(times.items()):
                root, undo = arms[label, tracking]
                found.append(command("render.steps=1", f"tracking={tracking}", f"hydra.run.dir={tmp}/{tracking}{i}-{n}",
                                     cwd=tmp, root=root, undo=undo))
        for (label, tracking), found in times.items():
            first, whole, cpu = (statistics.median(column) for column in zip(*found, strict=True))
            print(f"{label}tracking={tracking}: command to first step median {first:.2f} s "
                  f"(goal <= {3 if tracking == 'none' else 3.5} s); to the end of the 1-step run {whole:.2f} s "
                  f"({cpu:.2f} CPU s)")
        if args.without:
            return
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        command("render.steps=64", "tracking=mlflow", f"hydra.run.dir={tmp}/memory", cwd=tmp)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"peak resident memory of a 224 px, batch 1 run: {max(peak, before) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
