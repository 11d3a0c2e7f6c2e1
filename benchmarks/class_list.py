"""Time to ImageNet's class names in a fresh process: fvexp's read of torchvision's source vs its public API.

Every EfficientNet-Lite run names its classes (`class_names("imagenet")`), and a default run imports
no torchvision at all. The public API (`get_model_weights(...).DEFAULT.meta["categories"]`) imports
`torchvision.models`, which builds every model module; `fvexp.optvis.weights.imagenet_classes` reads
the same list from torchvision's private `models/_meta.py` with `ast` instead, importing nothing.
Each arm runs in its own process after `import torch` (which every run pays anyway), in interleaved
rounds; the medians are compared, and the two lists must be equal.

    .venv/bin/python benchmarks/class_list.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ARMS = {
    "ast of torchvision/models/_meta.py (fvexp)":
        "from fvexp.optvis.weights import imagenet_classes as read\nnames = read()",
    "public API get_model_weights(...).meta":
        "from torchvision.models import get_model_weights\n"
        "names = get_model_weights('resnet18').DEFAULT.meta['categories']",
}
TIMED = """
import time
import torch
started = time.perf_counter()
{arm}
print(time.perf_counter() - started, len(names), hash(tuple(names)))
"""


def run(arm: str) -> tuple[float, str]:
    """Seconds to the class list in a fresh process, and the list's fingerprint."""
    done = subprocess.run([sys.executable, "-c", TIMED.format(arm=arm)], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"})
    seconds, *fingerprint = done.stdout.split()
    return float(seconds), " ".join(fingerprint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run(ARMS[next(iter(ARMS))])  # fill the OS file cache
    times: dict[str, list[float]] = {label: [] for label in ARMS}
    fingerprints = set()
    for _ in range(args.rounds):  # interleaved, so that other load hits both arms alike
        for label, arm in ARMS.items():
            seconds, fingerprint = run(arm)
            times[label].append(seconds)
            fingerprints.add(fingerprint)
    for label, found in times.items():
        print(f"{label}: median {statistics.median(found) * 1000:.0f} ms "
              f"(min {min(found) * 1000:.0f}, max {max(found) * 1000:.0f}) over {args.rounds} rounds")
    print("same list in both arms" if len(fingerprints) == 1 else f"the lists DIFFER: {sorted(fingerprints)}")


if __name__ == "__main__":
    main()
