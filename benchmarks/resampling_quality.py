"""Image quality with one resampling a step (`Affine`) against two (`Scale` then `Rotate`, fvexp before).

Fusing scale and rotation changes the pixels a recipe produces, so it must not make the images
worse. Both arms run the real optimization core on the same units and seeds, one after the other;
per arm, as means over the units and seeds: the objective on the final image, the objective
averaged over 16 draws of the standard transforms (the robustness it was optimized for), once with
two resamplings and once with one (each arm is at home under one of them), and the
high-frequency energy and spectral slope of the image (`fvexp.optvis.metrics`; natural photos sit
near a slope of -2, noise near 0).

    .venv/bin/python benchmarks/resampling_quality.py [--steps 192] [--size 128] [--transforms standard]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fvexp.optvis import objectives
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.metrics import high_frequency_energy, spectral_slope
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.objectives import INPUT
from fvexp.optvis.params import Fourier
from fvexp.optvis.render import render
from fvexp.optvis.transforms import Compose, standard

ROOT = Path(__file__).resolve().parents[1]
UNITS = (("_blocks.4", 7), ("_blocks.6", 20), ("_blocks.8", 5), ("_blocks.10", 50), ("_blocks.14", 100), ("_fc", 1))
SEEDS = (0, 1)


def preset(name: str, fuse: bool) -> Compose:
    node = OmegaConf.load(ROOT / "conf" / "transforms" / f"{name}.yaml")
    return instantiate({"_target_": "fvexp.optvis.transforms.Compose", "pieces": node.pieces, "fuse": fuse})


def unit(layer: str, index: int) -> objectives.Objective:
    return objectives.class_logit(index, layer) if layer == "_fc" else objectives.channel(layer, index)


def scores(model: FeatureModel, objective: objectives.Objective, transforms: Compose, args: argparse.Namespace,
           seed: int) -> tuple[float, ...]:
    """Objective, objective under 16 standard-transform draws (two, one resampling), high-frequency
    energy, spectral slope."""
    torch.manual_seed(seed)
    result = render(model, objective, Fourier(1, args.size), transforms, lambda p: torch.optim.Adam(p, lr=0.05),
                    args.steps, seed, progress=False)
    image, robust = result.image, []
    with torch.no_grad(), model.reading(objective.network_layers) as read:
        plain = float(objective({**read(image), INPUT: image}).mean())
        for judge in (standard(fuse=False), standard()):
            generator = torch.Generator().manual_seed(1234)
            robust.append(statistics.mean(float(objective({**read(judge(image, generator)), INPUT: image}).mean())
                                          for _ in range(16)))
    return plain, *robust, high_frequency_energy(image), spectral_slope(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=192)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--transforms", default="standard", help="conf/transforms preset: standard or distill")
    args = parser.parse_args()
    model = efficientnet_lite()
    arms: dict[str, list[tuple[float, ...]]] = {"two resamplings (before)": [], "one resampling (Affine)": []}
    rows = []
    for layer, index in UNITS:
        for seed in SEEDS:
            pair = [scores(model, unit(layer, index), preset(args.transforms, fuse), args, seed)
                    for fuse in (False, True)]
            for name, values in zip(arms, pair, strict=True):
                arms[name].append(values)
            rows.append(f"{layer}:{index} seed {seed}: objective {pair[0][0]:7.2f} -> {pair[1][0]:7.2f}")
    print("\n".join(rows))
    print(f"\n{args.transforms} transforms, {args.steps} steps at {args.size} px, "
          f"{len(UNITS)} units x {len(SEEDS)} seeds")
    print("| arm | objective | under standard transforms, two resamplings | the same, one resampling | "
          "high-frequency energy | spectral slope |")
    print("|---|---|---|---|---|---|")
    for name, values in arms.items():
        means = [statistics.mean(column) for column in zip(*values, strict=True)]
        print(f"| {name} | {means[0]:.2f} | {means[1]:.2f} | {means[2]:.2f} | {means[3]:.4f} | {means[4]:.2f} |")
    for column, judge in ((0, "on the image itself"), (1, "under two resamplings"), (2, "under one resampling")):
        wins = sum(after[column] >= before[column] for before, after in zip(*arms.values(), strict=True))
        print(f"one resampling scores at least as high {judge} in {wins} of {len(UNITS) * len(SEEDS)} runs")


if __name__ == "__main__":
    main()
