"""Every bad value gets one line that says what was wrong and what is allowed, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from fvexp.app.build import build, check_fits
from fvexp.app.gallery import parse_channels
from fvexp.app.keys import SETTINGS, _groups, _prefix, check_ranges, said
from fvexp.app.schema import validate
from fvexp.errors import ArgumentError, FvexpError, OutOfRange, Setting
from fvexp.optvis import LowRes, objectives, regularizers
from fvexp.optvis.data import open_image, scan
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.images import load
from fvexp.optvis.interpretability import Measures
from fvexp.optvis.models import custom
from fvexp.optvis.params import average_magnitude
from fvexp.optvis.transforms import Compose
from fvexp.tools import layers
from tests.conftest import ROOT, make

LISTING = " (fvexp-layers lists which objectives fit each layer)"


def message(call, *args, **kwargs) -> str:
    """The one line a user sees for `call(...)`: the FvexpError's text."""
    with pytest.raises(FvexpError) as error:
        call(*args, **kwargs)
    text = str(error.value)
    assert "\n" not in text
    return text


# --- 1. layer shapes: each objective reads the outputs it can, and says which objective fits the others ---

class Tokens(nn.Module):
    """(B, C, H, W) maps to (B, H·W, C) tokens, as a vision transformer's patch embedding gives them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


def token_model() -> FeatureModel:
    """conv `0` (8 maps) -> `1` (tokens, 8 channels) -> `2` Linear on tokens (6 channels); 64 tokens at 32 px."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), Tokens(), nn.Linear(8, 6))
    return FeatureModel(net, mean=[0.5] * 3, std=[0.5] * 3)


def worded(cfg: DictConfig, call, *args) -> str:
    """The line the command line prints for the library's error in `call(...)`: in `cfg`'s keys."""
    with pytest.raises(ArgumentError) as error:
        call(*args)
    return str(said(error.value, cfg))


def test_a_channel_of_a_vector_layer_names_the_class_objective(model) -> None:
    cfg = make("objective.layer=_fc", "objective.channel=3")
    assert worded(cfg, check_fits, model, build(cfg.objective), Compose(), 224) == (
        "layer '_fc' gives (batch, 1000) vectors, not the (batch, channels, h, w) feature maps objective=channel "
        "reads; use objective=class_logit objective.layer=_fc objective.label=3" + LISTING)
    assert message(check_fits, model, build(cfg.objective), Compose(), 224) == (  # the library speaks Python
        "layer '_fc' gives (batch, 1000) vectors, not the (batch, channels, h, w) feature maps channel "
        "reads; use class_logit(layer='_fc', label=3)" + LISTING)
    cfg = make("objective=neuron", "objective.layer=_fc", "objective.channel=7")
    assert worded(cfg, check_fits, model, build(cfg.objective), Compose(), 224) == (
        "layer '_fc' gives (batch, 1000) vectors, not the (batch, channels, h, w) feature maps objective=neuron "
        "reads; use objective=class_logit objective.layer=_fc objective.label=7" + LISTING)
    check_fits(model, objectives.class_logit(3, "_fc"), Compose(), 224)  # what the message proposes works


def test_a_class_objective_on_feature_maps_names_the_channel_objective(model) -> None:
    cfg = make("objective=class_logit", "objective.label=goldfish", "objective.layer=_blocks.8")
    assert worded(cfg, check_fits, model, build(cfg.objective), Compose(), 224) == (
        "layer '_blocks.8' gives (batch, 112, 14, 14) feature maps, not the (batch, classes) vectors "
        "objective=class_logit reads; use objective=channel objective.layer=_blocks.8 objective.channel=1, or a "
        "layer with vectors such as _fc" + LISTING)


def test_the_diversity_term_needs_feature_maps(model) -> None:
    objective = objectives.class_logit(1, "_fc") + 10 * objectives.diversity("_fc")
    assert worded(make("diversity.weight=10"), check_fits, model, objective, Compose(), 224) == (
        "diversity.layer '_fc' gives (batch, 1000) vectors, not the (batch, channels, h, w) feature maps the "
        "diversity term reads; set diversity.layer to a layer with feature maps" + LISTING)
    assert message(check_fits, model, objective, Compose(), 224) == (
        "layer '_fc' gives (batch, 1000) vectors, not the (batch, channels, h, w) feature maps the "
        "diversity term reads; set layer to a layer with feature maps" + LISTING)


