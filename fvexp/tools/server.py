"""A shared MLflow tracking server: runs in PostgreSQL, artifacts in one folder served over HTTP.

    python -m fvexp.tools.server --backend-store-uri postgresql://fvexp:PASSWORD@127.0.0.1:5432/fvexp \\
        --artifacts-destination /srv/fvexp/artifacts --host 0.0.0.0 --port 5000

Jobs on several machines (joblib, SLURM, a colleague's laptop) then log to one store with
`tracking.uri=http://HOST:5000`, and a sweep's jobs find their parent run there; a SQLite file lives
on one disk and serializes its writers. Artifacts are proxied (`--serve-artifacts`): clients upload and
download images through the server and need no access to the artifact folder.

The database is checked before `mlflow server` starts, because `mlflow server` retries a missing or
unreachable database for minutes, printing tracebacks, before it gives up; this says at once what failed
and how to fix it. Options not listed here (`--workers 2`, `--allowed-hosts ...`) go to `mlflow server`.
MLflow's job runners, which fvexp does not use, stay off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from fvexp.credentials import redact
from fvexp.errors import FvexpError
from fvexp.tools.arguments import one_line_errors
from fvexp.tracking.ui import page, runs_link
from fvexp.tracking.writer import EXPERIMENT


def is_postgres(parts: SplitResult) -> bool:
    return parts.scheme.split("+")[0] in ("postgresql", "postgres")


def sqlalchemy_uri(uri: str) -> str:
    """The store URI for mlflow, naming the psycopg2 driver when it names none.

    SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which fvexp does not install; psycopg2 is
    what the check below connects with, so the server uses the same driver.
    """
    parts = urlsplit(uri)
    return parts._replace(scheme="postgresql+psycopg2").geturl() if parts.scheme in ("postgresql", "postgres") else uri


def check_database(uri: str) -> None:
    """Connect once to a PostgreSQL store, or raise an error that says how to make it reachable.

    Other stores (sqlite:///FILE, mysql://) are left to `mlflow server`.
    """
    parts = urlsplit(uri)
    if not is_postgres(parts):
        check_driver(uri)
        return
    try:
        import psycopg2
    except ImportError:
        raise FvexpError("a PostgreSQL store needs the psycopg2 driver: pip install psycopg2-binary") from None
    user, database = parts.username or "USER", parts.path.lstrip("/") or parts.username or "DATABASE"
    try:
        psycopg2.connect(parts._replace(scheme="postgresql").geturl(), connect_timeout=10).close()
    except psycopg2.Error as error:
        reason = " ".join(str(error).split()).rstrip(".")  # libpq's message spans lines
        create_user = f"sudo -u postgres psql -c \"CREATE USER {user} PASSWORD '<password>'\""
        create_db = f"sudo -u postgres createdb --owner {user} {database}"
        if f'database "{database}" does not exist' in reason:
            fix = f"create the database: {create_db}"
        elif "password authentication failed" in reason or f'role "{user}" does not exist' in reason:
            fix = (f"create the user: {create_user} (or, if it exists with another password: ALTER USER {user} "
                   f"PASSWORD '<password>'), and the database: {create_db}")
        else:
            fix = (f"make sure PostgreSQL runs on {parts.hostname or 'localhost'}:{parts.port or 5432} and listens "
                   f"there (Debian: apt-get install postgresql; service postgresql start), then create the user "
                   f"and the database: {create_user}; {create_db}")
        raise FvexpError(f"cannot connect to the backend store {redact(uri)}: {reason}\nTo fix it, {fix}") from None


DATABASES = ("postgresql", "mysql", "mssql", "sqlite")  # the SQLAlchemy dialects MLflow's store accepts
PACKAGES = {"MySQLdb": "mysqlclient", "pyodbc": "pyodbc", "pymysql": "pymysql"}  # a driver's module -> pip package


def check_driver(uri: str) -> None:
    """Refuse a database URI whose scheme MLflow does not store runs in, or whose driver is not installed.

    `mlflow server` meets either as a traceback of some 45 lines (SQLAlchemy's ModuleNotFoundError at
    its end); a folder or file: URI is MLflow's file store and needs no driver.
    """
    parts = urlsplit(uri)
    if "://" not in uri or parts.scheme == "file":
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    supported = "postgresql://, mysql://, mssql:// or sqlite:///FILE (or a folder)"
    if parts.scheme.split("+")[0] not in DATABASES:
        raise FvexpError(f"the backend store {redact(uri)} has a scheme MLflow cannot store runs in; use {supported}")
    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError):
        raise FvexpError(f"the backend store {redact(uri)} names a driver SQLAlchemy does not know; use "
                         f"{supported}") from None
    except ImportError as error:
        module = (error.name or "").split(".")[0]
        raise FvexpError(f"a {parts.scheme.split('+')[0]} store through {parts.scheme}:// needs the {module} driver, "
                         f"which is not installed: pip install {PACKAGES.get(module, module)}") from None


def destination(value: str) -> str:
    """The artifact destination; a folder is made absolute, so the server's log says where artifacts go."""
    return value if "://" in value else str(Path(value).expanduser().resolve())


def existing_experiment(uri: str, name: str) -> str | None:
    """The id of the experiment `name` in a PostgreSQL or SQLite store, read without creating or migrating anything.

    MLflow's own client would first create its tables (and its Default experiment, with an artifact
    location of the client's choosing) in a new database, which is `mlflow server`'s to do; a store
    without the table or the experiment gives None.
    """
    parts = urlsplit(uri)
    database = Path(parts.path.removeprefix("/")) if parts.scheme == "sqlite" else None
    if not (is_postgres(parts) or (database and database.is_file())):
        return None
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(sqlalchemy_uri(uri))
    try:
        with engine.connect() as connection:
            row = connection.execute(text("SELECT experiment_id FROM experiments WHERE name = :name AND "
                                          "lifecycle_stage = 'active'"), {"name": name}).first()
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return str(row[0]) if row else None


def landing(uri: str, host: str, port: int) -> str:
    """The UI's page for fvexp's runs: the runs table of the experiment `fvexp` (in the UI's "Model training"
    mode, see `fvexp.tracking.ui`), else the list of experiments until the first run creates it."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    address = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"
    experiment = existing_experiment(uri, EXPERIMENT)
    return runs_link(address, experiment) if experiment else page(address, "experiments", {})


@one_line_errors("fvexp.server")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fvexp.tools.server", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend-store-uri", required=True,
                        help="where runs are stored: postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    parser.add_argument("--artifacts-destination", required=True, type=destination,
                        help="where artifacts are stored: a folder on the server, or a bucket (s3://...)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 for other machines")
    parser.add_argument("--port", type=int, default=5000)
    args, extra = parser.parse_known_args(argv)
    check_database(args.backend_store_uri)
    # mlflow's job runners (eight processes, for GenAI scorers and trace jobs) do nothing for fvexp's runs
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"fvexp.server: runs in {redact(args.backend_store_uri)}, artifacts in {args.artifacts_destination}, "
          f"listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    print(f"fvexp.server: the MLflow UI: {landing(args.backend_store_uri, args.host, args.port)} (each fvexp run and "
          "sweep prints the links to its own pages)", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "server",
                              "--backend-store-uri", sqlalchemy_uri(args.backend_store_uri), "--serve-artifacts",
                              "--artifacts-destination", args.artifacts_destination,
                              "--host", args.host, "--port", str(args.port), *extra])  # mlflow takes this process


if __name__ == "__main__":
    main()
