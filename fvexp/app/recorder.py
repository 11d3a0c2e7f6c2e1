"""What the application tells a recorder about a run; this base records nothing (`tracking=none`).

The application calls these methods and never imports a tracking backend: the recorder is built
from the config's `_target_`, so MLflow (`fvexp.tracking.writer.MlflowTracker`) sits above this
layer and extends this class.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image


class Recorder:
    """Records nothing beyond the run folder; the interface every tracker has."""

    run_id: str | None = None

    def start(self, name: str | None, params: Mapping[str, Any], tags: Mapping[str, str],
              files: Mapping[str, str]) -> None:
        """Begin a run called `name` with flat `params`, `tags`, and `files` (artifact name -> text)."""

    def log_step(self, step: int, value: float) -> None:
        """The objective after `step`."""

    def log_image(self, image: Image.Image, step: int) -> None:
        """An image along the way, shown by the UI's step slider."""

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Summary numbers of the finished run."""

    def log_file(self, path: Path, folder: str | None = None) -> None:
        """A file from the run folder."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags known only once the run is under way (the weights' checksum, say)."""

    def finish(self, status: str, error: str | None = None) -> None:
        """End the run as FINISHED, FAILED or KILLED, keeping everything logged so far."""
