"""Is the interpretability score valid? Chance at chance, natural examples above it, on a fixed panel.

    python benchmarks/measure_validity.py --data outputs/demo_photos --steps 128 --size 128

The panel is fixed before any result is seen: on EfficientNet-Lite0, five channels spread over each
of `_blocks.2` (early), `_blocks.6`, `_blocks.10` (middle) and `_blocks.14` (late), channel
⌊i·C/5⌋ for i = 0..4, and the classes 0, 250, 500 and 750 (logits): 24 units. For each, the
2-AFC of `fvexp.optvis.interpretability` (judge: EfficientNet-Lite1, held out) with as references

- random photos of the folder (a fresh draw for each of the protocol's draws): chance, 0.5;
- the unit's own top dataset examples: the task solved by the best references a folder has;
- the naive visualization (pixel basis, no transforms) and the default recipe's, one image per unit,
  rendered for all units at once (`per_image`), `--steps` Adam steps at `--size` px;
- Lucent's recipe, when Lucent is importable (benchmarks/quality.py's `run_lucent`);

each with the queries' centring and without it (`--no-centring` rows), and the former protocol's
random floor (10 queries a side, the rest of the pool as negatives, 5 draws) for comparison. Per
arm: the mean over units with a 95 % t-interval over units, and how many units' own intervals
exclude 0.5 (for random references, at most about 5 % may). The activations of the folder are
computed once per layer (the examples cache); the judge embeds each unit's crops once.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy import stats

import fvexp
from fvexp.optvis import examples
from fvexp.optvis.interpretability import Judge, Measures, Score, Trial, centre_crop, similarity, two_afc
from fvexp.optvis.models import FeatureModel, efficientnet_lite
from fvexp.optvis.objectives import Objective, Unit, channel, class_logit, per_image

LAYERS = ("_blocks.2", "_blocks.6", "_blocks.10", "_blocks.14")
CLASSES = (0, 250, 500, 750)
RECIPES = {"naive (pixel, no transforms)": {"param": "pixel", "transforms": "none"}, "default recipe": {}}


def panel(model: FeatureModel) -> list[Objective]:
    shapes = model.probe(list(LAYERS), 128)
    return [channel(layer, shapes[layer][1] * i // 5) for layer in LAYERS for i in range(5)] + \
        [class_logit(label) for label in CLASSES]


def render(model: FeatureModel, objectives: list[Objective], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Each recipe's image of every unit, one optimization per recipe (image i for unit i)."""
    images = {}
    for name, settings in RECIPES.items():
        started = time.perf_counter()
        images[name] = fvexp.visualize(model, per_image(objectives), steps=args.steps, size=args.size,
                                       batch=len(objectives), seed=0, progress=False, **settings).image.cpu()
        print(f"rendered {name}: {time.perf_counter() - started:.0f} s", flush=True)
    if args.lucent:
        import importlib.util

        spec = importlib.util.spec_from_file_location("quality", Path(__file__).with_name("quality.py"))
        quality = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(quality)
        if quality.lucent_available():
            images["Lucent's recipe"] = torch.cat([quality.run_lucent(model, o.unit, args.steps, args.size, 0).cpu()
                                                   for o in objectives])
        else:
            print("Lucent is not importable here: its row is left out", flush=True)
    return images


def former_floor(trial: Trial, k: int) -> float:
    """The random floor as it was measured before: 10 queries a side, the rest of the pool as negatives, 5 draws."""
    ten = {n: torch.cat([f[:10], f[len(f) - 10 :]]) for n, f in trial.queries.items()}
    shares = []
    for draw in range(5):
        order = np.random.default_rng([0, draw]).permutation(len(next(iter(trial.pool.values()))))
        similar = similarity(ten, {n: f[order[:k]] for n, f in trial.pool.items()},
                             {n: f[order[k:]] for n, f in trial.pool.items()})
        shares.append(two_afc(similar[:10], similar[10:], 1).share)
    return statistics.mean(shares)


def summary(name: str, scores: list[Score]) -> str:
    shares = np.array([s.share for s in scores])
    half = stats.t.ppf(0.975, len(shares) - 1) * shares.std(ddof=1) / np.sqrt(len(shares))
    misses = sum(not s.low <= 0.5 <= s.high for s in scores)
    width = statistics.mean(s.high - s.low for s in scores) / 2
    return (f"| {name} | {shares.mean():.3f} [{shares.mean() - half:.3f}, {shares.mean() + half:.3f}] | "
            f"{misses} of {len(scores)} | ±{width:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the demo folder (fvexp-demo DIR)")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=128, help="image size of the folder's pass, judge and renders")
    parser.add_argument("--cache", type=Path, default=Path("outputs/cache"), help="the activations cache")
    parser.add_argument("--lucent", action="store_true", help="also Lucent's recipe (needs Lucent importable)")
    parser.add_argument("--units", type=int, default=None, help="only the panel's first N units (a smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, measures = efficientnet_lite(), Measures()
    judge = Judge(efficientnet_lite("lite1"), size=args.size)
    objectives = panel(model)[: args.units]
    for objective in objectives:
        objective.prepare(model, model.probe(objective.network_layers, model.min_size * 4))
    images = render(model, objectives, args)
    data = SimpleNamespace(dir=str(args.data), size=args.size, batch_size=32, workers=0)
    rows: dict[str, list[Score]] = {}
    former, started = [], time.perf_counter()
    for i, objective in enumerate(objectives):
        unit: Unit = objective.unit
        acts = examples.activations(model, unit, data, "lite0", args.cache, progress=False)
        crop = examples.receptive_field(model, unit.layer, args.size) if acts.map_size != (1, 1) else None
        trial = Trial.of(judge, acts, unit, args.size, crop, measures)
        arms = {"random photos": None, "top dataset examples": trial.examples}
        arms |= {name: judge.embed(centre_crop(shown[i : i + 1], crop / args.size) if crop else shown[i : i + 1])
                 for name, shown in images.items()}
        for centred, suffix in ((True, ""), (False, ", not centred")):
            for name, positive in arms.items():
                rows.setdefault(name + suffix, []).append(trial.score(positive, measures.bootstrap, 0, centred))
        former.append(former_floor(trial, measures.references))
        print(f"{unit.layer}:{unit.channel}  " + "  ".join(f"{n[:12]} {r[-1].share:.2f}" for n, r in rows.items()
                                                           if not n.endswith("centred")), flush=True)
    print(f"\nscored {len(objectives)} units in {time.perf_counter() - started:.0f} s; {trial.q} queries a side "
          f"({trial.q**2} pairs), {measures.references} references, {len(trial.draws)} draws of random ones\n")
    print("| references | mean over units [95 % interval] | units whose interval excludes 0.5 | mean half-width |")
    print("|---|---|---|---|")
    for name, scores in rows.items():
        print(summary(name, scores))
    spread = np.array(former)
    print(f"\nformer protocol's random floor: mean {spread.mean():.3f}, units from {spread.min():.2f} to "
          f"{spread.max():.2f}")


if __name__ == "__main__":
    main()
