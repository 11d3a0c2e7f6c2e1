"""Gallery batching and the activation cache: wall times of whole `fvexp` commands.

1. A layer's channels as one run per channel (a one-process sweep, `fvexp -m objective.channel=0,1,...`)
   against `task=gallery` with all of them in batches, at equal steps and image size, both tracked
   in MLflow as a user would run them.
2. `task=dataset_examples` on a folder the first time (activations computed) and again for another
   channel of the same layer (read from the cache).

    .venv/bin/python benchmarks/gallery.py [--channels 16] [--steps 64] [--size 224] [--images 266]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(*args: str, cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fvexp", *args, "progress=false"], cwd=cwd, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    common = [f"render.steps={args.steps}", f"render.size={args.size}", "objective.layer=_blocks.8"]
    with tempfile.TemporaryDirectory() as tmp:
        channels = ",".join(map(str, range(args.channels)))
        one_by_one = command("-m", f"objective.channel={channels}", *common, cwd=tmp)
        for per_batch in (4, args.channels):
            batched = command("task=gallery", f"task.channels=0-{args.channels - 1}", f"task.per_batch={per_batch}",
                              f"task.dir={tmp}/gallery{per_batch}", *common, cwd=tmp)
            print(f"{args.channels} channels, {args.steps} steps at {args.size} px: one run per channel "
                  f"{one_by_one:.1f} s, gallery with {per_batch} per batch {batched:.1f} s: "
                  f"{one_by_one / batched:.2f}x faster (goal >= 3x)")

        from fvexp.tools.demo import build

        build(Path(tmp) / "photos")
        images = len(list((Path(tmp) / "photos").rglob("*.*")))
        data = ["task=dataset_examples", f"data.dir={tmp}/photos", "tracking=none"]
        miss = command(*data, "objective.channel=5", cwd=tmp)
        hit = command(*data, "objective.channel=6", cwd=tmp)
        print(f"dataset examples of {images} images, whole command: cache miss {miss:.1f} s, cache hit {hit:.1f} s "
              f"(the difference, {miss - hit:.1f} s, is the pass over the folder)")


if __name__ == "__main__":
    main()
