"""The tools (compare, reproduce, claims, orphans) on bad and broken cases: one clear line, nothing silent."""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import psutil
import pytest

import fvexp
from fvexp.app.recorder import Guarded
from fvexp.errors import FvexpError
from fvexp.tools import claims, compare, orphans, reproduce
from fvexp.tracking.store import ORPHANED, process_state, reader
from tests.conftest import ROOT

HERE = socket.gethostname()


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, made once: creating its tables takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("empty") / "s.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_store: Path, tmp_path: Path) -> str:
    """A fresh store of its own in `tmp_path`, as a URI."""
    shutil.copy(empty_store, tmp_path / "s.db")
    return f"sqlite:///{tmp_path / 's.db'}"


def finished(client: mlflow.MlflowClient, experiment: str, **params: str) -> str:
    """A FINISHED run with `params` (and the same as its overrides), as compare reads it."""
    run = client.create_run(experiment, tags={"overrides": " ".join(f"{k}={v}" for k, v in params.items())})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def dead_pid() -> int:
    """The id of a process that has ended (and been collected)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def error_of(main, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    return str(stop.value.code)


# 1. compare --filter without --experiment ----------------------------------------------------------------------

def test_compare_filter_without_experiment_searches_the_fvexp_experiment(tmp_path: Path, store: str) -> None:
    client = mlflow.MlflowClient(store)
    fvexp_id, other_id = client.create_experiment("fvexp"), client.create_experiment("other")
    wanted = finished(client, fvexp_id, seed="0")
    finished(client, fvexp_id, seed="1")
    finished(client, other_id, seed="0")
    out = tmp_path / "compare"
    compare.main(["--filter", "params.seed = '0'", "--store", store, "--out", str(out)])
    rows = (out / "runs.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{wanted},")  # the header and the one matching run of `fvexp`
    assert html.escape("<h1>experiment 'fvexp' (--filter \"params.seed = '0'\")</h1>", quote=True).replace(
        "&lt;", "<").replace("&gt;", ">") in (out / "index.html").read_text()


def test_compare_filter_and_run_id_conflicts_and_empty_matches_are_one_line(tmp_path: Path, store: str) -> None:
    client = mlflow.MlflowClient(store)
    assert error_of(compare.main, "abc123", "--filter", "params.seed = '0'", "--store", store) == (
        "fvexp.compare: error: give a sweep's RUN_ID or --filter, not both: RUN_ID compares that sweep, --filter "
        "the runs of an experiment")
    assert error_of(compare.main, "abc123", "--experiment", "x", "--store", store) == (
        "fvexp.compare: error: give a sweep's RUN_ID or --experiment, not both: RUN_ID compares that sweep, "
        "--experiment the runs of an experiment")
    assert error_of(compare.main, "--filter", "params.seed = '0'", "--store", store) == (
        f"fvexp.compare: error: no experiment 'fvexp' in {store} (--filter without --experiment searches the "
        "experiment 'fvexp'); experiments: Default")
    finished(client, client.create_experiment("fvexp"), seed="1")
    assert error_of(compare.main, "--filter", "params.seed = '0'", "--store", store) == (
        "fvexp.compare: error: no run of the experiment 'fvexp' matches --filter \"params.seed = '0'\"")


# 2. reproduce of a stopped run -----------------------------------------------------------------------------------



def stopped(status: str, metrics: dict, history: int = 0, task: str = "render", steps: int = 8):
    """A fake stopped run, its client and its config, for `reproduce.stopped_at`."""
    from omegaconf import OmegaConf

    source = SimpleNamespace(info=SimpleNamespace(status=status, run_id="r1"), data=SimpleNamespace(metrics=metrics))
    client = SimpleNamespace(get_metric_history=lambda run_id, key: [SimpleNamespace(step=s)
                                                                      for s in range(1, history + 1)])
    return client, source, OmegaConf.create({"task": {"name": task}, "render": {"steps": steps}})


def test_a_stopped_run_is_re_run_to_the_step_where_it_stopped() -> None:
    assert reproduce.stopped_at(*stopped("FINISHED", {"steps_done": 8.0})) is None
    assert reproduce.stopped_at(*stopped("KILLED", {"steps_done": 3.0})) == (3, "KILLED")
    assert reproduce.stopped_at(*stopped("KILLED", {}, history=6)) == (6, "KILLED")  # no steps_done: the history
    assert reproduce.stopped_at(*stopped("FAILED", {}, history=4)) == (5, "FAILED")  # NaN at step 5: meet it again
    assert reproduce.stopped_at(*stopped("FAILED", {}, history=8)) == (8, "FAILED")  # failed after the last step
    assert reproduce.stopped_at(*stopped("FAILED", {"steps_done": 8.0})) == (8, "FAILED")
    with pytest.raises(FvexpError) as error:
        reproduce.stopped_at(*stopped("KILLED", {"steps_done": 0.0}))
    assert str(error.value) == "run r1 ended KILLED before its first step ended: there is no step to re-run"
    with pytest.raises(FvexpError) as error:
        reproduce.stopped_at(*stopped("KILLED", {}, history=3, task="gallery"))
    assert str(error.value) == ("run r1 ended KILLED in task=gallery; only task=render runs can be reproduced up to "
                                "the step where they stopped")


@pytest.mark.slow  # two real runs and MLflow
def test_a_killed_run_reproduces_bitwise_up_to_the_step_where_it_stopped(tmp_path: Path, store: str,
                                                                          monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    original = Guarded.log_step

    def interrupted_at_3(self, step: int, value: float) -> None:
        original(self, step, value)
        if step == 3:  # Ctrl-C lands in the main thread, here while step 3 is handed to the recorder
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Guarded, "log_step", interrupted_at_3)
        result = fvexp.run("render.steps=8", "render.size=64", "progress=false", f"tracking.uri={store}")
    run = mlflow.MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "KILLED" and run.data.metrics["steps_done"] == 3
    identical, report = reproduce.reproduce(result.run_id, store, None, tmp_path / "again")
    assert identical, report
    assert report.startswith("identical (max |Δ| = 0): ")
    assert report.endswith(f"matches run {result.run_id} at step 3, where it stopped (KILLED)")
    [copy] = mlflow.MlflowClient(store).search_runs([run.info.experiment_id],
                                                    f"tags.`fvexp.reproduces` = '{result.run_id}'")
    assert copy.data.params["render.steps"] == "3" and copy.data.params["render.thresholds"] == "None"
    assert copy.data.tags["overrides"].endswith("render.steps=3")


@pytest.mark.slow  # two real runs and MLflow
def test_a_run_failed_by_nan_reproduces_its_failure_and_image(tmp_path: Path, store: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = fvexp.run("objective._target_=tests.test_run.exploding_channel", "render.steps=8",
                       "render.thresholds=[2,4,8]", "render.size=64", "progress=false", f"tracking.uri={store}")
    assert result.status == "FAILED"
    identical, report = reproduce.reproduce(result.run_id, store, None, tmp_path / "again")
    assert identical, report
    assert report.endswith(f"matches run {result.run_id} at step 5, where it stopped (FAILED)")
    client = mlflow.MlflowClient(store)
    [copy] = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                                f"tags.`fvexp.reproduces` = '{result.run_id}'")
    assert copy.info.status == "FAILED" and "the objective became nan at step 5" in copy.data.tags["error"]
    assert copy.data.params["render.thresholds"] == "[2, 4]"


def test_a_running_run_is_not_reproduced(tmp_path: Path, store: str) -> None:
    client = mlflow.MlflowClient(store)
    run_id = client.create_run("0").info.run_id
    assert error_of(reproduce.main, run_id, "--store", store) == (
        f"fvexp.reproduce: error: run {run_id} cannot be reproduced: its record lacks the artifact(s) config.yaml, "
        "image.png (status RUNNING; a run that stopped early keeps no image)")
    client.log_text(run_id, "seed: 0\n", "config.yaml")
    client.log_text(run_id, "not read", "image.png")
    assert error_of(reproduce.main, run_id, "--store", store) == (
        f"fvexp.reproduce: error: run {run_id} is still RUNNING; reproduce it once it has ended (a run whose process "
        "was killed stays RUNNING: fvexp-orphans --mark ends it)")


# 3. a store that does not exist ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("tool", "argv"), [(compare, []), (reproduce, ["abc123"]), (claims, []), (orphans, [])],
                         ids=["compare", "reproduce", "claims", "orphans"])
def test_a_missing_store_is_one_line_and_is_not_created(tool, argv: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = tool.__name__.rsplit(".", 1)[1]
    assert error_of(tool.main, *argv, "--store", "sqlite:///missing/path.db") == (
        f"fvexp.{name}: error: no MLflow store at sqlite:///missing/path.db: the file {tmp_path}/missing/path.db "
        "does not exist; name an existing store with --store or MLFLOW_TRACKING_URI, or run fvexp to create it")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("uri", "message"), [
    ("sqlite:///{tmp}/none.db", "no MLflow store at sqlite:///{tmp}/none.db: the file {tmp}/none.db does not "
                                "exist; name an existing store with --store or MLFLOW_TRACKING_URI, or run fvexp to "
                                "create it"),
    ("sqlite:///{tmp}", "the SQLite store {tmp} is a folder; name a database file, e.g. "
                        "sqlite:///{tmp}/mlflow.db"),
    ("sqlite:///{tmp}/notes.db", "{tmp}/notes.db is not an SQLite database (corrupt, or another kind of file); name "
                                 "an MLflow store with --store or MLFLOW_TRACKING_URI"),
    ("{tmp}/mlruns", "no MLflow store at {tmp}/mlruns: the folder {tmp}/mlruns does not exist; name an existing "
                     "store with --store or MLFLOW_TRACKING_URI, or run fvexp to create it"),
    ("nosuch://host/x", "the store nosuch://host/x has an unknown scheme 'nosuch'; use sqlite:///PATH (a file), "
                        "http(s)://HOST:PORT (a tracking server), postgresql://..., or a folder"),
])
def test_a_store_that_cannot_be_read_is_one_line(uri: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(FvexpError) as error:
        reader(uri.format(tmp=tmp_path))
    assert str(error.value) == message.format(tmp=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_an_existing_store_is_read(tmp_path: Path, store: str) -> None:
    mlflow.MlflowClient(store).create_experiment("fvexp")
    assert [e.name for e in reader(store).search_experiments()] == ["fvexp", "Default"]


# 4. runs whose process is gone -----------------------------------------------------------------------------------

def running(client: mlflow.MlflowClient, name: str, start_time: int | None = None, **tags: str) -> str:
    return client.create_run("0", run_name=name, start_time=start_time, tags=tags).info.run_id


def test_orphans_are_listed_then_marked_killed_and_other_hosts_never(tmp_path: Path, store: str, capsys) -> None:
    client = mlflow.MlflowClient(store)
    dead, me = str(dead_pid()), str(os.getpid())
    gone = running(client, "gone", **{"fvexp.host": HERE, "fvexp.pid": dead})
    week_ago = int((time.time() - 7 * 86400) * 1000)
    reused = running(client, "reused", start_time=week_ago, **{"fvexp.host": HERE, "fvexp.pid": me})
    alive = running(client, "alive", **{"fvexp.host": HERE, "fvexp.pid": me})
    elsewhere = running(client, "elsewhere", **{"fvexp.host": "elsewhere.example", "fvexp.pid": dead})
    untagged = running(client, "untagged")
    ended = running(client, "ended", **{"fvexp.host": HERE, "fvexp.pid": dead})
    client.set_terminated(ended, "FINISHED")

    orphans.main(["--store", store])
    listed = [
        f"gone    {gone}  Default/gone: process {dead} on {HERE} no longer exists",
        f"alive   {alive}  Default/alive: process {me} on {HERE} is running",
        f"unknown {elsewhere}  Default/elsewhere: process {dead} on elsewhere.example: only runs of this host "
        f"({HERE}) can be checked",
        f"unknown {untagged}  Default/untagged: no fvexp.host/fvexp.pid tags (a sweep's parent run, or a run of an "
        "older fvexp)",
    ]
    reused_line = (f"gone    {reused}  Default/reused: process {me} on {HERE} no longer exists (the id now belongs "
                   "to a later process)")
    summary = "5 RUNNING runs: 2 whose process is gone, 1 alive, 2 unknown (not checkable here)"
    assert capsys.readouterr().out.splitlines() == [
        reused_line, *listed, f"{summary}; --mark ends the 2 whose process is gone as KILLED"]
    assert {r.info.status for r in client.search_runs(["0"])} == {"RUNNING", "FINISHED"}  # listing changes nothing

    orphans.main(["--store", store, "--mark"])
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{summary}; marked 2 runs KILLED (error: the process ended without closing the run (killed?))")
    for run_id, status in ((gone, "KILLED"), (reused, "KILLED"), (alive, "RUNNING"), (elsewhere, "RUNNING"),
                           (untagged, "RUNNING"), (ended, "FINISHED")):
        run = client.get_run(run_id)
        assert run.info.status == status, run.info.run_name
        assert (run.data.tags.get("error") == ORPHANED) == (status == "KILLED")
    orphans.main(["--store", store])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "3 RUNNING runs: 0 whose process is gone, 1 alive, 2 unknown (not checkable here)")


def test_no_running_runs_is_said(tmp_path: Path, store: str, capsys) -> None:
    mlflow.MlflowClient(store).create_experiment("fvexp")
    orphans.main(["--store", store])
    assert capsys.readouterr().out == f"no RUNNING runs in {store}\n"


def test_a_zombie_process_counts_as_gone() -> None:
    process = subprocess.Popen(["true"])
    deadline = time.time() + 10
    while psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline
        time.sleep(0.01)
    run = SimpleNamespace(data=SimpleNamespace(tags={"fvexp.host": HERE, "fvexp.pid": str(process.pid)}),
                          info=SimpleNamespace(start_time=int(time.time() * 1000)))
    assert process_state(run) == ("gone", f"process {process.pid} on {HERE} no longer exists")
    process.wait()


def test_compare_mentions_runs_whose_process_is_gone(tmp_path: Path, store: str, capsys) -> None:
    client = mlflow.MlflowClient(store)
    experiment = client.create_experiment("fvexp")
    finished(client, experiment, seed="0")
    for _ in range(2):
        client.create_run(experiment, tags={"fvexp.host": HERE, "fvexp.pid": str(dead_pid())})
    client.create_run(experiment, tags={"fvexp.host": HERE, "fvexp.pid": str(os.getpid())})  # alive: not counted
    compare.main(["--experiment", "fvexp", "--store", store, "--out", str(tmp_path / "out")])
    assert [line for line in capsys.readouterr().err.splitlines() if "mlflow.store.db" not in line] == [
        "fvexp.compare: warning: 2 runs are RUNNING but their process is gone; fvexp-orphans --mark ends them"]
    assert (tmp_path / "out" / "runs.csv").read_text().count("RUNNING") == 3


def metrics_in(store: str) -> int:
    """How many metric values a SQLite store holds, read without creating it or racing the job that does.

    The recorder writes in order, so once a step's value is there the run's start (its params,
    config.yaml and environment files) is recorded in full.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store.removeprefix('sqlite:///')}?mode=ro", uri=True)) as db:
            return db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    except sqlite3.OperationalError:  # no file or no table yet
        return 0


