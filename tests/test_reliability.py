"""Whatever the tracking store does and however a run is stopped, what the run produced is kept."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import fvexp
from fvexp.app.job import execute, run_task
from fvexp.app.recorder import Recorder
from fvexp.app.result import Job
from fvexp.app.schema import validate
from fvexp.errors import FvexpError
from fvexp.tracking import uris
from fvexp.tracking.uris import check_store
from tests.conftest import ROOT, free_port, make

SHORT = ("render.steps=6", "render.size=64", "progress=false")


class Flaky(Recorder):
    """A store that works at the start, fails from the `fail_at`-th step on, and is back for the end."""

    calls: list[str]  # what reached the store, in order

    def __init__(self, uri: str = "", fail_at: int = 3) -> None:
        self.uri, self.fail_at, self.calls, self.run_id = uri, fail_at, [], "flaky-run"
        self.recorded: dict[str, Any] = {}

    def start(self, name: str | None, params: Mapping[str, Any], tags: Mapping[str, str],
              files: Mapping[str, str]) -> None:
        self.recorded = {"params": dict(params), "tags": dict(tags), "files": dict(files)}
        self.calls.append("start")

    def log_step(self, step: int, value: float) -> None:
        if step >= self.fail_at:
            raise ConnectionError("the tracking server went away")
        self.calls.append(f"step {step}")

    def finish(self, status: str, error: str | None = None) -> None:
        self.calls.append(f"finish {status}")


def job_with(tracking: dict, tmp_path: Path, *overrides: str) -> tuple[Any, Job]:
    cfg = make(*SHORT, *overrides)
    cfg.tracking = tracking
    return cfg, Job(tmp_path / "run", list(overrides))


def test_a_store_that_fails_during_the_run_costs_nothing_and_is_said_once(tmp_path: Path, capsys) -> None:
    cfg, job = job_with({"_target_": "tests.test_reliability.Flaky", "fail_at": 3}, tmp_path)
    result = execute(cfg, job)
    assert result.status == "FINISHED" and len(result.values) == 6
    assert (job.out_dir / "image.png").exists() and (job.out_dir / "metrics.json").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "tracking" in line]
    assert warnings == ["fvexp: warning: tracking in the store failed during the run (ConnectionError: the tracking "
                        "server went away); not recorded: objective values (4), images along the way (1), files (1), "
                        "metrics (1); the run was ended FINISHED there. The run folder holds everything"]


@pytest.mark.parametrize(("uri", "message"), [
    ("nosuch://host/x", "tracking.uri=nosuch://host/x has an unknown scheme 'nosuch'; use sqlite:///PATH (a file), "
                        "http(s)://HOST:PORT (a tracking server), postgresql://..., or a folder"),
    ("sqlite:///{tmp}/missing/store.db", "the folder of the SQLite store {tmp}/missing/store.db does not exist; "
                                         "create it, or choose another tracking.uri"),
    ("sqlite:///{tmp}/notes.db", "{tmp}/notes.db is not an SQLite database (corrupt, or another kind of file); "
                                 "move it away, or choose another tracking.uri"),
    ("sqlite://", "tracking.uri=sqlite:// names no database file (sqlite:// alone is an in-memory database, gone "
                  "when the run ends); name a file, e.g. tracking.uri=sqlite:///mlflow.db"),
    ("sqlite:///{tmp}", "the SQLite store {tmp} is a folder; name a database file, e.g. "
                        "sqlite:///{tmp}/mlflow.db"),
    ("http://user:secret@127.0.0.1:{closed}", "cannot reach the tracking server http://user:***@127.0.0.1:{closed} "
                                              "within 3 s ([Errno 111] Connection refused); start it, or choose "
                                              "another tracking.uri"),
])
def test_a_store_that_cannot_be_used_is_one_line_naming_it(uri: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database\n")
    closed = free_port()
    fill = {"tmp": tmp_path, "closed": closed}
    with pytest.raises(FvexpError) as error:
        check_store(uri.format(**fill))
    assert str(error.value) == message.format(**fill)
    assert not (tmp_path / "missing").exists()


def test_a_read_only_folder_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # root writes anywhere: pretend
    with pytest.raises(FvexpError, match=rf"cannot write the SQLite store {tmp_path}/s\.db: {tmp_path} is read-only"):
        check_store(f"sqlite:///{tmp_path}/s.db")


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers, as a hung tracking server does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        for connection in accepted:
            connection.close()
        server.close()


def test_a_server_that_never_answers_is_found_within_seconds(monkeypatch) -> None:
    monkeypatch.setattr(uris, "REACH_SECONDS", 0.5)  # 3 s by default
    with silent_server() as port:
        started = time.monotonic()
        with pytest.raises(FvexpError, match=rf"cannot reach the tracking server http://127\.0\.0\.1:{port} "
                                             r"within 0\.5 s \(timed out\)"):
            check_store(f"http://127.0.0.1:{port}")
        assert time.monotonic() - started < 10


@pytest.mark.slow  # MLflow and two real renders
def test_warn_renders_without_tracking_and_fail_stops_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/missing/store.db"
    result = fvexp.run(*SHORT, f"tracking.uri={store}")
    assert result.status == "FINISHED" and (result.run_dir / "image.png").exists() and result.run_id is None
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"fvexp: warning: cannot record this run in {store}: the folder of the SQLite store "
        f"{tmp_path}/missing/store.db does not exist; create it, or choose another tracking.uri; rendering without "
        "tracking (tracking.on_error=fail stops instead)")
    with pytest.raises(FvexpError, match=r"cannot record this run in .*; create it, or choose another tracking\.uri "
                                         r"\(tracking\.on_error=fail; tracking\.on_error=warn renders without "
                                         r"tracking, tracking=none turns it off\)$"):
        fvexp.run(*SHORT, f"tracking.uri={store}", "tracking.on_error=fail")
    with pytest.raises(FvexpError, match=r"tracking\.experiment is empty; name the MLflow experiment"):
        fvexp.run(*SHORT, f"tracking.uri=sqlite:///{tmp_path}/s.db", "tracking.experiment=", "tracking.on_error=fail")


@pytest.mark.slow  # MLflow opens the broken file
def test_a_truncated_sqlite_store_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import sqlite3

    database = tmp_path / "cut.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
        connection.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4000,)] * 50)
    database.write_bytes(database.read_bytes()[:6000])  # the header survives, the rest is gone
    monkeypatch.chdir(tmp_path)
    result = fvexp.run(*SHORT, f"tracking.uri=sqlite:///{database}")
    assert result.status == "FINISHED" and (result.run_dir / "image.png").exists()
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert warning.startswith(f"fvexp: warning: cannot record this run in sqlite:///{database}: ")
    assert "rendering without tracking" in warning


def test_no_password_is_recorded(tmp_path: Path, monkeypatch) -> None:
    import fvexp.app.job as jobs

    uri = "http://alice:s3cret-pw@tracking.example:5000"
    cfg, job = job_with({"_target_": "tests.test_reliability.Flaky", "uri": uri, "fail_at": 99}, tmp_path,
                        f"tracking.uri={uri}")
    recorder, build = Flaky(uri), jobs.build
    monkeypatch.setattr(jobs, "build", lambda node, **kw: recorder if node is cfg.tracking else build(node, **kw))
    execute(cfg, job)
    files = {name: text for name, text in recorder.recorded["files"].items() if not name.startswith("environment/")}
    recorded = json.dumps([recorder.recorded["params"], recorder.recorded["tags"], files])  # not the source diff
    assert "s3cret-pw" not in recorded and "http://alice:***@tracking.example:5000" in files["config.yaml"]
    assert recorder.recorded["params"]["tracking.uri"] == "http://alice:***@tracking.example:5000"
    assert recorder.recorded["tags"]["overrides"] == "tracking.uri=http://alice:***@tracking.example:5000"


def fvexp_process(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "fvexp", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for(check: Any, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def runs(store: str) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(store)
    return [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]


@pytest.mark.slow
def test_sigterm_keeps_the_image_ends_the_run_killed_and_exits_143(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    process = fvexp_process("render.steps=5000", "render.size=64", "progress=false", f"tracking.uri={store}",
                            f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "run" / "steps" / "step_00016.png").exists())
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stdout.strip() == str(tmp_path / "run" / "image.png") and "Traceback" not in stderr
    assert [run.info.status for run in runs(store)] == ["KILLED"]


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "sig", "code"), [("basic", signal.SIGTERM, 143), ("joblib", signal.SIGTERM, 143),
                                                       ("joblib", signal.SIGINT, 130)])
def test_a_stopped_sweep_keeps_every_started_jobs_image_and_ends_its_parent(tmp_path: Path, launcher: str, sig: int,
                                                                            code: int) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    parallel = ["hydra.launcher.n_jobs=2", "threads=1"] if launcher == "joblib" else []
    process = fvexp_process("-m", "objective.channel=1,2,3,4", "render.steps=5000", "render.size=64", "progress=false",
                            f"tracking.uri={store}", f"hydra/launcher={launcher}", *parallel,
                            f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    started = 2 if launcher == "joblib" else 1
    wait_for(lambda: len(list((tmp_path / "sweep").glob("*/steps/step_00016.png"))) >= started)
    os.killpg(process.pid, sig) if sig == signal.SIGINT else process.send_signal(sig)  # Ctrl-C reaches the group
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == code and "Traceback" not in stderr, stderr[-3000:]
    jobs = [run for run in runs(store) if run.data.tags.get("fvexp.role") == "job"]
    parent = next(run for run in runs(store) if run.data.tags.get("fvexp.role") == "parent")
    assert len(jobs) >= started and all(run.info.status == "KILLED" for run in jobs)
    images = sorted((tmp_path / "sweep").glob("*/image.png"))
    assert len(images) == len(jobs) and all(str(image) in stdout for image in images)
    assert parent.info.status == "KILLED" and parent.data.tags["fvexp.jobs.killed"] == str(len(jobs))
    assert json.loads((tmp_path / "sweep" / "jobs.json").read_text())["KILLED"] == len(jobs)


@pytest.mark.slow
def test_two_runs_started_at_once_on_a_new_sqlite_store_are_both_recorded(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'new.db'}"
    processes = [fvexp_process(*SHORT, f"tracking.uri={store}", f"hydra.run.dir={tmp_path / str(i)}", cwd=tmp_path)
                 for i in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0 and "warning" not in stderr, stderr[-3000:]
    assert sorted(run.info.status for run in runs(store)) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_a_password_in_the_uri_is_in_no_file_and_no_message(tmp_path: Path) -> None:
    uri = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"  # nothing listens: the run renders without tracking
    process = fvexp_process(*SHORT, f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "s3cret-pw" not in stdout + stderr and "alice:***@" in stderr
    written = [path for path in (tmp_path / "run").rglob("*") if path.is_file() and path.suffix in (".yaml", ".log")]
    assert written and not [path for path in written if "s3cret-pw" in path.read_text()]


@pytest.mark.slow  # imports MLflow
def test_artifacts_of_any_sqlite_store_lie_beside_it(tmp_path: Path, monkeypatch) -> None:
    from fvexp.tracking.writer import MlflowTracker

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'a.db'}")
    experiment = tracker.client.get_experiment(tracker.experiment_id())
    assert experiment.artifact_location == (tmp_path / "mlartifacts" / "fvexp").as_uri()
    assert not (tmp_path / "elsewhere" / "mlruns").exists()


class Slow(Recorder):
    """A store whose start takes a while (MLflow's import and run creation), recording what reached it."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def start(self, name: str | None, params: Mapping[str, Any], tags: Mapping[str, str],
              files: Mapping[str, str]) -> None:
        time.sleep(0.3)
        if self.fail:
            raise ConnectionError("no store here")
        self.calls.append("start")

    def log_step(self, step: int, value: float) -> None:
        self.calls.append(f"step {step}")

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self.calls.append(f"metrics {sorted(metrics)}")

    def finish(self, status: str, error: str | None = None) -> None:
        self.calls.append(f"finish {status}")


