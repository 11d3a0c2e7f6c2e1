"""The command line: `fvexp [overrides]` (or `python -m fvexp`), one Hydra job per run.

Exit codes: 0 finished, 1 failed (a non-finite objective; in a sweep, any failed job), 2 bad
input, 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (`timeout`, SLURM's time limit,
`docker stop`). A job prints the file it produced last, so scripts can pick it up.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

import hydra
from hydra._internal.hydra import Hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fvexp.app.places import config_dir
from fvexp.app.schema import register
from fvexp.credentials import redact
from fvexp.errors import FvexpError

JOBS_FILE = "jobs.json"  # the sweep's job counts by status, written beside its jobs by the sweep callback


class Stop:
    """Ctrl-C and SIGTERM end the work the same way: the last image is kept and the run ends KILLED.

    The first signal interrupts the job running in this process, as Ctrl-C does. In the main
    process of a sweep whose jobs run in child processes (joblib), it marks the sweep stopped
    (a file named after this process, which workers check before each job) and is passed on as
    SIGTERM to the children that are running a job, so that each keeps its image; the main
    process then waits for them and counts them. Later signals are ignored, so that nothing
    interrupts the saving.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.main_pid = os.getpid()  # a copy sent to a joblib worker keeps the command's process id
        self.running = False  # a job runs in this process now

    @property
    def marker(self) -> Path:
        return shared_file("stopped", self.main_pid)

    def install(self) -> None:
        """Handle SIGINT and SIGTERM in this process; a worker installs it again for each job."""
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            return
        self.signal = signum
        if self.running:
            raise KeyboardInterrupt
        if self.in_worker:
            return  # between jobs: the marker the main process wrote keeps this worker from starting one
        self.marker.write_text(str(self.exit_code))
        children = child_processes()
        if not children:
            raise KeyboardInterrupt
        jobs = [pid for pid in children if catches_sigterm(pid)]
        for pid in jobs:
            os.kill(pid, signal.SIGTERM)

    def stopped_before(self) -> int | None:
        """In a worker: the exit code if the sweep was stopped before this job began."""
        return int(self.marker.read_text()) if self.marker.exists() else None

    def clear(self) -> None:
        self.marker.unlink(missing_ok=True)

    @property
    def in_worker(self) -> bool:
        return os.getpid() != self.main_pid

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)


def shared_file(name: str, pid: int | None = None) -> Path:
    """A file the processes of one command share, named after its main process: a stopped sweep, its job counts."""
    return Path(tempfile.gettempdir()) / f"fvexp-{pid or os.getpid()}-{name}"


def sweep_stopped() -> bool:
    """In the command's main process: whether a signal stopped it (for the sweep's parent run)."""
    return Stop().marker.exists()


