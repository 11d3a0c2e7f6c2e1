"""The command line: `fvexp [overrides]` (or `python -m fvexp`), one Hydra job per run.

Exit codes: 0 finished, 1 failed (a non-finite objective; in a sweep, any failed job), 2 bad
input, 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (`timeout`, SLURM's time limit,
`docker stop`). A job prints the file it produced last, so scripts can pick it up.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import TextIO

import hydra
import yaml
from hydra._internal.hydra import Hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from fvexp.app.outcome import exit_codes, record, shared_file, sweep_key
from fvexp.app.overrides import composition_error, options_listed
from fvexp.app.places import config_dir
from fvexp.app.schema import register, search_folders, validate
from fvexp.credentials import redact
from fvexp.errors import FvexpError, FvexpWarning, unknown

PYTHON_SHOWWARNING = warnings.showwarning  # how Python shows the warnings that are not fvexp's


class Stop:
    """Ctrl-C and SIGTERM end the work the same way: the last image is kept and the run ends KILLED.

    The first signal interrupts the job running in this process, as Ctrl-C does. In the main
    process of a sweep whose jobs run in child processes (joblib), it marks the sweep stopped
    (a file named after this process, which workers check before each job) and is passed on as
    SIGTERM to the children that are running a job, so that each keeps its image; the main
    process then waits for them and counts them. A worker says that it runs jobs with a file of
    its own beside that mark (no system reports which processes handle a signal, save Linux's
    /proc). Later signals are ignored, so that nothing interrupts the saving.
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
        if os.getppid() == self.main_pid:  # a joblib worker: the main process passes signals on to it
            self.worker(os.getpid()).touch()

    def worker(self, pid: int) -> Path:
        """The file by which process `pid` says it runs this command's jobs (it handles SIGTERM)."""
        return shared_file(f"worker-{pid}", self.main_pid)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            return
        self.signal = signum
        if self.running:
            raise KeyboardInterrupt
        if self.in_worker:
            return  # between jobs: the marker the main process wrote keeps this worker from starting one
        self.marker.write_text(str(self.exit_code))
        import psutil  # only once a signal came: `fvexp --help` stays fast

        children = [child.pid for child in psutil.Process().children()]  # joblib's workers run the jobs
        if not children:
            raise KeyboardInterrupt
        for pid in children:
            if self.worker(pid).exists():
                os.kill(pid, signal.SIGTERM)

    def stopped_before(self) -> int | None:
        """In a worker: the exit code if the sweep was stopped before this job began."""
        return int(self.marker.read_text()) if self.marker.exists() else None

    def clear(self) -> None:
        self.marker.unlink(missing_ok=True)
        for worker in self.marker.parent.glob(shared_file("worker-*", self.main_pid).name):
            worker.unlink(missing_ok=True)

    @property
    def in_worker(self) -> bool:
        return os.getpid() != self.main_pid

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)


def run_job(cfg: DictConfig, stop: Stop) -> int:
    """Hydra's job: run, print the image path last, and return the process exit code."""
    from fvexp.app.job import execute  # torch only when a job really runs: `fvexp --help` stays fast
    from fvexp.app.result import Job, Result

    stop.install()  # in this process: a job of a joblib sweep runs in a worker
    warnings.showwarning = show_warning
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
    try:
        check_optional_choices(node)
    except FvexpError as error:
        print(f"fvexp: error: {error}", file=sys.stderr)
        return 2
    redact_saved_configs(out_dir / node.output_subdir if node.output_subdir else None)
    job = Job(out_dir, list(node.overrides.task), node.job.override_dirname or None, tags)
    stop.running = True
    try:
        result = execute(cfg, job)
    except FvexpError as error:
        print(f"fvexp: error: {error}", file=sys.stderr)
        if sweep:
            record(out_dir, "FAILED", 2, str(error))
        return 2
    except KeyboardInterrupt:  # stopped before the optimization began: there is no image yet
        result = Result(None, status="KILLED")
    finally:
        stop.running = False
    if result.path:
        print(result.path)
    if result.error:
        print(f"fvexp: error: {result.error}", file=sys.stderr)
    code = stop.exit_code if result.status == "KILLED" else result.exit_code
    if sweep:
        record(out_dir, result.status, code, result.error)
        if result.status == "KILLED" and not stop.in_worker:
            raise KeyboardInterrupt  # this job is saved; the signal also stops the rest of the sweep
    return code


