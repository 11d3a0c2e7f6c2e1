"""Every preset sweep composes and runs, and the claims script turns a store of them into docs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fvexp.tools.claims import PRESETS
from tests.conftest import ROOT, fvexp

JOBS = {"enemy": 2, "regularization": 7, "preconditioning": 7, "diversity": 2, "interaction": 3, "logits": 3,
        "distill": 2}


def test_every_preset_has_a_claims_section() -> None:
    assert set(JOBS) == set(PRESETS) == {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}


@pytest.mark.slow
def test_every_preset_smoke_runs_and_is_tabulated(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    for preset, jobs in JOBS.items():
        done = fvexp(f"experiment={preset}", "render.steps=3", "render.size=64", "progress=false",
                     f"hydra.sweep.dir={tmp_path / preset}", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store})
        assert done.returncode == 0, done.stderr[-2000:]
        assert len([line for line in done.stdout.splitlines() if line.endswith("image.png")]) == jobs, preset
    docs = tmp_path / "docs"
    done = subprocess.run([sys.executable, "-m", "fvexp.tools.claims", "--store", store, "--out", str(docs)],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    text = (docs / "claims.md").read_text()
    for preset, jobs in JOBS.items():
        section = text.split(f"## {preset}\n", 1)[1].split("\n## ", 1)[0]
        assert f"{jobs} runs of 3 steps" in section
        assert len([line for line in section.splitlines() if line.startswith("| ") and "arm" not in line]) == jobs
        assert (docs / "claims" / f"{preset}.png").exists()
    assert text.count("**Claim ") == 5  # every preset with a checkable claim reports on it
