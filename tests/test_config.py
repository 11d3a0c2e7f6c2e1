"""Every option of every group composes and instantiates; bad config fails at compose time by key."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from fvexp.app.build import build, build_param
from fvexp.app.schema import register, thresholds, validate
from fvexp.errors import FvexpError
from tests.conftest import ROOT, fvexp, make

register()
GROUPS = {group: sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
          for group in ["model", "objective", "param", "transforms", "optimizer", "tracking", "experiment"]}


def test_every_group_has_the_options_the_issue_names() -> None:
    """At least these (a new option is its class and its YAML, and needs no edit here)."""
    assert {"channel", "class_logit", "class_prob", "layer", "neuron", "class_logsumexp", "direction",
            "random_direction", "arithmetic", "interpolate", "style", "inversion"} <= set(GROUPS["objective"])
    assert {"fourier", "pixel", "lowres", "laplacian", "shared", "cppn", "maco", "prior"} <= set(GROUPS["param"])
    assert {"distill", "none", "standard", "transformer"} <= set(GROUPS["transforms"])
    assert {"adam", "sgd", "descent_l2", "descent_linf", "descent_decorrelated"} <= set(GROUPS["optimizer"])
    assert {"enemy", "regularization", "preconditioning", "diversity", "interaction", "logits",
            "distill", "priors"} <= set(GROUPS["experiment"])
    assert {"mlflow", "none"} <= set(GROUPS["tracking"])
    assert {"custom", "dinov2_small", "efficientnet_lite0", "onnx", "torchvision"} <= set(GROUPS["model"])


@pytest.fixture(scope="session")
def reference_image(tmp_path_factory) -> Path:
    import skimage.data
    from PIL import Image

    from fvexp.optvis import priors

    path = tmp_path_factory.mktemp("reference") / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    priors.save(priors.Autoencoder(width=8), path.with_name("prior.pt"), 32, {})  # for param=prior at 32 px
    return path


def needs(option: str, image: Path) -> list[str]:
    """The overrides an option cannot do without: a reference image, a direction vector."""
    return {"style": [f"objective.image={image}"], "inversion": [f"objective.image={image}"],
            "direction": [f"objective.vector=[{','.join(['1.0'] * 112)}]"],
            "direction_neuron": [f"objective.vector=[{','.join(['1.0'] * 112)}]"],
            "prior": [f"param.path={image.with_name('prior.pt')}"]}.get(option, [])


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options if g != "model"])
def test_every_option_composes_and_instantiates(group: str, option: str, reference_image: Path) -> None:
    cfg = make(f"{group}={option}", *needs(option, reference_image))
    validate(cfg)
    if group == "experiment":
        return  # an experiment only sets other groups, which are instantiated below
    if group == "param":  # as a run builds it: `param.init` is fvexp's, the rest the class's
        images = build_param(OmegaConf.merge(cfg, {"render": {"size": 32}}), SimpleNamespace(image_channels=3,
                                                                                            device="cpu"), 2)()
        assert images.shape == (2, 3, 32, 32)
        return
    built = build(cfg[group])
    if group == "optimizer":
        import torch

        from fvexp.optvis.optimizers import create

        param = torch.nn.Parameter(torch.zeros(2, 3, 4, 4))
        stepper = create(built, [param])  # as the loop makes it: a torch.optim optimizer or fvexp's Adam
        param.grad = torch.ones_like(param)
        stepper.step()
        assert (param < 0).all()  # one step down the gradient
    else:
        assert built is not None


def test_the_model_option_instantiates_the_real_network() -> None:
    model = build(make().model)
    assert type(model.net).__name__ == "EfficientNet" and model.classes[1] == "goldfish"
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_defaults_are_the_article_optimizer_and_a_short_run() -> None:
    cfg = make()
    assert cfg.optimizer.lr == 0.05 and cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.objective._target_.endswith("channel") and cfg.param._target_.endswith("Fourier")
    assert thresholds(cfg) == [16, 32, 64, 128, 256, 512]


def test_the_distill_preset_is_the_article_recipe() -> None:
    cfg = make("experiment=distill")
    assert cfg.render.steps == 2560 and cfg.optimizer.lr == 0.05 and cfg.param.decorrelate
    pieces = cfg.transforms.pieces
    kinds = [piece._target_.rsplit(".", 1)[1] for piece in pieces.values()]
    assert kinds == ["Pad", "Jitter", "Scale", "Rotate", "Jitter", "Crop"]
    assert [pieces.pad.width, pieces.jitter.pixels, pieces.jitter_again.pixels, pieces.crop.width] == [16, 16, 8, 16]
    assert list(pieces.scale.factors) == [1.0, 0.975, 1.025, 0.95, 1.05]
    assert list(pieces.rotate.degrees) == list(range(-5, 6))


@pytest.mark.parametrize("override,names", [
    ("objective.chanel=3", "objective.chanel"),
    ("render.stesp=3", "render.stesp"),
    ("objective.channel=five", "objective.channel"),
    ("param.sd=big", "param.sd"),
    ("regularizers.tv.weight=strong", "regularizers.tv.weight"),
    ("regularizers.tvv.weight=1", "regularizers.tvv"),
    ("precision=fp64", "fp32, bf16, fp16"),  # closed sets name their choices
    ("param.init=photos", "noise, dataset_examples"),
    ("optimizer=descent_l2 optimizer.metric=l3", "l2, linf, decorrelated"),
    ("task=gallery task.name=album", "expected one of [gallery]"),  # the option's own name, set by task=...
])
def test_misspelt_keys_and_wrong_types_fail_at_compose_time_naming_the_key(override: str, names: str) -> None:
    with pytest.raises(ConfigCompositionException) as error:
        make(*override.split())
    assert names in str(error.value.__cause__ or error.value)


@pytest.mark.parametrize("override,message", [
    ("render.steps=-5", "render.steps=-5 is not allowed: render.steps must be a positive"),
    ("render.size=0", "render.size=0 is not allowed"),
    ("render.batch=0", "render.batch=0 is not allowed"),
    ("render.thresholds=[0,600]", "steps between 1 and render.steps=512"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is not allowed"),
    ("diversity.weight=10", "render.batch=1 is not allowed: render.batch must be at least 2 when diversity.weight"),
])
def test_out_of_range_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(FvexpError, match=message.replace("[", r"\[").replace(".", r"\.")):
        validate(make(override))


def test_a_missing_reference_image_is_named() -> None:
    with pytest.raises(FvexpError, match=r"objective\.image must be set, e\.g\. fvexp \.\.\. objective\.image=VALUE"):
        validate(make("objective=inversion"))


@pytest.mark.slow
def test_unknown_group_option_lists_the_options(tmp_path: Path) -> None:
    done = fvexp("objective=chanel", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("fvexp: error: unknown objective option 'chanel'; closest valid: channel. "
                                  "objective options: ")
    for option in GROUPS["objective"]:
        assert option in done.stderr


@pytest.mark.slow
def test_help_lists_groups_under_the_name_fvexp_without_importing_mlflow_or_torch(tmp_path: Path) -> None:
    done = fvexp("--help", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0
    assert done.stdout.startswith("fvexp:")
    for group, options in GROUPS.items():
        assert f"{group}: {', '.join(options)}\n" in done.stdout
    assert "schema" not in done.stdout  # the schemas are not options
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "mlflow" not in imported and "torch" not in imported


@pytest.mark.slow
def test_tab_completion_works_through_the_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "fvexp"
    done = subprocess.run([str(script), "-sc", "query=bash"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "COMP_LINE": "fvexp objective=cha", "COMP_POINT": "19"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["objective=channel"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher,target", [("basic", "BasicLauncher"), ("joblib", "JoblibLauncher"),
                                             ("submitit_slurm", "SlurmLauncher")])
def test_launchers_are_config_options(tmp_path: Path, launcher: str, target: str) -> None:
    done = fvexp(f"hydra/launcher={launcher}", "hydra.launcher.partition=gpu" if "slurm" in launcher else "seed=0",
                 "--cfg", "hydra", "--package", "hydra.launcher", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert target in done.stdout


def test_hydra_composes_once_unless_an_override_can_set_the_run_mode() -> None:
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode

    from fvexp.app.cli import compose_once

    compose_once()
    compose_once()  # idempotent: a second call does not wrap it twice
    composed: list[list[str]] = []

    class Composing:  # stands for Hydra: what its first composition would find
        def compose_config(self, config_name: str, overrides: list[str], **kwargs: object) -> object:
            composed.append(overrides)
            return OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN if "experiment=priors" in overrides else None}})

    hydra = Composing()
    assert Hydra.get_mode(hydra, "config", ["objective.channel=7", "param=pixel"]) is None and composed == []
    assert Hydra.get_mode(hydra, "config", ["experiment=priors"]) == RunMode.MULTIRUN  # a preset sets the mode
    assert Hydra.get_mode(hydra, "config", ["+hydra.mode=MULTIRUN"]) is None  # composed, and found unset here
    assert Hydra.get_mode(hydra, "my_config", []) is None  # another primary config may set it
    assert composed == [["experiment=priors"], ["+hydra.mode=MULTIRUN"], []]


def hydra_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> tuple[int, list[object]]:
    """fvexp's config through Hydra's own command line, in this process, with a job that only keeps its config:
    (how many times Hydra composed it, the jobs' configs)."""
    import hydra
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from fvexp.app.places import config_dir

    compose, composed, jobs = Hydra.compose_config, [], []
    monkeypatch.setattr(Hydra, "compose_config", lambda self, *a, **k: composed.append(1) or compose(self, *a, **k))
    monkeypatch.setattr(sys, "argv", ["fvexp", *args, "tracking=none"])  # a `hydra.` override would compose twice
    monkeypatch.chdir(tmp_path)  # the run folder
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))  # Hydra sets up logging: undone
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # Hydra raises what it would print
    # Hydra leaves its run's config behind: undone, else later tests anchor relative stores in this run's folder
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)
    was_initialized = GlobalHydra.instance().is_initialized()
    register()
    try:
        hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(jobs.append)()
    finally:
        if not was_initialized:
            GlobalHydra.instance().clear()
    return len(composed), jobs