def test_the_store_is_opened_after_the_first_step_beside_the_next_and_finish_waits_for_every_call(capsys) -> None:
    from fvexp.app.recorder import Guarded

    inner = Slow()
    guarded = Guarded(inner)
    started = time.monotonic()
    guarded.start("run", {}, {}, {})
    assert guarded.worker is None  # held until the first step's value: MLflow's import does not slow start-up
    for step in (1, 2):
        guarded.log_step(step, 0.5)
    metrics = {"a": 1.0}
    guarded.log_metrics(metrics)
    metrics["b"] = 2.0  # the caller adds to its dict later: the store gets what it was told
    assert time.monotonic() - started < 0.25  # nothing waited on the store
    guarded.finish("FINISHED")
    assert inner.calls == ["start", "step 1", "step 2", "metrics ['a']", "finish FINISHED"]
    failing = Guarded(Slow(fail=True))
    failing.start("run", {}, {}, {})
    failing.log_step(1, 0.5)
    failing.finish("FINISHED")
    unstepped = Slow()  # a task without steps (dataset examples) is recorded at its end
    quiet = Guarded(unstepped)
    quiet.start("run", {}, {}, {})
    quiet.log_metrics({"a": 1.0})
    quiet.finish("FINISHED")
    assert unstepped.calls == ["start", "metrics ['a']", "finish FINISHED"]
    assert "cannot record this run in the tracking store: ConnectionError: no store here" in capsys.readouterr().err
    with pytest.raises(FvexpError, match=r"tracking\.on_error=fail"):  # fail: opened before any work, here
        Guarded(Slow(fail=True), on_error="fail").start("run", {}, {}, {})


