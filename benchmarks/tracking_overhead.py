"""Tracking overhead: a 512-step default run with MLflow tracking versus the same run untracked.

All runs use the real optimization core with the job's callbacks: per-step metrics and the
threshold images go to a temporary SQLite store for the tracked runs and nowhere for the other.
The tracked runs go through `Guarded`, as a job's do: once on its recorder thread (fvexp now), once
with every call made in the loop (`background=False`, fvexp before). Runs alternate in rounds, and
the medians are compared. Goal: overhead <= 1 %.

    .venv/bin/python benchmarks/tracking_overhead.py [--steps 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from fvexp.app.recorder import Guarded, Recorder
from fvexp.optvis import objectives
from fvexp.optvis.images import picture
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.params import Fourier
from fvexp.optvis.render import render
from fvexp.optvis.transforms import standard
from fvexp.tracking.writer import MlflowTracker


def timed_run(model, tracker: Recorder, steps: int) -> float:
    """Seconds for one default run (channel _blocks.8:5, fourier, standard transforms, 224 px)."""
    torch.manual_seed(0)
    thresholds = {2**k for k in range(4, 12)} | {steps}
    started = time.perf_counter()
    tracker.start("bench", {"steps": steps}, {}, {})
    render(model, objectives.channel("_blocks.8", 5), Fourier(1, 224), standard(),
           lambda p: torch.optim.Adam(p, lr=0.05), steps, 0, thresholds=thresholds, on_step=tracker.log_step,
           on_threshold=lambda step, image: tracker.log_image(picture(image), step), progress=False)
    tracker.finish("FINISHED")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = efficientnet_lite()
    times: dict[str, list[float]] = {"untracked": [], "tracked, calls in the loop (before)": [],
                                     "tracked, on the recorder's thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        def arm(name: str) -> Recorder:
            if name == "untracked":
                return Recorder()
            return Guarded(MlflowTracker(uri=f"sqlite:///{tmp}/store.db"), background="thread" in name)

        timed_run(model, arm("tracked, calls in the loop (before)"), 8)  # warm-up: imports, the store's tables
        for _ in range(args.rounds):
            for name, found in times.items():
                found.append(timed_run(model, arm(name), args.steps))
    plain = statistics.median(times["untracked"])
    print(f"{args.steps}-step run, {args.rounds} rounds; untracked: median {plain:.2f} s")
    for name, found in list(times.items())[1:]:
        t = statistics.median(found)
        ratios = statistics.median(b / a - 1 for a, b in zip(times["untracked"], found, strict=True))
        print(f"{name}: median {t:.2f} s, overhead {100 * (t - plain) / plain:+.1f} % "
              f"(median of the rounds' own ratios {100 * ratios:+.1f} %; goal <= 1 %)")


if __name__ == "__main__":
    main()
