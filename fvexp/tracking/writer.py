"""The MLflow writer: every run becomes an MLflow run, so ablations can be compared side by side.

MLflow is imported only inside `MlflowTracker`, because importing it costs over a second and
`fvexp --help` or `tracking=none` should not pay for it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from fvexp.app.places import launch_dir
from fvexp.app.recorder import Recorder
from fvexp.errors import FvexpError
from fvexp.tracking.store import CHILD, default_store, find_parent
from fvexp.tracking.ui import directions, run_link, ui_address
from fvexp.tracking.uris import HTTP_LIMITS, anchored, check_server, check_store, creating, sqlite_path

METRIC_BATCH = 100  # per-step metrics are sent in batches, not one database write per step
EXPERIMENT = "fvexp"  # tracking.experiment's default
# The images along the way: the part before "/" names the section of MLflow's chart view that shows them
# side by side, run by run, with a step slider; it is listed above "Model metrics", so no chart has to be added.
IMAGE_KEY = "images/visualization"


class Retrying:
    """A client whose calls are retried while a SQLite store says "database is locked".

    Parallel jobs (joblib, 8 at once) write to one SQLite file; SQLite serializes writers, and a
    writer that waits too long gets that error. Retrying with a growing pause loses nothing.
    """

    def __init__(self, client: Any, attempts: int = 8, pause: float = 0.25) -> None:
        self.wrapped, self.attempts, self.pause = client, attempts, pause

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.wrapped, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(self.attempts - 1):
                try:
                    return method(*args, **kwargs)
                except Exception as error:
                    if "database is locked" not in str(error):
                        raise
                    time.sleep(self.pause * 2**attempt)
            return method(*args, **kwargs)  # the last attempt's error reaches the caller

        return call


class MlflowTracker(Recorder):
    """Logs to MLflow: `uri`, else $MLFLOW_TRACKING_URI, else `outputs/mlflow.db` where fvexp started.

    The default store is a SQLite file with artifacts beside it in `outputs/mlartifacts`, shared by
    every run and sweep started from the same folder, so `mlflow ui` on it shows them all. A run of
    a sweep becomes a child of the sweep's parent run (see `fvexp.tracking.sweeps`).
    """

    def __init__(self, uri: str | None = None, experiment: str = EXPERIMENT, run_name: str | None = None,
                 on_error: Literal["warn", "fail"] = "warn") -> None:
        self.default = uri is None and not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = anchored(uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store(), launch_dir())
        self.experiment, self.run_name, self.on_error = experiment, run_name, on_error
        self.pending: list[Any] = []
        self._client: Any = None
        self.in_sweep, self.experiment_of_run = False, ""

    @property
    def client(self) -> Any:
        if self._client is None:
            for name, value in HTTP_LIMITS.items():
                os.environ.setdefault(name, value)
            import mlflow

            # Its database errors come with a traceback on MLflow's logger; fvexp says each in one line (`Guarded`).
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            if self.default:
                (launch_dir() / "outputs").mkdir(parents=True, exist_ok=True)
            check_store(self.uri)
            with creating(self.uri):
                self._client = Retrying(mlflow.MlflowClient(self.uri))
        return self._client

    def experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found:
            return found.experiment_id
        database = sqlite_path(self.uri)  # artifacts beside a SQLite store, not in ./mlruns of whatever folder
        location = (database.parent / "mlartifacts" / self.experiment).as_uri() if database else None
        tags = {"mlflow.experimentKind": "custom_model_development",  # the UI's runs table, not its GenAI view
                "mlflow.note.content": "fvexp feature visualizations: one run per job, images under Artifacts."}
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location, tags=tags)
        except MlflowException:  # created meanwhile by a parallel job
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def open(self, name: str | None, tags: Mapping[str, str]) -> str:
        """Create the run (a job's, or a sweep's parent) and make it the one this tracker logs to."""
        run = self.client.create_run(self.experiment_id(), run_name=self.run_name or name, tags=dict(tags))
        self.run_id, self.experiment_of_run = run.info.run_id, run.info.experiment_id
        return self.run_id

    def start(self, name: str | None, params: Mapping[str, Any], tags: Mapping[str, str],
              files: Mapping[str, str]) -> None:
        if not self.experiment.strip():
            raise FvexpError("tracking.experiment is empty; name the MLflow experiment, e.g. tracking.experiment=fvexp")
        tags = dict(tags)
        self.in_sweep = bool(tags.get("fvexp.sweep"))
        if self.in_sweep:
            tags["fvexp.role"] = CHILD
            parent = find_parent(self.client, self.experiment_id(), tags["fvexp.sweep"])
            if parent:
                tags["mlflow.parentRunId"] = parent
        self.open(name, tags)
        self.log_params(params)
        for path, text in files.items():
            self.log_text(text, path)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_step(self, step: int, value: float) -> None:
        from mlflow.entities import Metric

        self.pending.append(Metric("objective", value, int(time.time() * 1000), step))
        if len(self.pending) >= METRIC_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []

    def log_image(self, image: Image.Image, step: int) -> None:
        self._flush()
        self.client.log_image(self.run_id, image, key=IMAGE_KEY, step=step)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def log_file(self, path: Path, folder: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder)
        else:
            self.client.log_artifact(self.run_id, str(path), folder)

    def reachable(self) -> bool:
        """A tracking server answers its health page within a second; file stores are always there."""
        if not self.uri.startswith(("http:", "https:")):
            return True
        try:
            check_server(self.uri, seconds=1)
        except FvexpError:
            return False
        return True

    def finish(self, status: str, error: str | None = None) -> None:
        if self.run_id is None:
            return
        try:
            self._flush()
            if error:
                self.client.set_tag(self.run_id, "error", error[:5000])
        finally:
            self.client.set_terminated(self.run_id, status)
            self.ended = True
        if not self.in_sweep:  # a sweep's jobs are linked once, from the sweep's end (`fvexp.tracking.sweeps`)
            link = run_link(ui_address(self.uri)[0], self.experiment_of_run, self.run_id)
            print(directions(self.uri, [("this run", link)]), file=sys.stderr)
