"""Memory over time: resident memory across many calls of the Python API, and across one long run.

Peak memory of a whole default run is printed by benchmarks/startup.py. This script checks that
memory stays flat: `--calls` calls of `fvexp.visualize` in one process (the resident memory after
the first tenth of them against after the last), and one run of `--steps` steps through the real
loop with the job's per-step callback (resident memory sampled every 1000 steps). Memory that grows
with calls or steps is a leak a user with hundreds of visualizations per layer would run into.

    .venv/bin/python benchmarks/memory.py [--calls 100] [--steps 20000] [--size 64]
"""

from __future__ import annotations

import argparse
import resource

import psutil
import torch
from torch import nn

import fvexp
from fvexp.optvis import objectives
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.optimizers import adam
from fvexp.optvis.params import Fourier
from fvexp.optvis.render import render
from fvexp.optvis.transforms import standard


def resident_mib() -> float:
    """The process's resident memory now (not its peak)."""
    return psutil.Process().memory_info().rss / 2**20


def calls(net: nn.Module, count: int, size: int) -> list[float]:
    """Resident MiB after each of `count` small `fvexp.visualize` calls on one network."""
    found = []
    for i in range(count):
        fvexp.visualize(net, "2:3", steps=4, size=size, seed=i, progress=False)
        found.append(resident_mib())
    return found


def long_run(model: FeatureModel, steps: int, size: int) -> list[float]:
    """Resident MiB every 1000 steps of one run (a shallow channel, so that it is quick)."""
    found: list[float] = []
    values: list[float] = []

    def sample(step: int, value: float) -> None:
        values.append(value)  # what a recorder keeps per step
        if step % 1000 == 0:
            found.append(resident_mib())

    render(model, objectives.channel("_blocks.1", 3), Fourier(1, size), standard(), adam(), steps, 0, on_step=sample,
           progress=False)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
    found = calls(net, args.calls, args.size)
    tenth = max(1, args.calls // 10)
    print(f"{args.calls} calls of fvexp.visualize: resident {found[tenth - 1]:.0f} MiB after {tenth}, "
          f"{found[-1]:.0f} MiB after {args.calls} ({found[-1] - found[tenth - 1]:+.0f} MiB)")
    found = long_run(efficientnet_lite(), args.steps, args.size)
    if found:
        print(f"one run of {args.steps} steps at {args.size} px: resident {found[0]:.0f} MiB at step 1000, "
              f"{found[-1]:.0f} MiB at step {1000 * len(found)} ({found[-1] - found[0]:+.0f} MiB)")
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
