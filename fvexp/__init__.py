"""fvexp: feature visualization by optimization, as declarative experiments.

From Python:

    import fvexp

    result = fvexp.visualize(net, "layer3:5", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    result.image                       # (1, 3, 224, 224) in [0, 1]
    result = fvexp.run("objective.channel=7", "param=pixel")   # what `fvexp objective.channel=7 param=pixel` runs
    result = fvexp.atlas(net, "layer3", "photos/", grid=10)    # an activation atlas: `task=atlas`

The pieces, Lucid-style, are in `fvexp.optvis` (and importable from here): objectives with their
algebra, parameterizations, transforms, optimizers and the `render` loop. Attributes load on first
use, so `fvexp --help` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {"visualize": "fvexp.app.api", "run": "fvexp.app.api", "atlas": "fvexp.app.api", "Result": "fvexp.app.result"}
_LIBRARY = "fvexp.optvis"
_PACKAGES = ("app", "optvis", "tracking", "tools")


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:  # `fvexp.tracking.sweeps.X` as Hydra locates a target: no torch for that
        return importlib.import_module(f"fvexp.{name}")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    library = importlib.import_module(_LIBRARY)
    if name in library.__all__:
        return getattr(library, name)
    raise AttributeError(f"module 'fvexp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *importlib.import_module(_LIBRARY).__all__])
