"""Re-run one run from its MLflow record alone, and say whether the picture came out the same.

    python -m fvexp.tools.reproduce RUN_ID [--store URI] [--threads N]

The resolved config is read from the run's `config.yaml` artifact (not from any local folder),
run again into a new MLflow run tagged `fvexp.reproduces=RUN_ID`, and its final image is compared
with the recorded one, pixel by pixel. The report says `identical (max |Δ| = 0)`, or the largest
pixel difference together with what differs in the environment (versions, commit, device, threads).
The re-run uses the recorded thread count unless --threads says otherwise. On the CPU, the same
seed, machine and thread count give the same bytes.

A run that stopped early (KILLED, or FAILED when its objective became NaN) is re-run up to the
step where it stopped (its `steps_done` metric, else the length of its `objective` history), so
its recorded image is compared with the re-run's at that same step. A run that is still RUNNING,
or kept no image, cannot be reproduced, and the one-line error says why.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from fvexp.errors import FvexpError
from fvexp.optvis.environment import git
from fvexp.tracking.store import STORE_HELP, default_store, get_run, reader

NEEDED_TAGS = ("git.commit", "python.version", "torch.version", "torchvision.version", "numpy.version",
               "mlflow.version", "device", "torch.threads", "weights.sha256")
NEEDED_FILES = ("config.yaml", "image.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id")
    parser.add_argument("--store", default=os.environ.get("MLFLOW_TRACKING_URI") or default_store(),
                        help=STORE_HELP)
    parser.add_argument("--threads", type=int, help="torch threads for the re-run (default: as recorded)")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "reproduce")
    args = parser.parse_args(argv)
    try:
        identical, report = reproduce(args.run_id, args.store, args.threads, args.out)
    except FvexpError as error:
        raise SystemExit(f"fvexp.reproduce: error: {error}") from None
    print(report)
    sys.exit(0 if identical else 1)


def reproduce(run_id: str, store: str, threads: int | None, out: Path) -> tuple[bool, str]:
    from omegaconf import OmegaConf

    from fvexp.app.job import execute
    from fvexp.app.result import Job

    client = reader(store)
    source = get_run(client, run_id, store)
    with tempfile.TemporaryDirectory() as tmp:
        files = record_files(client, source, tmp)
        recorded = np.asarray(Image.open(files["image.png"]).convert("RGB"), dtype=np.int16)
        cfg = OmegaConf.create(yaml.safe_load(Path(files["config.yaml"]).read_text()))
    stop = stopped_at(client, source, cfg)
    missing = [tag for tag in NEEDED_TAGS if tag not in source.data.tags]
    if missing:
        raise FvexpError(f"run {run_id} cannot be reproduced: its record lacks the tag(s) {', '.join(missing)} "
                         "(it was logged by an older fvexp, or not by fvexp)")
    cfg.threads = threads or int(source.data.tags["torch.threads"])  # as recorded, unless asked otherwise
    cfg.tracking = {"_target_": "fvexp.tracking.writer.MlflowTracker", "uri": store,
                    "experiment": client.get_experiment(source.info.experiment_id).name, "run_name": None}
    cfg.progress = False
    target = out / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = source.data.tags.get("overrides", "").split()
    where = ""
    if stop is not None and stop[0] != cfg.render.steps:  # stopped early: re-run up to that step only
        steps, why = stop
        cfg.render.steps = steps
        if cfg.render.thresholds is not None:
            cfg.render.thresholds = [step for step in cfg.render.thresholds if step <= steps]
        overrides.append(f"render.steps={steps}")
        where = f" at step {steps}, where it stopped ({why})"
    job = Job(target, overrides, name=f"reproduce {source.info.run_name}", tags={"fvexp.reproduces": run_id})
    try:
        image = execute(cfg, job).path
    except FvexpError as error:
        recorded_commit, commit = source.data.tags["git.commit"], git("rev-parse", "HEAD") or "unknown"
        if recorded_commit != commit:
            raise FvexpError(f"{error} (run {run_id} was recorded at commit {recorded_commit}, this is {commit}: "
                             f"check out {recorded_commit} to reproduce it)") from None
        raise
    new_run = client.search_runs([source.info.experiment_id], f"tags.`fvexp.reproduces` = '{run_id}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)[0]
    again = np.asarray(Image.open(image).convert("RGB"), dtype=np.int16)
    differences = environment_differences(source.data.tags, new_run.data.tags)
    if recorded.shape == again.shape and not np.any(recorded != again):
        report = f"identical (max |Δ| = 0): {image} matches run {run_id}{where}"
        if differences:
            report += "\n(despite environment differences: " + "; ".join(differences) + ")"
        return True, report
    delta = ("shapes differ" if recorded.shape != again.shape
             else f"max |Δ| = {int(np.abs(recorded - again).max())} of 255")
    changed = "; ".join(differences) or "none recorded (same versions, commit, device and threads)"
    compared = f", compared{where}" if where else ""
    return False, f"differs: {delta}, new image {image}{compared}\nenvironment differences: {changed}"


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
    """Download the artifacts a re-run needs, or say which are missing."""
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
    return {name: client.download_artifacts(source.info.run_id, name, tmp) for name in NEEDED_FILES}


def environment_differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Recorded environment tags that changed, as 'tag: old → new'."""
    keys = [k for k in before if k.endswith(".version") or k.startswith(("git.", "device", "torch.", "cudnn.",
                                                                           "weights."))]
    return [f"{k}: {before[k]} → {after.get(k, 'missing')}" for k in keys if before[k] != after.get(k)]


if __name__ == "__main__":
    main()
