"""Step overhead: fvexp's full recipe per step versus a bare forward+backward of the same model.

The recipe is fourier + colour decorrelation + standard transforms, batch 1, 224 px, Adam, with a
class-logit objective so that both sides run the whole network. The bare step feeds a fixed
224 px tensor through the same frozen model and back-propagates to it; both are timed in the same
process, interleaved in rounds so that machine noise hits both alike. Prints the medians and ratio.

    .venv/bin/python benchmarks/step_overhead.py [--steps 30] [--rounds 5] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fvexp.app.build import resolve_device
from fvexp.optvis import objectives
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.params import Fourier
from fvexp.optvis.render import render
from fvexp.optvis.transforms import standard


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fvexp_step_ms(model, device: torch.device, steps: int, seen: list[int]) -> list[float]:
    """Per-step wall time of the real optimization core, read from its on_step callback.

    Appends to `seen` the side of every image the model was fed after the transforms.
    """
    stamps: list[float] = []
    transforms = standard()
    transforms.pieces.append(lambda image, generator: seen.append(image.shape[-1]) or image)

    def stamp(step: int, value: float) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    param = Fourier(1, 224).to(device)
    objective = objectives.class_logit("goldfish", "_fc")
    start = time.perf_counter()
    render(model, objective, param, transforms, lambda p: torch.optim.Adam(p, lr=0.05), steps, seed=0,
           on_step=stamp, progress=False)
    return [1000 * (b - a) for a, b in zip([start, *stamps], stamps, strict=False)][2:]  # skip warm-up


def bare_step_ms(model, device: torch.device, sizes: list[int]) -> list[float]:
    times = []
    for size in sizes:
        image = torch.rand(1, 3, size, size, device=device, requires_grad=True)
        sync(device)
        start = time.perf_counter()
        model(image)[:, 1].sum().backward()
        sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    model = efficientnet_lite().to(device)
    recipe, bare, same_pixels, seen = [], [], [], []
    for _ in range(args.rounds):
        recipe += fvexp_step_ms(model, device, args.steps, seen)
        bare += bare_step_ms(model, device, [224] * args.steps)
        same_pixels += bare_step_ms(model, device, seen[-args.steps:])
    r, b, s = (statistics.median(t) for t in (recipe, bare, same_pixels))
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"fvexp step, fourier+decorrelate+standard transforms, 224 px, batch 1: median {r:6.1f} ms")
    print(f"bare forward+backward, 224 px, batch 1:                           median {b:6.1f} ms")
    print(f"ratio: {r / b:.3f}  (goal <= 1.10)")
    print(f"the standard transforms feed the model {min(seen)}..{max(seen)} px (mean {statistics.mean(seen):.0f});")
    print(f"bare forward+backward at exactly those sizes:                     median {s:6.1f} ms")
    print(f"ratio at equal pixels (fvexp's own overhead): {r / s:.3f}")


if __name__ == "__main__":
    main()
