"""Gallery batching and the activation cache: wall times of whole `fvexp` commands.

1. A layer's channels as one run per channel (a one-process sweep, `fvexp -m objective.channel=0,1,...`)
   against `task=gallery` with all of them in batches, at equal steps and image size, both tracked
   in MLflow as a user would run them.
   `task.per_batch=null` is the default: on a CUDA card as many as fit in its memory (`--channels 112`
   is the whole of `_blocks.8`, the GPU row of docs/performance.md).
2. `task=dataset_examples` on a folder the first time (activations computed) and again for another
   channel of the same layer (read from the cache).

    .venv/bin/python benchmarks/gallery.py [--channels 16] [--steps 64] [--size 224] [--no-sweep]

`--no-sweep` times the galleries alone (a whole layer one run per channel is 112 processes).
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
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                        help="also time one run per channel (--no-sweep: the galleries alone)")
    args = parser.parse_args()
    common = [f"render.steps={args.steps}", f"render.size={args.size}", "objective.layer=_blocks.8"]
    with tempfile.TemporaryDirectory() as tmp:
        channels = ",".join(map(str, range(args.channels)))
        one_by_one = command("-m", f"objective.channel={channels}", *common, cwd=tmp) if args.sweep else None
        for per_batch in dict.fromkeys(("4", str(args.channels), "null")):  # null: sized to the device (CPU: 16)
            batched = command("task=gallery", f"task.channels=0-{args.channels - 1}", f"task.per_batch={per_batch}",
                              f"task.dir={tmp}/gallery{per_batch}", *common, cwd=tmp)
            line = (f"{args.channels} channels, {args.steps} steps at {args.size} px: gallery with "
                    f"task.per_batch={per_batch} {batched:.1f} s")
            if one_by_one is not None:
                line += f", one run per channel {one_by_one:.1f} s: {one_by_one / batched:.2f}x faster (goal >= 3x)"
            print(line)

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