def test_hydras_private_get_mode_and_show_cfg_still_do_what_fvexps_wrappers_assume(monkeypatch, tmp_path: Path,
                                                                                   capsys) -> None:
    """`compose_once` and `check_before_showing` wrap private methods of Hydra: this fails when Hydra changes them.

    With the wrapper a run is composed once, and without it twice (Hydra's first composition, only to read
    `hydra.mode`, is what the wrapper saves); `--cfg job` refuses a bad value with the wrapper and prints it without.
    """
    from hydra._internal.hydra import Hydra

    from fvexp.app.cli import check_before_showing, compose_once

    compose_once()
    check_before_showing()
    assert hydra_command(monkeypatch, tmp_path, "render.steps=3") == (1, [make("render.steps=3", "tracking=none")])
    with pytest.raises(FvexpError, match=r"render.steps=-5 is not allowed"):
        hydra_command(monkeypatch, tmp_path, "--cfg", "job", "render.steps=-5")
    monkeypatch.setattr(Hydra, "get_mode", Hydra.get_mode.__wrapped__)
    monkeypatch.setattr(Hydra, "show_cfg", Hydra.show_cfg.__wrapped__)
    assert hydra_command(monkeypatch, tmp_path, "render.steps=3")[0] == 2
    assert hydra_command(monkeypatch, tmp_path, "--cfg", "job", "render.steps=-5") == (1, [])
    assert "  steps: -5\n" in capsys.readouterr().out
