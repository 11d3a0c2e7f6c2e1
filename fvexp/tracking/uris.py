"""Whether a tracking store can be used, found out in seconds and said in one line.

MLflow left to itself retries an unreachable server for minutes, creates an empty database at a
mistyped path and reports a corrupt file as a long traceback. fvexp checks the URI first, bounds
every HTTP call (`HTTP_LIMITS`, which the user's own environment settings override), and creates a
new SQLite store under a lock, so that jobs started at the same moment do not race in its
schema migration.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
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


def anchored(uri: str, base: Path) -> str:
    """`uri` with a relative path made absolute against `base`, the folder a relative path means.

    MLflow reads `sqlite:///mlflow.db` (its quickstarts' form), `file:mlruns` and a plain `mlruns`
    relative to the current folder; fvexp anchors them to the folder the command started from
    (the same folder, unless a job runs in a folder of its own), so every later step (the
    artifact location, the lock, the jobs of a sweep) sees one absolute path.
    """
    database = sqlite_path(uri)
    if database is not None:
        return f"sqlite:///{base / database}" if not database.is_absolute() else uri
    parts = urlsplit(uri)
    if parts.scheme == "file" and not parts.netloc and not parts.path.startswith("/"):
        return (base / parts.path).as_uri()
    if not parts.scheme and not Path(uri).is_absolute():
        return str(base / uri)
    return uri


def check_store(uri: str) -> None:
    """Raise `FvexpError` with one line if a run cannot record into `uri`, before MLflow touches it."""
    scheme = check_scheme(uri, f"tracking.uri={redact(uri)}")
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise FvexpError(f"tracking.uri={redact(uri)} names no database file (sqlite:// alone is an in-memory "
                         "database, gone when the run ends); name a file, e.g. tracking.uri=sqlite:///mlflow.db")
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
    elif scheme in ("", "file"):
        check_folder_store(uri)
    elif scheme in ("http", "https"):
        check_server(uri)


def check_folder_store(uri: str) -> None:
    """MLflow 3 refuses a folder store (`./mlruns`, `file:...`) unless MLFLOW_ALLOW_FILE_STORE opts in: say so first."""
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
        raise FvexpError(f"{redact(uri)} is a folder store, which this MLflow refuses (its file backend is in "
                         "maintenance mode); use a SQLite file such as tracking.uri=sqlite:///mlflow.db, or set "
                         "MLFLOW_ALLOW_FILE_STORE=true to use the folder anyway")


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
        check_folder_store(store)
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
        check_created(database)


def check_created(database: Path) -> None:
    """A store whose creation was interrupted (killed during MLflow's schema migration) is named as such.

    MLflow would retry the migration on every opening and fail on what the first try left ("table
    trace_info already exists"). fvexp creates new stores whole (`creating`), but a store left by
    an interrupted older fvexp, or by MLflow itself, can still be half made: leftover tables of a
    migration step, or no runs and a schema short of this MLflow's (a store with runs at an older
    schema is MLflow's to report: it asks for `mlflow db upgrade`).
    """
    try:
        with contextlib.closing(sqlite3.connect(f"{database.absolute().as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = db.execute("SELECT max(version_num) FROM alembic_version").fetchone()[0] \
                if "alembic_version" in tables else None
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.Error:
        return  # unreadable or locked: MLflow's own message says more
    leftovers = sorted(name for name in tables if name.startswith("_alembic_tmp_"))
    if not tables or (not leftovers and version and (runs or version == schema_head())):
        return
    why = f"the table {leftovers[0]} of an unfinished migration step" if leftovers else \
        f"schema version {version}, not this MLflow's {schema_head()}" if version else "no schema version"
    fix = (f"it holds {runs} runs: back it up, then finish the migration with `mlflow db upgrade sqlite:///{database}`"
           if runs else f"it holds no runs: delete it and {database}.lock, then run again")
    raise FvexpError(f"the SQLite store {database} was left half-created ({why}: its creation was interrupted); "
                     f"{fix}; or choose another tracking.uri")


def schema_head() -> str:
    """The newest schema version of the installed MLflow: the head of the migrations it ships."""
    import mlflow
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations")).get_current_head() or ""


def check_server(uri: str, seconds: float | None = None) -> None:
    """A tracking server answers its /health page within `seconds`, REACH_SECONDS by default (credentials are not
    needed for it)."""
    seconds = REACH_SECONDS if seconds is None else seconds
    parts = urlsplit(uri)
    health = parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path.rstrip("/") + "/health").geturl()
    try:
        with urllib.request.urlopen(health, timeout=seconds):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise FvexpError(f"cannot reach the tracking server {redact(uri)} within {seconds:g} s ({reason}); "
                         "start it, or choose another tracking.uri") from None


@contextlib.contextmanager
def creating(uri: str) -> Iterator[None]:
    """Hold a lock beside a SQLite store while MLflow opens it, creating a new store whole first.

    Jobs started at the same moment would race in MLflow's schema migration, and a process killed
    during it would leave a store no later run can open. So a new store is made under the lock in
    a temporary file beside it (`create_whole`) and moved into place only once complete.
    """
    from filelock import FileLock  # here, not at start-up: a run imports this module with its callbacks

    database = sqlite_path(uri)
    if database is None:
        yield
        return
    with FileLock(f"{database}.lock"):  # waits as long as another process holds it
        if not database.exists() or not database.stat().st_size:
            create_whole(database)
        yield


def create_whole(database: Path) -> None:
    """MLflow's tables in `database`, created in a temporary file that is renamed into place once complete.

    Called under the store's lock, so a leftover temporary file is one a killed process left.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for leftover in database.parent.glob(f".{database.name}.creating-*"):
        leftover.unlink(missing_ok=True)
    partial = database.with_name(f".{database.name}.creating-{os.getpid()}")
    store = SqlAlchemyStore(f"sqlite:///{partial}", (database.parent / "mlartifacts").as_uri())
    store.engine.dispose()  # no connection stays open on the file that is moved
    os.replace(partial, database)
