"""Whether a tracking store can be used, found out in seconds and said in one line.

MLflow left to itself retries an unreachable server for minutes, creates an empty database at a
mistyped path and reports a corrupt file as a long traceback. fvexp checks the URI first, bounds
every HTTP call (`HTTP_LIMITS`, which the user's own environment settings override), and creates a
new SQLite store under a lock, so that jobs started at the same moment do not race in its
schema migration.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from fvexp.credentials import redact
from fvexp.errors import FvexpError

HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",  # seconds per request (MLflow's default: 120)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # (MLflow's default: 7, with a backoff that takes minutes)
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # its "View run at" line would print the URI's password
}
REACH_SECONDS = 3
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI; None for other stores."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_store(uri: str) -> None:
    """Raise `FvexpError` with one line if a run cannot record into `uri`, before MLflow touches it."""
    scheme = check_scheme(uri, f"tracking.uri={redact(uri)}")
    database = sqlite_path(uri)
    if database is not None:
        check_sqlite_file(database, "move it away, or choose another tracking.uri")
        folder = database.parent
        if not folder.is_dir():
            raise FvexpError(f"the folder of the SQLite store {database} does not exist; create it, or choose another "
                             "tracking.uri")
        if not os.access(folder, os.W_OK) or (database.exists() and not os.access(database, os.W_OK)):
            raise FvexpError(f"cannot write the SQLite store {database}: {folder} is read-only; choose a writable "
                             "tracking.uri, or tracking=none")
    elif scheme in ("http", "https"):
        check_server(uri)


def check_readable(store: str) -> None:
    """Raise `FvexpError` with one line if `store` names no existing store (the tools read), creating nothing."""
    shown = redact(store)
    scheme = check_scheme(store, f"the store {shown}")
    database = sqlite_path(store)
    fix = "name an existing store with --store or MLFLOW_TRACKING_URI, or run fvexp to create it"
    if database is not None:
        if not database.exists():
            raise FvexpError(f"no MLflow store at {shown}: the file {database.absolute()} does not exist; {fix}")
        check_sqlite_file(database, "name an MLflow store with --store or MLFLOW_TRACKING_URI")
    elif scheme in ("", "file"):  # a folder store
        folder = Path(urlsplit(store).path if scheme == "file" else store)
        if not folder.is_dir():
            raise FvexpError(f"no MLflow store at {shown}: the folder {folder.absolute()} does not exist; {fix}")
    elif scheme in ("http", "https"):
        check_server(store)


def check_scheme(uri: str, named: str) -> str:
    """The URI's scheme (without a `+driver`), if fvexp knows it; `named` is how the message names the URI."""
    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    if len(scheme) > 1 and scheme not in SCHEMES:  # one letter: a Windows drive, a folder
        raise FvexpError(f"{named} has an unknown scheme {scheme!r}; use sqlite:///PATH (a file), "
                         "http(s)://HOST:PORT (a tracking server), postgresql://..., or a folder")
    return scheme


def check_sqlite_file(database: Path, fix: str) -> None:
    """A SQLite store's path, where something exists there: a file that begins as SQLite files do."""
    if database.is_dir():
        raise FvexpError(f"the SQLite store {database} is a folder; name a database file, e.g. "
                         f"sqlite:///{database / 'mlflow.db'}")
    if database.exists() and database.stat().st_size:
        with database.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise FvexpError(f"{database} is not an SQLite database (corrupt, or another kind of file); {fix}")


def check_server(uri: str) -> None:
    """A tracking server answers its /health page within a few seconds (credentials are not needed for it)."""
    parts = urlsplit(uri)
    health = parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path.rstrip("/") + "/health").geturl()
    try:
        with urllib.request.urlopen(health, timeout=REACH_SECONDS):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise FvexpError(f"cannot reach the tracking server {redact(uri)} within {REACH_SECONDS} s ({reason}); "
                         "start it, or choose another tracking.uri") from None


@contextlib.contextmanager
def creating(uri: str) -> Iterator[None]:
    """Hold a lock beside a SQLite store while MLflow opens it: the first opening creates its tables."""
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
