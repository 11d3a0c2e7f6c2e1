"""fvexp's own Adam (fvexp/optvis/optimizers.py) against torch.optim.Adam: start-up, ms per step, and the bits.

fvexp steps `optimizer=adam` with its own copy of torch's single-tensor Adam because creating any
torch.optim optimizer imports torch._dynamo. This script says whether that still pays:
- start-up: a fresh process creates the optimizer on the parameter of a 224 px Fourier image
  and takes one step, once with each (interleaved, `--processes` pairs); whether torch._dynamo
  was imported;
- per step: both step the same parameter with the same gradients in one process, in interleaved
  rounds of `--steps` steps, and the parameters are compared bit for bit after all the rounds
  (a run's images stay the same only if they are equal).

    .venv/bin/python benchmarks/adam.py [--rounds 15] [--steps 50] [--processes 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fvexp.optvis.optimizers import Adam, Stepper
from fvexp.optvis.params import Fourier

ROOT = Path(__file__).resolve().parents[1]
FRESH = """
import sys, time
started = time.perf_counter()
import torch
from fvexp.optvis.params import Fourier
param = list(Fourier(1, 224).parameters())
imported = time.perf_counter()
if sys.argv[1] == "torch":
    optimizer = torch.optim.Adam(param, lr=0.05)
else:
    from fvexp.optvis.optimizers import Adam
    optimizer = Adam(param, lr=0.05)
param[0].grad = torch.ones_like(param[0])
optimizer.step()
print(time.perf_counter() - imported, "torch._dynamo" in sys.modules)
"""
KINDS = ("torch.optim.Adam", "fvexp's Adam")


def optimizer(kind: str, params: list[torch.nn.Parameter]) -> Stepper:
    return torch.optim.Adam(params, lr=0.05) if kind == KINDS[0] else Adam(params, lr=0.05)


def fresh_process(kind: str) -> tuple[float, bool]:
    """Seconds from the first optimizer's creation to the end of its first step in a new process; torch._dynamo?"""
    done = subprocess.run([sys.executable, "-c", FRESH, "torch" if kind == KINDS[0] else "fvexp"], check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds, dynamo = done.stdout.split()
    return float(seconds), dynamo == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    starts: dict[str, list[float]] = {kind: [] for kind in KINDS}
    dynamo = {}
    for i in range(args.processes):  # interleaved, alternating which goes first
        for kind in KINDS if i % 2 else KINDS[::-1]:
            seconds, dynamo[kind] = fresh_process(kind)
            starts[kind].append(seconds)
    torch.manual_seed(0)
    initial = next(iter(Fourier(1, 224).parameters())).detach()
    params = {kind: torch.nn.Parameter(initial.clone()) for kind in KINDS}
    optimizers = {kind: optimizer(kind, [params[kind]]) for kind in KINDS}
    gradients = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i in range(args.rounds):
        grads = [torch.randn(initial.shape, generator=gradients) for _ in range(args.steps)]
        for kind in KINDS if i % 2 else KINDS[::-1]:
            started = time.perf_counter()
            for grad in grads:
                params[kind].grad = grad
                optimizers[kind].step()
            times[kind].append((time.perf_counter() - started) / args.steps)
    for kind in KINDS:
        print(f"{kind}: first optimizer created and stepped in a new process {statistics.median(starts[kind]):.3f} s "
              f"(median of {args.processes}; imports torch._dynamo: {dynamo[kind]}); "
              f"{1e3 * statistics.median(times[kind]):.3f} ms per step (median of {args.rounds} rounds)")
    same = torch.equal(*params.values())
    print(f"after {args.rounds * args.steps} steps of {initial.numel()} values the parameters are "
          f"{'bit for bit the same' if same else 'different'}"
          + ("" if same else f" (max |diff| {(params[KINDS[0]] - params[KINDS[1]]).abs().max().item():.3g})"))


if __name__ == "__main__":
    main()
