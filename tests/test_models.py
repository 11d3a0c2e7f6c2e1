"""Bring your own model: torchvision by name, any network by `_target_`, grayscale, layer listing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fvexp.errors import FvexpError
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.models import (
    SamePaddedConv2d,
    custom,
    efficientnet_lite,
    efficientnet_pairs,
    fold_batch_norms,
    published_efficientnet_lite,
    torchvision_model,
)
from fvexp.optvis.sanity import path_layers
from fvexp.optvis.weights import imagenet_classes
from tests.conftest import ROOT, fvexp


def tiny_net(channels: int = 3) -> nn.Module:
    """A small CNN, built by `_target_` in the tests: conv1 (8 ch) -> conv2 (16 ch) -> pool -> fc (5 classes)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory) -> Path:
    from torchvision.models import resnet18

    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.manual_seed(1)
    torch.save(resnet18().state_dict(), path)
    return path


def test_torchvision_model_loads_a_state_dict_file(resnet18_weights: Path) -> None:
    model = torchvision_model("resnet18", weights_path=str(resnet18_weights))
    assert type(model.net).__name__ == "ResNet" and model.logits_layer == "fc" and model.classes[1] == "goldfish"
    assert torch.equal(model.net.conv1.weight, torch.load(resnet18_weights)["conv1.weight"])
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_the_class_list_read_from_torchvisions_source_is_its_public_one() -> None:
    """`imagenet_classes` parses torchvision's private `models/_meta.py`: a torchvision that moves or
    renames that list fails here, not in a user's run."""
    from torchvision.models import get_model_weights

    assert imagenet_classes() == tuple(get_model_weights("resnet18").DEFAULT.meta["categories"])


def test_weights_that_do_not_match_name_the_keys(tmp_path: Path) -> None:
    from torchvision.models import resnet34

    path = tmp_path / "resnet34.pt"
    torch.save(resnet34().state_dict(), path)
    with pytest.raises(FvexpError, match=r"do not match the resnet18 architecture; unexpected keys: layer1\.2\."):
        torchvision_model("resnet18", weights_path=str(path))


def test_offline_without_cached_weights_says_how_to_provide_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FvexpError, match=r"the googlenet weights DEFAULT are not in the torch hub cache .* "
                                         r"pass weights_path=FILE"):
        torchvision_model("googlenet")
    with pytest.raises(FvexpError, match=r"unknown weights for resnet18 'IMAGENET9'; closest valid: IMAGENET1K_V1"):
        torchvision_model("resnet18", weights="IMAGENET9")


