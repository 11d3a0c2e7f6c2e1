"""Time each phase of a 20×20 activation atlas of the demo folder (sample, layout, render, write), and judge it.

    python benchmarks/atlas.py --steps 128 --size 64 --picture docs/atlas.png
    python benchmarks/atlas.py --steps 128 --size 64 --no-whiten     # the raw directions, as before whitening
    python benchmarks/atlas.py --steps 128 --size 64 --centre        # each direction at the map's centre (Lucid's)
    python benchmarks/atlas.py --steps 128 --size 64 --prior PRIOR   # with a learned prior's penalty (trained at 64 px)
    python benchmarks/atlas.py --steps 128 --size 64 optimizer=adam  # any further override: here Adam per coefficient

Builds the demo folder (`fvexp-demo`, 267 photos) in a temporary folder unless --data is given, runs
`task=atlas` from a fresh atlas folder (nothing resumed) through `fvexp.run`, and prints the
`atlas.seconds.*` metrics, the cells rendered and the seconds per cell, and the figures that say
whether the cells show their directions: `atlas.own_direction_share` (cells whose image excites
their own direction more than every other cell's, averaged over the map's positions; `..._centre`
at its centre, where `task.centre=true` renders each direction) and the cells' median high-frequency energy
(`atlas.high_frequency_energy`; noise is high). --picture copies atlas.png.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import fvexp
from fvexp.tools.demo import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="image folder (default: the demo folder, built in a temporary folder)")
    parser.add_argument("--layer", default="_blocks.8")
    parser.add_argument("--grid", type=int, default=20)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per-batch", type=int, default=32)
    parser.add_argument("--picture", help="copy atlas.png here (e.g. docs/atlas.png)")
    parser.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True,
                        help="task.whiten: render the whitened directions (default) or the raw ones")
    parser.add_argument("--attempts", type=int, default=1, help="task.attempts: random starts per cell, the best kept")
    parser.add_argument("--centre", action=argparse.BooleanOptionalAction, default=False,
                        help="task.centre: each cell's direction at the map's centre, or at every position (default)")
    parser.add_argument("--prior", help="a prior file trained at --size (task=train_prior data.size=SIZE): the cells "
                                        "render with its penalty, regularizers.prior.weight=--prior-weight")
    parser.add_argument("--prior-weight", type=float, default=3000.0)
    parser.add_argument("overrides", nargs="*", help="further overrides of the run, e.g. optimizer=sgd")
    parser.add_argument("--dir", help="the atlas folder (task.dir); one left by an earlier run resumes it, so "
                                      "its finished phases then take no time (default: a fresh one)")
    args = parser.parse_intermixed_args()  # overrides may come before or after the options
    with tempfile.TemporaryDirectory(prefix="fvexp-atlas-") as scratch:
        data = args.data or str(Path(scratch) / "demo")
        if not args.data:
            build(Path(data))
        started = time.perf_counter()
        folder = args.dir or Path(scratch) / "atlas"
        result = fvexp.run("task=atlas", f"objective.layer={args.layer}", f"data.dir={data}",
                           f"task.grid={args.grid}", f"task.per_batch={args.per_batch}", f"render.steps={args.steps}",
                           f"render.size={args.size}", f"task.dir={folder}", f"task.whiten={args.whiten}",
                           f"task.attempts={args.attempts}", f"task.centre={args.centre}", "tracking=none",
                           *([f"regularizers.prior.path={args.prior}", f"regularizers.prior.weight={args.prior_weight}"]
                             if args.prior else []),
                           *args.overrides, f"hydra.run.dir={Path(scratch) / 'run'}")
        total = time.perf_counter() - started
        metrics = result.metrics
        print(f"{args.grid}×{args.grid} atlas of {args.layer}, {metrics['atlas.vectors']:.0f} vectors from "
              f"{metrics['atlas.images']:.0f} images, {metrics['atlas.cells']:.0f} cells rendered "
              f"({args.steps} steps at {args.size} px, {args.per_batch} per batch)")
        for phase in ("sample", "layout", "render", "write"):
            print(f"  {phase:7s} {metrics[f'atlas.seconds.{phase}']:7.1f} s")
        print(f"  render per cell {metrics['atlas.seconds.render'] / max(1, metrics['atlas.cells']):.2f} s; "
              f"whole command {total:.1f} s (with model load and the own-direction check); "
              f"own direction share {metrics['atlas.own_direction_share']:.2f} (at the centre "
              f"{metrics['atlas.own_direction_share_centre']:.2f}), cells' median high-frequency energy "
              f"{metrics['atlas.high_frequency_energy']:.4f} (whiten={args.whiten}, centre={args.centre}, "
              f"prior={args.prior}{''.join(' ' + o for o in args.overrides)})")
        if args.picture:
            shutil.copyfile(result.path, args.picture)


if __name__ == "__main__":
    main()