def test_the_run_is_described_on_the_recorders_thread_and_not_at_all_without_tracking() -> None:
    from fvexp.app.recorder import Guarded, Recorder

    threads: list[str] = []

    def described() -> dict[str, str]:  # git calls and a pip freeze in a real run
        threads.append(threading.current_thread().name)
        return {"git.commit": "abc"}

    received: list[Mapping[str, str]] = []

    class Keeping(Recorder):
        def start(self, name, params, tags, files) -> None:
            received.extend([tags, files])

    tracked = Guarded(Keeping())
    tracked.start("run", {}, described, described)
    assert threads == []  # not before the first step
    tracked.log_step(1, 0.5)
    tracked.finish("FINISHED")
    assert threads == ["fvexp-recorder"] * 2 and received == [{"git.commit": "abc"}] * 2
    untracked = Guarded(Recorder())  # tracking=none: nothing to describe the run to
    untracked.start("run", {}, described, described)
    untracked.log_step(1, 0.5)
    untracked.finish("FINISHED")
    assert threads == ["fvexp-recorder"] * 2


# --- issue 22: priors and atlases keep what they made, and say what binds ---

def logged_steps(database: Path) -> int:
    """Points of the objective curve in an SQLite store, read without creating or migrating anything."""
    import sqlite3

    if not database.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT count(*) FROM metrics WHERE key = 'objective'").fetchone()[0]
    except sqlite3.OperationalError:  # MLflow is still creating its tables
        return 0