def test_token_layers_are_not_read_as_channels() -> None:
    tokens = token_model()
    # before: channel 20 of a layer of 8 channels indexed token 20 of 64 and was accepted; now the 64 tokens
    # are read as the 8×8 patch grid of the stride-4 patch embedding, with 8 features (fvexp.optvis.tokens)
    assert worded(make(), check_fits, tokens, objectives.channel("1", 20), Compose(), 32) == (
        "channel 20 is out of range for layer '1', which has 8 channels (objective.channel must be 0..7)")
    assert message(check_fits, tokens, objectives.channel("1", 20), Compose(), 32) == (
        "channel 20 is out of range for layer '1', which has 8 channels (channel must be 0..7)")
    assert worded(make(), check_fits, tokens, objectives.class_logit(3, "logits", classes=""), Compose(), 32) == (
        "layer '2' gives (batch, 6, 8, 8) feature maps, not the (batch, classes) vectors objective=class_logit reads; "
        "use objective=channel objective.layer=2 objective.channel=3" + LISTING)
    check_fits(tokens, objectives.layer("1"), Compose(), 32)
    check_fits(tokens, objectives.channel("1", 7), Compose(), 32)
    check_fits(tokens, objectives.channel("0", 7), Compose(), 32)


def test_the_layer_listing_says_which_objectives_fit_each_layer(model) -> None:
    rows = {row[0]: row[2:] for row in layers.table(model, 224)}
    assert rows["_blocks.8"] == ("112×14×14", "112", "channel, neuron, layer, direction")
    assert rows["_fc"] == ("1000", "1000", "class_logit, class_prob, layer, direction")
    assert rows["_swish"] == ("runs 2 times", "", "-")
    rows = {row[0]: row[2:] for row in layers.table(token_model(), 32)}
    assert rows == {"0": ("8×8×8", "8", "channel, neuron, layer, direction"),
                    "1": ("64 tok×8 (0+8×8)", "8", "channel, neuron, layer, direction"),
                    "2": ("64 tok×6 (0+8×8)", "6", "channel, neuron, layer, direction")}


def test_every_setting_the_library_names_has_its_key_on_the_command_line() -> None:
    """A `Setting` added to the library without its key would turn a one-line error into a KeyError."""
    assert set(Setting) == set(SETTINGS)


def test_a_suggested_piece_is_named_in_the_group_whose_configs_build_its_module() -> None:
    """Groups come from conf/'s `_target_`s: a new module's pieces need no table beside their YAML."""
    groups = _groups()
    assert {module: groups[module] for module in ("fvexp.optvis.objectives", "fvexp.optvis.params",
                                                  "fvexp.optvis.optimizers", "fvexp.optvis.transforms",
                                                  "fvexp.optvis.models", "fvexp.optvis.onnx")} == {
        "fvexp.optvis.objectives": "objective", "fvexp.optvis.params": "param", "fvexp.optvis.optimizers": "optimizer",
        "fvexp.optvis.transforms": "transforms", "fvexp.optvis.models": "model", "fvexp.optvis.onnx": "model"}
    cfg = make("objective.layer=_fc", "objective.channel=3")  # class_logit is built by no node of this config
    assert _prefix(objectives.class_logit, cfg) == "objective"


# --- 2. every value has a range ---

