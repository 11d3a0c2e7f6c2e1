"""Every preset sweep composes and runs, and the claims script turns a store of them into docs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fvexp.tools.claims import PRESETS, cell
from tests.conftest import ROOT, fvexp

JOBS = {"enemy": 2, "regularization": 7, "preconditioning": 7, "diversity": 2, "interaction": 3, "logits": 12,
        "priors": 5, "distill": 2}
ARMS = {**JOBS, "logits": 3}  # the logits preset runs each class objective on 4 classes: one row per objective


def test_every_preset_has_a_claims_section() -> None:
    assert set(JOBS) == set(PRESETS) == {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}


def test_an_interpretability_cell_shows_its_interval_when_the_runs_logged_one() -> None:
    bounds = {"interpretability.low": 0.382, "interpretability.high": 0.582, "interpretability.random.low": 0.44}
    assert cell(0.482, "interpretability", bounds) == "0.48 [0.38, 0.58]"
    assert cell(0.487, "interpretability.random", bounds) == "0.487"  # one bound alone is no interval
    assert cell(0.2044, "high_frequency_energy", bounds) == "0.2044"


@pytest.mark.slow
def test_every_preset_smoke_runs_and_is_tabulated(demo_folder: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    data = [f"data.dir={demo_folder}", "data.size=64", "data.workers=0"]
    trained = fvexp("task=train_prior", *data, "task.steps=10", "task.crop=32", "task.width=16", "tracking=none",
                    "progress=false", f"hydra.run.dir={tmp_path / 'prior'}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    needs = {"priors": [f"regularizers.prior.path={trained.stdout.strip().splitlines()[-1]}", *data]}
    for preset, jobs in JOBS.items():
        done = fvexp(f"experiment={preset}", "render.steps=3", "render.size=64", "progress=false",
                     *needs.get(preset, []),
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
        rows = [line for line in section.splitlines() if line.startswith("| ") and "arm" not in line]
        assert len(rows) == ARMS[preset] + 1 and rows[-1].startswith("| natural photos (demo) |"), section
        assert (docs / "claims" / f"{preset}.png").exists() and (docs / "claims" / f"{preset}_objective.png").exists()
    assert text.count("**Claim ") == 6  # every preset with a checkable claim reports on it
