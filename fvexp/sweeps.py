"""A Hydra multirun as one MLflow parent run with one child run per job.

The parent is created by a Hydra callback before any job starts and is found by each job through
its sweep key (the sweep folder's absolute path, which Hydra gives every job of a sweep), looked up
as a tag in the tracking store: no environment variable is involved, so a job launched on another
machine finds its parent as long as it logs to the same store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PARENT, CHILD = "parent", "job"
ended: list[str] = []  # the MLflow status of each job of this process's sweep, as its parent counted them


def sweep_key(hydra: DictConfig) -> str:
    """The sweep folder as an absolute path (from Hydra's node): the same for every job of one sweep."""
    return str((Path(hydra.runtime.cwd) / hydra.sweep.dir).resolve())


def sweep_name(config: DictConfig) -> str:
    """A readable name for the sweep: its preset, else its overrides."""
    experiment = config.hydra.runtime.choices.get("experiment")
    skip = set(config.hydra.job.config.override_dirname.exclude_keys)
    overrides = " ".join(o for o in config.hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in skip)
    return f"sweep {experiment}" if experiment else f"sweep {overrides}".strip()


def find_parent(client: Any, experiment_id: str, key: str) -> str | None:
    """The id of the oldest parent run of the sweep `key`, if one exists."""
    runs = client.search_runs([experiment_id], f"tags.`fvexp.role` = '{PARENT}' and tags.`fvexp.sweep` = '{key}'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


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
        parent = find_parent(tracker.client, experiment, sweep_key(config.hydra))
        if parent is None:
            return
        jobs = tracker.client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=5000)
        statuses = [job.info.status for job in jobs]
        ended.extend(statuses)
        for status in ("FINISHED", "FAILED", "KILLED"):
            tracker.client.set_tag(parent, f"fvexp.jobs.{status.lower()}", str(statuses.count(status)))
        tracker.client.set_terminated(parent, "FINISHED" if "FINISHED" in statuses else "FAILED")

    @staticmethod
    def _tracker(config: DictConfig):
        from hydra.utils import instantiate

        from fvexp.tracking import MlflowTracker

        tracker = instantiate(config.tracking)
        return tracker if isinstance(tracker, MlflowTracker) else None
