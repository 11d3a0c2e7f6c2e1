"""Re-run a run, or every job of a sweep, from its MLflow record, and say whether the picture came out the same.

    fvexp-reproduce RUN_ID [--at-commit] [--env] [--threads N] [--store URI] [--repo PATH]
    fvexp-reproduce PARENT_RUN_ID [--sample N] [...]

The resolved config is read from the run's `config.yaml` artifact (not from any local folder),
run again into a new MLflow run tagged `fvexp.reproduces=RUN_ID`, and its final image is compared
with the recorded one, pixel by pixel. The first line says `identical (max |Δ| = 0)`, or
`differs, expected drift (...)` when something recorded differs (code, versions that can change
pixels, weights, device, CPU, threads, determinism), or `DEFECT: same environment, different
bytes` when nothing does, each with the largest pixel difference and the objective's difference;
the lines after it name every difference. The re-run uses the recorded thread count and device
unless --threads says otherwise (or the device is not on this machine).

By default the current code re-runs the config. --at-commit re-runs it with the code that recorded
it: its commit checked out as a git worktree under --out/worktrees, with the recorded patch of
uncommitted changes applied, by this interpreter (`fvexp.tools.worktrees`, `fvexp.tools.rerun`);
that happens on its own, with a note, when the current code cannot build the recorded config.
--env also installs the recorded `pip freeze` into a virtual environment under --out/venvs and
re-runs there (`fvexp.tools.venvs`).

A sweep's parent run re-runs every child (or a seeded sample, --sample N) and prints one table.
A run that stopped early (KILLED, or FAILED when its objective became NaN) is re-run up to the
step where it stopped (its `steps_done` metric, else the length of its `objective` history), so
its recorded image is compared with the re-run's at that same step. A run that is still RUNNING,
or kept no image, cannot be reproduced, and the one-line error says why. Exit status 0 only when
every image is identical.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from fvexp.app.environment import git, patch_digest
from fvexp.credentials import redact
from fvexp.errors import FvexpError
from fvexp.tools.arguments import add_store, at_least_one, one_line_errors
from fvexp.tools.rerun import config_differences, in_worktree, unbuildable
from fvexp.tools.venvs import environment
from fvexp.tools.verdict import Verdict, judge
from fvexp.tools.worktrees import checkout
from fvexp.tracking.store import get_run, reader

NEEDED_TAGS = ("git.commit", "python.version", "torch.version", "torchvision.version", "numpy.version",
               "mlflow.version", "device", "torch.threads", "weights.sha256")
NEEDED_FILES = ("config.yaml", "image.png")
PATCH, FREEZE = "environment/git-diff.patch", "environment/pip-freeze.txt"


@dataclass
class Options:
    """How to re-run: threads (None: as recorded), where to write, and with which code and packages."""

    out: Path
    threads: int | None = None
    at_commit: bool = False
    env: bool = False
    repos: list[Path] = field(default_factory=list)


@dataclass
class Outcome:
    """A re-run compared with its record."""

    run_id: str
    verdict: Verdict
    image: Path
    where: str = ""  # ' at step 3, where it stopped (KILLED)'
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        if self.verdict.identical:
            first = f"{self.verdict.headline()}: {self.image} matches run {self.run_id}{self.where}"
        else:
            compared = f", compared{self.where}" if self.where else ""
            first = f"{self.verdict.headline()}; new image {self.image}{compared}"
        return "\n".join([first, *self.verdict.details(), *self.notes])


@one_line_errors("fvexp.reproduce")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id", help="a run, or a sweep's parent run (every child is re-run)")
    add_store(parser)
    parser.add_argument("--threads", type=at_least_one, help="torch threads for the re-run (default: as recorded)")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "reproduce",
                        help="re-runs' folders, and the cached worktrees/ and venvs/ (default: outputs/reproduce)")
    parser.add_argument("--at-commit", action="store_true",
                        help="re-run with the code that recorded the run: its commit (and patch) in a git worktree")
    parser.add_argument("--env", action="store_true",
                        help="with --at-commit, in a virtual environment of the recorded pip freeze (minutes, once)")
    parser.add_argument("--repo", type=Path, action="append", default=[],
                        help="a git repository that holds the recorded commit (looked in first; may repeat)")
    parser.add_argument("--sample", type=at_least_one, metavar="N", help="re-run N children of a sweep, chosen "
                        "at random (seeded by the parent's id: the same N each time)")
    args = parser.parse_args(argv)
    options = Options(args.out, args.threads, args.at_commit or args.env, args.env, args.repo)
    identical, report = reproduce_any(args.run_id, args.store, options, args.sample)
    print(report)
    sys.exit(0 if identical else 1)


def reproduce_any(run_id: str, store: str, options: Options, sample: int | None) -> tuple[bool, str]:
    """A sweep's parent run: its children as a table; any other run: its report."""
    client = reader(store)
    run = get_run(client, run_id, store)
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                  max_results=50000)
    if children:
        return sweep(client, store, run, children, options, sample)
    if sample is not None:
        raise FvexpError(f"--sample N picks children of a sweep's parent run; run {run_id} has no children")
    outcome = rerun(client, store, run_id, options)
    return outcome.verdict.identical, outcome.report()