@pytest.mark.slow  # one process, SIGTERM: Ctrl-C raises the same KeyboardInterrupt (test_priors.py has it in-process)
def test_a_stopped_prior_training_keeps_its_last_step_marked_partial(tmp_path: Path) -> None:
    import torch
    from PIL import Image

    from fvexp.optvis import priors

    (tmp_path / "photos").mkdir()
    for i in range(4):
        Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(tmp_path / "photos" / f"{i}.png")
    store = tmp_path / "store.db"
    process = fvexp_process("task=train_prior", f"data.dir={tmp_path / 'photos'}", "data.size=64", "task.crop=32",
                            "task.width=8", "task.batch=4", "task.steps=100000", "progress=false", "threads=1",
                            f"tracking.uri=sqlite:///{store}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    wait_for(lambda: logged_steps(store) > 0)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    prior = tmp_path / "run" / "prior.pt"
    assert stdout.strip() == str(prior)
    [run] = runs(f"sqlite:///{store}")
    done = int(run.data.metrics["train_steps"])
    assert f"fvexp: interrupted at step {done} of 100000; keeping the prior as it was after that step, marked " \
           "partial" in stderr
    assert run.info.status == "KILLED" and run.data.tags["prior.partial"] == f"stopped after step {done} of 100000"
    assert torch.load(prior, weights_only=True)["meta"]["prior.partial"] == run.data.tags["prior.partial"]
    assert priors.load(prior, "param.path", 3, 64).size == 64 and len(run.data.tags["prior.sha256"]) == 64  # usable


def test_an_atlas_that_cannot_start_leaves_no_folder_and_names_the_limit_of_its_sample(model, tmp_path: Path) -> None:
    # issue 22: an unknown layer left an empty folder under outputs/atlas/, and task.samples=50 for a 20×20 grid was
    # answered, after the sampling, with "more task.per_image, or a larger data.dir", neither of which helps
    from PIL import Image

    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(tmp_path / "photos" / f"{i}.png")
    common = ("task=atlas", f"data.dir={tmp_path / 'photos'}", f"task.dir={tmp_path / 'atlas'}", "progress=false",
              "render.size=64", "data.workers=0")
    cases = {"objective.layer=_blocks.99": r"unknown layer '_blocks.99'; closest valid: _blocks.9",
             "task.samples=50": r"task.samples=50 gives at most 56 activation vectors, too few for a task.grid=20 "
                                r"atlas \(400 cells\) whatever data.dir holds; use task.samples=400 or more, or "
                                r"task.grid=7 or less$"}
    for override, message in cases.items():
        cfg = make(*common, "objective.layer=_blocks.8", override)
        with pytest.raises(FvexpError, match=f"^{message}"):
            validate(cfg)  # the task's own settings: before any model is loaded
            run_task(cfg, model, Job(tmp_path / "run"), Recorder())
        assert not (tmp_path / "atlas").exists()


@pytest.mark.parametrize(("overrides", "read", "per_image", "map_size", "message"), [
    (("objective.layer=_avg_pooling", "task.grid=10"), 12, 1, (1, 1),
     "the sample has 12 activation vectors, too few for a task.grid=10 atlas (100 cells); data.dir binds (all its 12 "
     "readable images are sampled): use task.grid=3 or less, or more images in data.dir"),
    (("objective.layer=_blocks.8", "task.grid=10"), 12, 8, (14, 14),
     "the sample has 96 activation vectors, too few for a task.grid=10 atlas (100 cells); data.dir binds (all its 12 "
     "readable images are sampled): use task.grid=9 or less, or more images in data.dir, or task.per_image up to 196 "
     "(the positions of a map of _blocks.8)"),
    (("objective.layer=_avg_pooling", "task.grid=6", "task.samples=40"), 5, 1, (1, 1),
     "the sample has 5 activation vectors, too few for a task.grid=6 atlas (36 cells); task.samples=40 binds (it "
     "reads 5 of data.dir's 12 images): use task.grid=2 or less, or task.samples=288 or more and more images in "
     "data.dir (read whole, it would give about 12)"),
])
def test_a_sample_too_small_for_the_grid_names_only_the_changes_that_would_enlarge_it(
        overrides: tuple[str, ...], read: int, per_image: int, map_size: tuple[int, int], message: str) -> None:
    import numpy as np

    from fvexp.app.atlas import enough
    from fvexp.optvis.atlas import Sample

    sample = Sample(np.array([f"{i}.png" for i in range(read)]), np.zeros(read, dtype=np.int64),
                    np.ones((read * per_image, 8), dtype=np.float32), np.repeat(np.arange(read), per_image),
                    np.zeros((read * per_image, 2), dtype=np.int64), np.array(map_size))
    with pytest.raises(FvexpError) as error:
        enough(make("task=atlas", "data.dir=photos", *overrides), sample, 12, filtered=False)
    assert str(error.value) == message
