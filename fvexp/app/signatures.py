"""Config schemas read from the library's own signatures, so that every default is written once.

A piece's defaults live in its Python signature (`Fourier(batch, size, sd=0.01, ...)`), where a
Python user meets them; the command line gets the same values because its schema is made from that
signature. The signature is read from the source with `ast` rather than by importing the module:
`fvexp --help` and tab completion compose configs and must not pay for importing torch.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import enum
import importlib.util
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, Optional, Union

PRIMITIVES = (int, float, str, bool)


class _OpaqueMeta(type):
    def __getattr__(cls, name: str) -> type:
        return _Foreign

    def __getitem__(cls, item: object) -> type:
        return _Foreign


class _Foreign(metaclass=_OpaqueMeta):
    """Stands for any name an annotation uses that a config cannot type (Tensor, nn.Module, ...)."""


class _Names(dict):
    """The names an annotation may use; anything else is `_Foreign`."""

    def __missing__(self, key: str) -> type:
        return _Foreign


NAMES = {"int": int, "float": float, "str": str, "bool": bool, "None": None, "list": list, "tuple": tuple,
         "dict": dict, "Sequence": collections.abc.Sequence, "Mapping": collections.abc.Mapping,
         "Literal": Literal, "Any": Any, "Optional": Optional, "Union": Union}


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    annotation: Any
    default: Any = dataclasses.MISSING


def parameters(target: str) -> list[Parameter]:
    """The keyword parameters of `target` ("package.module.function" or "...Class"), from its source."""
    module, _, name = target.rpartition(".")
    tree = _tree(module)
    found = next((n for n in tree.body if getattr(n, "name", None) == name), None)
    if isinstance(found, ast.ClassDef):
        found = next((n for n in found.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), found)
    if isinstance(found, ast.ClassDef):
        return []  # no __init__ of its own: nothing to configure
    if not isinstance(found, ast.FunctionDef):
        raise LookupError(f"{target} is not a function or a class with __init__ in {module}")
    args = found.args
    positional = args.posonlyargs + args.args
    defaults = [dataclasses.MISSING] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults, strict=True)) + list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    own = [Parameter(arg.arg, _annotation(arg.annotation), _default(default, module))
           for arg, default in pairs if arg.arg != "self"]
    return own + (_forwarded(found, module, args.kwarg.arg) if args.kwarg else [])


def _forwarded(function: ast.FunctionDef, module: str, kwarg: str) -> list[Parameter]:
    """The parameters a `**kwarg` stands for: those of the call that passes it on (`train(images, seed=..., **kwarg)`),
    less the ones that call fills itself, so that a wrapper's settings are the wrapped function's, written once."""
    for call in (node for node in ast.walk(function) if isinstance(node, ast.Call)):
        if any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwarg for k in call.keywords):
            given = {k.arg for k in call.keywords if k.arg} | {"self"}
            return [p for p in parameters(_dotted(call.func, module))[len(call.args):] if p.name not in given]
    return []


def _dotted(func: ast.expr, module: str) -> str:
    """The dotted name of a called function (`priors.train`, `train`) from the imports of `module`."""
    head, _, rest = ast.unparse(func).partition(".")
    for node in _tree(module).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == head:
                    return ".".join(filter(None, (node.module, alias.name, rest)))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.asname or alias.name) == head:
                    return ".".join(filter(None, (alias.name, rest)))
    return ".".join(filter(None, (module, head, rest)))


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_source(module).read_text(encoding="utf-8"))


def _source(module: str) -> Path:
    """The file of `module`, found without importing it or its parent packages (`fvexp.optvis` imports torch)."""
    top, *parts = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or (not spec.submodule_search_locations and parts):
        raise LookupError(f"no module {module}")
    if not parts:
        return Path(spec.origin)
    folder = Path(next(iter(spec.submodule_search_locations)))
    for part in parts[:-1]:
        folder = folder / part
    for candidate in (folder / parts[-1] / "__init__.py", folder / f"{parts[-1]}.py"):
        if candidate.is_file():
            return candidate
    raise LookupError(f"no module {module}")


def _constant(module: str, name: str) -> ast.expr | None:
    """The value of a module-level name a default uses: a literal assignment, or one imported from an fvexp
    module (only that module is read: a task's module imports many)."""
    for node in _tree(module).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fvexp."):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _constant(node.module, alias.name)
    return None


def _annotation(node: ast.expr | None) -> Any:
    if node is None:
        return Any
    source = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ast.unparse(node)
    return eval(source, {"__builtins__": {}}, _Names(NAMES))  # names only: no calls, nothing imported


def _default(node: ast.expr | object, module: str) -> Any:
    if node is dataclasses.MISSING or node is None:
        return dataclasses.MISSING
    if isinstance(node, ast.Name):
        node = _constant(module, node.id) or node
    return ast.literal_eval(node)


def config_type(annotation: Any, name: str) -> Any:
    """The OmegaConf type for a Python annotation: primitives, their lists, Optional, Literal as an Enum."""
    if annotation in PRIMITIVES or annotation is Any:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return enum.StrEnum(name.title().replace("_", ""), {str(a): str(a) for a in args})
    if origin in (dict, collections.abc.Mapping):
        return dict[str, Any]
    if origin in (Union, types.UnionType):
        kept = [a for a in args if a is not type(None) and a is not _Foreign]
        if any(typing.get_origin(a) in (dict, collections.abc.Mapping) for a in kept):
            return dict[str, Any]  # a mapping or a sequence (transforms' pieces): configs name the items
        if len(kept) != 1:
            return Any
        inner = config_type(kept[0], name)
        return Optional[inner] if type(None) in args and inner is not Any else inner  # noqa: UP045
    if origin in (list, tuple, collections.abc.Sequence):
        items = [a for a in args if a is not Ellipsis]
        item = config_type(items[0], name) if items and len(set(items)) == 1 else Any
        return list[item] if item in PRIMITIVES else list[Any]
    return Any


def schema(target: str, skip: tuple[str, ...] = (), extra: tuple[tuple[str, Any, Any], ...] = (),
           overrides: dict[str, tuple[Any, Any]] | None = None, partial: bool = False,
           instantiate_as: str | None = None) -> type:
    """A structured-config dataclass for `target`: `_target_`, then its parameters with their defaults.

    `skip` leaves out parameters fvexp fills itself (a parameterization's batch and size), `extra`
    adds fvexp's own keys (name, type, default) and `overrides` retypes a parameter for the config.
    A parameter without a default becomes `???`: the config must set it. `instantiate_as` builds
    another callable with the same keywords (torch.optim.Adam for the library's `adam`).
    """
    fields: list[tuple[str, Any, dataclasses.Field]] = [
        ("_target_", str, dataclasses.field(default=instantiate_as or target))]
    if partial:
        fields.append(("_partial_", bool, dataclasses.field(default=True)))
    for p in parameters(target):
        if p.name in skip:
            continue
        kind, default = (overrides or {}).get(p.name, (config_type(p.annotation, p.name), p.default))
        fields.append((p.name, kind, _field(default, kind)))
    fields += [(name, kind, _field(default, kind)) for name, kind, default in extra]
    return dataclasses.make_dataclass(f"Schema_{target.replace('.', '_')}", fields)


def _field(default: Any, kind: Any) -> dataclasses.Field:
    if default is dataclasses.MISSING:
        return dataclasses.field(default="???")
    if typing.get_origin(kind) is dict and isinstance(default, list | tuple):
        default = dict(default)  # an empty sequence of pieces is an empty mapping of them
    if isinstance(default, list | tuple | dict):
        copy = type(default)(default) if isinstance(default, dict) else list(default)
        return dataclasses.field(default_factory=lambda: copy)
    return dataclasses.field(default=default)
