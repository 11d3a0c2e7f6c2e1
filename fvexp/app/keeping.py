"""Writing into a run folder that may fill up or turn read-only while the optimization runs.

What a run produced is kept whatever happens: an image along the way that cannot be written is
said once and skipped, the optimization goes on, and the final image, held in memory, is written
last and retried once. Only when even that fails does the run fail, with one line naming the folder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from fvexp.errors import FvexpError


class Keeper:
    """Writes files of one run folder; the first failure is said once, later ones are counted."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.failures = 0

    def write(self, save: Callable[[], Path]) -> Path | None:
        """`save()`'s path, or None when the folder cannot take it."""
        try:
            return save()
        except OSError as error:
            if not self.failures:
                print(f"fvexp: warning: cannot write into the run folder {self.folder} ({error.strerror or error}); "
                      "the run goes on, and its final image is written last", file=sys.stderr)
            self.failures += 1
            return None

    def final(self, save: Callable[[], Path], recorded: bool) -> Path:
        """The final image's path: written, retried once; else one error naming the folder."""
        kept = self.write(save) or self.write(save)
        if kept is None:
            where = "; the images along the way are in its MLflow run" if recorded else ""
            raise FvexpError(f"cannot write the final image into the run folder {self.folder} (full, or read-only); "
                             f"free space there or choose another hydra.run.dir{where}")
        return kept
