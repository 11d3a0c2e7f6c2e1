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

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fvexp.app.cli import JOBS_FILE, sweep_key
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

    The parent ends FINISHED if any job finished, else FAILED; `fvexp.jobs.<status>` tags count the jobs.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = self._tracker(config)
        if tracker is None:
            return
        key = sweep_key(config.hydra)
        tracker.open(sweep_name(config), {"fvexp.role": PARENT, "fvexp.sweep": key,
                                           "fvexp.experiment": config.hydra.runtime.choices.get("experiment") or "",
                                           "overrides": " ".join(config.hydra.overrides.task)})
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True).get("params") or {}
        params = {f"sweep.{k}": v for k, v in sweeper.items()}
        params.update(dict(o.split("=", 1) for o in config.hydra.overrides.task if "=" in o))
        tracker.log_params(params)
        tracker.log_text(OmegaConf.to_yaml(config), "multirun.yaml")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = self._tracker(config)
        if tracker is None:
            return
        experiment = tracker.experiment_id()
        key = sweep_key(config.hydra)
        parent = find_parent(tracker.client, experiment, key)
        if parent is None:
            return
        jobs = tracker.client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=5000)
        statuses = [job.info.status for job in jobs]
        counts = {status: statuses.count(status) for status in ("FINISHED", "FAILED", "KILLED")}
        for status, count in counts.items():
            tracker.client.set_tag(parent, f"fvexp.jobs.{status.lower()}", str(count))
        tracker.client.set_terminated(parent, "FINISHED" if counts["FINISHED"] else "FAILED")
        Path(key).mkdir(parents=True, exist_ok=True)
        (Path(key) / JOBS_FILE).write_text(json.dumps({"parent_run_id": parent, **counts}, indent=2) + "\n")

    @staticmethod
    def _tracker(config: DictConfig) -> MlflowTracker | None:
        tracker = instantiate(config.tracking)
        return tracker if isinstance(tracker, MlflowTracker) else None
