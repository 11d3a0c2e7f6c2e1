"""Re-running a recorded config at the commit that recorded it: a `python -m fvexp` in a worktree.

The worktree's code is imported ahead of the installed fvexp (PYTHONPATH, and `-P` so that the
folder the command starts from is not put first), by the current interpreter or by the recorded
environment's (`--env`). The config is composed by that commit's own Hydra configs from the run's
recorded overrides, plus the settings a re-run fixes (threads, device, steps of a stopped run) and
where it records (the same store and experiment, a run name to find it by), each only if that
commit's config has the key. Whether that gave the recorded config is checked afterwards
(`config_differences`). Also here: whether the current code can build a recorded config at all.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fvexp.errors import FvexpError

PLAIN = re.compile(r"[\w.:/@+\-]*")  # values Hydra's override grammar reads unquoted


def unbuildable(cfg: DictConfig) -> list[str]:
    """Why the current code cannot build `cfg`: `_target_`s that do not exist, or the schema's checks; empty
    when it can. (Arguments are not checked against signatures: the app takes some keys out before building.)"""
    from fvexp.app.schema import validate

    problems = [f"{where}._target_ {target} {why}" for where, target in targets(OmegaConf.to_container(cfg))
                if (why := unloadable(target))]
    if not problems:
        try:
            validate(cfg)
        except Exception as error:
            problems.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
    return problems


def unloadable(target: str) -> str | None:
    """Why a `_target_` cannot be loaded: 'does not exist', or its module's import error; None when it can."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and name.startswith(error.name):  # this module, or a package above it, is not there
                continue
            return f"cannot be imported: {error}"
        except Exception as error:
            return f"cannot be imported: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return "does not exist"
            found = getattr(found, attribute)
        return None
    return "does not exist"


def targets(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every `_target_` in a config container, with the dotted path of its node."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            found.append((where or "config", node["_target_"]))
        for key, value in node.items():
            found += targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += targets(value, f"{where}[{index}]")
    return found


def value_text(value: Any) -> str:
    """A Python value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    text = str(value)
    if isinstance(value, int | float) or PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def key_of(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def command(python: str, recorded: list[str], settings: Mapping[str, Any], cfg: DictConfig) -> list[str]:
    """`python -P -m fvexp` with the recorded overrides and the re-run's `settings` that `cfg` has keys for.

    Recorded overrides of the keys the re-run sets, of tracking and of Hydra itself are dropped.
    """
    kept = [o for o in recorded if key_of(o) not in settings and not key_of(o).startswith(("tracking", "hydra"))]
    present = {k: v for k, v in settings.items() if k.startswith("hydra.") or OmegaConf.select(cfg, k, default=KeyError)
               is not KeyError}
    return [python, "-P", "-m", "fvexp", *kept, *(f"{k}={value_text(v)}" for k, v in present.items())]


def in_worktree(worktree: Path, python: str, recorded: list[str], settings: Mapping[str, Any], cfg: DictConfig,
                client: Any, experiment_id: str) -> Any:
    """Run the config in `worktree` (into the store `settings` name) and return the MLflow run it made."""
    started = int(time.time() * 1000)
    argv = command(python, recorded, settings, cfg)
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    environment |= {"PYTHONPATH": str(worktree), "PYTHONDONTWRITEBYTECODE": "1"}  # the worktree stays as checked out
    done = subprocess.run(argv, env=environment, capture_output=True, text=True)
    name = str(settings.get("tracking.run_name"))
    named = f" and attributes.run_name = '{name}'" if "run_name" in cfg.get("tracking", {}) and "'" not in name \
        else ""  # else the latest run started since
    runs = client.search_runs([experiment_id], f"attributes.start_time >= {started}{named}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        said = [line for line in done.stderr.splitlines() if line.strip()]
        raise FvexpError(f"the re-run in {worktree} recorded no run (exit {done.returncode}): "
                         f"{said[-1] if said else 'no message'}; the command: {' '.join(argv)}")
    return runs[0]


def config_differences(recorded: DictConfig, again: DictConfig, settings: Mapping[str, Any]) -> list[str]:
    """Keys whose value in the re-run's config is not the recorded one with `settings` applied, as
    'config.KEY: old → new'; where it ran and recorded (tracking, progress, device) is left out."""
    from fvexp.app.build import flatten

    expected = OmegaConf.create(OmegaConf.to_container(recorded, resolve=True))
    for key, value in settings.items():
        if OmegaConf.select(expected, key, default=KeyError) is not KeyError:
            OmegaConf.update(expected, key, value)
    before, after = (dict(flatten(OmegaConf.to_container(c, resolve=True))) for c in (expected, again))
    keys = [k for k in dict.fromkeys([*before, *after]) if k.split(".")[0] not in ("tracking", "progress", "device")]
    return [f"config.{k}: {before.get(k, 'missing')} → {after.get(k, 'missing')}"
            for k in keys if before.get(k, KeyError) != after.get(k, KeyError)]
