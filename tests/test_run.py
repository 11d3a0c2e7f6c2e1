"""End to end through the command line, on the real model, with a real MLflow store."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from fvexp.optvis import objectives
from fvexp.optvis.objectives import Objective
from tests.conftest import ROOT, fvexp

pytestmark = pytest.mark.slow


def runs(db: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time ASC"])


def load(path: Path) -> torch.Tensor:
    return torch.tensor(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255


def test_channel_run_excites_its_channel_and_is_recorded(tmp_path: Path, model, photos) -> None:
    out = tmp_path / "run"
    done = fvexp("objective=channel", "objective.layer=_blocks.8", "objective.channel=5", "param=fourier",
                 "render.steps=128", f"hydra.run.dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    image = out / "image.png"
    assert done.stdout.strip().splitlines()[-1] == str(image)
    assert (out / ".hydra" / "config.yaml").exists() and (out / "steps" / "step_00128.png").exists()

    with model.reading(["_blocks.8"]) as read:
        natural = read(photos)["_blocks.8"][:, 5].mean((1, 2))
        optimized = read(load(image))["_blocks.8"][:, 5].mean().item()
    assert optimized > 3 * natural.max().item(), (optimized, natural.tolist())

    [run] = runs(tmp_path / "outputs" / "mlflow.db")  # the store is where the command started
    assert run.info.status == "FINISHED"
    assert run.data.params["objective.channel"] == "5" and run.data.params["seed"] == "0"
    assert run.data.params["render.steps"] == "128"
    assert run.data.params["param._target_"] == "fvexp.optvis.params.Fourier"
    assert run.data.tags["torch.version"] == torch.__version__ and run.data.tags["device"] == "cpu"
    assert "git.commit" in run.data.tags and "git.dirty" in run.data.tags
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "objective")
    assert [m.step for m in history] == list(range(1, 129))
    assert history[-1].value > history[0].value
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"image.png", "config.yaml", "overrides.yaml", "images"} <= artifacts
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert len(logged) >= 4 * 2 and any("step+128" in p for p in logged)  # each image has a thumbnail


def exploding_channel(layer: str, channel: int, tokens: str = "patches") -> Objective:
    """A channel objective that turns NaN at its fifth evaluation, to test the failure path."""
    base, calls = objectives.channel(layer, channel, tokens=tokens), []

    def value(acts):
        calls.append(1)
        return base(acts) * (float("nan") if len(calls) >= 5 else 1.0)

    return Objective(value, base.layers, "exploding")


def test_nan_objective_keeps_the_last_finite_image_and_fails_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = fvexp("objective._target_=tests.test_run.exploding_channel", "render.size=64", "render.steps=20",
                 f"hydra.run.dir={out}", cwd=tmp_path)
    assert done.returncode == 1
    assert "fvexp: error: the objective became nan at step 5" in done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out / "image.png")
    assert load(out / "image.png").std() > 0  # a real image, not a blank
    [run] = runs(tmp_path / "outputs" / "mlflow.db")
    assert run.info.status == "FAILED" and "objective became nan" in run.data.tags["error"]


def test_ctrl_c_keeps_the_image_and_marks_the_run_killed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {"PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "fvexp", "render.size=64", "render.steps=5000",
                                f"hydra.run.dir={out}"], cwd=tmp_path, env={**__import__("os").environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "steps" / "step_00032.png").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted at step" in stderr
    assert stdout.strip().splitlines()[-1] == str(out / "image.png") and (out / "image.png").exists()
    [run] = runs(tmp_path / "outputs" / "mlflow.db")
    assert run.info.status == "KILLED"


def test_multirun_gives_one_run_and_one_named_folder_per_job(tmp_path: Path) -> None:
    store = tmp_path / "elsewhere.db"
    done = fvexp("-m", "param=pixel,fourier", "render.steps=4", "render.size=64", "render.batch=2",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
                 env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert done.returncode == 0, done.stderr
    named = [f"param={p},render.batch=2,render.size=64,render.steps=4" for p in ("pixel", "fourier")]
    folders = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert folders == [f"0_{named[0]}", f"1_{named[1]}"]
    for folder in folders:  # a batch gives a grid as image.png and one file per image
        files = {p.relative_to(tmp_path / "sweep" / folder).as_posix()
                 for p in (tmp_path / "sweep" / folder).rglob("*.png")}
        assert files == {"image.png", "image_0.png", "image_1.png", "steps/step_00004.png",
                         "steps/step_00004_0.png", "steps/step_00004_1.png"}
        assert Image.open(tmp_path / "sweep" / folder / "image.png").size == (64 * 2 + 4, 64)
    recorded = [r for r in runs(store) if r.data.tags.get("fvexp.role") == "job"]
    assert [r.info.run_name for r in recorded] == named
    parents = {r.data.tags["mlflow.parentRunId"] for r in recorded}
    assert len(parents) == 1 and len(runs(store)) == 3  # the sweep's parent run holds both jobs
    assert all(r.info.status == "FINISHED" for r in recorded)
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # MLFLOW_TRACKING_URI wins over the default


@pytest.mark.parametrize("args,message", [
    (["objective.layer=_block.8"], "fvexp: error: unknown layer '_block.8'; closest valid: _blocks.8"),
    (["objective.channel=500"], "channel 500 is out of range for layer '_blocks.8', which has 112 channels"),
    (["objective=class_logit", "objective.label=goldfsh"], "unknown class label 'goldfsh'; closest valid: goldfish"),
    (["render.size=8"], "render.size=8 is too small for layer '_blocks.8', which needs at least 16 px"),
])
def test_bad_input_gets_one_clear_error_and_a_failed_run(tmp_path: Path, args: list[str], message: str) -> None:
    if "cuda" in args[0] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = fvexp(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("fvexp: error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    [run] = runs(tmp_path / "outputs" / "mlflow.db")
    assert run.info.status == "FAILED" and message.removeprefix("fvexp: error: ") in run.data.tags["error"]


@pytest.mark.parametrize("args,message", [
    (["render.steps=-3"],
     "render.steps=-3 is not allowed: render.steps must be a positive number of optimization steps"),
    (["device=cuda"], "device=cuda but this machine has no usable CUDA GPU; use device=auto or device=cpu"),
    (["device=tpu"], "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
])
def test_config_errors_stop_before_any_run_starts(tmp_path: Path, args: list[str], message: str) -> None:
    if "cuda" in args[0] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = fvexp(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == f"fvexp: error: {message}"
    assert not (tmp_path / "outputs").exists()
