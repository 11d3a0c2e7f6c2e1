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

from fvexp.credentials import redact

SOURCE_DIR = Path(__file__).resolve().parents[1]  # the fvexp package
PACKAGES = ("fvexp", "torch", "torchvision", "numpy", "mlflow", "hydra-core", "omegaconf", "pillow")
CODE_FOLDERS = ("fvexp/", "conf/")  # where a file not yet added to git is part of the code that ran


def git(*args: str, cwd: Path = SOURCE_DIR, codes: tuple[int, ...] = (0,), strip: bool = True) -> str | None:
    """Output of a git command in fvexp's own source tree (or `cwd`), or None outside a checkout.

    `codes` are the exit statuses that mean success (`git diff --no-index` exits 1 when files differ).
    """
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode not in codes:
        return None
    return done.stdout.strip() if strip else done.stdout


def changes(cwd: Path = SOURCE_DIR) -> str | None:
    """The checkout's uncommitted changes as one patch that `git apply` replays on its commit; None outside one.

    Tracked files' changes anywhere in the repository (binary ones too), and files not yet added under
    `fvexp/` and `conf/` (the code and configs a run imports): a run recorded from a dirty tree is
    re-run at its commit with this patch applied (`fvexp-reproduce --at-commit`). Empty when clean.
    Passwords in URIs are replaced by *** (`fvexp.credentials.redact`) here, where its hash is taken,
    as in everything else a run records: the recorded patch and its hash agree.
    """
    root = git("rev-parse", "--show-toplevel", cwd=cwd)
    tracked = git("diff", "HEAD", "--binary", cwd=Path(root), strip=False) if root else None
    if root is None or tracked is None:
        return None
    new = git("ls-files", "--others", "--exclude-standard", "-z", "--", *CODE_FOLDERS, cwd=Path(root)) or ""
    added = [git("diff", "--no-index", "--binary", "--", "/dev/null", name, cwd=Path(root), codes=(0, 1), strip=False)
             for name in sorted(filter(None, new.split("\0")))]
    return redact(tracked + "".join(patch or "" for patch in added))


def patch_digest(patch: str) -> str:
    """The hash a run records for its patch (`git.diff.sha256`): of every line but the `index` lines.

    Those name blobs by their content, so they change when an added line's password was redacted
    (`changes`) and the patch is applied again: the same recorded patch must keep the same hash.
    """
    return hashlib.sha256("".join(line for line in patch.splitlines(keepends=True)
                                  if not line.startswith("index ")).encode()).hexdigest()


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
    """Tags that say which code ran where and how: commit, dirty flag, versions, device, CPU, threads."""
    patch = changes()
    return {
        "git.commit": git("rev-parse", "HEAD") or "unknown",
        "git.root": git("rev-parse", "--show-toplevel") or "unknown",  # the repository a re-run checks out from
        "git.dirty": "unknown" if patch is None else str(bool(patch)).lower(),
        **({"git.diff.sha256": patch_digest(patch)} if patch else {}),
        "python.version": platform.python_version(),
        **{f"{name}.version": package_version(name) for name in PACKAGES},
        "torch.version": torch.__version__,  # with its build, e.g. +cu130
        "device": str(device),
        "device.name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu.name": cpu_name(),  # another CPU may take other vector instructions: other bytes
        "torch.threads": str(torch.get_num_threads()),
        "torch.deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "cudnn.deterministic": str(torch.backends.cudnn.deterministic).lower(),
        "cudnn.benchmark": str(torch.backends.cudnn.benchmark).lower(),
    }


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine() or "unknown"


def files() -> dict[str, str]:
    """Artifacts that complete the record: `pip freeze` and the uncommitted diff of fvexp's source."""
    freeze = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"])
    record = {"environment/pip-freeze.txt": "\n".join(freeze) + "\n"}
    patch = changes()
    if patch:
        record["environment/git-diff.patch"] = patch
    return record
