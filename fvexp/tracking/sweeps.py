"""A Hydra multirun as one MLflow parent run with one child run per job.

The parent is created by a Hydra callback before any job starts and is found by each job through
its sweep key (the sweep folder's absolute path, which Hydra gives every job of a sweep), looked up
as a tag in the tracking store: no environment variable is involved, so a job launched on another
machine finds its parent as long as it logs to the same store.

When the jobs have ended, the callback counts them by status on the parent and in `jobs.json` in
the sweep folder, which is how the command learns the exit code of jobs that ran in other
processes (joblib, Ray, SLURM).
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

from fvexp.app.cli import JOBS_FILE, shared_file, sweep_key, sweep_stopped
from fvexp.app.recorder import describe
from fvexp.credentials import redact
from fvexp.tracking.store import PARENT, find_parent
from fvexp.tracking.writer import MlflowTracker


def sweep_name(config: DictConfig) -> str:
    """A readable name for the sweep: its preset, else its overrides."""
    experiment = config.hydra.runtime.choices.get("experiment")
    skip = set(config.hydra.job.config.override_dirname.exclude_keys)
    overrides = " ".join(o for o in config.hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in skip)
    return f"sweep {experiment}" if experiment else f"sweep {overrides}".strip()


class MlflowSweep(Callback):
    """Opens the sweep's parent run before the jobs and closes it after them, counting how they ended.

    The parent ends KILLED when the sweep was stopped (Ctrl-C, SIGTERM), else FINISHED if any job
    finished, else FAILED; `fvexp.jobs.<status>` tags count the jobs.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = self._tracker(config.tracking)
        if tracker is None:
            return
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
        atexit.register(self.end_if_stopped, tracker, key)  # Hydra calls no callback when a sweep is stopped

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = self._tracker(config.tracking)
        if tracker is not None:
            close(tracker, sweep_key(config.hydra), interrupted=sweep_stopped())
            atexit.unregister(self.end_if_stopped)

    @staticmethod
    def end_if_stopped(tracker: MlflowTracker, key: str) -> None:
        """At exit after a stopped sweep (Ctrl-C, SIGTERM): end its parent KILLED, counting the jobs that ran."""
        try:
            close(tracker, key, interrupted=True)
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
    tracker.client.set_terminated(parent, status)
    Path(key).mkdir(parents=True, exist_ok=True)
    readers = [Path(key) / JOBS_FILE] + ([] if interrupted else [shared_file(JOBS_FILE)])  # you; the exit code
    for where in readers:
        where.write_text(json.dumps({"parent_run_id": parent, **counts}, indent=2) + "\n")