@pytest.mark.parametrize("overrides,expected", [
    ("threads=-1", "threads=-1 is not allowed: threads must be a positive number of torch CPU threads, or null "
                   "for torch's default"),
    ("threads=0", "threads=0 is not allowed: threads must be a positive number of torch CPU threads, or null "
                  "for torch's default"),
    ("optimizer=sgd optimizer.momentum=-5",
     "optimizer.momentum=-5.0 is not allowed: optimizer.momentum must be 0 or more (0: no momentum)"),
    ("optimizer=sgd optimizer.nesterov=true optimizer.momentum=0",
     "optimizer.momentum=0.0 is not allowed: optimizer.momentum must be positive with optimizer.nesterov=true "
     "(Nesterov momentum needs a momentum)"),
    ("optimizer.betas=[2,3]", "optimizer.betas=[2.0, 3.0] is not allowed: optimizer.betas must be two numbers in "
                              "[0, 1), the decay rates of the gradient's mean and square, e.g. [0.9,0.999]"),
    ("optimizer.betas=[0.9]", "optimizer.betas=[0.9] is not allowed: optimizer.betas must be two numbers in "
                              "[0, 1), the decay rates of the gradient's mean and square, e.g. [0.9,0.999]"),
    ("optimizer.eps=-1e-8", "optimizer.eps=-1e-08 is not allowed: optimizer.eps must be a small positive number, "
                            "e.g. 1e-8"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1.0 is not allowed: optimizer.weight_decay must be 0 "
                                  "or more (0: off)"),
    ("optimizer=sgd optimizer.weight_decay=-0.5", "optimizer.weight_decay=-0.5 is not allowed: "
                                                  "optimizer.weight_decay must be 0 or more (0: off)"),
    ("param=lowres param.factor=0", "param.factor=0 is not allowed: param.factor must be a downscaling factor of "
                                    "at least 1 (1: full resolution)"),
    ("param=lowres param.frames=0", "param.frames=0 is not allowed: param.frames must be at least 1 frame (unset: "
                                    "one per image)"),
    ("param=laplacian param.levels=0", "param.levels=0 is not allowed: param.levels must be at least 1 level (1: "
                                       "the full-resolution image alone)"),
    ("param=cppn param.hidden=0", "param.hidden=0 is not allowed: param.hidden must be at least 1 channel per "
                                  "hidden layer"),
    ("param=shared param.shared=[[1,0]]", "param.shared=[[1, 0]] is not allowed: param.shared must be a list of "
                                          "[frames, factor] pairs, each at least 1, e.g. [[1,4],[2,8]]"),
    ("render.size=20000", "render.size=20000 is not allowed: render.size must be the image side in pixels, "
                          "1 to 4096"),
    ("data.size=5000", "data.size=5000 is not allowed: data.size must be the image side in pixels, 1 to 4096"),
    ("objective=inversion objective.image=x.png objective.size=0",
     "objective.size=0 is not allowed: objective.size must be the image side in pixels, 1 to 4096"),
    ("model.std=[0,0,0]", "model.std=[0.0, 0.0, 0.0] is not allowed: model.std must be non-zero values: the "
                          "network's input is divided by them"),
    ("regularizers.bilateral.radius=-1", "regularizers.bilateral.radius=-1 is not allowed: "
                                         "regularizers.bilateral.radius must be 0 or more pixels"),
    ("regularizers.blur.sigma=0", "regularizers.blur.sigma=0.0 is not allowed: regularizers.blur.sigma must be a "
                                  "positive blur sigma in pixels"),
    ("alignment.decay_ratio=0", "alignment.decay_ratio=0.0 is not allowed: alignment.decay_ratio must be a positive "
                                "ratio by which the penalty falls per image of distance"),
])
def test_values_out_of_their_range_are_named(overrides: str, expected: str) -> None:
    assert message(validate, make(*overrides.split())) == expected


@pytest.mark.parametrize("overrides,build_it,python", [
    ("param=lowres param.factor=0", lambda: LowRes(1, 64, factor=0),
     "LowRes(factor=0) is not allowed: factor must be a downscaling factor of at least 1 (1: full resolution)"),
    ("regularizers.blur.sigma=0", lambda: regularizers.blur(sigma=0.0),
     "blur(sigma=0.0) is not allowed: sigma must be a positive blur sigma in pixels"),
    ("model.std=[0,0,0]", lambda: FeatureModel(nn.Identity(), [0.5] * 3, [0.0] * 3),
     "FeatureModel(std=[0.0, 0.0, 0.0]) is not allowed: std must be non-zero values: the network's input is divided "
     "by them"),
    ("measure.queries=0", lambda: Measures(queries=0),
     "Measures(queries=0) is not allowed: queries must be at least 1"),
])
def test_the_pieces_refuse_what_the_command_line_refuses_for_the_same_reason(overrides, build_it, python) -> None:
    """One declaration (`fvexp.ranges`): the constructor refuses in Python words, the config check in its keys."""
    with pytest.raises(OutOfRange) as error:
        build_it()
    assert str(error.value) == python and error.value.kind == "range"
    key = overrides.split()[-1].split("=")[0]
    line = message(check_ranges, make(*overrides.split()))
    assert line.startswith(f"{key}=") and line.endswith(f"{key} must be {python.partition(' must be ')[2]}")