def test_custom_models_and_grayscale() -> None:
    gray = custom(tiny_net(1), mean=[0.5], std=[0.5])
    image = torch.rand(2, 3, 16, 16)
    luminance = (image * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(gray(image), gray.net((luminance - 0.5) / 0.5))
    with pytest.raises(FvexpError, match=r"net is a int, not a torch\.nn\.Module; give the network itself"):
        custom(3)
    with pytest.raises(FvexpError, match=r"one value per input channel: 3 \(RGB\), 1 \(grayscale\) or the channel "
                                         r"count of your network's input, the same for both; got 2 and 3"):
        custom(tiny_net(), mean=[0.5, 0.5], std=[0.5, 0.5, 0.5])


def load_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.slow
def test_runs_with_a_torchvision_model_and_a_target_model(tmp_path: Path, resnet18_weights: Path) -> None:
    done = fvexp("model=torchvision", "model.name=resnet18", f"model.weights_path={resnet18_weights}",
                 "objective.layer=layer3", "render.steps=4", "render.size=64", "tracking=none",
                 f"hydra.run.dir={tmp_path / 'resnet'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "resnet" / "image.png").exists()
    done = fvexp("model=custom", "model.net._target_=tests.test_models.tiny_net", "+model.net.channels=1",
                 "model.mean=[0.5]", "model.std=[0.5]", "objective.layer=2", "objective.channel=7",
                 "render.steps=4", "render.size=32", "tracking=none", f"hydra.run.dir={tmp_path / 'tiny'}",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_png(tmp_path / "tiny" / "image.png").shape == (32, 32, 3)
    done = fvexp("model=custom", "model.net._target_=tests.test_models.tiny_net", "+model.net.channels=4",
                 "model.mean=[0.5,0.5,0.5,0.5]", "model.std=[0.5,0.5,0.5,0.5]", "objective.layer=2",
                 "objective.channel=7", "param=laplacian", "render.steps=16", "render.size=32",
                 f"hydra.run.dir={tmp_path / 'four'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tiles = load_png(tmp_path / "four" / "image.png")
    assert tiles.shape == (32, 4 * 32, 3) and (tiles[..., 0] == tiles[..., 2]).all()  # 4 grey tiles, one a channel
    assert json.loads((tmp_path / "four" / "metrics.json").read_text())["objective_final"] > 0
    done = fvexp("model=custom", "model.net._target_=tests.nowhere.make", "tracking=none",
                 f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert done.returncode == 2 and "Error locating target 'tests.nowhere.make'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_layers_lists_shapes_and_channels(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fvexp.tools.layers", "render.size=224"], cwd=tmp_path, text=True,
                          capture_output=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split(maxsplit=4) for line in done.stdout.splitlines()[2:]}
    assert lines["_blocks.8"][2:] == ["112×14×14", "112", "channel, neuron, layer, direction"]
    assert lines["_fc"][2:] == ["1000", "1000", "class_logit, class_prob, layer, direction"]
    assert lines["_swish"][-1].split()[-1] == "-"


def test_padding_inside_the_convolutions_computes_the_published_network_bit_for_bit() -> None:
    """Odd sides pad evenly (inside the convolution), even sides unevenly at stride 2 (F.pad): both exact."""
    net = published_efficientnet_lite("lite0")
    folded = fold_batch_norms(net, efficientnet_pairs(net))
    published, ours = FeatureModel(net, (0.498,) * 3, (0.502,) * 3, folded=folded), efficientnet_lite()
    assert type(published.net._blocks[1]._depthwise_conv).__name__ == "Conv2dDynamicSamePadding"
    assert all(isinstance(m, SamePaddedConv2d) for m in ours.net.modules() if isinstance(m, nn.Conv2d))
    for layout in (torch.contiguous_format, torch.channels_last):  # NCHW, and what CPU runs use
        published, ours = published.to(memory_format=layout), ours.to(memory_format=layout)
        for side in (223, 224):
            image = torch.rand(1, 3, side, side, requires_grad=True)
            mine, theirs = ours(image), published(image)
            assert mine.equal(theirs)
            assert torch.autograd.grad(mine[0, 1], image)[0].equal(torch.autograd.grad(theirs[0, 1], image)[0])


def test_folded_batch_norms_compute_the_same_network_and_their_convolutions_are_refused(model) -> None:
    plain = efficientnet_lite(fold_batch_norm=False)
    assert len(model.folded) == 48 and "_conv_head" not in model.folded  # the head stays a readable layer
    image = torch.rand(1, 3, 224, 224)
    with torch.no_grad(), model.reading(["_blocks.8", "_conv_head"]) as read, \
            plain.reading(["_blocks.8", "_conv_head"]) as read_plain:
        folded, unfolded = read(image), read_plain(image)
    for layer in ("_blocks.8", "_conv_head"):
        assert torch.allclose(folded[layer], unfolded[layer], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(model(image).argmax(1), plain(image).argmax(1))
    with pytest.raises(FvexpError) as error:
        model.layer("_blocks.3._project_conv")
    assert str(error.value) == (
        "layer '_blocks.3._project_conv' has its batch norm '_blocks.3._bn2' folded into it for speed, so it outputs "
        "what '_blocks.3._bn2' did; read '_blocks.3._bn2' for those values, or set fold_batch_norm=False when "
        "building the model to read the convolution alone")
    assert plain.layer("_blocks.3._project_conv") is not None
    # the layers on the way to a class read the batch norm in place of its folded convolution (sanity, paths)
    assert path_layers(model, "logits") == ["_bn0", "_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc"]
    assert path_layers(plain, "_fc")[:2] == ["_conv_stem", "_bn0"]
