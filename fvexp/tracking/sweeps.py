"""A Hydra multirun as one MLflow parent run with one child run per job.

The parent is created by a Hydra callback before any job starts and is found by each job through
its sweep key (the sweep folder's absolute path, which Hydra gives every job of a sweep), looked up
as a tag in the tracking store: no environment variable is involved, so a job launched on another
machine finds its parent as long as it logs to the same store.

When the jobs have ended, the callback counts them by status on the parent and in `jobs.json` in
the sweep folder (the command's exit code comes from each job's own `outcome.json`, whatever the
tracking: `fvexp.app.outcome`). It then shows the comparison on the parent's page in MLflow's UI
(`fvexp.tracking.comparison`) and prints the links to that page and to the arms' table.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fvexp.app.outcome import sweep_key, sweep_stopped
from fvexp.app.recorder import describe
from fvexp.credentials import redact
from fvexp.errors import FvexpError
from fvexp.tracking.comparison import summarize
from fvexp.tracking.store import PARENT, find_parent
from fvexp.tracking.ui import sweep_directions
from fvexp.tracking.writer import MlflowTracker

JOBS_FILE = "jobs.json"  # the sweep's job counts by status, written beside its jobs for you to read


def sweep_name(config: DictConfig) -> str:
    """A readable name for the sweep: its preset, else its overrides."""
    experiment = config.hydra.runtime.choices.get("experiment")
    skip = set(config.hydra.job.config.override_dirname.exclude_keys)
    overrides = " ".join(o for o in config.hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in skip)
    return f"sweep {experiment}" if experiment else f"sweep {overrides}".strip()


class MlflowSweep(Callback):
    """Opens the sweep's parent run before the jobs and closes it after them, counting how they ended.

    The parent ends KILLED when the sweep was stopped (Ctrl-C, SIGTERM), else FINISHED if any job
    finished, else FAILED; `fvexp.jobs.<status>` tags count the jobs. A store that cannot be used
    is treated as for a job (`tracking.on_error`): with `warn` the sweep runs without a parent.
    """

    unrecorded = False  # the parent could not be created

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = self._tracker(config.tracking)
        if tracker is None:
            return
        try:
            self.open(tracker, config)
        except Exception as error:  # as for a job: tracking.on_error decides whether the sweep goes on
            reason = f"cannot record the sweep in {redact(tracker.uri)}: {describe(error)}"
            if tracker.on_error == "fail":
                raise FvexpError(f"{reason} (tracking.on_error=fail; tracking.on_error=warn runs without tracking, "
                                 "tracking=none turns it off)") from None
            print(f"fvexp: warning: {reason}; the sweep runs without its parent run (tracking.on_error=fail stops "
                  "instead)", file=sys.stderr)
            self.unrecorded = True

    def open(self, tracker: MlflowTracker, config: DictConfig) -> None:
        """Create the parent run with the sweep's settings, ended at exit if the sweep is stopped."""
        key = sweep_key(config.hydra)
        tracker.open(sweep_name(config), {"fvexp.role": PARENT, "fvexp.sweep": key, "fvexp.host": socket.gethostname(),
                                           "fvexp.pid": str(os.getpid()),  # fvexp-orphans ends it if killed
                                           "fvexp.experiment": config.hydra.runtime.choices.get("experiment") or "",
                                           "overrides": redact(" ".join(config.hydra.overrides.task))})
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True).get("params") or {}
        params = {f"sweep.{k}": v for k, v in sweeper.items()}
        params.update(dict(o.split("=", 1) for o in config.hydra.overrides.task if "=" in o))
        tracker.log_params({name: redact(str(value)) for name, value in params.items()})
        tracker.log_text(redact(OmegaConf.to_yaml(config)), "multirun.yaml")
        atexit.register(self.end, tracker, key)  # Hydra calls no callback when a sweep is stopped

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = self._tracker(config.tracking)
        if tracker is not None and not self.unrecorded:
            atexit.unregister(self.end)
            self.end(tracker, sweep_key(config.hydra), interrupted=sweep_stopped())

    @staticmethod
    def end(tracker: MlflowTracker, key: str, interrupted: bool = True) -> None:
        """End the parent run, counting the jobs that ran; at exit after a stopped sweep (Ctrl-C, SIGTERM), KILLED."""
        try:
            close(tracker, key, interrupted)
        except Exception as error:  # the run folders hold every job's images whatever the store says
            print(f"fvexp: warning: could not end the sweep's parent run in {redact(tracker.uri)}: "
                  f"{describe(error)}", file=sys.stderr)

    @staticmethod
    def _tracker(tracking: Any) -> MlflowTracker | None:
        tracker = instantiate(tracking)
        return tracker if isinstance(tracker, MlflowTracker) else None


def close(tracker: MlflowTracker, key: str, interrupted: bool) -> None:
    """Count the sweep's jobs by status on its parent run and in `jobs.json`, and end the parent."""
    experiment = tracker.experiment_id()
    parent = find_parent(tracker.client, experiment, key)
    if parent is None:
        return
    jobs = tracker.client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=5000)
    statuses = [job.info.status for job in jobs]
    counts = {status: statuses.count(status) for status in ("FINISHED", "FAILED", "KILLED", "RUNNING")}
    for status, count in counts.items():
        tracker.client.set_tag(parent, f"fvexp.jobs.{status.lower()}", str(count))
    stopped = interrupted or counts["KILLED"] > 0  # a job is KILLED only when the sweep was stopped
    status = "KILLED" if stopped else "FINISHED" if counts["FINISHED"] else "FAILED"
    if not interrupted:  # a stopped sweep ends at once
        try:
            summarize(tracker.client, parent)
        except Exception as error:  # the arms are recorded whatever becomes of their comparison
            print(f"fvexp: warning: could not write the sweep's comparison to its parent run: {describe(error)}; "
                  f"fvexp-compare {parent} writes it", file=sys.stderr)
    tracker.client.set_terminated(parent, status)
    print(sweep_directions(tracker.uri, experiment, parent), file=sys.stderr)
    Path(key).mkdir(parents=True, exist_ok=True)
    (Path(key) / JOBS_FILE).write_text(json.dumps({"parent_run_id": parent, **counts}, indent=2) + "\n")