def test_adam_per_image_with_a_shared_parameterization_is_refused_before_a_model_loads() -> None:
    assert message(validate, make("task=atlas", "data.dir=photos", "param=lowres")) == (
        "optimizer.per_image=True needs a parameterization with the images along each tensor's first dimension; "
        "param=lowres shares or folds its values across them: use param=fourier, param=pixel or "
        "optimizer.per_image=False")
    validate(make("task=atlas", "data.dir=photos", "param=lowres", "optimizer=adam"))


def test_the_ranges_accept_the_defaults_and_their_edges() -> None:
    for overrides in ("", "threads=1", "optimizer=sgd optimizer.momentum=0", "optimizer.betas=[0,0.5]",
                      "param=lowres param.factor=1", "param=laplacian param.levels=1", "render.size=4096"):
        validate(make(*overrides.split()))


def test_an_arithmetic_term_without_an_objective_is_named() -> None:
    cfg = make("objective=arithmetic", "objective.terms=[{weight: 1}]")
    assert message(build, cfg.objective) == (
        "objective.terms[0] has no objective; each term is {weight: number, objective: "
        "{_target_: fvexp.optvis.objectives.channel, layer: ..., channel: ...}}")
    cfg = make("objective=arithmetic", "objective.terms=[{weight: 1, objective: {layer: _blocks.8}}]")
    assert message(build, cfg.objective) == (
        "objective.terms[0].objective={'layer': '_blocks.8'} is not an objective; give one with its _target_, e.g. "
        "{_target_: fvexp.optvis.objectives.channel, layer: ..., channel: ...}")


def test_interpolate_needs_both_ends() -> None:
    assert message(build, make("objective=interpolate", "objective.a=null").objective) == (
        "objective.a=null is not an objective; objective=interpolate needs two, objective.a and objective.b, e.g. "
        "objective.a={_target_: fvexp.optvis.objectives.channel, layer: _blocks.8, channel: 5}")


def test_a_reversed_channel_range_is_named() -> None:
    assert message(parse_channels, "9-3", 112, "_blocks.8") == (
        "task.channels='9-3' is a reversed range; write the lower channel first, e.g. task.channels=3-9")
    assert parse_channels("3-9", 112, "_blocks.8") == list(range(3, 10))


@pytest.fixture
def small_pil_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL's decompression-bomb guard at 100 pixels: warns above 100, refuses above 200."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)


def test_images_beyond_pils_limit_are_refused_in_one_line(tmp_path: Path, small_pil_limit: None) -> None:
    Image.new("RGB", (20, 15), "red").save(tmp_path / "big.png")  # 300 pixels: PIL refuses it
    Image.new("RGB", (12, 12), "red").save(tmp_path / "warned.png")  # 144 pixels: PIL warns, and decodes it
    big = tmp_path / "big.png"
    tail = ("has 300 pixels, beyond the 200 pixels PIL decodes (its guard against decompression bombs); use a "
            "smaller copy of it, e.g. resized to 4096 px on its longer side")
    assert message(load, big, 8, key="objective.image") == f"objective.image: the image {str(big)!r} {tail}"
    assert message(average_magnitude, [str(big)], 8) == f"spectrum_from: the image {str(big)!r} {tail}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning printed either
        assert load(tmp_path / "warned.png", 8, key="objective.image").shape == (1, 3, 8, 8)
        assert open_image(tmp_path / "warned.png", 8) is not None
        assert open_image(big, 8) is None  # in data.dir: counted as unreadable and skipped, as other bad files


