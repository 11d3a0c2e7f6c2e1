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

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from fvexp.app.places import config_dir
from fvexp.errors import UNSET, Arg, ArgumentError, Call, FvexpError, OutOfRange, Setting
from fvexp.ranges import check, declared

LIBRARY = "fvexp.optvis."
SETTINGS = {  # the command line's words for each of the library's `Setting`s; tests/test_inputs.py keeps it complete
    Setting.IMAGE_SIZE: "render.size",
    Setting.NET: "model",
    Setting.NET_IS: "model.net built",
    Setting.GIVE_NETWORK: "its _target_ must return the network",
    Setting.UNFOLDED: "model.fold_batch_norm=false",
    Setting.CLASSES: "model.classes",
    Setting.CLASS_SOURCES: "model.classes=imagenet or a text file; classes= in fvexp.visualize",
    Setting.FOLDER: "data.dir",
    Setting.EXAMPLES_FOLDER: "data.dir=FOLDER",
    Setting.NO_EXAMPLES: "leave data.dir unset",
    Setting.TRAINING_SIZE: "data.size",
    Setting.UNIT_OBJECTIVES: "objective=channel, neuron, class_logit, class_prob or class_logsumexp",
    Setting.EXAMPLE: "{_target_: fvexp.optvis.objectives.channel, layer: _blocks.8, channel: 5}",
    Setting.TERM: "{weight: number, objective: {...}}",
    Setting.TERM_WITH_EXAMPLE:
        "{weight: number, objective: {_target_: fvexp.optvis.objectives.channel, layer: ..., channel: ...}}",
    Setting.AN_OBJECTIVE:
        "one with its _target_, e.g. {_target_: fvexp.optvis.objectives.channel, layer: ..., channel: ...}",
    Setting.LEARNING_RATE: "optimizer.lr",
    Setting.PRIOR_WEIGHT: "regularizers.prior.weight",
    Setting.START_IMAGE: "param.init=image param.image=PATH",
    Setting.TRAIN_PRIOR: "train one with `fvexp task=train_prior data.dir=FOLDER` (it prints the file's path last)",
}
BUILT_BY_THE_APP = {  # pieces the application builds from a config node itself, not through a `_target_`
    "fvexp.optvis.features.FeatureModel": "model",  # around whatever model.* builds (fvexp.app.build.configure)
    "fvexp.optvis.atlas.sample": "task",  # with the atlas's task.* settings (fvexp.app.atlas)
    "fvexp.optvis.atlas.cells": "task",
}


def said(error: BaseException, cfg: DictConfig) -> BaseException:
    """`error` in the config's keys when the library raised it about an argument; any other error as it is."""
    if not isinstance(error, ArgumentError):
        return error
    return FvexpError(error.worded(lambda part: SETTINGS[part] if isinstance(part, Setting)
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
    """Where the config builds `piece`; else the group whose configs build pieces of its module (a piece
    the message suggests, say `class_logit` to a channel run: objective)."""
    target = f"{piece.__module__}.{piece.__qualname__}"
    found = next((path for path, node in _pieces(cfg) if node._target_ == target), None)
    return found or BUILT_BY_THE_APP.get(target) or _groups().get(piece.__module__, piece.__module__)


@functools.cache
def _groups() -> dict[str, str]:
    """Module -> config group, read from the `_target_`s of `conf/<group>/*.yaml` (the configs are the registry)."""
    groups: dict[str, str] = {}
    for file in sorted(config_dir().glob("*/*.yaml")):
        for target in re.findall(r"^\s*_target_:\s*([\w.]+)\s*$", file.read_text(), flags=re.M):
            groups.setdefault(target.rpartition(".")[0], file.parent.name)
    return groups


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
