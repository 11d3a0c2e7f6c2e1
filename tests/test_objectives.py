"""Objectives compose arithmetically and reject bad layers, channels, labels and sizes with clear errors."""

from __future__ import annotations

import pytest
import torch

from fvexp.app.build import check_fits
from fvexp.errors import FvexpError
from fvexp.optvis import objectives
from fvexp.optvis.transforms import Compose, Jitter, Pad

ACTS = {"a": torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4), "logits": torch.tensor([[1.0, 2.0]])}


def test_channel_neuron_and_layer_values() -> None:
    a = ACTS["a"]
    assert torch.equal(objectives.channel("a", 1)(ACTS), a[:, 1].mean((1, 2)))
    assert torch.equal(objectives.neuron("a", 2)(ACTS), a[:, 2, 2, 2])
    assert torch.equal(objectives.neuron("a", 2, x=1, y=3)(ACTS), a[:, 2, 3, 1])
    assert torch.equal(objectives.layer("a")(ACTS), a.pow(2).mean((1, 2, 3)))


def test_arithmetic_composes_values_layers_and_names() -> None:
    c0, c1 = objectives.channel("a", 0), objectives.channel("a", 1)
    combo = c0 + 2 * c1 - 0.5 * objectives.layer("a")
    assert torch.allclose(combo(ACTS), c0(ACTS) + 2 * c1(ACTS) - 0.5 * objectives.layer("a")(ACTS))
    assert combo.layers == {"a"}
    assert "channel a:0" in combo.name and "2·channel a:1" in combo.name
    assert torch.allclose(sum([c0, c1])(ACTS), c0(ACTS) + c1(ACTS))
    with pytest.raises(TypeError, match="multiplies by a number"):
        c0 * c1


def test_class_objectives_take_a_label_or_an_index() -> None:
    logits = {"_fc": torch.randn(2, 1000)}
    assert torch.equal(objectives.class_logit("goldfish", "_fc")(logits), logits["_fc"][:, 1])
    assert torch.equal(objectives.class_logit(1, "_fc")(logits), logits["_fc"][:, 1])
    assert torch.allclose(objectives.class_prob("Goldfish", "_fc")(logits), logits["_fc"].softmax(1)[:, 1])


def test_unknown_label_suggests_close_labels() -> None:
    with pytest.raises(FvexpError, match="unknown class label 'goldfsh'; closest valid: goldfish"):
        objectives.class_logit("goldfsh", "_fc")
    with pytest.raises(FvexpError, match=r"class index 1000 is out of range: imagenet has classes 0\.\.999"):
        objectives.class_prob(1000, "_fc")


def test_unknown_layer_names_the_closest_layers(model) -> None:
    with pytest.raises(FvexpError, match=r"unknown layer '_block\.8'; closest valid: _blocks\.8"):
        model.layer("_block.8")
    with pytest.raises(FvexpError, match=r"unknown layer 'blocks8'; closest valid: .*_blocks\.8"):
        model.layer("blocks8")


def test_channel_out_of_range_gives_the_channel_count(model) -> None:
    with pytest.raises(FvexpError, match=r"channel 112 is out of range for layer '_blocks\.8', which has 112 "
                                         r"channels \(channel must be 0\.\.111\)"):
        check_fits(model, objectives.channel("_blocks.8", 112), Compose(), 224)
    check_fits(model, objectives.channel("_blocks.8", 111), Compose(), 224)


def test_too_small_image_says_the_minimum_size(model) -> None:
    transforms = Compose([Pad(2), Jitter(8)])
    with pytest.raises(FvexpError, match=r"render\.size=10 is too small for layer '_blocks\.15', which needs at "
                                         r"least 32 px of image .*only 6 px\); use render\.size>=36"):
        check_fits(model, objectives.channel("_blocks.15", 0), transforms, 10)
    check_fits(model, objectives.channel("_blocks.15", 0), transforms, 36)
    with pytest.raises(FvexpError, match=r"render\.size>=32"):
        check_fits(model, objectives.class_logit("goldfish", "_fc"), Compose(), 31)
    with pytest.raises(FvexpError, match=r"size=8 .* needs at least 16 px .*only 30 px\); use render\.size>=16"):
        check_fits(model, objectives.channel("_blocks.8", 0), Compose([Pad(11)]), 8)


def test_neuron_position_outside_the_map_says_the_range(model) -> None:
    with pytest.raises(FvexpError, match=r"position x=20, y=None is outside layer '_blocks\.8', whose map is "
                                         r"14x14 .* x in 0\.\.13 and y in 0\.\.13, or a larger image size"):
        check_fits(model, objectives.neuron("_blocks.8", 0, x=20), Compose(), 224)


def test_a_shared_module_is_rejected(model) -> None:
    with pytest.raises(FvexpError, match="'_swish' runs 2 times in one forward pass"):
        check_fits(model, objectives.channel("_swish", 0), Compose(), 224)