def child_processes() -> list[int]:
    """The processes this one started (Linux: from /proc), which run a sweep's jobs under joblib."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid():
            children.append(int(stat.parent.name))
    return children


def catches_sigterm(pid: int) -> bool:
    """Whether process `pid` handles SIGTERM, as a worker running a job does (its `Stop` is installed)."""
    try:
        caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def sweep_key(hydra_node: DictConfig) -> str:
    """The sweep folder as an absolute path (from Hydra's node): the same for every job of one sweep."""
    return str((Path(hydra_node.runtime.cwd) / hydra_node.sweep.dir).resolve())


def run_job(cfg: DictConfig, stop: Stop) -> int:
    """Hydra's job: run, print the image path last, and return the process exit code."""
    from fvexp.app.job import execute  # torch only when a job really runs: `fvexp --help` stays fast
    from fvexp.app.result import Job, Result

    stop.install()  # in this process: a job of a joblib sweep runs in a worker
    stopped = stop.stopped_before()
    if stopped is not None:
        return stopped  # the sweep was stopped: a worker starts no new job
    node = HydraConfig.get()
    sweep = node.mode == RunMode.MULTIRUN
    tags = {"fvexp.experiment": node.runtime.choices.get("experiment") or "",
            "fvexp.ablation": node.runtime.choices.get("ablation") or "",
            "fvexp.sweep": sweep_key(node) if sweep else "",
            "fvexp.job": str(node.job.num) if sweep else ""}
    out_dir = Path(node.runtime.output_dir)
    redact_saved_configs(out_dir / node.output_subdir if node.output_subdir else None)
    job = Job(out_dir, list(node.overrides.task), node.job.override_dirname or None, tags)
    stop.running = True
    try:
        result = execute(cfg, job)
    except FvexpError as error:
        print(f"fvexp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # stopped before the optimization began: there is no image yet
        result = Result(None, status="KILLED")
    finally:
        stop.running = False
    if result.path:
        print(result.path)
    if result.error:
        print(f"fvexp: error: {result.error}", file=sys.stderr)
    if result.status != "KILLED":
        return result.exit_code
    if sweep and not stop.in_worker:
        raise KeyboardInterrupt  # this job is saved; the signal also stops the rest of the sweep
    return stop.exit_code


def redact_saved_configs(folder: Path | None) -> None:
    """Hydra saved the config and overrides as given; a password in a URI there becomes ***."""
    for saved in folder.glob("*.yaml") if folder and folder.is_dir() else ():
        text = saved.read_text()
        if redact(text) != text:
            saved.write_text(redact(text))


def compose_once(config_name: str = "config") -> None:
    """Let Hydra compose the config once per command instead of twice, where the second cannot differ.

    Hydra composes the whole config a first time only to read `hydra.mode` (which the presets set
    to MULTIRUN), then again to run: about 0.45 s each on two cores, a seventh of the time to the
    first step. Only an `experiment`, a `hydra` override or another primary config can set the
    mode, so without them the first composition could only find it unset; it is skipped, and the
    mode comes from `-m`, as Hydra's own code does for an unset mode. `Hydra.get_mode` is private;
    hydra-core is pinned (pyproject.toml), and tests/test_config.py checks the wrapper.
    """
    if getattr(Hydra.get_mode, "composes_once", False):
        return
    compose_for_mode, primary = Hydra.get_mode, config_name

    def get_mode(self: Hydra, config_name: str | None, overrides: list[str]) -> RunMode | None:
        keys = [override.lstrip("+~").split("=")[0] for override in overrides]
        if config_name == primary and not any(key.startswith(("experiment", "hydra")) for key in keys):
            return None
        return compose_for_mode(self, config_name, overrides)

    get_mode.composes_once = True  # type: ignore[attr-defined]
    Hydra.get_mode = get_mode  # type: ignore[method-assign]


def main() -> None:
    """Run the command; in a sweep, jobs that ran in other processes are counted from the sweep's `jobs.json`."""
    codes: list[int] = []  # one per job run in this process; a sweep goes on past a failed job
    stop = Stop()
    stop.install()
    register()
    compose_once()
    try:
        hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(
            lambda cfg: codes.append(run_job(cfg, stop)))()
    except KeyboardInterrupt:  # the jobs kept their images; a sweep's parent run is ended at exit
        sys.exit(stop.exit_code)
    except SystemExit:  # Hydra's report of a worker that the signal ended while it was starting
        if stop.signal is None:
            raise
        sys.exit(stop.exit_code)
    finally:
        stop.clear()
    outside = outside_codes()  # read (and removed) also when every job ran here
    sys.exit(stop.exit_code if stop.signal else max(codes or outside, default=0))


def outside_codes() -> list[int]:
    """Exit codes of a sweep whose jobs ran elsewhere (joblib, Ray, SLURM), from the counts its callback left."""
    counts = shared_file(JOBS_FILE)
    if not counts.exists():
        return []
    jobs = json.loads(counts.read_text())
    counts.unlink()
    return [code for status, code in (("FAILED", 1), ("KILLED", 130)) if jobs.get(status)]
