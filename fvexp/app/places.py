"""Where things are: the configs shipped inside the package, and the folder a command started from."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def config_dir() -> Path:
    """The `conf/` folder: the repository's top-level `conf/`, installed inside the package as `fvexp.conf`.

    Found through the import system, so it is there however fvexp is installed (a wheel, an
    editable checkout, a zip-free site-packages folder).
    """
    return Path(str(files("fvexp.conf")))


def launch_dir() -> Path:
    """The folder the command was started from, also when a Hydra job runs in its own folder."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()).resolve()
