"""A "don't trust your eyes" check: does the network process a visualization like natural images?

Geirhos et al. (2023, "Don't trust your eyes: on the (un)reliability of feature visualizations")
built visualizations that look right yet reach the unit along a path natural images never take.
This compares the activation path on the way to the unit: for each layer up to the unit's, every
image is summarized by its channel means, and two images are compared by the rank correlation of
those vectors (Spearman). How close an image is to the unit's top natural examples is its mean
correlation with them; each top example's own closeness is measured against the others.

The score of a layer is the share of top examples that are no closer to the rest than the
visualization is: about 0.5 means the visualization is as close to the natural exciters as a
typical one of them, 0 means it is farther from them than every one. The score is the mean over
the layers of the path, reported beside the same score for randomly drawn images of the folder
(the floor). A visualization that excites the unit strongly yet scores near or below the floor
reaches it along a path natural images do not take: do not trust what it seems to show.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fvexp.optvis.data import open_image
from fvexp.optvis.examples import Activations, Example
from fvexp.optvis.features import FeatureModel

SAMPLE = 8  # random images drawn as the floor


@torch.no_grad()
def path_layers(model: FeatureModel, layer: str) -> list[str]:
    """The layers at the depth of `layer` (its siblings, e.g. `_blocks.0` … `_blocks.8`) that run before it.

    Convolutions with a batch norm folded into them are left out: their batch norm, which now
    passes their output on unchanged, stands for them (and reading them is refused). `logits`
    stands for the model's logits layer, by its name.
    """
    target = model.layer(layer)
    layer = next(name for name, module in model.net.named_modules() if module is target)
    depth = layer.count(".")
    order: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, Tensor) and output.dim() in (2, 4):
                order.append(name)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.net.named_modules()
               if n and n.count(".") == depth and n not in model.folded]
    try:
        model(torch.zeros(1, 3, model.min_size * 2, model.min_size * 2, device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    once = [name for name in order if order.count(name) == 1]
    return once[: once.index(layer) + 1] if layer in once else [layer]


@torch.no_grad()
def signatures(model: FeatureModel, layers: list[str], images: Tensor) -> dict[str, Tensor]:
    """Per layer, each image's channel means: (B, C)."""
    with model.reading(layers) as read:
        acts = read(images.to(model.device))
    return {name: (a.flatten(2).mean(2) if a.dim() == 4 else a).cpu() for name, a in acts.items()}


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """(len(a), len(b)) rank correlations between the rows of `a` and of `b`."""

    def standard_ranks(x: Tensor) -> Tensor:
        r = x.argsort(1).argsort(1).double()
        r = r - r.mean(1, keepdim=True)
        return r / r.norm(dim=1, keepdim=True).clamp(min=1e-12)

    return standard_ranks(a) @ standard_ranks(b).T


def check(model: FeatureModel, layer: str, visualization: Tensor, acts: Activations, top: list[Example], size: int,
          seed: int,
          out: Path) -> dict[str, float]:
    """The score and per-layer similarities as metrics (`sanity.*`), also written to `out/sanity.json`."""
    layers = path_layers(model, layer)
    top_files = {e.file for e in top}
    readable = [f for f, v in zip(acts.files, acts.values[:, 0], strict=True) if np.isfinite(v) and f not in top_files]
    rng = np.random.default_rng(seed)
    drawn = [readable[i] for i in rng.choice(len(readable), size=min(SAMPLE, len(readable)), replace=False)]
    natural = torch.stack([open_image(e.file, size) for e in top])
    floor = torch.stack([open_image(f, size) for f in drawn]) if drawn else natural[:0]
    vis, nat, rand = (signatures(model, layers, x) for x in (visualization, natural, floor))
    table = {}
    for name in layers:
        among = spearman(nat[name], nat[name])
        others = (among.sum(1) - among.diagonal()) / max(1, len(among) - 1)  # each top example vs the rest
        closeness = {"visualization": spearman(vis[name], nat[name]).mean(1),
                     "random": spearman(rand[name], nat[name]).mean(1)}
        table[name] = {f"{key}_score": (others[None, :] <= c[:, None]).double().mean().item() if len(c) else 0.0
                       for key, c in closeness.items()}
        table[name] |= {f"{key}_similarity": c.mean().item() for key, c in closeness.items()}
        table[name]["natural_similarity"] = others.mean().item()
    mean = {key: float(np.mean([row[key] for row in table.values()])) for key in next(iter(table.values()))}
    report = {"score": mean["visualization_score"], **mean, "layers": table, "top_examples": len(top),
              "random_examples": len(drawn), "explanation": " ".join(__doc__.split("\n\n")[-1].split())}
    (out / "sanity.json").write_text(json.dumps(report, indent=2) + "\n")
    metrics = {"sanity_score": mean["visualization_score"], "sanity.random_score": mean["random_score"],
               **{f"sanity.{key}": value for key, value in mean.items() if key.endswith("similarity")}}
    metrics |= {f"sanity.layer.{name}": row["visualization_score"] for name, row in table.items()}
    return metrics
