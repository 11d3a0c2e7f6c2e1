"""Command line: `python -m fvexp [overrides]` or the `fvexp` script, one Hydra job per run."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fvexp.config import register

_exit_codes: list[int] = []  # one per job of this process; a sweep goes on past a failed job


CONF = Path(__file__).resolve().parent.parent / "conf"  # the checkout's conf/, however fvexp is started


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def _job(cfg: DictConfig) -> None:
    from fvexp.run import run_job  # heavy imports (torch, mlflow) only when a job really runs

    _exit_codes.append(run_job(cfg))


def main() -> None:
    from fvexp.sweeps import ended

    register()
    _job()
    # Jobs that ran in other processes (joblib, Ray, SLURM) left no exit code here: the sweep's parent counted them
    outside = [{"FAILED": 1, "KILLED": 130}.get(status, 0) for status in ended]
    sys.exit(max(_exit_codes or outside, default=0))


if __name__ == "__main__":
    main()
