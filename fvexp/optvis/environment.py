"""Where a run ran: code, library versions, device and determinism, recorded next to every run.

The tags are what `fvexp.tools.reproduce` compares to explain a difference; the files (pip freeze, the
uncommitted diff) are stored as artifacts because they are too long for tags.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).resolve().parents[1]  # the fvexp package
PACKAGES = ("fvexp", "torch", "torchvision", "numpy", "mlflow", "hydra-core", "omegaconf", "pillow")


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


@cache
def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(device: torch.device) -> dict[str, str]:
    """Tags that say which code ran where and how: commit, dirty flag, versions, device, threads."""
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {
        "git.commit": git("rev-parse", "HEAD") or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "python.version": platform.python_version(),
        **{f"{name}.version": package_version(name) for name in PACKAGES},
        "torch.version": torch.__version__,  # with its build, e.g. +cu130
        "device": str(device),
        "device.name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch.threads": str(torch.get_num_threads()),
        "torch.deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "cudnn.deterministic": str(torch.backends.cudnn.deterministic).lower(),
        "cudnn.benchmark": str(torch.backends.cudnn.benchmark).lower(),
    }


def files() -> dict[str, str]:
    """Artifacts that complete the record: `pip freeze` and the uncommitted diff of fvexp's source."""
    freeze = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"])
    record = {"environment/pip-freeze.txt": "\n".join(freeze) + "\n"}
    diff = git("diff", "HEAD", "--", str(SOURCE_DIR.parent))
    if diff:
        record["environment/git-diff.patch"] = diff + "\n"
    return record