@pytest.mark.slow
def test_a_job_killed_outright_is_found_marked_and_not_reproduced(tmp_path: Path, store: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": store}
    job = subprocess.Popen([sys.executable, "-m", "fvexp", "render.steps=5000", "render.size=64", "progress=false"],
                           cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (list(tmp_path.glob("outputs/runs/*/*/steps/step_00016.png")) and metrics_in(store)):  # recorded
        assert job.poll() is None and time.time() < deadline
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "RUNNING" and run.data.tags["fvexp.pid"] == str(job.pid)

    def tool(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", f"fvexp.tools.{name}", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    done = tool("compare", "--experiment", "fvexp")
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "fvexp.compare: warning: 1 run is RUNNING but its process is gone; fvexp-orphans --mark ends it",
        "fvexp.compare: error: experiment 'fvexp' has no finished runs (1 running)"]
    done = tool("orphans", "--mark")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"gone    {run.info.run_id}  fvexp/{run.info.run_name}: process {job.pid} on {HERE} no longer exists",
        "1 RUNNING run: 1 whose process is gone, 0 alive, 0 unknown (not checkable here); marked 1 run KILLED "
        "(error: the process ended without closing the run (killed?))"]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    done = tool("reproduce", run.info.run_id)
    assert done.returncode == 1 and done.stderr.strip() == (
        f"fvexp.reproduce: error: run {run.info.run_id} cannot be reproduced: its record lacks the artifact(s) "
        "image.png (status KILLED: the process ended without closing the run (killed?); a run that stopped early "
        "keeps no image)")


def test_each_claim_is_checked_beside_the_natural_photos_row() -> None:
    photos = {"high_frequency_energy": 0.055, "spectral_slope": -2.27}
    holds, numbers = claims.claim_diversity({"0": {"gram_cosine": 0.99}, "10": {"gram_cosine": 0.10},
                                             claims.NATURAL: photos})
    assert holds and numbers == "mean Gram cosine 0.100 with the diversity term vs 0.990 without"
    holds, numbers = claims.claim_enemy({"naive": {"high_frequency_energy": 0.6},
                                         "full": {"high_frequency_energy": 0.2}, claims.NATURAL: photos})
    assert holds and numbers.endswith("natural photos 0.055 with slope -2.27)")


# --- issue 22: every tool answers --help, and refuses what it cannot use in one line ---

@pytest.mark.parametrize("tool", ["compare", "reproduce", "claims", "layers", "server", "orphans"])
def test_every_tool_answers_help_with_its_usage_and_makes_nothing(tool: str, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    # fvexp-layers took --help for an override: "LexerNoViableAltException: --help"
    import importlib

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"fvexp.tools.{tool}").main
    for flag in ("--help", "-h"):
        with contextlib.suppress(SystemExit):
            main([flag])
        out = capsys.readouterr().out
        assert out.startswith("usage: ") and "--help" not in out.splitlines()[-1], out[:300]
    assert list(tmp_path.iterdir()) == []


def test_a_tool_given_an_unknown_model_option_lists_the_valid_ones() -> None:
    # "unknown model option 'resnet'" and nothing more: no option looks like it
    from fvexp.tools import layers

    with pytest.raises(SystemExit) as exit:
        layers.main(["model=resnet"])
    options = sorted(path.stem for path in (ROOT / "conf" / "model").glob("*.yaml"))
    assert exit.value.code == f"fvexp.layers: error: unknown model option 'resnet'; valid: {', '.join(options)}"


def test_a_database_store_whose_driver_is_missing_is_one_line_naming_it(tmp_path: Path, monkeypatch) -> None:
    # MLflow's 45-line traceback ending in "No module named 'MySQLdb'"
    import importlib.util

    from fvexp.tools import server

    if importlib.util.find_spec("MySQLdb") or importlib.util.find_spec("pyodbc"):
        pytest.skip("a MySQL or SQL Server driver is installed here")
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("mlflow server was started"))
    for uri, message in (
            ("mysql://fvexp:pw@127.0.0.1/fvexp", "a mysql store through mysql:// needs the MySQLdb driver, which is "
                                                 "not installed: pip install mysqlclient"),
            ("mssql://fvexp@db/fvexp", "a mssql store through mssql:// needs the pyodbc driver, which is not "
                                       "installed: pip install pyodbc"),
            ("mongodb://fvexp:pw@db/fvexp", "the backend store mongodb://fvexp:***@db/fvexp has a scheme MLflow "
                                            "cannot store runs in; use postgresql://, mysql://, mssql:// or "
                                            "sqlite:///FILE (or a folder)")):
        with pytest.raises(SystemExit) as exit:
            server.main(["--backend-store-uri", uri, "--artifacts-destination", str(tmp_path / "artifacts")])
        assert exit.value.code == f"fvexp.server: error: {message}"


def test_reproduce_refuses_fewer_than_one_thread(tmp_path: Path, monkeypatch, capsys) -> None:
    # --threads 0 was taken as "as recorded"
    monkeypatch.chdir(tmp_path)
    for value in ("0", "-2"):
        with pytest.raises(SystemExit) as exit:
            reproduce.main(["abc123", "--threads", value])
        assert exit.value.code == 2
        assert capsys.readouterr().err.endswith(f"error: argument --threads: {value} is not allowed; give 1 or more\n")
    assert list(tmp_path.iterdir()) == []
