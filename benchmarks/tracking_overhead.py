"""Tracking overhead: a 512-step default run with MLflow tracking versus the same run untracked.

Both runs use the real optimization core with the job's callbacks: per-step metrics and the
threshold images go to a temporary SQLite store for the tracked run and nowhere for the other.
Runs alternate in rounds, and the medians are compared. Goal: overhead <= 3 %.

    .venv/bin/python benchmarks/tracking_overhead.py [--steps 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from fvexp.app.recorder import Recorder
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
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = efficientnet_lite()
    timed_run(model, Recorder(), 8)  # warm-up
    plain, tracked = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            plain.append(timed_run(model, Recorder(), args.steps))
            tracked.append(timed_run(model, MlflowTracker(uri=f"sqlite:///{tmp}/store.db"), args.steps))
    p, t = statistics.median(plain), statistics.median(tracked)
    print(f"{args.steps}-step run untracked: median {p:.2f} s; tracked in MLflow (SQLite): median {t:.2f} s")
    print(f"tracking overhead: {100 * (t - p) / p:+.1f} %  (goal <= 3 %)")


if __name__ == "__main__":
    main()
