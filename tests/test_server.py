"""The shared tracking server: `python -m fvexp.tools.server` on PostgreSQL, and a sweep logged to it over HTTP.

PostgreSQL comes from $FVEXP_TEST_POSTGRES (`.ci/run` installs Debian's and sets it), else the same
default address; without one the tests that need it are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest
from PIL import Image

from tests.conftest import ROOT, free_port, fvexp

DEFAULT = "postgresql://fvexp:fvexp@127.0.0.1:5432/fvexp_test"  # the role and database `.ci/run` creates


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fvexp.tools.server", *args]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def postgres() -> str:
    """A PostgreSQL URI whose user may create databases; skips when there is none."""
    import psycopg2

    uri = os.environ.get("FVEXP_TEST_POSTGRES")
    try:
        psycopg2.connect(uri or DEFAULT, connect_timeout=5).close()
    except psycopg2.Error as error:
        reason = " ".join(str(error).split())
        if uri:  # asked for explicitly: not reaching it is a failure, not a skip
            pytest.fail(f"FVEXP_TEST_POSTGRES={uri} is set but unreachable: {reason}")
        pytest.skip(f"no PostgreSQL: FVEXP_TEST_POSTGRES is unset and {DEFAULT} is unreachable ({reason}); "
                    ".ci/run installs and sets one up")
    return uri or DEFAULT


@pytest.fixture
def database(postgres: str) -> Iterator[str]:
    """A fresh, uniquely named database for one test, dropped afterwards: its URI."""
    import psycopg2
    from psycopg2 import sql

    name = f"fvexp_test_{uuid.uuid4().hex[:12]}"

    def admin(statement: str) -> None:
        with contextlib.closing(psycopg2.connect(postgres)) as connection:
            connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL(statement).format(sql.Identifier(name)))

    admin("CREATE DATABASE {}")
    try:
        yield urlsplit(postgres)._replace(path=f"/{name}").geturl()
    finally:
        admin("DROP DATABASE IF EXISTS {} WITH (FORCE)")


@pytest.fixture
def server(database: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m fvexp.tools.server` on the fresh database and a new artifact folder: (URL, artifact folder)."""
    port, artifacts, log = free_port(), tmp_path / "artifacts", tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(server_command("--backend-store-uri", database, "--artifacts-destination",
                                                  str(artifacts), "--port", str(port), "--workers", "1"),
                                   env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /health in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, artifacts
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the server by its own id, with its workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_a_sweep_logged_to_the_server_is_all_there(server: tuple[str, Path], database: str, tmp_path: Path) -> None:
    import psycopg2

    url, artifacts = server
    work = tmp_path / "work"
    work.mkdir()
    done = fvexp("-m", "objective.channel=0,1", "render.steps=4", "render.size=64", "progress=false",
                 f"tracking.uri={url}", cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (work / "outputs" / "mlflow.db").exists()  # nothing went to a local store

    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("fvexp")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied: the server holds the files
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("fvexp.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2  # every run is there, and the jobs are the parent's children
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(c.data.params["objective.channel"] for c in children) == ["0", "1"]
    assert (parent.data.tags["fvexp.jobs.finished"], parent.data.tags["fvexp.jobs.failed"]) == ("2", "0")

    for child in children:
        downloaded = Path(client.download_artifacts(child.info.run_id, "image.png", str(tmp_path)))
        with Image.open(downloaded) as image:
            assert (image.format, image.size) == ("PNG", (64, 64))
            assert any(low < high for low, high in image.convert("RGB").getextrema())  # not a blank image
        stored = artifacts / experiment.experiment_id / child.info.run_id / "artifacts" / "image.png"
        assert downloaded.read_bytes() == stored.read_bytes()  # the server's folder, served over HTTP
        downloaded.unlink()

    with contextlib.closing(psycopg2.connect(database)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_uuid, status FROM runs")  # the runs are rows of the PostgreSQL database
        assert sorted(cursor.fetchall()) == sorted((r.info.run_id, "FINISHED") for r in runs)


@pytest.mark.slow
def test_an_unreachable_database_is_one_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run(server_command("--backend-store-uri", f"postgresql://fvexp:secret@127.0.0.1:{port}/runs",
                                         "--artifacts-destination", str(tmp_path / "artifacts")),
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    first, fix = done.stderr.strip().split("\n")
    assert first.startswith(f"fvexp.server: error: cannot connect to the backend store "
                            f"postgresql://fvexp:***@127.0.0.1:{port}/runs: ")
    assert "Connection refused" in first and "secret" not in done.stderr
    assert fix == (f"To fix it, make sure PostgreSQL runs on 127.0.0.1:{port} and listens there (Debian: apt-get "
                   "install postgresql; service postgresql start), then create the user and the database: "
                   "sudo -u postgres psql -c \"CREATE USER fvexp PASSWORD '<password>'\"; "
                   "sudo -u postgres createdb --owner fvexp runs")


@pytest.mark.slow
def test_a_missing_database_is_named_with_the_command_to_create_it(postgres: str) -> None:
    parts = urlsplit(postgres)
    name = f"fvexp_missing_{uuid.uuid4().hex[:12]}"
    done = subprocess.run(server_command("--backend-store-uri", parts._replace(path=f"/{name}").geturl(),
                                         "--artifacts-destination", "unused"),
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f'database "{name}" does not exist' in done.stderr
    assert done.stderr.strip().endswith(f"To fix it, create the database: sudo -u postgres createdb --owner "
                                        f"{parts.username} {name}")
