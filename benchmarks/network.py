"""The network's own speed-ups, one on top of the other: padding inside the convolutions, batch norms
folded, and the channels-last layout on the CPU.

Forward+backward of EfficientNet-Lite0 four ways: as published (each "same" padding an F.pad before
its convolution, batch norms apart), with the padding inside the convolutions where it is even
(`SamePaddedConv2d`), with its batch norms folded too (NCHW), and folded in the channels-last layout
(what a default run uses on the CPU). All take the same images (a class logit, so the whole network
runs, at 236 px: the mean side the standard transforms feed it) and back-propagate to them; the four
are timed in interleaved rounds and the medians compared. Also prints how far apart their outputs are.

    .venv/bin/python benchmarks/network.py [--rounds 15] [--size 236] [--batch 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fvexp.optvis.features import FeatureModel
from fvexp.optvis.models import efficientnet_lite, published_efficientnet_lite


def step(model: FeatureModel, image: torch.Tensor) -> float:
    """Seconds of one forward and backward pass from the image to logit 1."""
    image = image.clone().requires_grad_(True)
    started = time.perf_counter()
    model(image)[:, 1].sum().backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", type=int, default=236)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plain = efficientnet_lite(fold_batch_norm=False)
    published = FeatureModel(published_efficientnet_lite("lite0"), plain.mean.flatten().tolist(),
                             plain.std.flatten().tolist())
    models = {"published": published,
              "padding inside": plain, "folded": efficientnet_lite(),
              "folded, channels-last": efficientnet_lite().to(memory_format=torch.channels_last)}
    image = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gaps = {name: (model(image) - models["published"](image)).abs().max().item() for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        step(model, image)  # warm-up
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(step(model, image))
    ms = {name: 1e3 * statistics.median(found) for name, found in times.items()}
    print(f"{len(models['folded'].folded)} batch norms folded; logits differ from the published network's by at "
          "most " + ", ".join(f"{gaps[name]:.2g} ({name})" for name in list(models)[1:]))
    print(f"forward+backward, batch {args.batch} at {args.size} px, median of {args.rounds} rounds: "
          + ", ".join(f"{name} {t:.1f} ms" for name, t in ms.items()))
    print(f"padding inside: {ms['published'] / ms['padding inside']:.2f}x faster; folding on top: "
          f"{ms['padding inside'] / ms['folded']:.2f}x; channels-last on top: "
          f"{ms['folded'] / ms['folded, channels-last']:.2f}x; all three: "
          f"{ms['published'] / ms['folded, channels-last']:.2f}x")


if __name__ == "__main__":
    main()