def check_optional_choices(node: DictConfig) -> None:
    """A misspelt `experiment` or `ablation` is an error: Hydra skips a missing option of an optional group silently,
    which would run a plain render in place of the preset."""
    folders = [Path(source.path) for source in node.runtime.config_sources if source.schema == "file"]
    for group in ("experiment", "ablation"):
        choice = node.runtime.choices.get(group)
        options = sorted({f.stem for folder in folders for f in (folder / group).glob("*.yaml")})
        if choice and choice not in options:
            raise unknown(f"{group} option", choice, options, hint=options_listed(group, choice, options))


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """fvexp's own warnings as one `fvexp: warning:` line, as its errors are; others as Python shows them."""
    if issubclass(category, FvexpWarning):
        print(f"fvexp: warning: {message}", file=sys.stderr)
    else:
        PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


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
    hydra-core is pinned (pyproject.toml); tests/test_config.py checks the wrapper, and that Hydra
    still composes once more without it (docs/performance.md: what it saves).
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
    get_mode.__wrapped__ = compose_for_mode  # type: ignore[attr-defined]  # Hydra's own, for the tests
    Hydra.get_mode = get_mode  # type: ignore[method-assign]


def check_before_showing() -> None:
    """`fvexp --cfg job` refuses what a run would refuse (a range, a missing value) instead of printing it.

    Hydra prints the config without running a job, so the checks of `validate` that run before
    every job are run here on the same composition. `Hydra.show_cfg` is private; hydra-core is
    pinned (pyproject.toml); tests/test_config.py checks that Hydra still shows the config through
    it, and tests/test_exits.py checks `fvexp --cfg job` with a bad value.
    """
    if getattr(Hydra.show_cfg, "validates", False):
        return
    show = Hydra.show_cfg

    def show_cfg(self: Hydra, config_name: str | None, overrides: list[str], cfg_type: str, package: str | None,
                 resolve: bool = False) -> None:
        cfg = self.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)
        with open_dict(cfg):
            del cfg["hydra"]
        validate(cfg)
        show(self, config_name, overrides, cfg_type, package, resolve)

    show_cfg.validates = True  # type: ignore[attr-defined]
    show_cfg.__wrapped__ = show  # type: ignore[attr-defined]  # Hydra's own, for the tests
    Hydra.show_cfg = show_cfg  # type: ignore[method-assign]


def main() -> None:
    """Run the command; in a sweep, jobs that ran in other processes are counted from the sweep's `jobs.json`."""
    codes: list[int] = []  # one per job run in this process; a sweep goes on past a failed job
    stop = Stop()
    stop.install()
    register(search_folders(sys.argv[1:]))  # the options of --config-dir too
    compose_once()
    check_before_showing()
    full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))  # the user asked for Hydra's tracebacks
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it would print, and fvexp says it in one line
    try:
        hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(
            lambda cfg: codes.append(run_job(cfg, stop)))()
    except (FvexpError, HydraException, OmegaConfBaseException, yaml.YAMLError, OSError) as error:
        if full_error:
            raise
        print(f"fvexp: error: {error if isinstance(error, FvexpError) else bad_input(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # the jobs kept their images; a sweep's parent run is ended at exit
        sys.exit(stop.exit_code)
    except SystemExit:  # Hydra's report of a worker that the signal ended while it was starting
        if stop.signal is None:
            raise
        sys.exit(stop.exit_code)
    finally:
        stop.clear()
    outside = exit_codes()  # of jobs that ran in other processes; read (and removed) also when all ran here
    sys.exit(stop.exit_code if stop.signal else max(codes or outside, default=0))


def bad_input(error: Exception) -> str:
    """What Hydra raised before any job ran, as one line: a config file that is not YAML, a folder that
    cannot be made, an override that does not apply (an unknown key or option: the closest valid ones)."""
    marked = next((e for e in (error, error.__cause__, error.__context__) if isinstance(e, yaml.MarkedYAMLError)), None)
    if marked is not None and marked.problem_mark is not None:
        mark = marked.problem_mark
        return (f"{mark.name} is not valid YAML: {marked.problem} at line {mark.line + 1}, column {mark.column + 1}; "
                "fix the file, or leave it out of --config-dir")
    if isinstance(error, HydraException | OmegaConfBaseException):  # a missing option is an IOError too
        return str(composition_error(error))
    return (f"cannot write the run folder {error.filename}: {error.strerror}; choose another hydra.run.dir "
            "(or hydra.sweep.dir), one you can write, with names the filesystem accepts")
