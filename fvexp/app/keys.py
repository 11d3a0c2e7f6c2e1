"""The library's errors in the command line's words: each argument it names becomes the config key that set it.

`fvexp.optvis` speaks Python: an `ArgumentError` names `channel(layer='_blocks.8')` and suggests
`class_logit(layer='_fc', label=3)`. A run was configured by keys, so here the same error names
`objective.layer=_blocks.8` and suggests `objective=class_logit objective.layer=_fc objective.label=3`.
A piece's key is where the run's config builds it (the node whose `_target_` is the piece); a piece
the config does not build (a suggestion) belongs to its module's group. Ranges declared on the pieces
(`fvexp.ranges`) are checked here against the config before anything is built (the pieces' modules are
imported for it, not torch before a run needs it), so a bad value costs no model load and leaves no run behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from fvexp.app.places import config_dir
from fvexp.errors import UNSET, Arg, ArgumentError, Call, FvexpError, OutOfRange, Setting
from fvexp.ranges import check, declared

GROUPS = {"objectives": "objective", "params": "param", "models": "model", "features": "model", "weights": "model",
          "onnx": "model", "optimizers": "optimizer", "transforms": "transforms", "atlas": "task"}  # module -> group
LIBRARY = "fvexp.optvis."
# What the library calls a choice of the caller's that is no argument of the piece it is in, and the command
# line's words for it (see `fvexp.errors.Setting`).
SETTINGS = {
    "image size": "render.size",
    "net": "model",  # the network whose named_modules() are the layers
    "folder": "data.dir",  # the image folder dataset examples are read from
    "training image size": "data.size",  # a prior's, when it is trained
    "ask for no dataset examples": "leave data.dir unset",
    "classes": "model.classes",  # where a model's class names come from
    "net is": "model.net built",  # of `custom`, given something that is no network
    "give the network itself": "its _target_ must return the network",
    "one of channel, neuron, class_logit, class_prob or class_logsumexp":
        "objective=channel, neuron, class_logit, class_prob or class_logsumexp",
    "the learning rate": "optimizer.lr",
    "a weight on the prior term": "regularizers.prior.weight",
    "a folder of dataset examples": "data.dir=FOLDER",
    "a start image for the parameterization": "param.init=image param.image=PATH",
    "fold_batch_norm=False when building the model": "model.fold_batch_norm=false",
    "classes='imagenet' or a text file with one name per line":
        "model.classes=imagenet or a text file; classes= in fvexp.visualize",
    "channel(layer='_blocks.8', channel=5)":
        "{_target_: fvexp.optvis.objectives.channel, layer: _blocks.8, channel: 5}",
    "{'weight': number, 'objective': Objective}": "{weight: number, objective: {...}}",
    "{'weight': number, 'objective': an Objective such as channel(layer='_blocks.8', channel=5)}":
        "{weight: number, objective: {_target_: fvexp.optvis.objectives.channel, layer: ..., channel: ...}}",
    "an Objective, e.g. channel(layer='_blocks.8', channel=5)":
        "one with its _target_, e.g. {_target_: fvexp.optvis.objectives.channel, layer: ..., channel: ...}",
}


def said(error: BaseException, cfg: DictConfig) -> BaseException:
    """`error` in the config's keys when the library raised it about an argument; any other error as it is."""
    if not isinstance(error, ArgumentError):
        return error
    return FvexpError(error.worded(lambda part: SETTINGS[part.words] if isinstance(part, Setting)
                                   else _key(part, _prefix(part.piece, cfg))))


def check_ranges(cfg: DictConfig) -> None:
    """Refuse a config value outside the range its piece declares, naming the key, before anything is built.

    Only the library's pieces are looked at: importing another target (MLflow's tracker) here would cost
    the start-up what the recorder's thread saves.
    """
    for path, node in _pieces(cfg):
        if not node._target_.startswith(LIBRARY):
            continue
        piece = get_object(node._target_)
        values = {name: node[name] for name in declared(piece) if name in node}
        try:
            check(piece, {name: OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig)
                          else value for name, value in values.items()})
        except OutOfRange as error:
            raise FvexpError(error.worded(lambda part, path=path: _key(part, path))) from None


def _pieces(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(dotted path, node) of every node with a `_target_`, outermost first."""
    if isinstance(node, DictConfig):
        if "_target_" in node and isinstance(node._target_, str):
            yield path, node
        for key in node:
            if key != "hydra":
                yield from _pieces(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _pieces(node._get_node(i), f"{path}[{i}]")


def _key(part: Arg | Call, prefix: str) -> str:
    """An argument or a suggested call as the command line writes it, `prefix` being its piece's key."""
    if isinstance(part, Call):
        return " ".join([_choice(part.piece, prefix), *(f"{prefix}.{name}={_shown(value, False)}"
                                                          for name, value in part.arguments)])
    if not part.name:
        return _choice(part.piece, prefix)
    key = f"{prefix}.{part.name}"
    return key if part.value is UNSET else f"{key}={_shown(part.value, part.quoted)}"


def _prefix(piece: Callable[..., Any], cfg: DictConfig) -> str:
    """Where the config builds `piece`; else its module's group (a piece the message suggests)."""
    target = f"{piece.__module__}.{piece.__qualname__}"
    found = next((path for path, node in _pieces(cfg) if node._target_ == target), None)
    return found or GROUPS.get(piece.__module__.rpartition(".")[2], piece.__module__)


def _choice(piece: Callable[..., Any], group: str) -> str:
    """`group=option`, the option being the group's config file that builds `piece`; a piece outside the
    config groups (a regularizer, a batch term) by its key alone."""
    target = f"{piece.__module__}.{piece.__qualname__}"
    folder = config_dir() / group
    if not folder.is_dir():
        return group
    named = [f.stem for f in sorted(folder.glob("*.yaml")) if f"_target_: {target}\n" in f.read_text()]
    return f"{group}={named[0] if named else piece.__name__.lower()}"


def _shown(value: Any, quoted: bool) -> str:
    """A value as the config writes it: null for None, the text itself (or its repr where `quoted`)."""
    if value is None:
        return "null"
    return repr(value) if quoted else str(value)
