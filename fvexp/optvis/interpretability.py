"""What a visualization tells a person about its unit, measured by a machine; and whether other networks agree.

**Interpretability (a machine 2-AFC).** Psychophysics measures feature visualizations with a
two-alternative forced choice (Borowski et al. 2021; Zimmermann et al. 2021, 2023): shown a unit's
visualizations as references, which of two natural images, one from the top and one from the
bottom of the unit's ranking, excites the unit more? The Machine Interpretability Score
(Zimmermann, Klindt & Brendel 2024, MIS) puts a perceptual similarity in place of the person: the
machine picks the query closer to the references (and, as MIS weighs negative references, farther
from ordinary images of the folder). Here the similarity is computed in the features
of a *held-out* network (EfficientNet-Lite1 by default, never the one being explained, which would
judge its own optimum): the cosine of the images' channel means at four depths, averaged, as LPIPS
and DreamSim compare deep features at several depths. The score is the share of correct choices
over every (top, bottom) pair of queries: 0.5 is chance, 1 means every top query looks more like
the references than every bottom one. Its 95 % interval is a bootstrap over the queries.

Queries come from the unit's ranking of a folder, as crops at the receptive field around the
strongest position (spatial units) or whole images (vector units); the visualization is cropped
alike at its centre, so both are seen at the same scale. The same score with the top dataset
examples as references is the upper reference; with random images of the folder, the floor.

**Transferability** (Fel et al. 2023, MACO): do held-out classifiers see the class in a class
visualization? The probability they give the target class, and top-1 / top-5 hits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from fvexp.errors import FvexpError
from fvexp.optvis.data import open_image
from fvexp.optvis.examples import Activations, crop_box, ranking, scores
from fvexp.optvis.models import FeatureModel
from fvexp.optvis.objectives import Unit
from fvexp.optvis.sanity import path_layers

POOL = 64  # ordinary images of the folder (the floor's references are drawn from them)
FLOOR_DRAWS = 5  # random reference sets averaged into the floor


class Measures:
    """Which held-out networks measure a run, and the sizes of the 2-AFC protocol.

    `judge` is the EfficientNet-Lite variant whose features are the similarity (None: no
    interpretability score); `transfer` the variants asked for transferability ([]: none);
    `references` the images each arm shows, `queries` the top and the bottom images asked about
    (queries² pairs), `bootstrap` the resamples of the confidence interval.
    """

    def __init__(self, judge: str | None = "lite1", transfer: Sequence[str] = ("lite1", "lite2"),
                 references: int = 8, queries: int = 10, bootstrap: int = 1000) -> None:
        if references < 1 or queries < 1 or bootstrap < 1:
            raise FvexpError(f"measure.references={references}, measure.queries={queries} and "
                             f"measure.bootstrap={bootstrap} must each be at least 1")
        self.judge, self.transfer = judge, list(transfer)
        self.references, self.queries, self.bootstrap = references, queries, bootstrap


@dataclass(frozen=True)
class Score:
    """The share of correct 2-AFC choices over `pairs` pairs, with its 95 % bootstrap interval."""

    share: float
    low: float
    high: float
    pairs: int


class Judge:
    """A held-out network's features as a perceptual similarity: channel means at several depths."""

    def __init__(self, model: FeatureModel, levels: Sequence[str] = (), size: int = 224) -> None:
        self.model, self.size = model, size
        self.levels = list(levels) or spread_layers(model)

    @torch.no_grad()
    def embed(self, images: Tensor) -> dict[str, Tensor]:
        """Per level, each image's channel means (B, C), at the judge's input size."""
        images = F.interpolate(images.to(self.model.device), size=(self.size, self.size), mode="bilinear",
                               antialias=True, align_corners=False)
        with self.model.reading(self.levels) as read:
            acts = read(images)
        return {name: (a.flatten(2).mean(2) if a.dim() == 4 else a).double().cpu() for name, a in acts.items()}


def spread_layers(model: FeatureModel, count: int = 4) -> list[str]:
    """`count` evenly spaced blocks of the network, its last included: shallow to deep features."""
    blocks = [name for name, _ in model.net.named_modules() if name.count(".") == 1]
    path = path_layers(model, blocks[-1]) if blocks else []
    if not path:
        raise FvexpError("the judge network has no blocks to compare images by; use an EfficientNet-Lite variant "
                         "as measure.judge")
    return sorted({path[round(i)] for i in np.linspace(0, len(path) - 1, count)}, key=path.index)


def similarity(queries: Mapping[str, Tensor], references: Mapping[str, Tensor],
               ordinary: Mapping[str, Tensor]) -> Tensor:
    """Each query's similarity to the references beyond its similarity to ordinary images: (Q,).

    The similarity of two images is the level-averaged cosine of their centred features. Ordinary
    images (random ones of the folder) play the part of MIS's negative references: without them, a
    query that merely looks like a typical photo would be picked whatever the references show.
    Features are centred by the queries' own mean, so that what all images share (ReLU outputs are
    positive) does not push every cosine to 1.
    """
    total = torch.zeros(len(next(iter(queries.values()))), dtype=torch.float64)
    for name, q in queries.items():
        centre = q.mean(0, keepdim=True)
        unit = F.normalize(q - centre, dim=1)
        for sign, images in ((1, references), (-1, ordinary)):
            total += sign * (unit @ F.normalize(images[name] - centre, dim=1).T).mean(1)
    return total / len(queries)


def two_afc(top: Tensor, bottom: Tensor, bootstrap: int = 1000, seed: int = 0) -> Score:
    """The share of (top, bottom) query pairs where the top query is the more similar (ties: half).

    Every pair is asked once, so the share is the AUC of the similarity between the two groups;
    the interval resamples the queries, since pairs sharing a query are not independent.
    """

    def share(t: Tensor, b: Tensor) -> Tensor:
        wins = (t[..., :, None] > b[..., None, :]).double() + 0.5 * (t[..., :, None] == b[..., None, :]).double()
        return wins.mean((-2, -1))

    generator = torch.Generator().manual_seed(seed)
    resampled = share(top[torch.randint(len(top), (bootstrap, len(top)), generator=generator)],
                      bottom[torch.randint(len(bottom), (bootstrap, len(bottom)), generator=generator)])
    low, high = torch.quantile(resampled, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Score(share(top, bottom).item(), low, high, len(top) * len(bottom))


def query_images(acts: Activations, unit: Unit, size: int, crop: int | None, picks: Sequence[int]) -> Tensor:
    """The folder's images `picks` (indices), preprocessed and cropped around the unit's strongest position."""
    w = acts.map_size[1]
    out = []
    for n in picks:
        image = open_image(acts.files[n], size)
        flat = int(acts.where[n, unit.channel])
        if crop and flat >= 0:
            left, top, right, bottom = crop_box(divmod(flat, w), acts.map_size, crop, size)
            image = image[:, top:bottom, left:right]
        out.append(F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(out)


def centre_crop(images: Tensor, share: float) -> Tensor:
    """The central `share` of each image's side: the visualization at the scale of the query crops."""
    side = images.shape[-1]
    crop = max(1, round(side * share))
    start = (side - crop) // 2
    return images[..., start : start + crop, start : start + crop]


def interpretability(judge: Judge, visualizations: Tensor, acts: Activations, unit: Unit, size: int,
                     crop: int | None, measures: Measures, seed: int = 0) -> dict[str, float]:
    """The 2-AFC score of `visualizations` for `unit`, beside the top-examples ceiling and the random floor.

    From the folder's ranking: ranks [0, references) are the examples' references, the next
    `queries` the top queries, the last `queries` the bottom ones. Up to `POOL` images drawn from
    the rest are the ordinary images; the floor shows `references` of them as references (against
    the others as ordinary), averaged over `FLOOR_DRAWS` draws since one small draw may happen to
    resemble the top queries. `crop` is the receptive-field side in pixels at `size` (None: whole images).
    """
    order = ranking(scores(acts, unit))
    k, q = measures.references, measures.queries
    if len(order) < 3 * k + 3 * q:
        raise FvexpError(f"the interpretability score needs at least {3 * k + 3 * q} readable images in data.dir "
                         f"(3 × measure.references={k} + 3 × measure.queries={q}), and there are {len(order)}; "
                         "use a larger folder or lower measure.references and measure.queries")
    middle = order[k + q : len(order) - q]
    rng = np.random.default_rng(seed)
    pool = judge.embed(query_images(acts, unit, size, crop, np.sort(rng.choice(middle, min(POOL, len(middle)),
                                                                                 replace=False))))
    top = judge.embed(query_images(acts, unit, size, crop, order[k : k + q]))
    bottom = judge.embed(query_images(acts, unit, size, crop, order[len(order) - q :]))
    queries = {name: torch.cat([top[name], bottom[name]]) for name in top}

    def score(references: Mapping[str, Tensor], ordinary: Mapping[str, Tensor]) -> Score:
        similar = similarity(queries, references, ordinary)
        return two_afc(similar[:q], similar[q:], measures.bootstrap, seed)

    seen = centre_crop(visualizations, crop / size) if crop else visualizations
    results = {"": score(judge.embed(seen), pool),
               ".examples": score(judge.embed(query_images(acts, unit, size, crop, order[:k])), pool)}
    draws = [rng.permutation(len(next(iter(pool.values())))) for _ in range(FLOOR_DRAWS)]
    floor = [score({n: f[d[:k]] for n, f in pool.items()}, {n: f[d[k:]] for n, f in pool.items()}) for d in draws]
    results[".random"] = Score(*(float(np.mean([getattr(f, key) for f in floor])) for key in ("share", "low", "high")),
                               floor[0].pairs)
    metrics = {f"interpretability{suffix}{part}": value for suffix, s in results.items()
               for part, value in (("", s.share), (".low", s.low), (".high", s.high))}
    return metrics | {"interpretability.pairs": float(q * q)}


@torch.no_grad()
def transferability(networks: Mapping[str, FeatureModel], images: Tensor, index: int) -> dict[str, float]:
    """Per held-out network: its mean probability for class `index` on the images, and top-1 / top-5 hit rates."""
    metrics = {}
    for name, network in networks.items():
        probs = network(images.to(network.device)).float().softmax(1)
        ranks = (probs > probs[:, index : index + 1]).sum(1)  # how many classes beat the target
        metrics |= {f"transferability.{name}.prob": probs[:, index].mean().item(),
                    f"transferability.{name}.top1": (ranks < 1).double().mean().item(),
                    f"transferability.{name}.top5": (ranks < 5).double().mean().item()}
    return metrics
