"""Where a run ran: code version and library versions, recorded as tags next to every run."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).resolve().parent


def git(*args: str) -> str | None:
    """Output of a git command in fvexp's own source tree, or None outside a checkout."""
    try:
        done = subprocess.run(["git", *args], cwd=SOURCE_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def describe(device: torch.device) -> dict[str, str]:
    """Tags that say which code ran where: commit, dirty flag, versions and device."""
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "git.commit": git("rev-parse", "HEAD") or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "fvexp.version": package_version("fvexp"),
        "torch.version": torch.__version__,
        "torchvision.version": package_version("torchvision"),
        "device": str(device),
        "device.name": name,
        "torch.threads": str(torch.get_num_threads()),
    }
