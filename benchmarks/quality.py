"""The quality panel: how natural and how strong each recipe's images are, on a fixed set of units.

The panel is fixed before any result is seen: on EfficientNet-Lite0, channels 0, ⌊C/3⌋ and ⌊2C/3⌋
of `_blocks.3`, `_blocks.6`, `_blocks.10` and `_blocks.14` (C: the layer's channel count), and the
classes 0, 250, 500 and 750; `--seeds` seeds each (two: 32 runs per recipe). Every recipe runs through
`fvexp.visualize` with the same step count and image size; the learned prior is trained on the
demo folder by `task=train_prior` at that size first (or given with `--prior`). Per recipe, as
means over the panel (activation: median):

- activation: the unit's value on the image, as dataset examples rank images (a channel's strongest
  position, a class's logit), over that of the best image of the demo folder for that unit;
- high-frequency energy and spectral slope (`fvexp.optvis.metrics`), beside the demo photos' own;
- the sanity score of the "don't trust your eyes" check against the demo folder's top examples;
- interpretability: the machine 2-AFC score (`fvexp.optvis.interpretability`, judged by EfficientNet-Lite1).

Lucent's recipe (`render_vis` with `param.image(fft, decorrelate)`, its standard transforms, Adam at
0.05) on the same model is the reference row; it needs Lucent importable (see
benchmarks/lucent_compare.py), else its row says so. Writes docs/quality.md and docs/quality.png:

    python -m fvexp.tools.demo outputs/demo_photos
    python benchmarks/quality.py --data outputs/demo_photos [--steps 128] [--size 128] [--prior FILE]

`--panel dinov2` measures the transformer panel instead, also fixed before any result was seen: on
`model=dinov2_small`, the MLP hidden features (after the GELU) of blocks 1, 3, 5, 7, 9 and 11,
channels 0 and ⌊C/2⌋ of each (12 units), with the default recipe and `transforms=transformer` (Ghiasi et
al. 2022: jitter by more than a patch, colour shift, pixel noise); a channel is its mean over the
patch tokens, and its activation its strongest patch. Writes docs/quality_dinov2.md and .png.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import stats
from torch import Tensor

import fvexp
import fvexp.app.api
import fvexp.app.job
from fvexp.optvis import examples, sanity
from fvexp.optvis.data import batches, scan
from fvexp.optvis.features import LOGITS, FeatureModel
from fvexp.optvis.images import contact_sheet, to_pil
from fvexp.optvis.interpretability import Judge, Measures, Trial, centre_crop
from fvexp.optvis.metrics import high_frequency_energy, spectral_slope
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.objectives import Objective, Unit, channel, class_logit
from fvexp.optvis.onnx import dinov2_small

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("_blocks.3", "_blocks.6", "_blocks.10", "_blocks.14")
CLASSES = (0, 250, 500, 750)
SEEDS = (0, 1)
DINO_LAYERS = tuple(f"backbone/encoder/layer/{k}/mlp/activation/Mul_1" for k in (1, 3, 5, 7, 9, 11))
DINO_RECIPES: dict[str, list[str] | None] = {
    "default (fourier, standard transforms)": [],
    "transformer (jitter 28 px, colour shift, noise)": ["transforms=transformer"],
}
# The weights of the `experiment=priors` arms, checked on units outside the panel (_blocks.8:5,
# _blocks.12:40, class 100 at 128 px): at 10000 the prior's penalty fades every image to grey.
PRIOR_WEIGHT, STATS_WEIGHT = 3000.0, 10.0
# Each recipe: the overrides of a run, {prior} and {data} filled in; None marks Lucent's.
RECIPES: dict[str, list[str] | None] = {
    "default (fourier, standard transforms)": [],
    "distill (fourier, the article's transforms)": ["transforms=distill"],
    "prior as penalty": [f"regularizers.prior.weight={PRIOR_WEIGHT}", "regularizers.prior.path={prior}"],
    "prior as parameterization": ["param=prior", "param.path={prior}"],
    "feature statistics": [f"regularizers.feature_stats.weight={STATS_WEIGHT}", "data.dir={data}"],
    "prior penalty + feature statistics": [f"regularizers.prior.weight={PRIOR_WEIGHT}",
                                           "regularizers.prior.path={prior}",
                                           f"regularizers.feature_stats.weight={STATS_WEIGHT}", "data.dir={data}"],
    "Lucent (reference)": None,
}
GOAL = "high-frequency energy ≤ 2× the demo photos', slope within 0.3 of theirs, activation ≥ 3× the best photo"


@dataclass
class Row:
    activation: list[float]
    energy: list[float]
    slope: list[float]
    sanity: list[float]
    interpretability: list[float | None]
    seconds: float
    images: list[Tensor]


def lean_runs() -> None:
    """Skip what only the run's record needs: composing the same config again, and the pip freeze.

    Neither changes an image; on a loaded two-core machine they cost more than 64 steps at 128 px.
    """
    original = fvexp.app.api._compose
    compose = functools.cache(lambda overrides, hydra: original(list(overrides), hydra))
    fvexp.app.api._compose = lambda overrides, hydra=False: copy.deepcopy(compose(tuple(overrides), hydra))
    fvexp.app.job.environment_files = dict


def panel(model: FeatureModel) -> list[Objective]:
    """The fixed units: three channels spread over each layer's channels, and four classes."""
    shapes = model.probe(list(LAYERS), 128)
    units = [channel(layer, c) for layer in LAYERS
             for c in (0, shapes[layer][1] // 3, 2 * shapes[layer][1] // 3)]
    return units + [class_logit(label) for label in CLASSES]


def grid_peak(image: Tensor, patch: int = 14) -> float:
    """Spectral power at the patch grid's frequencies (side/patch cycles and multiples, both axes) over
    the power one and two frequencies beside them: about 1 without a grid, far above 1 with one."""
    grey = image.mean(0) - image.mean()
    side = grey.shape[-1]
    profile = torch.fft.rfft(grey, dim=1).abs().pow(2).mean(0) + torch.fft.rfft(grey, dim=0).abs().pow(2).mean(1)
    peaks = [round(k * side / patch) for k in range(1, patch // 2 + 1) if round(k * side / patch) + 2 < len(profile)]
    beside = [f + d for f in peaks for d in (-2, -1, 1, 2)]
    return (profile[peaks].mean() / profile[beside].mean()).item()


def dino_panel(model: FeatureModel) -> list[Objective]:
    """The transformer panel's fixed units: channels 0 and ⌊C/2⌋ of each MLP in `DINO_LAYERS`."""
    shapes = model.probe(list(DINO_LAYERS), 112)
    return [channel(layer, c) for layer in DINO_LAYERS for c in (0, shapes[layer][1] // 2)]


def resolved(objective: Objective, model: FeatureModel) -> Unit:
    """The unit with the logits layer named (`class_logit` says `logits` until prepared)."""
    objective.prepare(model, model.probe(objective.network_layers, model.min_size * 4))
    return objective.unit


def unit_value(model: FeatureModel, unit: Unit, images: Tensor) -> Tensor:
    """The unit's value per image, as dataset examples rank images."""
    with torch.no_grad(), model.reading([unit.layer]) as read:
        return examples.reduce(read(images)[unit.layer], unit)[0][:, unit.channel]


def photo_statistics(data: Path, size: int) -> tuple[float, float]:
    """Mean high-frequency energy and spectral slope of the demo photos, image by image."""
    energy, slope = [], []
    for images, readable in batches(scan(data), size, 32, 0):
        for image in images[readable]:
            energy.append(high_frequency_energy(image[None]))
            slope.append(spectral_slope(image[None]))
    return statistics.mean(energy), statistics.mean(slope)


def run_lucent(model: FeatureModel, unit: Unit, steps: int, size: int, seed: int) -> Tensor:
    """Lucent's render_vis as a user calls it, on the same unit; its hooks are removed afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lucent.optvis import param, render, transform
    torch.manual_seed(seed)
    np.random.seed(seed)  # Lucent's transforms draw from numpy's global generator
    layer = model.logits_layer if unit.layer == LOGITS else unit.layer  # Lucent names the module itself
    before = {module: set(module._forward_hooks) for module in model.modules()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images = render.render_vis(
                model, f"net_{layer.replace('.', '_')}:{unit.channel}",
                param_f=lambda: param.image(size, fft=True, decorrelate=True),
                optimizer=lambda params: torch.optim.Adam(params, lr=0.05),
                transforms=transform.standard_transforms, thresholds=(steps,), preprocess=False,
                show_image=False, progress=False)
    finally:
        for module in model.modules():
            for key in set(module._forward_hooks) - before[module]:
                del module._forward_hooks[key]
    return torch.from_numpy(images[-1]).permute(0, 3, 1, 2).to(model.device)


def lucent_available() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import lucent.optvis.render  # noqa: F401
    except ImportError:
        return False
    return True


def measure(recipe: list[str] | None, objectives: list[Objective], model: FeatureModel, args: argparse.Namespace,
            prior: str, cache: Path, seeds: tuple[int, ...] = SEEDS, trials: dict | None = None) -> Row:
    """Run the recipe on every unit and seed and measure each image against the demo folder.

    `trials` keeps each unit's 2-AFC (its queries and references embedded by the judge) per seed
    for the next recipe: the same for every recipe, and the longest part of a score.
    """
    row, trials, measures = Row([], [], [], [], [], 0.0, []), {} if trials is None else trials, Measures()
    judge = Judge(efficientnet_lite("lite1"), size=args.size)  # held out: the panel explains Lite0
    started = time.perf_counter()
    for objective in objectives:
        unit = resolved(objective, model)
        acts = examples.activations(model, unit, args.data, size=args.size, batch_size=32, workers=0,
                                    model_key=f"quality-panel-{args.panel}", cache_dir=cache, progress=False)
        top = examples.select(acts, unit, 8, 1)["top"]
        for seed in seeds:
            if recipe is None:
                image = run_lucent(model, unit, args.steps, args.size, seed)
            else:
                overrides = [o.format(prior=prior, data=args.data) for o in recipe]
                image = fvexp.visualize(model, objective, steps=args.steps, size=args.size, seed=seed,
                                        progress=False, overrides=[*overrides, f"data.cache_dir={cache}"]).image
            row.activation.append(unit_value(model, unit, image).item() / top[0].value)
            row.energy.append(high_frequency_energy(image))
            row.slope.append(spectral_slope(image))
            with tempfile.TemporaryDirectory() as out:
                row.sanity.append(sanity.check(model, unit.layer, image, acts, top, args.size, seed,
                                               Path(out))["sanity_score"])
            crop = examples.receptive_field(model, unit.layer, args.size) if acts.map_size != (1, 1) else None
            key = (unit.layer, unit.channel, seed)
            if key not in trials:
                trials[key] = Trial.of(judge, acts, unit, args.size, crop, measures, seed)
            seen = centre_crop(image, crop / args.size) if crop else image  # as `interpretability` scores it
            row.interpretability.append(trials[key].score(judge.embed(seen), measures.bootstrap, seed).share)
            if seed == seeds[0]:
                row.images.append(image[0].cpu())
    row.seconds = time.perf_counter() - started
    return row


def table(rows: dict[str, Row | None], photos: tuple[float, float]) -> list[str]:
    """The Markdown table: one line per recipe, the demo photos first."""
    lines = ["| recipe | activation / best photo (median) | high-frequency energy | spectral slope | sanity score "
             "| interpretability | goal |", "|---|---|---|---|---|---|---|",
             f"| demo photos (reference statistics) | 1 (by definition) | {photos[0]:.4f} | {photos[1]:.2f} | – | – | "
             "– |"]
    for name, row in rows.items():
        if row is None:
            lines.append(f"| {name} | not run: Lucent is not importable here (see benchmarks/lucent_compare.py) "
                         "| | | | | |")
            continue
        activation, energy, slope = statistics.median(row.activation), statistics.mean(row.energy), \
            statistics.mean(row.slope)
        scores = [s for s in row.interpretability if s is not None]
        half = stats.t.ppf(0.975, len(scores) - 1) * statistics.stdev(scores) / len(scores) ** 0.5 \
            if len(scores) > 1 else float("nan")
        mean = statistics.mean(scores) if scores else float("nan")
        shown = f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]" if scores else "not measured"
        misses = [miss for miss, ok in ((f"activation {activation:.2f} < 3", activation >= 3),
                                        (f"energy {energy / photos[0]:.1f}× the photos'", energy <= 2 * photos[0]),
                                        (f"slope {slope - photos[1]:+.2f} from theirs", abs(slope - photos[1]) <= 0.3))
                  if not ok]
        goal = "no: " + ", ".join(misses) if misses else "yes"
        lines.append(f"| {name} | {activation:.2f} | {energy:.4f} | {slope:.2f} | "
                     f"{statistics.mean(row.sanity):.3f} | {shown} | {goal} |")
    return lines


def sheet(rows: dict[str, Row | None], objectives: list[Objective], path: Path) -> None:
    """One row per recipe, one column per unit (seed 0), labelled."""
    cells: list[tuple[Image.Image, str]] = []
    for name, row in rows.items():
        if row is None:
            continue
        for i, (image, objective) in enumerate(zip(row.images, objectives, strict=True)):
            unit = objective.unit
            label = f"{name[:22]}\n" if i == 0 else "\n"
            layer = unit.layer.replace("backbone/encoder/layer/", "block ").replace("/mlp/activation/Mul_1", " mlp")
            cells.append((to_pil(image), f"{label}{layer}:{unit.channel}"))
    contact_sheet(cells, columns=len(objectives), side=96).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the demo folder (python -m fvexp.tools.demo DIR)")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--prior", help="a prior file trained at --size; default: train one on --data first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="measure only these recipes (their numbers, from 0), e.g. to "
                        "split the panel over processes; a call without --only then writes the report")
    parser.add_argument("--report", action="store_true", help="write the report from the recipes measured so far")
    parser.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "fvexp-quality",
                        help="where each recipe's measurements are kept, so that a recipe is measured once")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--panel", choices=("lite0", "dinov2"), default="lite0",
                        help="dinov2: the transformer panel (see above) instead of EfficientNet-Lite0's")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per unit, from 0")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lean_runs()
    if args.panel == "dinov2":
        return transformer_panel(args)
    model = efficientnet_lite()
    cache = Path(tempfile.gettempdir()) / "fvexp-quality-cache"
    prior = args.prior or str(fvexp.run("task=train_prior", f"data.dir={args.data}", f"data.size={args.size}",
                                        "tracking=none", "progress=false", f"data.cache_dir={cache}").path)
    print(f"prior: {prior}", flush=True)
    objectives = panel(model)
    photos = photo_statistics(args.data, args.size)
    rows: dict[str, Row | None] = {}
    args.results.mkdir(parents=True, exist_ok=True)
    trials: dict = {}  # each unit's 2-AFC, embedded once for every recipe of this call
    for number, (name, recipe) in enumerate(RECIPES.items()):
        if args.only is not None and str(number) not in args.only:
            continue
        kept = args.results / f"{number}.pt"  # a recipe measured by an earlier (or a parallel) call
        if kept.exists():
            rows[name] = Row(**torch.load(kept))
        elif args.report:
            continue
        elif recipe is None and not lucent_available():
            rows[name] = None
        else:
            rows[name] = measure(recipe, objectives, model, args, prior, cache, tuple(range(args.seeds)), trials)
            torch.save(vars(rows[name]), kept)
        print("\n".join(table({name: rows[name]}, photos)[-1:]), flush=True)
    if args.only is not None:
        return
    lines = table(rows, photos)
    sheet(rows, objectives, args.out / "quality.png")
    write(args, lines, photos, prior)
    print("\n".join(lines))


def transformer_panel(args: argparse.Namespace) -> None:
    """The DINOv2 panel: both recipes on its 12 MLP units, written to docs/quality_dinov2.md and .png."""
    model = dinov2_small()
    objectives = dino_panel(model)
    cache = Path(tempfile.gettempdir()) / "fvexp-quality-cache"
    photos = photo_statistics(args.data, args.size)
    folder = args.results / "dinov2"
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Row | None] = {}
    for number, (name, recipe) in enumerate(DINO_RECIPES.items()):
        kept = folder / f"{number}.pt"
        if kept.exists():
            rows[name] = Row(**torch.load(kept))
        else:
            rows[name] = measure(recipe, objectives, model, args, "", cache, tuple(range(args.seeds)))
            torch.save(vars(rows[name]), kept)
        print(table({name: rows[name]}, photos)[-1], flush=True)
    lines = [*table(rows, photos), "", "| recipe | patch-grid peak (median; about 1: no grid) |", "|---|---|",
             *(f"| {name} | {statistics.median(grid_peak(i) for i in row.images):.2f} |" for name, row in rows.items())]
    sheet(rows, objectives, args.out / "quality_dinov2.png")
    text = ["# Image quality: the transformer panel", "",
            "Written by `benchmarks/quality.py --panel dinov2` (its docstring defines the panel and the columns):", "",
            "```bash",
            f"python benchmarks/quality.py --panel dinov2 --data outputs/demo_photos --steps {args.steps} "
            f"--size {args.size} --seeds {args.seeds}", "```", "",
            f"{len(objectives)} units × {args.seeds} seed(s) per recipe, {args.steps} Adam steps at {args.size} px, "
            f"DINOv2 ViT-S/14 (`model=dinov2_small`) on the CPU; interpretability judged by EfficientNet-Lite1. "
            f"Goal: {GOAL}.", "", *lines, "",
            "![the panel, seed 0: one row per recipe](quality_dinov2.png)", ""]
    (args.out / "quality_dinov2.md").write_text("\n".join(text))
    print("\n".join(lines))


def write(args: argparse.Namespace, lines: list[str], photos: tuple[float, float], prior: str) -> None:
    """docs/quality.md: the command, the table, the goal and the contact sheet."""
    text = [
        "# Image quality: the panel", "",
        "Written by `benchmarks/quality.py` (its docstring defines the panel and the columns):", "",
        "```bash",
        f"python benchmarks/quality.py --data outputs/demo_photos --steps {args.steps} --size {args.size} "
        f"--seeds {args.seeds}", "```", "",
        f"{len(LAYERS) * 3 + len(CLASSES)} units × {args.seeds} seed(s) per recipe, {args.steps} Adam steps at "
        f"{args.size} px, EfficientNet-Lite0 on the CPU; the prior: `{Path(prior).name}` trained by "
        f"`task=train_prior` on the demo folder at data.size={args.size}. Goal: {GOAL}.", "",
        *lines, "", "![the panel, seed 0: one row per recipe](quality.png)", ""]
    (args.out / "quality.md").write_text("\n".join(text))



if __name__ == "__main__":
    main()
