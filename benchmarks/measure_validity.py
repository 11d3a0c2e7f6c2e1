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
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import fvexp
from fvexp.optvis import examples, sanity
from fvexp.optvis.data import open_image
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.interpretability import Judge, Measures, Score, Trial, centre_crop, similarity, two_afc
from fvexp.optvis.models import efficientnet_lite
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
        if name.split()[0] not in args.recipes:
            continue
        started = time.perf_counter()
        images[name] = fvexp.visualize(model, per_image(objectives), steps=args.steps, size=args.size,
                                       batch=len(objectives), seed=0, progress=False, **settings).image.cpu()
        print(f"rendered {name}: {time.perf_counter() - started:.0f} s", flush=True)
    if args.lucent:
        import importlib.util

        spec = importlib.util.spec_from_file_location("quality", Path(__file__).with_name("quality.py"))
        quality = importlib.util.module_from_spec(spec)
        sys.modules["quality"] = quality  # its dataclasses look their module up there
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


def sanity_scores(model: FeatureModel, unit: Unit, acts: examples.Activations, photos: torch.Tensor,
                  shown: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per image, the sanity score (`fvexp.optvis.sanity.check`'s) against the unit's 8 top examples.

    For every other photo of the folder (`photos`, in `acts.files` order: the random floor image by
    image, not a draw of 8), for each top example against the other seven, and for each image in
    `shown` (one per recipe).
    """
    layers = sanity.path_layers(model, unit.layer)
    top = list(examples.ranking(examples.scores(acts, unit))[:8])
    rest = [n for n in range(len(photos)) if n not in top and np.isfinite(acts.values[n, 0])]
    natural = sanity.signatures(model, layers, photos[top])
    chunks = [sanity.signatures(model, layers, photos[rest[i : i + 64]]) for i in range(0, len(rest), 64)]
    groups = {"random photos": {n: torch.cat([c[n] for c in chunks]) for n in layers}, "top examples": natural}
    groups |= {name: sanity.signatures(model, layers, image) for name, image in shown.items()}
    result = {}
    for name, signature in groups.items():
        per_layer = []
        for layer in layers:
            among = sanity.spearman(natural[layer], natural[layer])
            rest_of_top = (among.sum(1) - among.diagonal()) / (len(among) - 1)
            closeness = rest_of_top if name == "top examples" else \
                sanity.spearman(signature[layer], natural[layer]).mean(1)
            per_layer.append((rest_of_top[None, :] <= closeness[:, None]).double().mean(1))
        result[name] = torch.stack(per_layer).mean(0).numpy()
    return result


def sanity_summary(scores: dict[str, list[np.ndarray]]) -> list[str]:
    """The sanity score's floor and what single images score, over the panel's units."""
    random_ = scores["random photos"]
    low = [np.percentile(r, 5) for r in random_]
    floors = [np.random.default_rng(0).choice(r, (1000, sanity.SAMPLE)).mean(1) for r in random_]
    lines = ["| images | mean over units [95 % interval] | one image's (or floor's) 95 % range, mean over units "
             "| units below 95 % of random photos |", "|---|---|---|---|"]
    for name, per_unit in [("random photos (one at a time)", random_),
                           (f"the logged floor (mean of {sanity.SAMPLE} random photos)", floors),
                           *((n, v) for n, v in scores.items() if n != "random photos")]:
        means = np.array([v.mean() for v in per_unit])
        half = stats.t.ppf(0.975, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means))
        ranges = np.array([np.percentile(v, [2.5, 97.5]) for v in per_unit]).mean(0)
        spread = f"{ranges[0]:.3f} – {ranges[1]:.3f}" if max(len(v) for v in per_unit) > 1 else "– (one image)"
        below = sum(float(v.mean()) < floor for v, floor in zip(per_unit, low, strict=True))
        lines.append(f"| {name} | {means.mean():.3f} [{means.mean() - half:.3f}, {means.mean() + half:.3f}] | "
                     f"{spread} | {below} of {len(means)} |")
    return lines


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
    parser.add_argument("--recipes", nargs="*", choices=("naive", "default"), default=("naive", "default"),
                        help="fvexp's recipes to render (none: the references' rows, and Lucent's with --lucent)")
    parser.add_argument("--units", type=int, default=None, help="only the panel's first N units (a smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, measures = efficientnet_lite(), Measures()
    judge = Judge(efficientnet_lite("lite1"), size=args.size)
    objectives = panel(model)[: args.units]
    for objective in objectives:
        objective.prepare(model, model.probe(objective.network_layers, model.min_size * 4))
    images = render(model, objectives, args)
    rows: dict[str, list[Score]] = {}
    sanities: dict[str, list[np.ndarray]] = {}
    photos = None  # the folder's images, decoded once for the sanity scores of every unit
    former, started = [], time.perf_counter()
    for i, objective in enumerate(objectives):
        unit: Unit = objective.unit
        acts = examples.activations(model, unit, args.data, size=args.size, batch_size=32, workers=0,
                                    model_key="lite0", cache_dir=args.cache, progress=False)
        crop = examples.receptive_field(model, unit.layer, args.size) if acts.map_size != (1, 1) else None
        trial = Trial.of(judge, acts, unit, args.size, crop, measures)
        arms = {"random photos": None, "top dataset examples": trial.examples}
        arms |= {name: judge.embed(centre_crop(shown[i : i + 1], crop / args.size) if crop else shown[i : i + 1])
                 for name, shown in images.items()}
        for centred, suffix in ((True, ""), (False, ", not centred")):
            for name, positive in arms.items():
                rows.setdefault(name + suffix, []).append(trial.score(positive, measures.bootstrap, 0, centred))
        former.append(former_floor(trial, measures.references))
        if photos is None:
            photos = torch.stack([open_image(f, args.size) if np.isfinite(acts.values[n, 0]) else
                                  torch.zeros(3, args.size, args.size) for n, f in enumerate(acts.files)])
        for name, scores in sanity_scores(model, unit, acts, photos,
                                          {n: shown[i : i + 1] for n, shown in images.items()}).items():
            sanities.setdefault(name, []).append(scores)
        print(f"{unit.layer}:{unit.channel}  " + "  ".join(f"{n[:12]} {r[-1].share:.2f}" for n, r in rows.items()
                                                           if not n.endswith("centred")), flush=True)
    print(f"\nscored {len(objectives)} units in {time.perf_counter() - started:.0f} s; {trial.q} queries a side "
          f"({trial.q**2} pairs), {measures.references} references, {len(trial.draws)} draws of random ones\n")
    print("| references | mean over units [95 % interval] | units whose interval excludes 0.5 | mean half-width |")
    print("|---|---|---|---|")
    for name, scores in rows.items():
        print(summary(name, scores))
    print("\nthe sanity score (fvexp.optvis.sanity) on the same panel, against each unit's 8 top examples:\n")
    print("\n".join(sanity_summary(sanities)))
    spread = np.array(former)
    print(f"\nformer protocol's random floor: mean {spread.mean():.3f}, units from {spread.min():.2f} to "
          f"{spread.max():.2f}")


if __name__ == "__main__":
    main()
