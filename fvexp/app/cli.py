"""The command line: `fvexp [overrides]` (or `python -m fvexp`), one Hydra job per run.

Exit codes: 0 finished, 1 failed (a non-finite objective; in a sweep, any failed job), 2 bad
input, 130 interrupted. A job prints the file it produced last, so scripts can pick it up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fvexp.app.places import config_dir
from fvexp.app.schema import register
from fvexp.errors import FvexpError

JOBS_FILE = "jobs.json"  # the sweep's job counts by status, written beside its jobs by the sweep callback


def sweep_key(hydra_node: DictConfig) -> str:
    """The sweep folder as an absolute path (from Hydra's node): the same for every job of one sweep."""
    return str((Path(hydra_node.runtime.cwd) / hydra_node.sweep.dir).resolve())


def run_job(cfg: DictConfig) -> int:
    """Hydra's job: run, print the image path last, and return the process exit code."""
    from fvexp.app.job import execute  # torch only when a job really runs: `fvexp --help` stays fast
    from fvexp.app.result import Job

    node = HydraConfig.get()
    sweep = node.mode == RunMode.MULTIRUN
    tags = {"fvexp.experiment": node.runtime.choices.get("experiment") or "",
            "fvexp.ablation": node.runtime.choices.get("ablation") or "",
            "fvexp.sweep": sweep_key(node) if sweep else "",
            "fvexp.job": str(node.job.num) if sweep else ""}
    job = Job(Path(node.runtime.output_dir), list(node.overrides.task), node.job.override_dirname or None, tags)
    try:
        result = execute(cfg, job)
    except FvexpError as error:
        print(f"fvexp: error: {error}", file=sys.stderr)
        return 2
    print(result.path)
    if result.error:
        print(f"fvexp: error: {result.error}", file=sys.stderr)
    if result.status == "KILLED" and sweep:
        raise KeyboardInterrupt  # this job is saved; Ctrl-C also stops the rest of the sweep
    return result.exit_code


def main() -> None:
    """Run the command; in a sweep, jobs that ran in other processes are counted from the sweep's `jobs.json`."""
    codes: list[int] = []  # one per job run in this process; a sweep goes on past a failed job
    register()
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(
        lambda cfg: codes.append(run_job(cfg)))()
    sys.exit(max(codes or outside_codes(), default=0))


def outside_codes() -> list[int]:
    """Exit codes of a sweep whose jobs ran elsewhere (joblib, Ray, SLURM), from the counts its callback wrote."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    counts = Path(sweep_key(HydraConfig.get())) / JOBS_FILE
    if not counts.exists():
        return []
    jobs = json.loads(counts.read_text())
    return [code for status, code in (("FAILED", 1), ("KILLED", 130)) if jobs.get(status)]
