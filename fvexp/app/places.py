"""Where things are: the configs shipped inside the package, and the folder a command started from."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def config_dir() -> Path:
    """The `conf/` folder: the repository's top-level `conf/`, installed inside the package as `fvexp.conf`.

    Running from a source tree (an editable install, or PYTHONPATH), that tree's own `conf/`;
    installed from a wheel, the package `fvexp.conf`, found through the import system.
    """
    checkout = Path(__file__).resolve().parents[2] / "conf"
    return checkout if (checkout / "config.yaml").is_file() else Path(str(files("fvexp.conf")))


def launch_dir() -> Path:
    """The folder the command was started from, also when a Hydra job runs in its own folder."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()).resolve()
