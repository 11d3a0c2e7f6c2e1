"""What a job is given and what it gives back: the shapes the command line and the Python API share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from fvexp.optvis.features import FeatureModel
from fvexp.optvis.objectives import Objective

EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 130}


@dataclass
class Result:
    """What a job produced, for the command line and for Python alike.

    `image` is the final batch (B, C, H, W) in [0, 1] (None for `task=dataset_examples` and
    `task=gallery`, whose products are files); `values` the objective after each step; `metrics`
    what `metrics.json` holds; `path` the file the command prints last (`image.png`, `examples.png`
    or `gallery.png`); `status` FINISHED, FAILED or KILLED, with `error` saying why.
    """

    image: Tensor | None
    values: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    status: str = "FINISHED"
    error: str | None = None
    run_dir: Path | None = None
    run_id: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@dataclass
class Job:
    """Where a job writes and how it is named; `model`/`objective` replace the config's for Python callers.

    They travel here, beside the config, never inside it: the config stays what was composed, and the
    record describes them in its place (`fvexp.app.job.recorded`).
    """

    out_dir: Path
    overrides: list[str] = field(default_factory=list)
    name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    model: FeatureModel | None = None
    objective: Objective | None = None
