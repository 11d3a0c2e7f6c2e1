"""Reading an MLflow store: the tools (compare, reproduce, claims) and the sweeps' parent runs use these."""

from __future__ import annotations

import os
from typing import Any

from fvexp.app.places import launch_dir
from fvexp.errors import FvexpError


def reader(store: str) -> Any:
    """An MLflow client for reading a store (compare, reproduce, claims), without download progress bars."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow.MlflowClient(store)


def get_run(client: Any, run_id: str, store: str) -> Any:
    """The run `run_id`, or an error that says it is not in this store and how to name another."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise FvexpError(f"no run {run_id!r} in the store {store}; if it was logged elsewhere, pass that store "
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
