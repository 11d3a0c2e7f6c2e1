"""Passwords never leave the command line: every URI fvexp records or prints goes through `redact`.

Credentials belong in the environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for a
tracking server); a password written into a URI still works, but is replaced by *** in params,
tags, the recorded config and overrides, file names and messages.
"""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://user:***@host, wherever it appears in a text
_PASSWORD_IN_URI = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@'\"]*:)(?P<password>[^/\s@'\"]+)(?=@)")


def redact(text: str) -> str:
    """`text` with the password of every URI in it replaced by ***."""
    return _PASSWORD_IN_URI.sub(r"\g<head>***", text)
