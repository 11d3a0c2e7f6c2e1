"""A virtual environment with a run's recorded packages, for `fvexp-reproduce --env`.

Another torch or numpy may compute other bytes; a run's `pip freeze` (the artifact
`environment/pip-freeze.txt`) says what it ran with. The environment gets exactly those versions,
each without its dependencies (the freeze lists them all), from pip's configured index, and fvexp
itself comes from the worktree (PYTHONPATH), so it is left out. It is named by the hash of what it
installs, kept under the cache folder and reused by every run recorded with the same packages; a
marker file written last says it is complete.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from fvexp.errors import FvexpError

COMPLETE = "fvexp-complete"  # written once every package is installed
LEFT_OUT = {"fvexp"}  # the code under test comes from the worktree


def requirements(freeze: str) -> list[str]:
    """The `name==version` lines of a recorded freeze that the environment installs."""
    lines = [line.strip() for line in freeze.splitlines() if line.strip() and not line.startswith("#")]
    return [line for line in lines if line.split("==", 1)[0].strip().lower() not in LEFT_OUT]


def folder_for(freeze: str, cache: Path) -> Path:
    """Where the environment for `freeze` lives: one per set of packages."""
    return cache / hashlib.sha256("\n".join(requirements(freeze)).encode()).hexdigest()[:12]


def plan(folder: Path, python: str) -> list[list[str]]:
    """The commands that build the environment in `folder` from its `requirements.txt`."""
    pip = [str(folder / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    return [[python, "-m", "venv", str(folder)],
            [*pip, "install", "--no-deps", "--no-input", "-r", str(folder / "requirements.txt")]]


def environment(freeze: str, cache: Path, python: str) -> Path:
    """The interpreter of an environment with `freeze`'s packages, built (minutes) unless already there."""
    folder = folder_for(freeze, cache)
    interpreter = folder / "bin" / "python"
    if (folder / COMPLETE).exists():
        return interpreter
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted build is started again
    folder.mkdir(parents=True)
    (folder / "requirements.txt").write_text("\n".join(requirements(freeze)) + "\n")
    for command in plan(folder, python):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            said = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            raise FvexpError(f"cannot build the recorded environment in {folder}: {' '.join(command[:5])} ... "
                             f"failed: {said[-1] if said else f'exit {done.returncode}'}")
    (folder / COMPLETE).write_text("\n".join(requirements(freeze)) + "\n")
    return interpreter