def reproduce(run_id: str, store: str, threads: int | None, out: Path, at_commit: bool = False, env: bool = False,
              repos: list[Path] | None = None) -> tuple[bool, str]:
    """Re-run one run; whether its image came out identical, and the report."""
    outcome = rerun(reader(store), store, run_id, Options(out, threads, at_commit or env, env, repos or []))
    return outcome.verdict.identical, outcome.report()


def sweep(client: Any, store: str, parent: Any, children: list[Any], options: Options,
          sample: int | None) -> tuple[bool, str]:
    """Re-run a sweep's children (or a seeded sample) and tabulate: child, status, verdict."""
    chosen = sorted(children, key=lambda r: (r.info.start_time, r.info.run_id))
    if sample is not None:
        picked = random.Random(parent.info.run_id).sample(chosen, min(sample, len(chosen)))
        chosen = [run for run in chosen if run in picked]
    rows, details, identical = [("child", "name", "status", "reproduced")], [], 0
    for child in chosen:
        try:
            outcome = rerun(client, store, child.info.run_id, options)
        except FvexpError as error:
            rows.append((child.info.run_id, child.info.run_name or "", child.info.status, "not reproduced"))
            details.append(f"{child.info.run_id}: {error}")
            continue
        rows.append((child.info.run_id, child.info.run_name or "", child.info.status, outcome.verdict.short()))
        identical += outcome.verdict.identical
        if not outcome.verdict.identical:
            details += [f"{child.info.run_id}: {line}" for line in outcome.report().splitlines()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    table = [" ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]).rstrip()
             for row in rows]
    of = f" (a sample of {len(chosen)} of {len(children)})" if len(chosen) < len(children) else ""
    summary = f"{identical} of {len(chosen)} children of sweep {parent.info.run_id} identical{of}"
    return identical == len(chosen), "\n".join([*table, summary, *details])


def rerun(client: Any, store: str, run_id: str, options: Options) -> Outcome:
    """Re-run `run_id` here, or at its commit, into its store, and compare its image with the recorded one."""
    source = get_run(client, run_id, store)
    tags = source.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        files = record_files(client, source, tmp)
        recorded = np.asarray(Image.open(files["image.png"]).convert("RGB"), dtype=np.int16)
        cfg = OmegaConf.create(yaml.safe_load(Path(files["config.yaml"]).read_text()))
        overrides = yaml.safe_load(Path(files["overrides.yaml"]).read_text()) if "overrides.yaml" in files \
            else tags.get("overrides", "").split()
        patch, freeze = (Path(files[name]).read_text() if name in files else None for name in (PATCH, FREEZE))
    stop = stopped_at(client, source, cfg)
    problems = [] if options.at_commit else unbuildable(cfg)
    at_its_commit = options.at_commit or bool(problems)
    missing = [tag for tag in (("git.commit",) if at_its_commit else NEEDED_TAGS) if tag not in tags]
    if missing:  # at its commit, the code that recorded the run re-runs it: its commit is all that is needed
        raise FvexpError(f"run {run_id} cannot be reproduced: its record lacks the tag(s) {', '.join(missing)} "
                         "(it was logged by an older fvexp, or not by fvexp)")
    notes: list[str] = []
    settings: dict[str, Any] = {"progress": False}
    if options.threads or "torch.threads" in tags:
        settings["threads"] = options.threads or int(tags["torch.threads"])
    if "device" in tags:
        settings["device"], moved = device_for(tags["device"])
        notes += [moved] if moved else []
    where = ""
    if stop is not None and stop[0] != cfg.render.steps:  # stopped early: re-run up to that step only
        steps, why = stop
        settings["render.steps"] = steps
        if cfg.render.get("thresholds") is not None:
            settings["render.thresholds"] = [step for step in cfg.render.thresholds if step <= steps]
        where = f" at step {steps}, where it stopped ({why})"
    target = (options.out / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    new_run, drift = None, []
    if not at_its_commit:
        commit = git("rev-parse", "HEAD") or "unknown"
        try:
            new_run = here(client, store, source, copy.deepcopy(cfg), overrides, settings, target)
        except FvexpError as error:  # e.g. an argument renamed since: its code can build it
            if tags["git.commit"] in (commit, "unknown"):
                raise
            problems = [str(error).splitlines()[0]]
        if new_run is not None and tags["git.commit"] != commit:
            notes.append(f"note: run {run_id} was recorded at commit {tags['git.commit']}, the current code is at "
                         f"{commit}: --at-commit re-runs it with the code that recorded it")
    if new_run is None:
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            notes.append(f"note: the current code cannot build this run's config ({problems[0]}{more}), so it was "
                         "re-run at its commit (as --at-commit does)")
        target = target.with_name(f"{target.name}-at-{tags['git.commit'][:8]}")
        new_run, drift = at_commit(client, store, source, cfg, overrides, patch or "", freeze, settings, target,
                                   options, notes)
    image = target / "image.png"
    if not image.is_file():
        raise FvexpError(f"the re-run of {run_id} ({new_run.info.run_id}) ended {new_run.info.status} without an "
                         f"image: {new_run.data.tags.get('error', 'no error recorded')}")
    again = np.asarray(Image.open(image).convert("RGB"), dtype=np.int16)
    objective = source.data.metrics.get("objective"), new_run.data.metrics.get("objective")
    verdict = judge(recorded, again, tags, new_run.data.tags, objective)
    verdict.drift += drift
    return Outcome(run_id, verdict, image, where, notes)


def here(client: Any, store: str, source: Any, cfg: DictConfig, overrides: list[str], settings: dict[str, Any],
         target: Path) -> Any:
    """Re-run `cfg` in this process with the current code; the MLflow run it made."""
    from fvexp.app.job import execute
    from fvexp.app.result import Job

    run_id = source.info.run_id
    for key, value in settings.items():
        OmegaConf.update(cfg, key, value)
    cfg.tracking = {"_target_": "fvexp.tracking.writer.MlflowTracker", "uri": store,
                    "experiment": client.get_experiment(source.info.experiment_id).name, "run_name": None}
    if "render.steps" in settings:  # the overrides tag says where a stopped run's re-run ended
        overrides = [*overrides, f"render.steps={settings['render.steps']}"]
    job = Job(target, overrides, name=f"reproduce {source.info.run_name}", tags={"fvexp.reproduces": run_id})
    result = execute(cfg, job)
    if result.run_id is None:
        raise FvexpError(f"the re-run of {run_id} could not be recorded in {redact(store)} (see the warning above)")
    return client.get_run(result.run_id)


def at_commit(client: Any, store: str, source: Any, cfg: DictConfig, overrides: list[str], patch: str,
              freeze: str | None, settings: dict[str, Any], target: Path, options: Options,
              notes: list[str]) -> tuple[Any, list[str]]:
    """Re-run `cfg` with the code of the recorded commit (and patch); the MLflow run, and config differences."""
    run_id, tags = source.info.run_id, source.data.tags
    commit = tags["git.commit"]
    if commit == "unknown":
        raise FvexpError(f"run {run_id} was recorded outside a git checkout (git.commit unknown): there is no "
                         "commit to re-run it at")
    if tags.get("git.dirty") == "true" and not patch:
        raise FvexpError(f"run {run_id} was recorded with uncommitted changes, but its record lacks {PATCH}: "
                         "its code cannot be rebuilt")
    if patch and tags.get("git.diff.sha256", patch_digest(patch)) != patch_digest(patch):
        raise FvexpError(f"run {run_id}'s {PATCH} does not match its tag git.diff.sha256: the record was altered")
    recorded_root = [Path(tags["git.root"])] if tags.get("git.root", "unknown") != "unknown" else []
    current_root = [Path(root)] if (root := git("rev-parse", "--show-toplevel")) else []
    try:
        worktree = checkout(commit, patch, options.out.resolve() / "worktrees",
                            [*options.repos, *recorded_root, *current_root])
    except FvexpError as error:
        raise FvexpError(f"run {run_id} cannot be re-run at its commit: {error}") from None
    python = sys.executable
    if options.env:
        if freeze is None:
            raise FvexpError(f"run {run_id}'s record lacks {FREEZE}: --env has no package list to install")
        python = str(environment(freeze, options.out.resolve() / "venvs", sys.executable))
    experiment = client.get_experiment(source.info.experiment_id).name
    settings = {**settings, "tracking.uri": store, "tracking.experiment": experiment,
                "tracking.run_name": f"reproduce {source.info.run_name}", "hydra.run.dir": str(target)}
    new_run = in_worktree(worktree, python, overrides, settings, cfg, client, source.info.experiment_id)
    if new_run.data.tags.get("git.commit") != commit:
        raise FvexpError(f"the re-run in {worktree} ran the code of commit {new_run.data.tags.get('git.commit')}, "
                         f"not {commit}: fvexp was imported from elsewhere")
    client.set_tag(new_run.info.run_id, "fvexp.reproduces", run_id)
    patched = f" with its recorded patch ({PATCH})" if patch else ""
    notes.append(f"re-ran at commit {commit}{patched} in {worktree} by {python}")
    with tempfile.TemporaryDirectory() as tmp:
        again = OmegaConf.load(client.download_artifacts(new_run.info.run_id, "config.yaml", tmp))
    return new_run, config_differences(cfg, again, settings)


def device_for(recorded: str) -> tuple[str, str | None]:
    """The recorded device if this machine has it, else the CPU and a note saying so."""
    import torch

    kind, _, index = recorded.partition(":")
    present = kind == "cpu" or (kind == "mps" and torch.backends.mps.is_available()) or (
        kind == "cuda" and torch.cuda.is_available() and int(index or 0) < torch.cuda.device_count())
    if present:
        return recorded, None
    return "cpu", f"note: run recorded on {recorded}, which this machine does not have: re-run on the CPU"


def stopped_at(client: Any, source: Any, cfg: Any) -> tuple[int, str] | None:
    """For a run that ended KILLED or FAILED, the number of steps to re-run and why; None for a FINISHED run.

    The recorded image of a stopped run is the one after `steps_done` steps. A run whose objective
    became NaN at step n + 1 logged n values and no `steps_done`; re-running n + 1 steps meets the
    same NaN and keeps the same last finite image.
    """
    from omegaconf import OmegaConf

    status, run_id = source.info.status, source.info.run_id
    if status == "FINISHED":
        return None
    task = OmegaConf.select(cfg, "task.name", default="render")
    if task != "render":
        raise FvexpError(f"run {run_id} ended {status} in task={task}; only task=render runs can be "
                         "reproduced up to the step where they stopped")
    done = source.data.metrics.get("steps_done")
    if done is not None:
        steps = int(done)
    else:
        history = client.get_metric_history(run_id, "objective")
        steps = max((m.step for m in history), default=0)
        if status == "FAILED" and steps < cfg.render.steps:
            steps += 1  # the step whose objective was not finite
    if steps == 0:
        raise FvexpError(f"run {run_id} ended {status} before its first step ended: there is no step to re-run")
    return steps, status


def record_files(client: Any, source: Any, tmp: str) -> dict[str, str]:
    """Download the artifacts a re-run needs (and those it uses when present), or say which are missing."""
    status = source.info.status
    present = {a.path for a in client.list_artifacts(source.info.run_id)}
    missing = [name for name in NEEDED_FILES if name not in present]
    if missing:
        error = source.data.tags.get("error", "")
        ended = f"{status}: {error}" if error and len(error) <= 120 else status
        raise FvexpError(f"run {source.info.run_id} cannot be reproduced: its record lacks the artifact(s) "
                         f"{', '.join(missing)} (status {ended}; a run that stopped early keeps no image)")
    if status == "RUNNING":
        raise FvexpError(f"run {source.info.run_id} is still RUNNING; reproduce it once it has ended (a run whose "
                         "process was killed stays RUNNING: fvexp-orphans --mark ends it)")
    if "environment" in present:
        present |= {a.path for a in client.list_artifacts(source.info.run_id, "environment")}
    wanted = [name for name in (*NEEDED_FILES, "overrides.yaml", PATCH, FREEZE) if name in present]
    return {name: client.download_artifacts(source.info.run_id, name, tmp) for name in wanted}


if __name__ == "__main__":
    main()
