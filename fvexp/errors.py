"""User-facing errors: say what was wrong, what is allowed, and the closest valid names."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

LISTED = 12  # choices named in full when none looks like the input
UNSET = object()  # an `Arg` without a value


class FvexpError(Exception):
    """A problem the user can fix by changing the command or the config; printed without a traceback."""


@dataclass(frozen=True)
class Arg:
    """An argument of one of the library's pieces as a message names it: `piece` is the function or class.

    Python words it as the argument's name, or with `value` as the call (`channel(layer='_blocks.8')`);
    with no `name`, as the piece itself. The application words it as its config key
    (`objective.layer=_blocks.8`, `objective=channel`), showing the value as `repr` where `quoted`.
    """

    piece: Callable[..., Any]
    name: str = ""
    value: Any = UNSET
    quoted: bool = False

    def __str__(self) -> str:
        if not self.name:
            return self.piece.__name__
        return self.name if self.value is UNSET else f"{self.piece.__name__}({self.name}={self.value!r})"


@dataclass(frozen=True)
class Call:
    """A call a message suggests, `piece(**arguments)`; the application words it as its config choices."""

    piece: Callable[..., Any]
    arguments: tuple[tuple[str, Any], ...]

    def __str__(self) -> str:
        return f"{self.piece.__name__}({', '.join(f'{name}={value!r}' for name, value in self.arguments)})"


class Setting(Enum):
    """A choice the caller made that is no argument of the piece a message is about (the image size, the
    learning rate), as the library's messages word it. The application names the config key that holds each
    (`fvexp.app.keys.SETTINGS`, which a test keeps complete), so both sides share these constants, not phrases."""

    IMAGE_SIZE = "image size"
    NET = "net"  # the network whose named_modules() are the layers
    NET_IS = "net is"  # a model function that returned something other than a network
    GIVE_NETWORK = "give the network itself"
    UNFOLDED = "fold_batch_norm=False when building the model"  # efficientnet_lite's, which folds them by default
    CLASSES = "classes"  # where a model's class names come from
    CLASS_SOURCES = "classes='imagenet' or a text file with one name per line"
    FOLDER = "folder"  # the image folder a piece was given, unless told its key
    EXAMPLES_FOLDER = "a folder of dataset examples"
    NO_EXAMPLES = "ask for no dataset examples"
    TRAINING_SIZE = "training image size"  # a prior's, when it is trained
    UNIT_OBJECTIVES = "one of channel, neuron, class_logit, class_prob or class_logsumexp"  # about one unit
    EXAMPLE = "channel(layer='_blocks.8', channel=5)"  # an objective, for messages
    TERM = "{'weight': number, 'objective': Objective}"  # one of `combine`'s terms
    TERM_WITH_EXAMPLE = "{'weight': number, 'objective': an Objective such as channel(layer='_blocks.8', channel=5)}"
    AN_OBJECTIVE = "an Objective, e.g. channel(layer='_blocks.8', channel=5)"
    LEARNING_RATE = "the learning rate"
    PRIOR_WEIGHT = "a weight on the prior term"
    START_IMAGE = "a start image for the parameterization"
    TRAIN_PRIOR = "train one with priors.train(images) and save it with priors.save(net, path, size, meta)"

    def __str__(self) -> str:
        return self.value


class ArgumentError(FvexpError):
    """A value one of the library's pieces refuses, kept in parts so that the application can say it in its keys.

    `kind` says what was wrong in a word (range, layer, channel, label, file, ...), `value` is the value,
    `allowed` what is accepted in words (a range, the kinds of output), `closest` the valid names
    nearest the value. The message is `template` with its `{fields}` filled from `parts`: `Arg`s, `Call`s
    and `Setting`s in Python's words here (`str`), in the command line's through `worded`.
    """

    def __init__(self, template: str, *, kind: str, value: Any = None, allowed: str = "",
                 closest: Sequence[str] = (), **parts: Any) -> None:
        self.template, self.parts = template, parts
        self.kind, self.value, self.allowed, self.closest = kind, value, allowed, list(closest)
        super().__init__(self.worded(str))

    def worded(self, name: Callable[[Arg | Call | Setting], str]) -> str:
        """The message with each `Arg`, `Call` and `Setting` named by `name`."""
        return self.template.format(**{key: name(part) if isinstance(part, Arg | Call | Setting) else part
                                       for key, part in self.parts.items()})

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return FvexpError, (str(self),)  # across processes (a joblib worker's result) as its Python message


class OutOfRange(ArgumentError):
    """An argument outside its declared range (`fvexp.ranges`)."""

    def __init__(self, piece: Callable[..., Any], argument: str, value: Any, allowed: str) -> None:
        super().__init__("{given} is not allowed: {argument} must be {words}", kind="range", value=value,
                         allowed=allowed, words=allowed, given=Arg(piece, argument, value),
                         argument=Arg(piece, argument))


class FvexpWarning(UserWarning):
    """A problem fvexp worked around (a cache it could not use, say): the work goes on; the command line
    prints it as one `fvexp: warning:` line."""


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The valid names that look most like `name`, best first."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not matches:  # fall back to names that share a prefix or contain the input
        matches = [c for c in choices if c.startswith(name) or name in c][:n]
    return matches


def unknown(kind: str | Arg, name: str, choices: Iterable[str], hint: str = "", **parts: Any) -> ArgumentError:
    """An error for a name that is not among `choices`, suggesting the closest ones.

    `kind` is what the name is, in words or as the argument that took it; `hint` may name arguments as
    `{fields}` given in `parts` (`Arg`s), as `ArgumentError`'s template does.
    """
    choices = list(choices)
    suggestions = closest(name, choices)
    listed = ("; closest valid: " + ", ".join(suggestions) if suggestions
              else "; valid: " + ", ".join(choices) if len(choices) <= LISTED  # nothing alike: a short list, whole
              else "")
    template = "unknown {what} " + f"{name!r}{listed}".replace("{", "{{").replace("}", "}}")
    template += f". {hint}" if hint else ""
    return ArgumentError(template, kind=str(kind), value=name, closest=suggestions, what=kind, **parts)


def not_a_file(path: str | Path) -> str:
    """Why `path` is no file to read, for a message: it does not exist, is a folder, or is a device or a pipe.

    `Path.is_file` is False for all three; saying "does not exist" of /dev/zero sends the user looking
    for the wrong mistake.
    """
    path = Path(path)
    if path.is_dir():
        return "is a folder"
    return "is not a regular file (a device, a pipe or a socket)" if path.exists() else "does not exist"
