"""Batch-norm folding: forward+backward of EfficientNet-Lite0 with its batch norms folded, and without.

Both networks take the same image (a class logit, so the whole network runs, at 236 px: the mean
side the standard transforms feed it) and back-propagate to it; the two are timed in interleaved
pairs and the medians compared. Also prints how far apart their outputs are.

    .venv/bin/python benchmarks/batch_norm_folding.py [--rounds 15] [--size 236] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fvexp.optvis.models import FeatureModel, efficientnet_lite


def step(model: FeatureModel, image: torch.Tensor) -> float:
    """Seconds of one forward and backward pass from the image to logit 1."""
    image = image.clone().requires_grad_(True)
    started = time.perf_counter()
    model(image)[0, 1].backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", type=int, default=236)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folded, plain = efficientnet_lite(), efficientnet_lite(fold_batch_norm=False)
    image = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (folded(image) - plain(image)).abs().max().item()
    times: dict[str, list[float]] = {"folded": [], "plain": []}
    for model in (folded, plain):
        step(model, image)  # warm-up
    for _ in range(args.rounds):
        times["plain"].append(step(plain, image))
        times["folded"].append(step(folded, image))
    f, p = (1e3 * statistics.median(times[name]) for name in ("folded", "plain"))
    print(f"{len(folded.folded)} batch norms folded; logits differ by at most {gap:.2g}")
    print(f"forward+backward at {args.size} px, median of {args.rounds} pairs: plain {p:.1f} ms, folded {f:.1f} ms, "
          f"{p / f:.2f}x faster")


if __name__ == "__main__":
    main()
