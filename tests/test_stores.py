"""The tracking store, round two: MLflow's own URI forms, stores whose creation was interrupted, a full disk."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fvexp.app.job import execute
from fvexp.app.recorder import Guarded, Recorder
from fvexp.app.result import Job
from fvexp.errors import FvexpError
from fvexp.tracking.store import reader
from fvexp.tracking.uris import anchored, check_store
from fvexp.tracking.writer import MlflowTracker
from tests.conftest import ROOT, fvexp, make

SHORT = ("render.steps=6", "render.size=64", "progress=false")


@pytest.mark.parametrize(("uri", "expected"), [
    ("sqlite:///mlflow.db", "sqlite:///{base}/mlflow.db"),  # MLflow's quickstart form: relative to the folder
    ("sqlite:///runs/m.db", "sqlite:///{base}/runs/m.db"),
    ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
    ("file:mlruns", "file://{base}/mlruns"),
    ("file:///abs/mlruns", "file:///abs/mlruns"),
    ("mlruns", "{base}/mlruns"),
    ("./mlruns", "{base}/mlruns"),
    ("/abs/mlruns", "/abs/mlruns"),
    ("http://host:5000", "http://host:5000"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
])
def test_relative_uris_are_anchored_where_the_command_started(uri: str, expected: str) -> None:
    assert anchored(uri, Path("/work/here")).replace("/./", "/") == expected.format(base="/work/here")


@pytest.mark.slow  # MLflow and a real render
def test_mlflows_own_relative_sqlite_form_is_recorded_there(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make(*SHORT, "tracking.uri=sqlite:///m.db")
    result = execute(cfg, Job(tmp_path / "run", ["tracking.uri=sqlite:///m.db"]))
    assert result.run_id is not None and (tmp_path / "m.db").is_file()
    run = reader(f"sqlite:///{tmp_path / 'm.db'}").get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert (tmp_path / "mlartifacts").is_dir()


def test_a_folder_store_is_refused_in_one_line_as_this_mlflow_does_unless_opted_in(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in ("file:mlruns", str(tmp_path / "mlruns")):
        with pytest.raises(FvexpError, match=r"is a folder store, which this MLflow refuses .*; use a SQLite file "
                                             r"such as tracking.uri=sqlite:///mlflow.db, or set "
                                             r"MLFLOW_ALLOW_FILE_STORE=true"):
            check_store(uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_store(str(tmp_path / "mlruns"))


@pytest.mark.slow  # MLflow writes a folder store
def test_a_relative_folder_store_is_recorded_when_mlflow_allows_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result = execute(make(*SHORT, "tracking.uri=file:mlruns"), Job(tmp_path / "run", []))
    assert result.run_id is not None
    assert reader(str(tmp_path / "mlruns")).get_run(result.run_id).info.status == "FINISHED"


def half_created(database: Path) -> None:
    """A store as a process killed inside MLflow's migration leaves it: an older schema version, a step's table."""
    MlflowTracker(f"sqlite:///{database}").experiment_id()
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = 'acf3f17fdcc7'")
        db.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")


@pytest.mark.slow  # MLflow creates the store
def test_a_half_created_store_is_named_so_in_one_line_by_runs_and_tools(tmp_path: Path) -> None:
    database = tmp_path / "s.db"
    half_created(database)
    expected = (f"the SQLite store {database} was left half-created (the table _alembic_tmp_experiments of an "
                f"unfinished migration step: its creation was interrupted); it holds no runs: delete it and "
                f"{database}.lock, then run again; or choose another tracking.uri")
    with pytest.raises(FvexpError) as error:
        check_store(f"sqlite:///{database}")
    assert str(error.value) == expected
    with pytest.raises(FvexpError) as error:
        reader(f"sqlite:///{database}")  # fvexp-orphans, fvexp-compare, fvexp-reproduce
    assert str(error.value) == expected


KILL_WHILE_CREATING = """
import signal, subprocess, sys, time
from pathlib import Path
db = Path(sys.argv[1])
code = f"from fvexp.tracking.writer import MlflowTracker; MlflowTracker('sqlite:///{db}').experiment_id()"
job = subprocess.Popen([sys.executable, "-c", code])
while not (db.exists() and db.stat().st_size > 200_000) and job.poll() is None:
    time.sleep(0.002)  # the store file has some of its tables: kill the process in the middle of the migration
