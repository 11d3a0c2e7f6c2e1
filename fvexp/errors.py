"""User-facing errors: say what was wrong, what is allowed, and the closest valid names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

LISTED = 12  # choices named in full when none looks like the input


class FvexpError(Exception):
    """A problem the user can fix by changing the command or the config; printed without a traceback."""


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


def unknown(kind: str, name: str, choices: Iterable[str], hint: str = "") -> FvexpError:
    """An error for a name that is not among `choices`, suggesting the closest ones."""
    choices = list(choices)
    suggestions = closest(name, choices)
    message = f"unknown {kind} {name!r}"
    if suggestions:
        message += "; closest valid: " + ", ".join(suggestions)
    elif len(choices) <= LISTED:  # nothing alike: a short list is given whole, so the user sees what exists
        message += "; valid: " + ", ".join(choices)
    if hint:
        message += f". {hint}"
    return FvexpError(message)


def not_a_file(path: str | Path) -> str:
    """Why `path` is no file to read, for a message: it does not exist, is a folder, or is a device or a pipe.

    `Path.is_file` is False for all three; saying "does not exist" of /dev/zero sends the user looking
    for the wrong mistake.
    """
    path = Path(path)
    if path.is_dir():
        return "is a folder"
    return "is not a regular file (a device, a pipe or a socket)" if path.exists() else "does not exist"
