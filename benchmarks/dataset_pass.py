"""Dataset examples pass: images per second through decoding and the network, against the network alone.

Builds a folder of `--images` files (links to the demo photos under new names, so decoding is real
and the files come from the OS cache), then alternates in rounds: the activation pass of
`task=dataset_examples` (`fvexp.optvis.examples.activations`, cache cold, `data.workers` decoding
processes) and the bare model's forward pass to the same layer on random batches of the same size,
as many images. Goal: the pass's throughput >= 0.8 of the bare forward's.

    .venv/bin/python benchmarks/dataset_pass.py [--images 5000] [--batch-size 32] [--workers 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fvexp.optvis import examples
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.objectives import channel
from fvexp.tools.demo import build

LAYER = "_blocks.8"


def folder_of(root: Path, count: int) -> Path:
    """`count` image files: the demo photos, linked again and again under new names."""
    photos = build(root / "demo")
    folder = root / "images"
    folder.mkdir()
    for i in range(count):
        photo = photos[i % len(photos)]
        (folder / f"{i:06d}{photo.suffix}").symlink_to(photo)
    return folder


@torch.no_grad()
def bare(model: FeatureModel, count: int, batch_size: int, size: int) -> float:
    """Images per second of the forward pass alone, to `LAYER`, on random batches."""
    images = torch.rand(batch_size, 3, size, size)
    started = time.perf_counter()
    with model.reading([LAYER]) as read:
        for _ in range(0, count, batch_size):
            read(images)[LAYER].flatten(2).max(2)
    return count / (time.perf_counter() - started)


def passed(model: FeatureModel, folder: Path, cache: Path, args: argparse.Namespace) -> float:
    """Images per second of the dataset examples' activation pass, cache cold."""
    started = time.perf_counter()
    examples.activations(model, channel(LAYER, 5).unit, folder, size=args.size, batch_size=args.batch_size,
                         workers=args.workers, model_key="bench", cache_dir=cache, progress=False)
    return args.images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = efficientnet_lite()
    model.net.eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = folder_of(Path(tmp), args.images)
        bare(model, 2 * args.batch_size, args.batch_size, args.size)  # warm-up
        rates: dict[str, list[float]] = {"pass": [], "bare": []}
        for i in range(args.rounds):
            rates["pass"].append(passed(model, folder, Path(tmp) / f"cache{i}", args))
            rates["bare"].append(bare(model, args.images, args.batch_size, args.size))
    p, b = (statistics.median(rates[name]) for name in ("pass", "bare"))
    ratio = statistics.median(a / c for a, c in zip(rates["pass"], rates["bare"], strict=True))
    print(f"{args.images} images, batch {args.batch_size}, {args.workers} workers, {torch.get_num_threads()} threads")
    print(f"dataset examples pass: {p:.1f} img/s; bare forward to {LAYER}: {b:.1f} img/s; "
          f"ratio {ratio:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