def test_a_weights_file_that_is_not_a_state_dict_says_what_it_holds(tmp_path: Path) -> None:
    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3))

    expected = "a state dict: parameter names to tensors, as torch.save(net.state_dict(), PATH) writes"
    whole = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)), whole)
    text = message(custom, net(), weights_path=str(whole))
    assert text == (f"custom(weights_path={str(whole)!r}) holds pickled Python objects besides tensors (a whole model "
                    f"saved with torch.save(net, PATH)?), which fvexp does not unpickle; fvexp loads only {expected}")
    assert "weights_only" not in text
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "model": nn.Conv2d(3, 4, 3).state_dict()}, checkpoint)
    assert message(custom, net(), weights_path=str(checkpoint)) == (
        f"custom(weights_path={str(checkpoint)!r}) holds a dict with keys epoch, model (its 'model' entry looks like "
        f"the state dict: save that one), not {expected}")
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    assert message(custom, net(), weights_path=str(listed)) == (
        f"custom(weights_path={str(listed)!r}) holds a list of 2 items, not {expected}")
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not weights\n")
    assert message(custom, net(), weights_path=str(text_file)) == (
        f"custom(weights_path={str(text_file)!r}) is not a torch file of tensors; fvexp loads only {expected}")
    (tmp_path / "empty.pt").touch()
    assert message(custom, net(), weights_path=str(tmp_path / "empty.pt")) == (
        f"custom(weights_path={str(tmp_path / 'empty.pt')!r}) is empty; fvexp loads only {expected}")


def write_images(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "blue").save(folder / name)


def deny(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    """Reading the `denied` folders fails as without read permission (tests run as root, where chmod does not)."""
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if Path(os.fsdecode(path)) in denied:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_folder_says_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_images(tmp_path, "a/1.png", "b/2.png")
    deny(monkeypatch, tmp_path)
    assert message(scan, tmp_path, "data.dir") == (f"data.dir={str(tmp_path)!r} cannot be read (permission denied); "
                                                   "give fvexp "
                                       "read access to it or choose another folder")


def test_an_unreadable_subfolder_is_named_or_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_images(tmp_path, "a/1.png", "b/2.png")
    deny(monkeypatch, tmp_path / "b")
    assert scan(tmp_path) == [tmp_path / "a" / "1.png"]  # the others are read (a lost+found, say)
    deny(monkeypatch, tmp_path / "a", tmp_path / "b")
    assert message(scan, tmp_path, "data.dir") == (  # the key the application names the folder by
        f"data.dir={str(tmp_path)!r} cannot be read (permission denied for {tmp_path / 'a'}); give fvexp read access "
        "to it or choose another folder")


# --- 3. symlinks: each real folder is read once ---

def test_a_symlink_loop_indexes_each_image_once(tmp_path: Path) -> None:
    write_images(tmp_path, "a/1.png", "a/b/2.png", "c/3.png")
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path, target_is_directory=True)  # a loop back to the top
    (tmp_path / "c" / "again").symlink_to(tmp_path / "a", target_is_directory=True)  # a second way into a/
    assert scan(tmp_path) == [tmp_path / "a" / "1.png", tmp_path / "a" / "b" / "2.png", tmp_path / "c" / "3.png"]


# --- the tools that take overrides report a bad one in one line ---

@pytest.mark.parametrize("override,expected", [
    ("objective.chanel=3", "fvexp.layers: error: unknown key 'objective.chanel'; closest valid: objective.channel"),
    ("model=torchvison", "fvexp.layers: error: unknown model option 'torchvison'; closest valid: torchvision. "
                         "model options: custom, dinov2_small, efficientnet_lite0, onnx, torchvision"),
    ("--store", "fvexp.layers: error: unknown option --store; fvexp-layers takes the overrides fvexp takes "
                "(KEY=VALUE), see fvexp-layers --help"),  # issue 22: Hydra's LexerNoViableAltException
    ("render.size=20000", "fvexp.layers: error: render.size=20000 is not allowed: render.size must be the image "
                          "side in pixels, 1 to 4096"),
])
def test_the_layer_listing_reports_a_bad_override_in_one_line(override: str, expected: str) -> None:
    with pytest.raises(SystemExit) as error:
        layers.main([override])
    assert str(error.value.code) == expected


@pytest.mark.slow
def test_fvexp_layers_prints_a_bad_override_without_a_traceback(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    for override, expected in (("objective.chanel=3", "unknown key 'objective.chanel'; closest valid: objective.chan"),
                               ("model=torchvison", "unknown model option 'torchvison'; closest valid: torchvision")):
        done = subprocess.run([sys.executable, "-m", "fvexp.tools.layers", override], cwd=tmp_path, text=True,
                              capture_output=True, env=environment)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(f"fvexp.layers: error: {expected}") and done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr
