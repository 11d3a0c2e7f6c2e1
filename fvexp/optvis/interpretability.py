"""What a visualization tells a person about its unit, measured by a machine; and whether other networks agree.

**Interpretability (a machine 2-AFC).** Psychophysics measures feature visualizations with a
two-alternative forced choice (Borowski et al. 2021; Zimmermann et al. 2021, 2023): shown a unit's
visualizations as references, which of two natural images, one from the top and one from the
bottom of the unit's ranking, excites the unit more? The Machine Interpretability Score
(Zimmermann, Klindt & Brendel 2024, MIS) puts a perceptual similarity in place of the person: the
machine picks the query closer to the references and, as MIS weighs negative references, farther
from as many random images of the folder. Here the similarity is computed in the features
of a *held-out* network (EfficientNet-Lite1 by default, never the one being explained, which would
judge its own optimum): the cosine of the images' channel means at four depths, averaged, as LPIPS
and DreamSim compare deep features at several depths. The score is the share of correct choices
over every (top, bottom) pair of queries, averaged over `DRAWS` draws of the random images: 0.5 is
chance, 1 means every top query looks more like the references than every bottom one. Its 95 %
interval is a bootstrap over the queries.

Queries come from the unit's ranking of a folder, as crops at the receptive field around the
strongest position (spatial units) or whole images (vector units); the visualization is cropped
alike at its centre, so both are seen at the same scale. The folder's images should be distinct
photos (`fvexp-demo` writes them so): two crops of one photo, one a top and one a bottom query, or
a reference and a query, could be matched by recognizing the photo. The same score with the top
dataset examples as references says how far the folder's best references go; with random images
in both roles it is 0.5 by construction (benchmarks/measure_validity.py checks it on a panel).

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

from fvexp.errors import Arg, ArgumentError, Setting
from fvexp.optvis.data import open_image
from fvexp.optvis.examples import Activations, crop_box, ranking, scores
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.objectives import Unit
from fvexp.optvis.sanity import path_layers
from fvexp.ranges import at_least, ranges

POOL = 64  # ordinary images of the folder (the negative and the random references are drawn from them)
DRAWS = 20  # draws of random references averaged into each score (one draw may happen to resemble a query group)
MIN_QUERIES = 10  # top and bottom queries each, at the least, when the folder is too small for measure.queries


@ranges(references=at_least(1, "at least 1"), queries=at_least(1, "at least 1"), bootstrap=at_least(1, "at least 1"))
class Measures:
    """Which held-out networks measure a run, and the sizes of the 2-AFC protocol.

    `judge` is the EfficientNet-Lite variant whose features are the similarity (None: no
    interpretability score); `transfer` the variants asked for transferability ([]: none);
    `references` the images each arm shows, `queries` the top and the bottom images asked about
    (queries² pairs; 64 keep a unit's 95 % interval within about ±0.1; fewer when the folder is
    too small), `bootstrap` the resamples of the confidence interval.
    """

    def __init__(self, judge: str | None = "lite1", transfer: Sequence[str] = ("lite1", "lite2"),
                 references: int = 8, queries: int = 64, bootstrap: int = 1000) -> None:
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
        raise ArgumentError("the judge network has no blocks to compare images by; use an EfficientNet-Lite variant "
                            "as {judge}", kind="judge", value=None, judge=Arg(Measures, "judge"))
    return sorted({path[round(i)] for i in np.linspace(0, len(path) - 1, count)}, key=path.index)


def similarity(queries: Mapping[str, Tensor], positive: Mapping[str, Tensor], negative: Mapping[str, Tensor],
               centred: bool = True) -> Tensor:
    """Each query's similarity to the positive references less its similarity to the negative ones: (Q,).

    The similarity of two images is the level-averaged cosine of their features, centred by the
    queries' own mean (`centred`): ReLU features are all positive, so uncentred cosines sit near 1
    and what tells the queries apart is a small part of them (benchmarks/measure_validity.py
    measures both). The negative references are as many random images of the folder as there are
    positive ones, as MIS weighs negative references: a query must not win by merely looking like
    a typical photo, and with random images in both roles the two are exchangeable, so the score
    is 0.5 by symmetry, whatever the queries look like.
    """
    total = torch.zeros(len(next(iter(queries.values()))), dtype=torch.float64)
    for name, q in queries.items():
        centre = q.mean(0, keepdim=True) if centred else torch.zeros_like(q[:1])
        unit = F.normalize(q - centre, dim=1)
        for sign, images in ((1, positive), (-1, negative)):
            total += sign * (unit @ F.normalize(images[name] - centre, dim=1).T).mean(1)
    return total / len(queries)


def two_afc(top: Tensor, bottom: Tensor, bootstrap: int = 1000, seed: int = 0) -> Score:
    """The share of (top, bottom) query pairs where the top query is the more similar (ties: half).

    `top` and `bottom` are the queries' similarities, (Q,) or (draws, Q): one row per draw of
    random references, the share then averaged over the draws. Every pair is asked once, so the
    share is the AUC of the similarity between the two groups. The interval resamples the queries
    (pairs sharing a query are not independent) and the draws (which random images were drawn is
    part of the score's uncertainty); resampled shares are counted by ranks (Mann-Whitney).
    """
    top, bottom = top.reshape(-1, top.shape[-1]), bottom.reshape(-1, bottom.shape[-1])
    wins = (top[:, :, None] > bottom[:, None, :]).double() + 0.5 * (top[:, :, None] == bottom[:, None, :]).double()
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(top), (bootstrap, len(top), 1), generator=generator)
    t = top[draws, torch.randint(top.shape[1], (bootstrap, 1, top.shape[1]), generator=generator)]
    b = bottom[draws, torch.randint(bottom.shape[1], (bootstrap, 1, bottom.shape[1]), generator=generator)]
    ranks = torch.cat([t, b], -1).argsort(-1).argsort(-1).double() + 1
    n, m = top.shape[1], bottom.shape[1]
    resampled = ((ranks[..., :n].sum(-1) - n * (n + 1) / 2) / (n * m)).mean(-1)
    low, high = torch.quantile(resampled, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Score(wins.mean().item(), low, high, n * m)


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


@dataclass
class Trial:
    """One unit's 2-AFC, embedded once: the queries, the examples, the ordinary images and the draws.

    From the folder's ranking: ranks [0, references) are the examples, the next `q` the top
    queries, the last `q` the bottom ones; `q` is `measures.queries`, or fewer when the folder is
    small (`interpretability.pairs` says how many pairs were asked). Up to `POOL` images drawn from
    the rest are the ordinary ones; each of `DRAWS` draws takes `references` of them as negative
    references (and another `references` as the positive ones of the random floor).
    """

    queries: dict[str, Tensor]  # level: (2q, C), the top queries first
    examples: dict[str, Tensor]
    pool: dict[str, Tensor]
    draws: list[np.ndarray]  # per draw, 2·references pool indices: positives of the floor, then negatives
    q: int

    @classmethod
    def of(cls, judge: Judge, acts: Activations, unit: Unit, size: int, crop: int | None, measures: Measures,
           seed: int = 0) -> Trial:
        order = ranking(scores(acts, unit))
        k = measures.references
        q = min(measures.queries, (len(order) - 3 * k) // 2)
        if q < MIN_QUERIES:
            raise ArgumentError(f"the interpretability score needs at least {3 * k + 2 * MIN_QUERIES} readable "
                                f"images in {{folder}} (3 × {{references}}={k} + 2 × {MIN_QUERIES} queries), and "
                                f"there are {len(order)}; use a larger folder or lower {{references}}", kind="images",
                                value=len(order), allowed=f"at least {3 * k + 2 * MIN_QUERIES}", folder=Setting.FOLDER,
                                references=Arg(Measures, "references"))
        middle = order[k + q : len(order) - q]
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(middle, min(POOL, len(middle)), replace=False))

        def embed(picks: Sequence[int]) -> dict[str, Tensor]:
            return judge.embed(query_images(acts, unit, size, crop, picks))

        top, bottom = embed(order[k : k + q]), embed(order[len(order) - q :])
        return cls({name: torch.cat([top[name], bottom[name]]) for name in top}, embed(order[:k]), embed(picked),
                   [rng.permutation(len(picked))[: 2 * k] for _ in range(DRAWS)], q)

    def score(self, positive: Mapping[str, Tensor] | None, bootstrap: int, seed: int = 0,
              centred: bool = True) -> Score:
        """The 2-AFC with `positive` as references (None: a random draw of the pool each time)."""
        k = len(self.draws[0]) // 2
        rows = [similarity(self.queries, {n: f[d[:k]] for n, f in self.pool.items()} if positive is None
                           else positive, {n: f[d[k:]] for n, f in self.pool.items()}, centred)
                for d in self.draws]
        similar = torch.stack(rows)
        return two_afc(similar[:, : self.q], similar[:, self.q :], bootstrap, seed)


def interpretability(judge: Judge, visualizations: Tensor, acts: Activations, unit: Unit, size: int,
                     crop: int | None, measures: Measures, seed: int = 0) -> dict[str, float]:
    """The 2-AFC score of `visualizations` for `unit`, beside the top examples' and random references' scores.

    `crop` is the receptive-field side in pixels at `size` (None: whole images); the
    visualizations are cropped alike at their centre, so that references and queries are seen at
    one scale. See `Trial` for which images play which part.
    """
    protocol = Trial.of(judge, acts, unit, size, crop, measures, seed)
    seen = centre_crop(visualizations, crop / size) if crop else visualizations
    results = {"": protocol.score(judge.embed(seen), measures.bootstrap, seed),
               ".examples": protocol.score(protocol.examples, measures.bootstrap, seed),
               ".random": protocol.score(None, measures.bootstrap, seed)}
    metrics = {f"interpretability{suffix}{part}": value for suffix, s in results.items()
               for part, value in (("", s.share), (".low", s.low), (".high", s.high))}
    return metrics | {"interpretability.pairs": float(protocol.q**2)}


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
