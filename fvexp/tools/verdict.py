"""What a re-run's image says about a run: identical, expected drift, or a defect.

A re-run in the same environment (code, patch, versions that can change pixels, weights, device,
CPU, threads, determinism settings) must give the same bytes on the CPU: if it does not, something
is not deterministic, and the report says so loudly. A difference in any of those is expected
drift, reported with the largest pixel difference and the objective's difference. On a CUDA card
the same environment must agree within 1/255 per pixel (GPU kernels need not be bitwise stable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# Recorded tags whose difference can change the pixels, by what they are.
KINDS = {
    "code": ("git.commit", "git.dirty", "git.diff.sha256"),
    "versions": ("torch.version", "torchvision.version", "numpy.version", "weights.sha256", "python.version"),
    "device": ("device", "device.name", "cpu.name"),
    "threads": ("torch.threads",),
    "determinism": ("torch.deterministic_algorithms", "cudnn.deterministic", "cudnn.benchmark"),
}
ELSEWHERE = ("fvexp.host",)  # where the run ran: no effect on the bytes, named among the other differences
GPU_TOLERANCE = 1  # of 255, per pixel: a CUDA re-run in the same environment


@dataclass
class Verdict:
    """The comparison of a recorded run with its re-run."""

    delta: int | None  # the largest |Δ| of a pixel, of 255; None when the shapes differ
    objective: tuple[float | None, float | None]  # recorded, re-run
    drift: list[str] = field(default_factory=list)  # 'tag: old → new' (or 'config.KEY: ...') that can change pixels
    other: list[str] = field(default_factory=list)  # differences that cannot
    device: str = "cpu"

    @property
    def identical(self) -> bool:
        return self.delta == 0

    @property
    def kind(self) -> str:
        """identical | within 1/255 | drift | DEFECT."""
        if self.identical:
            return "identical"
        if self.drift:
            return "drift"
        if self.device.startswith("cuda") and self.delta is not None and self.delta <= GPU_TOLERANCE:
            return "within 1/255"
        return "DEFECT"

    def difference(self) -> str:
        """'max |Δ| = 3 of 255, objective 1.5 → 1.25 (Δ -0.25)', for the first line of a report."""
        pixels = "the image sizes differ" if self.delta is None else f"max |Δ| = {self.delta} of 255"
        before, after = self.objective
        if before is None or after is None:
            return pixels
        if before == after:
            return f"{pixels}, objective {before:.6g} (the same)"
        return f"{pixels}, objective {before:.6g} → {after:.6g} (Δ {after - before:+.3g})"

    @property
    def kinds(self) -> str:
        """What differs, e.g. 'threads, versions'."""
        return ", ".join(sorted({kind_of(line) for line in self.drift}, key=[*KINDS, "config"].index))

    def short(self) -> str:
        """The verdict in a sweep's table."""
        pixels = "image sizes differ" if self.delta is None else f"max |Δ| = {self.delta}"
        return {"identical": "identical", "drift": f"{pixels}, expected drift ({self.kinds})",
                "within 1/255": f"{pixels}, within 1/255",
                "DEFECT": f"DEFECT: {pixels} in the same environment"}[self.kind]

    def headline(self) -> str:
        """The report's first line, up to what was compared."""
        return {"identical": "identical (max |Δ| = 0)",
                "drift": f"differs, expected drift (different {self.kinds}): {self.difference()}",
                "within 1/255": f"agrees within 1/255 on the same {self.device} card: {self.difference()}",
                "DEFECT": f"DEFECT: same environment, different bytes: {self.difference()}; nothing recorded "
                          "differs (code, versions, weights, device, CPU, threads, determinism), so the run is not "
                          "deterministic: report it with both run ids"}[self.kind]

    def details(self) -> list[str]:
        lines = [f"environment differences: {'; '.join(self.drift)}"] if self.drift else []
        if self.other:
            lines.append(f"other differences (no effect on pixels): {'; '.join(self.other)}")
        return lines


def kind_of(line: str) -> str:
    """The kind of a drift line 'tag: old → new'; 'config.KEY: ...' lines are the config's."""
    tag = line.split(":", 1)[0]
    return "config" if tag.startswith("config.") else next(kind for kind, tags in KINDS.items() if tag in tags)


def judge(recorded: np.ndarray, again: np.ndarray, before: Mapping[str, str], after: Mapping[str, str],
          objective: tuple[float | None, float | None]) -> Verdict:
    """Compare two RGB images (int16 arrays) and the environments their runs recorded."""
    delta = int(np.abs(recorded - again).max()) if recorded.shape == again.shape else None
    drift, other = environment_differences(before, after)
    return Verdict(delta, objective, drift, other, after.get("device", "cpu"))


def environment_differences(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Recorded tags that changed, as 'tag: old → new': those that can change pixels, and the others.

    Only tags the recorded run has are compared: an older fvexp recorded fewer.
    """
    pixel_tags = [tag for tags in KINDS.values() for tag in tags]
    versions = [k for k in before if k.endswith(".version") and k not in pixel_tags]
    changed = [k for k in (*pixel_tags, *versions, *ELSEWHERE) if k in before and before[k] != after.get(k)]
    lines = {k: f"{k}: {before[k]} → {after.get(k, 'missing')}" for k in changed}
    return [lines[k] for k in changed if k in pixel_tags], [lines[k] for k in changed if k not in pixel_tags]
