"""Reading an MLflow store: the tools (compare, reproduce, claims, orphans) and the sweeps' parent runs use these."""

from __future__ import annotations

import os
import socket
from typing import Any

from fvexp.app.places import launch_dir
from fvexp.credentials import redact
from fvexp.errors import FvexpError
from fvexp.tracking.uris import check_readable

STORE_HELP = "the MLflow store (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db here); it must exist"
ORPHANED = "the process ended without closing the run (killed?)"  # the `error` tag of a run ended by fvexp-orphans
PID_REUSE_SLACK_S = 60  # a process that started this much after the run began is another one with the same pid


def reader(store: str) -> Any:
    """An MLflow client for reading an existing store (compare, reproduce, claims, orphans).

    A store that does not exist is an error, never created: MLflow left to itself creates an empty
    SQLite database (and its folder) at a mistyped path. Every other store that cannot be read is
    one `FvexpError` too. Download progress bars are off.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_readable(store)
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow.MlflowClient(store)
        client.search_experiments(max_results=1)  # opens the store: a store MLflow cannot read says so here
    except Exception as error:  # MLflow's own, or the database's (a truncated SQLite file: "malformed")
        text = str(error.message) if isinstance(error, MlflowException) else f"{type(error).__name__}: {error}"
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        raise FvexpError(f"cannot read the MLflow store {redact(store)}: {redact(first[:600])}") from None
    return client


def get_run(client: Any, run_id: str, store: str) -> Any:
    """The run `run_id`, or an error that says it is not in this store and how to name another."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise FvexpError(f"no run {run_id!r} in the store {redact(store)}; if it was logged elsewhere, pass that store "
                         "with --store or MLFLOW_TRACKING_URI") from None


def default_store() -> str:
    """The SQLite store in `outputs/` of the folder fvexp was started from."""
    return f"sqlite:///{launch_dir() / 'outputs' / 'mlflow.db'}"


PARENT, CHILD = "parent", "job"  # the `fvexp.role` tag of a sweep's parent run and of its jobs' runs


def find_parent(client: Any, experiment_id: str, key: str) -> str | None:
    """The id of the oldest parent run of the sweep `key`, if one exists."""
    runs = client.search_runs([experiment_id], f"tags.`fvexp.role` = '{PARENT}' and tags.`fvexp.sweep` = '{key}'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def process_state(run: Any) -> tuple[str, str]:
    """Whether the process of a RUNNING run still exists: ("gone" | "alive" | "unknown", why).

    A run records its process as the tags `fvexp.host` and `fvexp.pid`. Only processes of this
    host can be checked; a process id that now belongs to a process started after the run began
    (the id was reused) counts as gone.
    """
    host, pid = run.data.tags.get("fvexp.host"), run.data.tags.get("fvexp.pid", "")
    if not host or not pid.isdigit():
        return "unknown", "no fvexp.host/fvexp.pid tags (a sweep's parent run, or a run of an older fvexp)"
    here = socket.gethostname()
    if host != here:
        return "unknown", f"process {pid} on {host}: only runs of this host ({here}) can be checked"
    started = process_started(int(pid))
    if started is None:
        return "gone", f"process {pid} on {host} no longer exists"
    if started > (run.info.start_time or 0) / 1000 + PID_REUSE_SLACK_S:
        return "gone", f"process {pid} on {host} no longer exists (the id now belongs to a later process)"
    return "alive", f"process {pid} on {host} is running"


def process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch; 0.0 where this system does not say), None if it is gone.

    A zombie (ended, not yet collected by its parent) counts as gone. psutil reads what each
    system offers (Linux's /proc, macOS's sysctl), so no private file format is parsed here.
    """
    import psutil  # here, not at start-up: a run imports this module with its callbacks

    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # it exists, as another user's process this system does not describe
        return 0.0


def running_orphans(runs: list) -> list:
    """The RUNNING runs among `runs` whose process is gone."""
    return [run for run in runs if run.info.status == "RUNNING" and process_state(run)[0] == "gone"]