job.send_signal(signal.SIGKILL)
job.wait()
"""


@pytest.mark.slow  # two processes: the killed creation and the next run
def test_a_process_killed_while_creating_a_store_leaves_none_or_a_whole_one(tmp_path: Path) -> None:
    database = tmp_path / "k.db"
    subprocess.run([sys.executable, "-c", KILL_WHILE_CREATING, str(database)], check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    check_store(f"sqlite:///{database}")  # no half-created store is there (before: table trace_info already exists)
    tracker = MlflowTracker(f"sqlite:///{database}")
    assert tracker.experiment_id()
    assert not list(tmp_path.glob(".k.db.creating-*"))


@pytest.mark.slow  # MLflow on a full disk, one fvexp process
@pytest.mark.parametrize("small_disk", ["1300k"], indirect=True)
def test_a_store_that_fills_its_disk_costs_no_image_and_says_one_line(small_disk: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{small_disk / 's.db'}"
    done = fvexp("render.steps=48", "render.thresholds=[8,16,24,32,40,48]", "render.size=128", "progress=false",
                 f"tracking.uri={store}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "ERROR mlflow" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("fvexp: warning")]
    assert len(lines) == 1 and ("disk is full" in lines[0] or "No space left" in lines[0]), done.stderr
    assert Path(done.stdout.splitlines()[-1]).is_file()
    client = reader(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert all(run.info.status != "RUNNING" for run in runs) or "fvexp-orphans --mark" in lines[0]  # ended, or said


class Hanging(Recorder):
    """A tracking server that went away during the run: its calls hang until released, and it is unreachable."""

    def __init__(self) -> None:
        self.release, self.calls = threading.Event(), []
        self.run_id = "hanging"

    def start(self, name: str | None, params: Mapping[str, Any], tags: Mapping[str, str],
              files: Mapping[str, str]) -> None:
        self.calls.append("start")

    def log_step(self, step: int, value: float) -> None:
        self.calls.append(f"step {step}")
        if step == 2:
            raise ConnectionError("the server went away")

    def log_image(self, image: Any, step: int) -> None:
        self.release.wait()  # a request in flight when the stop comes

    def reachable(self) -> bool:
        return False

    def finish(self, status: str, error: str | None = None) -> None:
        self.calls.append(f"finish {status}")


def test_a_stopped_run_does_not_wait_on_a_store_that_went_away(capsys) -> None:
    inner = Hanging()
    guarded = Guarded(inner, "warn", "http://tracking:5000")
    guarded.start("run", {}, {}, {})
    guarded.log_step(1, 1.0)
    guarded.log_image(None, 1)  # type: ignore[arg-type]  # in flight when the SIGTERM comes, and hanging
    stopping = threading.Thread(target=guarded.finish, args=("KILLED",))
    stopping.start()
    stopping.join(60)  # without the bound, finish waits as long as the request hangs: here, for ever
    inner.release.set()
    assert not stopping.is_alive()
    assert "tracking in http://tracking:5000 did not answer within 2 s of the stop; the run may stay RUNNING there " \
           "(`fvexp-orphans --mark` ends it)" in capsys.readouterr().err


def test_an_unreachable_store_is_not_asked_to_end_the_run_and_the_line_names_fvexp_orphans(capsys) -> None:
    inner = Hanging()
    inner.release.set()
    guarded = Guarded(inner, "warn", "http://tracking:5000")
    guarded.start("run", {}, {}, {})
    for step in (1, 2, 3):
        guarded.log_step(step, 1.0)
    guarded.finish("FINISHED")
    assert inner.calls == ["start", "step 1", "step 2"]
    err = capsys.readouterr().err
    assert "the run could not be ended there (`fvexp-orphans --mark` ends it KILLED once the store works again, " \
           "with --store http://tracking:5000)" in err


SWEEP_SUMMARY = ("fvexp: 1 of 2 jobs did not finish: 1_objective.channel=100000,render.size=64,render.steps=2 FAILED "
                 "(exit code 2): channel 100000 is out of range for layer '_blocks.8', which has 112 channels "
                 "(objective.channel must be 0..111)")


@pytest.mark.slow  # a sweep of two jobs: in the command's process, in joblib workers, or on a local Ray cluster
@pytest.mark.parametrize(("launcher", "tracking"), [
    *((launcher, tracking) for launcher in ("basic", "joblib", "ray_local") for tracking in ("none", "sqlite")),
    ("joblib", "dead"),  # a store that cannot be reached: tracking.on_error=warn, the default, runs the sweep
])
def test_a_sweeps_exit_code_and_summary_do_not_depend_on_the_launcher_or_the_tracking(
        tmp_path: Path, ray_dir: Path, launcher: str, tracking: str) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    options = {"none": ["tracking=none"], "sqlite": [f"tracking.uri={store}"],
               "dead": ["tracking.uri=http://127.0.0.1:9"]}[tracking]
    if launcher == "ray_local":
        options.append(f"+hydra.launcher.ray.init._temp_dir={ray_dir}")
    done = fvexp("-m", f"hydra/launcher={launcher}", *options, "objective.channel=3,100000", "render.steps=2",
                 "render.size=64", "progress=false", cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]  # a job got bad input
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("fvexp: 1 of 2")] == [SWEEP_SUMMARY]
    assert len(list(tmp_path.glob("outputs/multirun/*/*/0_*/image.png"))) == 1
    if tracking == "sqlite":  # the parent run counts the jobs as the outcome files do
        client = reader(store)
        runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
        parent = next(run for run in runs if run.data.tags["fvexp.role"] == "parent")
        assert parent.info.status == "FINISHED"
        assert (parent.data.tags["fvexp.jobs.finished"], parent.data.tags["fvexp.jobs.failed"]) == ("1", "1")
    if tracking == "dead":  # the dead store costs the sweep its parent run, said once, and nothing else
        assert done.stderr.count("cannot record the sweep in http://127.0.0.1:9") == 1



class FailsAfterCreating(Recorder):
    """A store that creates the run, then fails while its params are written (its disk filled at that moment)."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    def start(self, name: str | None, params: Mapping[str, Any], tags: Mapping[str, str],
              files: Mapping[str, str]) -> None:
        self.run_id = "created"
        raise OSError(28, "No space left on device")

    def finish(self, status: str, error: str | None = None) -> None:
        self.ended.append(status)


def test_a_run_created_before_its_start_failed_is_ended_not_left_running(capsys) -> None:
    inner = FailsAfterCreating()
    guarded = Guarded(inner, "warn", "sqlite:///full/s.db")
    guarded.start("run", {}, {}, {})
    guarded.finish("FINISHED")
    assert inner.ended == ["FAILED"]  # before: left RUNNING in the store
    assert "cannot record this run in sqlite:///full/s.db: OSError: [Errno 28] No space left on device" in \
        capsys.readouterr().err
