"""How each job of a sweep ended, as a file in its own folder, whatever the launcher and the tracking.

Jobs of a joblib, Ray or SLURM sweep run in other processes, and the command that launched them
must still exit non-zero when one failed. Each job writes `outcome.json` (status, exit code, error
line) beside its `.hydra/` folder; when the sweep ends, `SweepOutcome` (a Hydra callback, in the
command's process) collects them into a file named after that process, which the command reads
for its exit code, and says in one line which jobs did not finish: the same line whatever the
launcher (a worker's own lines come prefixed by Ray, or in a log file from SLURM) and the tracking.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

OUTCOME = "outcome.json"
EXIT_CODES = "exit-codes.json"  # the shared file of the collected codes
UNRECORDED = 1  # the exit code of a job that ran and wrote no outcome (it crashed)


def record(out_dir: Path, status: str, code: int, error: str | None) -> None:
    """Write how a sweep's job ended into its folder."""
    (out_dir / OUTCOME).write_text(json.dumps({"status": status, "exit_code": code, "error": error}) + "\n")


def shared_file(name: str, pid: int | None = None) -> Path:
    """A file the processes of one command share, named after its main process: a stopped sweep, its exit codes."""
    return Path(tempfile.gettempdir()) / f"fvexp-{pid or os.getpid()}-{name}"


def sweep_key(hydra_node: DictConfig) -> str:
    """The sweep folder as an absolute path (from Hydra's node): the same for every job of one sweep."""
    return str((Path(hydra_node.runtime.cwd) / hydra_node.sweep.dir).resolve())


def sweep_stopped() -> bool:
    """In the command's main process: whether a signal stopped its sweep (`fvexp.app.cli.Stop` marks it)."""
    return shared_file("stopped").exists()


def outcomes(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The outcome of every job folder of the sweep (a folder with `.hydra/`), by its path in the sweep folder;
    a job that wrote none crashed."""
    found = {}
    for hydra_dir in sorted(sweep_dir.rglob(".hydra")):
        folder = hydra_dir.parent
        try:
            found[str(folder.relative_to(sweep_dir))] = json.loads((folder / OUTCOME).read_text())
        except (OSError, ValueError):
            found[str(folder.relative_to(sweep_dir))] = {"status": "FAILED", "exit_code": UNRECORDED,
                                                         "error": f"{folder} has no {OUTCOME}"}
    return found


def summary(found: dict[str, dict[str, Any]]) -> str | None:
    """One line on the jobs that did not finish, naming the first one's folder and error; None if all finished."""
    failed = [(folder, outcome) for folder, outcome in found.items() if outcome["status"] != "FINISHED"]
    if not failed:
        return None
    folder, first = failed[0]
    more = f"; {len(failed) - 1} more, each said in its {OUTCOME}" if len(failed) > 1 else ""
    error = f": {first['error']}" if first["error"] else ""
    return (f"fvexp: {len(failed)} of {len(found)} jobs did not finish: {folder} {first['status']} "
            f"(exit code {first['exit_code']}){error}{more}")


class SweepOutcome(Callback):
    """Collects the jobs' exit codes when a sweep ends, for the command's own exit code, and says which failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        found = outcomes(Path(sweep_key(config.hydra)))
        shared_file(EXIT_CODES).write_text(json.dumps([outcome["exit_code"] for outcome in found.values()]))
        line = summary(found)
        if line:
            print(line, file=sys.stderr)


def exit_codes() -> list[int]:
    """The exit codes the sweep of this process collected (and the file removed); none outside a sweep."""
    codes = shared_file(EXIT_CODES)
    if not codes.exists():
        return []
    found = json.loads(codes.read_text())
    codes.unlink()
    return found
