"""Step overhead: fvexp's full recipe per step versus a bare forward+backward of the same model.

The recipe is fourier + colour decorrelation + standard transforms, batch 1 (`--batch`), 224 px, Adam, with a
class-logit objective so that both sides run the whole network. The bare step feeds a fixed
224 px tensor through the same frozen model and back-propagates to it, and again at exactly the
sizes the transforms fed the network. Arms: the standard transforms as fvexp runs them (scale and
rotation in one resampling, `Affine`), the same with two resamplings (`fuse=False`, fvexp before),
and `transforms=distill`; all are timed in the same process, interleaved in rounds so that machine
noise hits them alike. Prints the medians and ratios.

The machine's speed drifts by a fifth within seconds, and those arms time steps and bare passes
in separate loops. So the standard and distill recipes are timed once more with each step cut into
phases (parameterization, transforms, network, their backward passes, Adam) and followed at once by
bare passes at the same pixels and at 224 px: fvexp's own work per step, and step / bare step by
step, the figures the goals are read from.

    .venv/bin/python benchmarks/step_overhead.py [--steps 30] [--rounds 5] [--batch 1] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from resampling_quality import preset

from fvexp.app.build import lay_out, resolve_device
from fvexp.optvis import objectives
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.objectives import INPUT
from fvexp.optvis.optimizers import Adam
from fvexp.optvis.params import Fourier
from fvexp.optvis.render import render
from fvexp.optvis.transforms import Compose, standard


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fvexp_step_ms(model, device: torch.device, batch: int, steps: int, seen: list[int],
                  transforms: Compose) -> list[float]:
    """Per-step wall time of the real optimization core, read from its on_step callback.

    Appends to `seen` the side of every image the model was fed after the transforms.
    """
    stamps: list[float] = []
    transforms.pieces.append(lambda image, generator: seen.append(image.shape[-1]) or image)

    def stamp(step: int, value: float) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    param = Fourier(batch, 224).to(device)
    objective = objectives.class_logit("goldfish", "_fc")
    start = time.perf_counter()
    render(model, objective, param, transforms, lambda p: torch.optim.Adam(p, lr=0.05), steps, seed=0,
           on_step=stamp, progress=False)
    return [1000 * (b - a) for a, b in zip([start, *stamps], stamps, strict=False)][2:]  # skip warm-up


def bare_step_ms(model, device: torch.device, batch: int, sizes: list[int]) -> list[float]:
    times = []
    for size in sizes:
        image = torch.rand(batch, 3, size, size, device=device, requires_grad=True)
        sync(device)
        start = time.perf_counter()
        model(image)[:, 1].sum().backward()
        sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return times[2:]


PHASES = ("parameterization", "transforms", "network forward", "network backward", "transforms backward",
          "parameterization backward", "Adam")
OWN = ("parameterization", "transforms", "transforms backward", "parameterization backward", "Adam")
Phased = tuple[dict[str, list[float]], list[float], list[float]]  # phases' ms, bare at the same pixels, at 224 px


def phases_ms(model, device: torch.device, batch: int, steps: int, transforms: Compose) -> Phased:
    """The recipe's steps cut into phases, each step followed at once by bare passes at its pixels and at 224 px.

    The loop is `render`'s step written out (fvexp's Adam, the same pieces and draws), with a
    timestamp between phases: gradient hooks on the transformed and on the synthesized image mark
    where the backward pass leaves the network and the transforms. Bare passes right after each
    step leave the machine no time to change speed in between, which the separate loops above do
    (their step and bare figures come seconds apart).
    """
    torch.manual_seed(0)
    param = Fourier(batch, 224).to(device)
    optimizer = Adam(param.parameters(), lr=0.05)
    objective = objectives.class_logit("goldfish", "_fc")
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in PHASES}
    same: list[float] = []
    at_224: list[float] = []

    def now() -> float:
        sync(device)
        return 1000 * time.perf_counter()

    with model.reading(objective.network_layers) as read:

        def bare(shape: tuple[int, ...]) -> float:
            pixels = torch.rand(shape, device=device, requires_grad=True)
            start = now()
            objective({**read(pixels), INPUT: pixels}).mean().backward()
            return now() - start

        for step in range(steps):
            marks = [now()]
            image = param()
            marks.append(now())
            seen = transforms(image, generator)
            marks.append(now())
            value = objective({**read(seen), INPUT: image}).mean()
            marks.append(now())
            left: list[float] = []
            for tensor in (seen, image):  # in that order, as the backward pass reaches them
                tensor.register_hook(lambda grad, marked=left: marked.append(now()))
            optimizer.zero_grad()
            (-value).backward()
            marks += [*left, now()]
            optimizer.step()
            marks.append(now())
            pair = bare(seen.shape), bare((batch, 3, 224, 224))
            if step >= 2:  # warm-up
                for name, (a, b) in zip(PHASES, itertools.pairwise(marks), strict=True):
                    times[name].append(b - a)
                same.append(pair[0])
                at_224.append(pair[1])
    return times, same, at_224


def report(name: str, phased: Phased) -> None:
    """The phases' medians, fvexp's own work, and step / bare step by step, at equal pixels and at 224 px."""
    times, same, at_224 = phased
    steps = [sum(times[phase][i] for phase in PHASES) for i in range(len(same))]
    print(f"{name}, its steps cut into phases (median ms): "
          + ", ".join(f"{phase} {statistics.median(times[phase]):.2f}" for phase in PHASES))
    own = sum(statistics.median(times[phase]) for phase in OWN)
    network = statistics.median(times["network forward"]) + statistics.median(times["network backward"])
    ratio = {key: statistics.median(a / b for a, b in zip(steps, bare, strict=True))
             for key, bare in (("same", same), ("224", at_224))}
    print(f"  fvexp's own work {own:.2f} ms, the network inside the step {network:.1f} ms, a bare pass after each "
          f"step at its pixels {statistics.median(same):.1f} ms, at 224 px {statistics.median(at_224):.1f} ms; "
          f"step / bare step by step (median of the steps' ratios): at equal pixels {ratio['same']:.3f}, "
          f"to 224 px {ratio['224']:.3f}")


def transforms_ms(device: torch.device, batch: int, repeats: int) -> dict[str, float]:
    """fvexp's own transforms alone, forward and backward on a 224 px image: one resampling against two.

    Short and interleaved draw by draw, so the saving is measured even when other load makes whole
    steps too noisy to difference."""
    image = torch.rand(batch, 3, 224, 224, device=device, requires_grad=True)
    arms = {"one resampling": standard(), "two resamplings": standard(fuse=False)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    generators = {name: torch.Generator().manual_seed(0) for name in arms}  # the same draws for both
    for _ in range(repeats):
        for name, transforms in arms.items():
            sync(device)
            start = time.perf_counter()
            transforms(image, generators[name]).sum().backward()
            sync(device)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(found) for name, found in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="images per step (the GPU rows: 1 and 16)")
    parser.add_argument("--contiguous", action="store_true",
                        help="keep the network in the default (NCHW) layout; by default it is channels-last on the CPU "
                             "as in a default run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = lay_out(efficientnet_lite().to(device), False if args.contiguous else None, device)  # as a default run
    arms = {"standard, one resampling": lambda: standard(), "standard, two (before)": lambda: standard(fuse=False),
            "distill, one resampling": lambda: preset("distill", True)}
    recipe: dict[str, list[float]] = {name: [] for name in arms}
    same: dict[str, list[float]] = {name: [] for name in arms}
    seen: dict[str, list[int]] = {name: [] for name in arms}
    bare: list[float] = []
    for _ in range(args.rounds):
        for name, transforms in arms.items():
            recipe[name] += fvexp_step_ms(model, device, args.batch, args.steps, seen[name], transforms())
            same[name] += bare_step_ms(model, device, args.batch, seen[name][-args.steps:])
        bare += bare_step_ms(model, device, args.batch, [224] * args.steps)
    b = statistics.median(bare)
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{args.rounds} rounds of {args.steps} steps, batch {args.batch}")
    print(f"bare forward+backward, 224 px, batch {args.batch}: median {b:6.1f} ms")
    for name in arms:
        r, s = statistics.median(recipe[name]), statistics.median(same[name])
        sizes = seen[name]
        print(f"{name}: step {r:6.1f} ms; network fed {min(sizes)}..{max(sizes)} px (mean "
              f"{statistics.mean(sizes):.0f}), bare at those sizes {s:6.1f} ms; "
              f"ratio to bare at 224 px {r / b:.3f}, at equal pixels {r / s:.3f}")
    print("(separate loops; the goals are read from the step-by-step figures below)")
    for name, transforms in (("standard", standard), ("distill", lambda: preset("distill", True))):
        rounds = [phases_ms(model, device, args.batch, args.steps, transforms()) for _ in range(args.rounds)]
        report(name, ({phase: [t for r in rounds for t in r[0][phase]] for phase in PHASES},
                      [t for r in rounds for t in r[1]], [t for r in rounds for t in r[2]]))
    print("goals, step by step: standard at equal pixels <= 1.05; distill to 224 px <= 1.10")
    alone = transforms_ms(device, args.batch, 10 * args.steps)
    print(f"standard transforms alone, forward+backward: one resampling {alone['one resampling']:.2f} ms, two "
          f"{alone['two resamplings']:.2f} ms (median of {10 * args.steps} interleaved draws each)")


if __name__ == "__main__":
    main()
